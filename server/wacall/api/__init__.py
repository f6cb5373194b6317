"""The gRPC face of the service: servicers (calling, clock), the mapping to protos and the rich errors."""
