"""GetPermission, RequestPermission and StartCall decide through one evaluation: what one reports, the others act on."""

from __future__ import annotations

from conftest import Running, call_action, request_action
from wacall_client.v1 import calling_pb2 as pb

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())


async def test_request_permission_reports_the_active_call_like_get_permission(wacall: Running) -> None:
    await wacall.grant()  # temporary: a further request is still allowed
    await wacall.phone(ring=60)
    await wacall.start_call(route=STREAM)
    before = await wacall.permission()
    assert request_action(before).allowed
    result = await wacall.request()
    returned = result.permission
    busy = call_action(returned)
    assert not busy.allowed and busy.reason == pb.REASON_CALL_IN_PROGRESS
    # The manual clock has not moved: the same instant, the same answer.
    assert returned == await wacall.permission()
