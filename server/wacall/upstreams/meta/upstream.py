"""Meta's Graph API behind the `Upstream` interface: the Graph client's errors become neutral refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from wacall.upstreams.base import (
    Account,
    CallAction,
    PlatformPermission,
    SentMessage,
    TemplateRef,
    UpstreamRefusal,
    UpstreamUnavailable,
)
from wacall.upstreams.meta.accounts import meta_part
from wacall.upstreams.meta.errors import meta_error
from wacall.upstreams.meta.graph import GraphClient, GraphError, GraphUnavailable

ERROR_DOMAIN = "graph.facebook.com"


def refusal_of(error: GraphError) -> UpstreamRefusal:
    info = meta_error(error.code)
    return UpstreamRefusal(
        info.reason,
        retryable=info.retryable,
        # An error object is the platform's answer: what it refused was not sent.
        may_have_been_sent=False,
        platform_code=str(error.code),
        message=error.message,
        meaning=info.meaning,
        detail=error.details,
        details={"details": error.details, "http_status": str(error.http_status)},
        platform=ERROR_DOMAIN,
    )


@asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    try:
        yield
    except GraphError as error:
        raise refusal_of(error) from error
    except GraphUnavailable as error:
        raise UpstreamUnavailable(str(error), may_have_been_sent=error.maybe_sent) from error


class MetaUpstream:
    """`Upstream` over Meta's Graph API (or the embedded simulator, which speaks the same HTTP)."""

    def __init__(self, graph: GraphClient) -> None:
        self.graph = graph

    async def send_permission_request_interactive(self, account: Account, user_id: str, body_text: str) -> SentMessage:
        async with _refusals():
            return await self.graph.send_permission_request_interactive(meta_part(account), user_id, body_text)

    async def send_permission_request_template(
        self, account: Account, user_id: str, template: TemplateRef
    ) -> SentMessage:
        async with _refusals():
            return await self.graph.send_permission_request_template(meta_part(account), user_id, template)

    async def call_permissions(self, account: Account, user_id: str) -> PlatformPermission:
        async with _refusals():
            return await self.graph.call_permissions(meta_part(account), user_id)

    async def connect_call(self, account: Account, user_id: str, offer_sdp: str, opaque: str = "") -> str:
        async with _refusals():
            return await self.graph.connect_call(meta_part(account), user_id, offer_sdp, opaque)

    async def call_action(self, account: Account, call_id: str, action: CallAction, answer_sdp: str = "") -> None:
        async with _refusals():
            await self.graph.call_action(meta_part(account), call_id, action.value, answer_sdp)

    async def close(self) -> None:
        await self.graph.close()
