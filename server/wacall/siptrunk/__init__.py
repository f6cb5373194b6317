"""The SIP trunk at its I/O edge: wacall's SIP endpoint (transports, transaction layer, dispatch of requests) and the
front door's calls, which drive the call service and the media engine. The decisions it applies are `sipdoor`'s."""
