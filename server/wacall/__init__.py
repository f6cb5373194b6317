"""wacall: a self-hosted gRPC service for WhatsApp Business Calling permissions and calls."""

__version__ = "0.1.0"
