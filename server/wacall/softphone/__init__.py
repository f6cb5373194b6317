"""The agent softphone: a browser page at `/agent/`, its WebSocket mirror of the `AgentSession` stream and a small
JSON lookup for the customer panel, all on wacall's HTTP server."""
