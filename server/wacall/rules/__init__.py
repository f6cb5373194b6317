"""The rules: named, versioned policies and the pure engine that applies them (tables, no I/O)."""
