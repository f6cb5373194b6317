"""SetUserBehavior is a partial update (a merge): the fields given change, the others keep their values."""

from __future__ import annotations

from pathlib import Path

import grpc
from conftest import OTHER_USER, USER, Running, duration, refused, settings_for, start_service, stop_service
from wacall_client.sim.v1 import simulator_pb2 as sim_pb


async def behavior(wacall: Running, user: str = USER) -> sim_pb.UserBehavior:
    return await wacall.sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=user))


async def test_setting_one_field_keeps_every_other_field(wacall: Running) -> None:
    await wacall.phone(on_call=sim_pb.DECLINE, ring=5, talk=7, tone_hz=440, on_request=sim_pb.REJECT)
    await wacall.sim.SetUserBehavior(sim_pb.SetUserBehaviorRequest(user_number=USER, outdated_client=True))
    await wacall.behave(USER, sim_pb.ACCEPT_PERMANENT, delay_seconds=30)
    kept = await behavior(wacall)
    assert kept.on_permission_request == sim_pb.ACCEPT_PERMANENT and kept.reply_delay.seconds == 30
    assert kept.on_call == sim_pb.DECLINE and kept.ring_duration.seconds == 5 and kept.talk_duration.seconds == 7
    assert kept.tone_hz == 440 and kept.outdated_client


async def test_a_default_given_explicitly_resets_that_field_only(wacall: Running) -> None:
    await wacall.phone(on_call=sim_pb.NO_ANSWER, ring=9, tone_hz=440, on_request=sim_pb.ACCEPT_TEMPORARY)
    reset = await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=USER, on_call=sim_pb.ANSWER, tone_hz=0, outdated_client=False)
    )
    assert reset.on_call == sim_pb.ANSWER and reset.tone_hz == 880  # 0: the default tone
    assert reset.ring_duration.seconds == 9 and reset.on_permission_request == sim_pb.ACCEPT_TEMPORARY
    # UNSPECIFIED counts as not given.
    same = await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=USER, on_call=sim_pb.ON_CALL_UNSPECIFIED)
    )
    assert same == reset


async def test_a_new_user_starts_from_the_defaults(wacall: Running) -> None:
    fresh = await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=OTHER_USER, ring_duration=duration(2))
    )
    assert fresh.ring_duration.seconds == 2
    assert fresh.on_permission_request == sim_pb.IGNORE and fresh.on_call == sim_pb.ANSWER and fresh.tone_hz == 880


async def test_a_refused_update_changes_nothing(wacall: Running) -> None:
    await wacall.phone(on_call=sim_pb.DECLINE, ring=4)
    before = await behavior(wacall)
    for bad in (
        sim_pb.SetUserBehaviorRequest(user_number=USER, on_call=99, ring_duration=duration(1)),
        sim_pb.SetUserBehaviorRequest(user_number=USER, tone_hz=30000, on_call=sim_pb.ANSWER),
        sim_pb.SetUserBehaviorRequest(user_number=USER, ring_duration=duration(31 * 86400)),
        sim_pb.SetUserBehaviorRequest(user_number=USER, wa_id="+34", on_call=sim_pb.ANSWER),
    ):
        error = await refused(wacall.sim.SetUserBehavior(bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await behavior(wacall) == before


async def test_a_merged_behavior_survives_a_restart(tmp_path: Path) -> None:
    first = await start_service(settings_for(tmp_path))
    try:
        await first.phone(on_call=sim_pb.NO_ANSWER, ring=6)
        await first.behave(USER, sim_pb.ACCEPT_TEMPORARY)
    finally:
        await stop_service(first)
    second = await start_service(settings_for(tmp_path))
    try:
        restored = await behavior(second)
        assert restored.on_call == sim_pb.NO_ANSWER and restored.ring_duration.seconds == 6
        assert restored.on_permission_request == sim_pb.ACCEPT_TEMPORARY
    finally:
        await stop_service(second)
