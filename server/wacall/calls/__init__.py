"""Calls: the pure state machine, the call record and its codec, live media sessions, and call control."""
