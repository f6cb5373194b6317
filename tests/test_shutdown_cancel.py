"""A shutdown cancels each background loop once and waits for it: a loop that loses that cancel runs on and the
shutdown never ends. The loops that follow the store wait on a change ticket; a commit that sets the ticket as the
cancel lands (other work committing during a shutdown) must still stop them.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import Running

from wacall.store import ChangeNotifier, wait_for_change


async def parked_on(notifier: ChangeNotifier) -> asyncio.Task[None]:
    """A task waiting for the notifier's next change (for up to a minute), parked inside the wait."""
    task = asyncio.create_task(wait_for_change(notifier.ticket(), 60.0))
    for _ in range(3):  # into the wait, and the ticket's own waiter parked on the event
        await asyncio.sleep(0)
    assert not task.done()
    return task


async def test_a_cancel_that_lands_as_the_ticket_is_set_still_cancels_the_wait() -> None:
    notifier = ChangeNotifier()
    waiting = await parked_on(notifier)
    # In one step, as a commit during a shutdown does it: the change, then the cancel.
    notifier.notify()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_change_or_the_time_limit_ends_the_wait() -> None:
    notifier = ChangeNotifier()
    waiting = await parked_on(notifier)
    notifier.notify()
    await waiting  # returns on the change
    await wait_for_change(notifier.ticket(), 0.01)  # and on the time limit, without raising


async def test_the_services_following_loops_stop_when_cancelled_as_the_store_changes(wacall: Running) -> None:
    calls = wacall.service.calls
    queues = wacall.service.queues
    assert calls is not None and queues is not None
    store = calls.store
    for _ in range(20):  # each time at a different point of the loops' passes
        following = [
            asyncio.create_task(calls._follow_held_calls()),
            asyncio.create_task(queues._follow_decisions()),
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        store.changes.notify()
        for task in following:
            task.cancel()
        done, running = await asyncio.wait(following, timeout=10)
        assert not running, "a following loop ran on after its cancel"
        assert all(task.cancelled() for task in done)
