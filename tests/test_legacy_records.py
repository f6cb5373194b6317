"""Records written by earlier versions read as they did: a call ended by a setup-failure code stays FAILED."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from conftest import OTHER_USER, USER, Running, settings_for, start_service, stop_service
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.store import Tx, open_store
from wacall.upstreams.meta.legacy import DONE_SETTING

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())


async def unanswered(wacall: Running, user: str) -> str:
    await wacall.grant(user=user, permanent=True)
    await wacall.phone(user=user, on_call=sim_pb.NO_ANSWER)
    call = await wacall.start_call(user, route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    return call.call_id


def as_written_before_setup_failures_were_flagged(tx: Tx, call_id: str, codes: list[int]) -> None:
    """The facts as the earlier version stored them: the platform's codes, no setup_failed flag set."""
    stored = tx.call(call_id)
    assert stored is not None
    facts = {**stored.data["facts"], "error_codes": codes, "setup_failed": False}
    tx.save_call(dataclasses.replace(stored, data={**stored.data, "facts": facts}))


async def test_a_call_stored_with_a_setup_failure_code_reads_failed_after_the_upgrade(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    running = await start_service(settings)
    try:
        # Ended unanswered (the phone never picks up and the platform ends the call).
        setup_failed_id = await unanswered(running, USER)
        media_failed_id = await unanswered(running, OTHER_USER)
    finally:
        await stop_service(running)

    store = open_store(settings.db)

    def rewrite(tx: Tx) -> None:
        as_written_before_setup_failures_were_flagged(tx, setup_failed_id, [138019])  # call setup failed
        as_written_before_setup_failures_were_flagged(tx, media_failed_id, [138021])  # media, after pickup

    await store.transaction(rewrite)
    await store.close()
    # An earlier version had never run the upgrade: no marker in its database.
    with sqlite3.connect(tmp_path / "wacall.db") as db:
        db.execute("DELETE FROM settings WHERE name = ?", (DONE_SETTING,))

    running = await start_service(settings)
    try:
        assert (await running.get_call(setup_failed_id)).outcome == pb.CALL_OUTCOME_FAILED
        assert (await running.get_call(media_failed_id)).outcome == pb.CALL_OUTCOME_UNANSWERED
    finally:
        await stop_service(running)
