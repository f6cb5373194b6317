"""The SIP stack's I/O edge: asyncio transports (UDP, TCP, TLS) and the transaction layer that runs `wacall.sip`'s
sans-IO transactions over them with real timers."""
