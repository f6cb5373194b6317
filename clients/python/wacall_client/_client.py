from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc


@dataclass
class ErrorDetails:
    """The google.rpc details of a failed call, unpacked."""

    retry_after: timedelta | None = None
    quota_violations: list[error_details_pb2.QuotaFailure.Violation] = field(default_factory=list)
    precondition_violations: list[error_details_pb2.PreconditionFailure.Violation] = field(default_factory=list)
    field_violations: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)


def error_details(error: grpc.aio.AioRpcError) -> ErrorDetails:
    details = ErrorDetails()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return details
    for item in status.details:
        if item.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            item.Unpack(retry)
            details.retry_after = retry.retry_delay.ToTimedelta()
        elif item.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            item.Unpack(quota)
            details.quota_violations.extend(quota.violations)
        elif item.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            precondition = error_details_pb2.PreconditionFailure()
            item.Unpack(precondition)
            details.precondition_violations.extend(precondition.violations)
        elif item.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            item.Unpack(bad)
            details.field_violations.extend(bad.field_violations)
    return details


class Client:
    """A thin async wrapper over CallingService; `stub` gives the full generated API."""

    def __init__(
        self, address: str, *, token: str | None = None, tls: bool = False, root_certificates: bytes | None = None
    ) -> None:
        # TLS with `tls` or a CA given (None: the system's roots); plaintext otherwise.
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(address, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(address)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = calling_pb2_grpc.CallingServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def get_permission(self, business_number: str, user_number: str) -> pb.Permission:
        return await self.stub.GetPermission(
            pb.GetPermissionRequest(business_number=business_number, user_number=user_number), metadata=self._metadata
        )

    async def request_permission(
        self,
        business_number: str,
        user_number: str,
        *,
        body_text: str = "",
        template: pb.Template | None = None,
        idempotency_key: str = "",
    ) -> pb.RequestPermissionResponse:
        return await self.stub.RequestPermission(
            pb.RequestPermissionRequest(
                business_number=business_number,
                user_number=user_number,
                body_text=body_text,
                template=template,
                idempotency_key=idempotency_key,
            ),
            metadata=self._metadata,
        )

    async def watch_events(
        self, *, business_number: str = "", user_number: str = "", after_cursor: str = ""
    ) -> AsyncIterator[pb.Event]:
        async for event in self.stub.WatchEvents(
            pb.WatchEventsRequest(business_number=business_number, user_number=user_number, after_cursor=after_cursor),
            metadata=self._metadata,
        ):
            yield event
