"""A sans-IO SIP core (RFC 3261): messages, digest authentication, transactions and dialogs as data.

Nothing here opens a socket, starts a task or reads a clock: bytes and `now` go in, messages and actions come out.
Transports, timers and the trunk logic live at the edge and drive these modules.
"""
