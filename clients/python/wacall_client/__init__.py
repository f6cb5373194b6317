"""Python client for wacall.

    from wacall_client import Client

    async with Client("127.0.0.1:50051") as wacall:
        permission = await wacall.get_permission("+447700900123", "+447700900456")

The generated stubs are importable as `wacall_client.v1.calling_pb2` (and `..._grpc`), `wacall_client.sim.v1`,
`wacall_client.testing.v1`.
"""

from wacall_client._client import Client, ErrorDetails, error_details

__all__ = ["Client", "ErrorDetails", "error_details"]
