"""Python client for wacall: `Client` (asyncio) and `SyncClient` (blocking), the same methods on each.

    from wacall_client import Client, WacallError

    async with Client("127.0.0.1:50051", token="...") as wacall:
        try:
            await wacall.request_permission("+447911123456", "+34612345678")
        except WacallError as error:
            print(error.code, error.message, error.retry_after)

    with SyncClient("wacall.example.com:443", token="...", tls=True) as wacall:
        permission = wacall.get_permission("+447911123456", "+34612345678")

`CallingService` is on the client itself; `client.contact_center`, `client.simulator` and `client.clock` are the
other services. The generated stubs are importable as `wacall_client.v1.calling_pb2` (and `..._grpc`),
`wacall_client.v1.contact_center_pb2`, `wacall_client.sim.v1`, `wacall_client.testing.v1`.
"""

from wacall_client._client import Client, ClockClient, ContactCenterClient, SimulatorClient
from wacall_client._errors import ErrorDetails, WacallError, error_details
from wacall_client._sync_client import SyncClient, SyncClockClient, SyncContactCenterClient, SyncSimulatorClient

__all__ = [
    "Client",
    "ClockClient",
    "ContactCenterClient",
    "ErrorDetails",
    "SimulatorClient",
    "SyncClient",
    "SyncClockClient",
    "SyncContactCenterClient",
    "SyncSimulatorClient",
    "WacallError",
    "error_details",
]
