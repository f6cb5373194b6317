"""wacall's errors as Python values: the status code, the message, and the google.rpc details unpacked.

The service sends a google.rpc.Status in the `grpc-status-details-bin` trailer: RetryInfo when waiting helps,
QuotaFailure for a used-up limit, PreconditionFailure for what must change first, BadRequest naming a bad field,
ErrorInfo with a machine-readable reason. Both clients raise `WacallError` carrying them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

_NO_METADATA: Mapping[str, str] = MappingProxyType({})
_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details of a failed call, unpacked. Empty when the error carried none."""

    # RetryInfo: how long to wait before the same request can succeed (None: waiting would not help).
    retry_after: timedelta | None = None
    quota_violations: tuple[error_details_pb2.QuotaFailure.Violation, ...] = ()
    precondition_violations: tuple[error_details_pb2.PreconditionFailure.Violation, ...] = ()
    field_violations: tuple[error_details_pb2.BadRequest.FieldViolation, ...] = ()
    # ErrorInfo: a stable machine-readable reason (e.g. "REQUEST_OUTCOME_UNKNOWN", "unknown_queue"), its domain and
    # facts about it.
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    resources: tuple[error_details_pb2.ResourceInfo, ...] = ()


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Unpacks the google.rpc details of a failed call (an async or a sync one); unknown detail types are ignored,
    and a trailer that cannot be read (corrupt, or rewritten by a proxy) gives empty details: never an exception."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return ErrorDetails()
    try:
        trailer = next((value for key, value in error.trailing_metadata() or () if key == _DETAILS_KEY), None)
        if not isinstance(trailer, bytes):
            return ErrorDetails()
        # Read by hand, not with grpc_status.rpc_status.from_call: that raises when the trailer's code or message
        # differs from the call's, which a proxy rewriting grpc-message causes. The details are still the service's.
        return _unpacked(status_pb2.Status.FromString(trailer))
    except (DecodeError, ValueError, TypeError):
        return ErrorDetails()


def _unpacked(status: status_pb2.Status) -> ErrorDetails:
    retry_after: timedelta | None = None
    quota: list[error_details_pb2.QuotaFailure.Violation] = []
    preconditions: list[error_details_pb2.PreconditionFailure.Violation] = []
    fields: list[error_details_pb2.BadRequest.FieldViolation] = []
    resources: list[error_details_pb2.ResourceInfo] = []
    info = error_details_pb2.ErrorInfo()
    for item in status.details:
        if item.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            item.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta()
        elif item.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            item.Unpack(failure)
            quota.extend(failure.violations)
        elif item.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            precondition = error_details_pb2.PreconditionFailure()
            item.Unpack(precondition)
            preconditions.extend(precondition.violations)
        elif item.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            item.Unpack(bad)
            fields.extend(bad.field_violations)
        elif item.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            item.Unpack(info)
        elif item.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            resource = error_details_pb2.ResourceInfo()
            item.Unpack(resource)
            resources.append(resource)
    return ErrorDetails(
        retry_after=retry_after,
        quota_violations=tuple(quota),
        precondition_violations=tuple(preconditions),
        field_violations=tuple(fields),
        reason=info.reason,
        domain=info.domain,
        metadata=MappingProxyType(dict(info.metadata)) if info.metadata else _NO_METADATA,
        resources=tuple(resources),
    )


class WacallError(Exception):
    """A call to wacall failed: `code` (a grpc.StatusCode), `message` (what happened and what to do) and `details`
    (the google.rpc details, unpacked). Raised by every method of `Client` and `SyncClient`; the gRPC error it
    came from is its `__cause__`."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def retry_after(self) -> timedelta | None:
        """How long to wait before retrying can succeed (RetryInfo); None when waiting would not help."""
        return self.details.retry_after

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> WacallError:
        """The WacallError for a failed gRPC call (async or sync)."""
        if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            return cls(error.code(), error.details() or "", error_details(error))
        return cls(grpc.StatusCode.UNKNOWN, str(error), ErrorDetails())
