"""The queue router, in memory with a manual clock: each strategy's choice, ring timeouts, declines, RING_ALL's one
winner, maximum wait and overflow, wrap-up, auto-pause, abandoned calls, dropped sessions, stats; and a property test
against a reference model over random sequences of events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wacall.queues import codec, router
from wacall.queues.router import (
    EMPTY,
    Accept,
    Agent,
    AgentCallStarted,
    Assigned,
    CallGone,
    CallQueued,
    Decision,
    Decline,
    DeleteAgent,
    DeleteQueue,
    EndWrapUp,
    Event,
    HoldAudio,
    LogIn,
    OfferMade,
    OfferWithdrawn,
    Overflowed,
    Presence,
    PresenceChanged,
    PresenceWhy,
    PutAgent,
    PutQueue,
    QueueConfig,
    QueueGone,
    QueueTimedOut,
    RouterState,
    RoutingRefused,
    SessionsGone,
    SetPresence,
    Strategy,
    Tick,
    WithdrawnWhy,
    next_deadline,
    queue_stats,
    step,
)

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
S = timedelta(seconds=1)


class Desk:
    """A router driven by hand: events in, decisions kept, time moved with `later`."""

    def __init__(self) -> None:
        self.state: RouterState = EMPTY
        self.now = T0
        self.decisions: list[Decision] = []

    def do(self, *events: Event) -> list[Decision]:
        made: list[Decision] = []
        for event in events:
            result = step(self.state, event, self.now)
            self.state = result.state
            made += result.decisions
        self.decisions += made
        return made

    def later(self, seconds: float) -> list[Decision]:
        self.now += timedelta(seconds=seconds)
        return self.do(Tick())

    def queue(self, queue_id: str = "sales", **options: object) -> None:
        self.do(PutQueue(QueueConfig(queue_id, **options)))  # type: ignore[arg-type]

    def agents(
        self, *agent_ids: str, queue: str = "sales", penalty: int = 0, skills: dict[str, int] | None = None
    ) -> None:
        for agent_id in agent_ids:
            self.do(
                PutAgent(agent_id, skills=skills or {}, queues={queue: penalty}),
                LogIn(agent_id),
                SetPresence(agent_id, Presence.AVAILABLE),
            )

    def agent(self, agent_id: str) -> Agent:
        return self.state.agents[agent_id]

    def ringing(self) -> dict[str, str]:
        """agent id → call id of every open offer."""
        return {o.agent_id: o.call_id for o in self.state.offers.values()}

    def offer_to(self, agent_id: str) -> str:
        return next(o.offer_id for o in self.state.offers.values() if o.agent_id == agent_id)


def offers_in(decisions: Iterable[Decision]) -> list[tuple[str, str]]:
    return [(d.offer.agent_id, d.offer.call_id) for d in decisions if isinstance(d, OfferMade)]


# --- strategies ---------------------------------------------------------------------------------------------------


def test_longest_idle_offers_to_the_agent_free_longest_counting_from_the_end_of_wrap_up() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LONGEST_IDLE, wrap_up=timedelta(seconds=30))
    desk.agents("ann")
    desk.later(10)
    desk.agents("bob")
    desk.later(10)
    desk.do(CallQueued("c1", "sales"))
    assert desk.ringing() == {"ann": "c1"}
    desk.do(Accept(desk.offer_to("ann")))
    desk.later(5)
    desk.do(CallGone("c1"))
    assert desk.agent("ann").presence is Presence.WRAP_UP
    desk.later(30)  # ann is AVAILABLE again from here; bob has been idle since before
    desk.do(CallQueued("c2", "sales"))
    assert desk.ringing() == {"bob": "c2"}


def test_longest_idle_counts_from_becoming_available_not_from_signing_in() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LONGEST_IDLE)
    desk.do(PutAgent("ann", queues={"sales": 0}), LogIn("ann"))
    desk.agents("bob")
    desk.later(60)
    desk.do(SetPresence("ann", Presence.AVAILABLE))
    desk.do(CallQueued("c1", "sales"))
    assert desk.ringing() == {"bob": "c1"}


def test_round_robin_remembers_the_last_agent_across_calls() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.ROUND_ROBIN)
    desk.agents("ann", "bob", "cat")
    chosen = []
    for n in range(5):
        desk.do(CallQueued(f"c{n}", "sales"))
        (agent,) = desk.ringing()
        chosen.append(agent)
        desk.do(Accept(desk.offer_to(agent)), CallGone(f"c{n}"))
    assert chosen == ["ann", "bob", "cat", "ann", "bob"]


def test_fewest_calls_prefers_the_agent_who_handled_fewest() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.FEWEST_CALLS)
    desk.agents("ann", "bob")
    for n in range(2):  # ann takes two calls while bob is away
        desk.do(SetPresence("bob", Presence.AWAY), CallQueued(f"c{n}", "sales"))
        desk.do(Accept(desk.offer_to("ann")), CallGone(f"c{n}"), SetPresence("bob", Presence.AVAILABLE))
    desk.later(1)
    desk.do(CallQueued("c9", "sales"))
    assert desk.ringing() == {"bob": "c9"}


def test_linear_follows_the_order_agents_were_added_and_stays_on_the_first() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LINEAR)
    desk.agents("zed", "amy", "kim")
    for n in range(3):
        desk.do(CallQueued(f"c{n}", "sales"))
        assert desk.ringing() == {"zed": f"c{n}"}
        desk.do(Accept(desk.offer_to("zed")), CallGone(f"c{n}"))
    desk.do(SetPresence("zed", Presence.AWAY), CallQueued("c9", "sales"))
    assert desk.ringing() == {"amy": "c9"}


def test_random_is_reproducible_and_spreads_over_agents() -> None:
    def run() -> list[str]:
        desk = Desk()
        desk.queue(strategy=Strategy.RANDOM)
        desk.agents("ann", "bob", "cat", "dan")
        chosen = []
        for n in range(40):
            desk.do(CallQueued(f"c{n}", "sales"))
            (agent,) = desk.ringing()
            chosen.append(agent)
            desk.do(Accept(desk.offer_to(agent)), CallGone(f"c{n}"))
        return chosen

    first = run()
    assert first == run()
    assert set(first) == {"ann", "bob", "cat", "dan"}


def test_ring_all_rings_every_free_agent_and_exactly_one_wins() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.RING_ALL)
    desk.agents("ann", "bob", "cat")
    desk.do(CallQueued("c1", "sales"))
    assert desk.ringing() == {"ann": "c1", "bob": "c1", "cat": "c1"}
    bob_offer, cat_offer = desk.offer_to("bob"), desk.offer_to("cat")
    made = desk.do(Accept(bob_offer))
    assert [d for d in made if isinstance(d, Assigned)] == [Assigned("c1", "bob", "sales", bob_offer, timedelta(0))]
    assert {(d.offer.agent_id, d.why) for d in made if isinstance(d, OfferWithdrawn)} == {
        ("ann", WithdrawnWhy.ANSWERED_ELSEWHERE),
        ("cat", WithdrawnWhy.ANSWERED_ELSEWHERE),
    }
    # The second accept, serialised after the first, finds its offer gone and changes nothing.
    before = desk.state
    with pytest.raises(RoutingRefused) as refused:
        desk.do(Accept(cat_offer))
    assert refused.value.code == "offer_gone"
    assert desk.state == before


def test_ring_all_adds_an_agent_who_becomes_available_while_it_rings() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.RING_ALL)
    desk.agents("ann")
    desk.do(PutAgent("bob", queues={"sales": 0}), LogIn("bob"), CallQueued("c1", "sales"))
    assert desk.ringing() == {"ann": "c1"}
    desk.do(SetPresence("bob", Presence.AVAILABLE))
    assert desk.ringing() == {"ann": "c1", "bob": "c1"}


def test_a_lower_penalty_tier_is_offered_first() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.RING_ALL)
    desk.agents("backup", penalty=5)
    desk.agents("front1", "front2", penalty=0)
    desk.do(CallQueued("c1", "sales"))
    assert desk.ringing() == {"front1": "c1", "front2": "c1"}
    desk.do(Decline(desk.offer_to("front1")), Decline(desk.offer_to("front2")))
    assert desk.ringing() == {"backup": "c1"}


def test_required_skills_and_levels_decide_who_is_eligible() -> None:
    desk = Desk()
    desk.queue("spanish", required_skills={"es": 3})
    desk.agents("novice", queue="spanish", skills={"es": 1})
    desk.agents("none", queue="spanish")
    desk.do(CallQueued("c1", "spanish"))
    assert desk.ringing() == {}
    desk.agents("fluent", queue="spanish", skills={"es": 5, "en": 2})
    assert desk.ringing() == {"fluent": "c1"}


# --- offers: decline, timeout, auto-pause ----------------------------------------------------------------------------


def test_a_decline_passes_the_call_to_the_next_agent_and_is_not_a_missed_offer() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LINEAR, max_missed_offers=1)
    desk.agents("ann", "bob")
    desk.do(CallQueued("c1", "sales"))
    desk.do(Decline(desk.offer_to("ann")))
    assert desk.ringing() == {"bob": "c1"}
    assert desk.agent("ann").presence is Presence.AVAILABLE
    assert desk.agent("ann").missed_offers == 0


def test_a_lone_agent_who_declined_is_rung_again_only_after_the_decline_delay() -> None:
    desk = Desk()
    desk.queue(decline_delay=timedelta(seconds=10))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"))
    first = desk.offer_to("ann")
    desk.do(Decline(first))
    assert desk.ringing() == {}  # not straight back: the caller waits on hold
    assert next_deadline(desk.state) == desk.now + 10 * S
    assert offers_in(desk.later(9.999)) == []
    assert offers_in(desk.later(0.001)) == [("ann", "c1")] and desk.offer_to("ann") != first


def test_a_declined_call_goes_to_a_new_caller_meanwhile_and_other_agents_are_not_delayed() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LINEAR, decline_delay=timedelta(seconds=30))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"))
    desk.do(Decline(desk.offer_to("ann")))
    desk.do(CallQueued("c2", "sales"))
    assert desk.ringing() == {"ann": "c2"}  # the delay is for the call ann declined, not for ann
    desk.agents("bob")
    assert desk.ringing() == {"ann": "c2", "bob": "c1"}


def test_a_zero_decline_delay_rings_the_agent_again_at_once() -> None:
    desk = Desk()
    desk.queue(decline_delay=timedelta(0))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"))
    first = desk.offer_to("ann")
    desk.do(Decline(first))
    assert desk.ringing() == {"ann": "c1"} and desk.offer_to("ann") != first


def test_a_ring_out_rings_the_same_agents_again_only_after_the_no_answer_delay() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.RING_ALL, ring_timeout=timedelta(seconds=15), no_answer_delay=timedelta(seconds=5))
    desk.agents("ann", "bob")
    desk.do(CallQueued("c1", "sales"))
    assert set(desk.ringing()) == {"ann", "bob"}
    made = desk.later(15)
    assert offers_in(made) == [] and desk.ringing() == {}
    assert desk.agent("ann").missed_offers == 1  # one lap, one missed offer: no loop counting more
    assert next_deadline(desk.state) == desk.now + 5 * S
    assert sorted(offers_in(desk.later(5))) == [("ann", "c1"), ("bob", "c1")]


def test_a_ring_timeout_moves_the_call_on_counts_a_missed_offer_and_pauses_the_agent() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LINEAR, ring_timeout=timedelta(seconds=15), max_missed_offers=2)
    desk.agents("ann", "bob")
    desk.do(CallQueued("c1", "sales"))
    assert next_deadline(desk.state) == desk.now + 15 * S
    made = desk.later(14.999)
    assert made == [] and desk.ringing() == {"ann": "c1"}
    made = desk.later(0.001)
    assert [(d.offer.agent_id, d.why) for d in made if isinstance(d, OfferWithdrawn)] == [
        ("ann", WithdrawnWhy.TIMED_OUT)
    ]
    assert desk.ringing() == {"bob": "c1"}
    assert desk.agent("ann").missed_offers == 1
    desk.do(Accept(desk.offer_to("bob")))
    desk.do(CallQueued("c2", "sales"))
    assert desk.ringing() == {"ann": "c2"}
    made = desk.later(15)
    assert PresenceChanged("ann", Presence.AWAY, PresenceWhy.MISSED_OFFERS) in made
    assert desk.agent("ann").presence is Presence.AWAY
    assert desk.ringing() == {}  # bob is busy, ann paused: c2 waits
    desk.do(SetPresence("ann", Presence.AVAILABLE))
    assert desk.agent("ann").missed_offers == 0
    assert desk.ringing() == {}  # c2 rang out on ann: not before the no-answer delay
    desk.later(5)
    assert desk.ringing() == {"ann": "c2"}


def test_an_accept_resets_the_missed_offers() -> None:
    desk = Desk()
    desk.queue(max_missed_offers=2)
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"))
    desk.later(20)
    assert desk.agent("ann").missed_offers == 1
    desk.later(5)  # the no-answer delay
    desk.do(Accept(desk.offer_to("ann")))
    assert desk.agent("ann").missed_offers == 0


# --- waiting: priority, maximum wait, overflow, abandon ---------------------------------------------------------------


def test_higher_priority_first_then_first_come_first_served() -> None:
    desk = Desk()
    desk.queue()
    desk.do(CallQueued("early", "sales"), CallQueued("late", "sales"), CallQueued("vip", "sales", priority=5))
    desk.agents("ann")
    assert desk.ringing() == {"ann": "vip"}
    desk.do(Accept(desk.offer_to("ann")))
    desk.agents("bob")
    assert desk.ringing() == {"bob": "early"}


def test_maximum_wait_overflows_to_another_queue_then_times_out_there() -> None:
    desk = Desk()
    desk.queue("any", max_wait=timedelta(seconds=30))
    desk.queue("sales", max_wait=timedelta(seconds=60), overflow_queue_id="any")
    desk.do(CallQueued("c1", "sales"))
    made = desk.later(60)
    assert made == [Overflowed("c1", "sales", "any")]
    assert desk.state.waiting["c1"].queue_id == "any"
    made = desk.later(30)
    assert made == [QueueTimedOut("c1", "any")]
    assert desk.state.waiting == {}


def test_maximum_wait_withdraws_a_ringing_offer() -> None:
    desk = Desk()
    desk.queue(max_wait=timedelta(seconds=10), ring_timeout=timedelta(seconds=20))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"))
    made = desk.later(10)
    assert [(d.offer.agent_id, d.why) for d in made if isinstance(d, OfferWithdrawn)] == [
        ("ann", WithdrawnWhy.TIMED_OUT)
    ]
    assert QueueTimedOut("c1", "sales") in made
    assert desk.agent("ann").missed_offers == 0  # the call left; ann missed nothing


def test_a_caller_who_hangs_up_withdraws_the_offers() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.RING_ALL)
    desk.agents("ann", "bob")
    desk.do(CallQueued("c1", "sales"))
    made = desk.do(CallGone("c1"))
    assert {(d.offer.agent_id, d.why) for d in made if isinstance(d, OfferWithdrawn)} == {
        ("ann", WithdrawnWhy.ABANDONED),
        ("bob", WithdrawnWhy.ABANDONED),
    }
    assert queue_stats(desk.state, "sales", desk.now).abandoned == 1


def test_a_call_for_a_queue_that_does_not_exist_is_given_back() -> None:
    desk = Desk()
    assert desk.do(CallQueued("c1", "nowhere")) == [QueueGone("c1", "nowhere")]
    assert desk.state.waiting == {}


# --- agents: wrap-up, sessions, agent-initiated calls ----------------------------------------------------------------


def test_wrap_up_then_available_by_timer_or_by_the_agent() -> None:
    desk = Desk()
    desk.queue(wrap_up=timedelta(seconds=30))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"), Accept("offer_1"))
    assert desk.agent("ann").presence is Presence.BUSY
    desk.do(CallGone("c1"), CallQueued("c2", "sales"))
    assert desk.agent("ann").presence is Presence.WRAP_UP and desk.ringing() == {}
    assert next_deadline(desk.state) == desk.now + 30 * S
    desk.later(30)
    assert desk.agent("ann").presence is Presence.AVAILABLE and desk.ringing() == {"ann": "c2"}
    desk.do(Accept(desk.offer_to("ann")), CallGone("c2"))
    desk.do(EndWrapUp("ann"))
    assert desk.agent("ann").presence is Presence.AVAILABLE
    assert desk.agent("ann").calls_handled == 2


def test_a_dropped_session_makes_the_agent_offline_and_requeues_its_offer() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LINEAR)
    desk.agents("ann", "bob")
    desk.do(CallQueued("c1", "sales"))
    made = desk.do(SetPresence("ann", Presence.OFFLINE, PresenceWhy.SESSION_ENDED))
    assert [(d.offer.agent_id, d.why) for d in made if isinstance(d, OfferWithdrawn)] == [
        ("ann", WithdrawnWhy.AGENT_OFFLINE)
    ]
    assert PresenceChanged("ann", Presence.OFFLINE, PresenceWhy.SESSION_ENDED) in made
    assert desk.ringing() == {"bob": "c1"}


def test_the_agents_of_a_process_that_is_gone_go_offline_and_their_offers_pass_on() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.LONGEST_IDLE)
    for agent_id, instance in (("ghost", "replica-a"), ("ann", "replica-b"), ("bob", "replica-a")):
        desk.do(PutAgent(agent_id, queues={"sales": 0}), LogIn(agent_id, instance))
        desk.do(SetPresence(agent_id, Presence.AVAILABLE))
        desk.later(3600)  # ghost free longest: LONGEST_IDLE rings it first
    desk.do(CallQueued("c1", "sales"))
    desk.do(Accept(desk.offer_to("ghost")), CallQueued("c2", "sales"))
    assert desk.ringing() == {"ann": "c2"}
    desk.do(Decline(desk.offer_to("ann")))
    assert desk.ringing() == {"bob": "c2"}
    made = desk.do(SessionsGone(frozenset({"replica-a"})))
    assert PresenceChanged("bob", Presence.OFFLINE, PresenceWhy.SESSION_ENDED) in made
    assert desk.agent("bob").presence is Presence.OFFLINE and desk.ringing() == {}
    assert desk.agent("ann").presence is Presence.AVAILABLE  # replica-b is alive
    assert desk.agent("ghost").presence is Presence.BUSY and desk.agent("ghost").after_call is Presence.OFFLINE
    desk.do(CallGone("c1"))
    assert desk.agent("ghost").presence is Presence.OFFLINE


def test_signing_in_again_during_a_call_keeps_the_agent_signed_in_after_it() -> None:
    # The page reloaded mid-call: its old session's close asked for OFFLINE after the call; the new one undoes that.
    desk = Desk()
    desk.queue(wrap_up=timedelta(seconds=30))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"), Accept("offer_1"))
    desk.do(SetPresence("ann", Presence.OFFLINE, PresenceWhy.SESSION_ENDED), LogIn("ann", "replica-a"))
    desk.do(CallGone("c1"))
    assert desk.agent("ann").presence is Presence.WRAP_UP  # wraps up, as any signed-in agent after a call


def test_away_asked_for_during_a_call_applies_after_it() -> None:
    desk = Desk()
    desk.queue()
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"), Accept("offer_1"), SetPresence("ann", Presence.AWAY))
    assert desk.agent("ann").presence is Presence.BUSY
    desk.do(CallGone("c1"), CallQueued("c2", "sales"))
    assert desk.agent("ann").presence is Presence.AWAY and desk.ringing() == {}


def test_an_agent_initiated_call_makes_the_agent_busy_and_returns_it_to_its_presence() -> None:
    desk = Desk()
    desk.queue()
    desk.agents("ann")
    desk.do(SetPresence("ann", Presence.AWAY), AgentCallStarted("ann", "cb1"), CallQueued("c1", "sales"))
    assert desk.agent("ann").presence is Presence.BUSY and desk.ringing() == {}
    desk.do(CallGone("cb1"))
    assert desk.agent("ann").presence is Presence.AWAY
    assert desk.agent("ann").calls_handled == 1


def test_a_call_back_that_never_connected_leaves_the_agent_as_it_was() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.FEWEST_CALLS, wrap_up=timedelta(seconds=30))
    desk.agents("ann")
    before = desk.agent("ann")
    desk.later(60)
    desk.do(AgentCallStarted("ann", "cb1"))
    desk.later(5)
    desk.do(CallGone("cb1", answered=False))  # refused by the platform, or the customer did not pick up
    after = desk.agent("ann")
    assert after.presence is Presence.AVAILABLE
    assert (after.calls_handled, after.last_call_ended_at, after.idle_since) == (0, None, before.idle_since)


def test_a_deleted_queue_takes_its_figures_and_round_robin_memory_with_it() -> None:
    desk = Desk()
    desk.queue(strategy=Strategy.ROUND_ROBIN)
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"), Accept("offer_1"), CallGone("c1"), DeleteQueue("sales"))
    assert "sales" not in desk.state.counters and "sales" not in desk.state.last_offered
    desk.queue()
    assert queue_stats(desk.state, "sales", desk.now).offered == 0


def test_the_number_of_queues_and_agents_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router, "MAX_QUEUES", 2)
    monkeypatch.setattr(router, "MAX_AGENTS", 2)
    desk = Desk()
    desk.queue("a")
    desk.queue("b")
    desk.queue("a", name="renamed")  # replacing one is not adding one
    with pytest.raises(RoutingRefused) as refused:
        desk.queue("c")
    assert refused.value.code == "too_many_queues"
    desk.do(PutAgent("ann"), PutAgent("bob"), PutAgent("ann", name="Ann"))
    with pytest.raises(RoutingRefused) as refused:
        desk.do(PutAgent("cat"))
    assert refused.value.code == "too_many_agents"
    desk.do(DeleteAgent("bob"), PutAgent("cat"))
    assert set(desk.state.agents) == {"ann", "cat"}


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ([Accept("offer_404")], "offer_gone"),
        ([SetPresence("ghost", Presence.AVAILABLE)], "unknown_agent"),
        ([SetPresence("ann", Presence.BUSY)], "presence_refused"),
        ([EndWrapUp("ann")], "not_wrapping_up"),
        ([DeleteQueue("nowhere")], "unknown_queue"),
        ([CallQueued("c1", "sales"), DeleteQueue("sales")], "queue_in_use"),
        ([CallQueued("c1", "sales"), Accept("offer_1"), DeleteAgent("ann")], "agent_busy"),
        ([CallQueued("c1", "sales"), AgentCallStarted("ann", "cb")], "offer_ringing"),
        ([CallQueued("c1", "sales"), CallQueued("c1", "sales")], "call_already_routed"),
        ([PutQueue(QueueConfig("bad", ring_timeout=timedelta(0)))], "invalid_queue"),
        ([PutAgent("neg", queues={"sales": -1})], "invalid_agent"),
        ([PutQueue(QueueConfig("vip", overflow_queue_id="nowhere"))], "unknown_overflow_queue"),
        ([PutQueue(QueueConfig("vip", overflow_queue_id="sales")), DeleteQueue("sales")], "queue_in_use"),
    ],
)
def test_refused_commands_change_nothing(events: list[Event], code: str) -> None:
    desk = Desk()
    desk.queue()
    desk.agents("ann")
    *setup, last = events
    desk.do(*setup)
    before = desk.state
    with pytest.raises(RoutingRefused) as refused:
        desk.do(last)
    assert refused.value.code == code
    assert desk.state == before


def test_queue_stats() -> None:
    desk = Desk()
    desk.queue(service_level=timedelta(seconds=20), max_wait=timedelta(seconds=100))
    desk.agents("ann")
    desk.do(CallQueued("c1", "sales"), CallQueued("c2", "sales"), CallQueued("c3", "sales"))
    desk.later(10)
    desk.do(Accept(desk.offer_to("ann")))  # c1 answered after 10 s
    desk.later(20)
    desk.do(CallGone("c2"))  # abandoned
    stats = queue_stats(desk.state, "sales", desk.now)
    assert (stats.waiting, stats.longest_wait, stats.agents_available, stats.agents_busy) == (1, 30 * S, 0, 1)
    assert (stats.offered, stats.answered, stats.abandoned, stats.overflowed) == (3, 1, 1, 0)
    assert stats.average_wait == 10 * S
    assert stats.service_level == 0.5


# --- the router against a reference model ---------------------------------------------------------------------------


AGENT_IDS = ("a0", "a1", "a2", "a3")
QUEUES = {  # in the order they are put: q1 overflows into q2
    "q2": QueueConfig("q2", Strategy.RING_ALL, name="Anyone", hold_audio=HoldAudio(tone_hz=440), ring_timeout=10 * S),
    "q1": QueueConfig(
        "q1",
        Strategy.LONGEST_IDLE,
        required_skills={"es": 1},
        ring_timeout=10 * S,
        max_wait=60 * S,
        wrap_up=5 * S,
        max_missed_offers=2,
        overflow_queue_id="q2",
        decline_delay=5 * S,
        no_answer_delay=3 * S,
    ),
}


class Model:
    """What a reader of the rules expects, kept the simple way: presence per agent, calls waiting or with whom,
    offers open with their deadlines, missed offers in a row."""

    def __init__(self) -> None:
        self.presence = dict.fromkeys(AGENT_IDS, Presence.OFFLINE)
        self.after_call: dict[str, Presence | None] = dict.fromkeys(AGENT_IDS, None)
        self.missed = dict.fromkeys(AGENT_IDS, 0)
        self.wrap_up_until: dict[str, datetime] = {}
        self.waiting: dict[str, str] = {}  # call → queue
        self.entered: dict[str, datetime] = {}
        self.arrived: dict[str, datetime] = {}
        self.with_agent: dict[str, tuple[str, str]] = {}  # call → (agent, queue)
        self.offers: dict[str, tuple[str, str, datetime]] = {}  # offer → (agent, call, deadline)
        # (call, agent) → when the call may ring the agent again after a decline or a ring-out
        self.not_before: dict[tuple[str, str], datetime] = {}


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.desk = Desk()
        self.model = Model()
        self.calls = 0
        for config in QUEUES.values():
            self.desk.do(PutQueue(config))
        self.members: dict[str, Agent] = {}

    def _do(self, event: Event) -> list[Decision]:
        made = self.desk.do(event)
        model = self.model
        for decision in made:
            if isinstance(decision, OfferMade):
                offer = decision.offer
                model.offers[offer.offer_id] = (offer.agent_id, offer.call_id, offer.expires_at)
            elif isinstance(decision, OfferWithdrawn):
                assert model.offers.pop(decision.offer.offer_id, None) is not None, "withdrew an offer never made"
        return made

    @initialize(
        profiles=st.lists(
            st.tuples(st.dictionaries(st.sampled_from(["q1", "q2"]), st.integers(0, 2), min_size=1), st.booleans()),
            min_size=len(AGENT_IDS),
            max_size=len(AGENT_IDS),
        )
    )
    def sign_in_agents(self, profiles: list[tuple[dict[str, int], bool]]) -> None:
        for agent, (queues, spanish) in zip(AGENT_IDS, profiles, strict=True):
            self._do(PutAgent(agent, skills={"es": 2} if spanish else {}, queues=queues, name=agent.upper()))
            self._do(LogIn(agent))
            self.model.presence[agent] = Presence.AWAY
            self.members[agent] = self.desk.agent(agent)

    @rule(data=st.data(), wanted=st.sampled_from([Presence.AVAILABLE] * 4 + [Presence.AWAY, Presence.OFFLINE]))
    def set_presence(self, data: st.DataObject, wanted: Presence) -> None:
        agent = data.draw(st.sampled_from(sorted(self.members)))
        model = self.model
        self._do(SetPresence(agent, wanted))
        current = model.presence[agent]
        if current is Presence.BUSY:
            model.after_call[agent] = None if wanted is Presence.AVAILABLE else wanted
        else:
            model.presence[agent] = wanted
            model.after_call[agent] = None
            model.wrap_up_until.pop(agent, None)
            if wanted is not current and wanted in (Presence.AVAILABLE, Presence.OFFLINE):
                model.missed[agent] = 0

    @rule(queue=st.sampled_from(["q1", "q2"]), priority=st.integers(0, 2))
    def call_arrives(self, queue: str, priority: int) -> None:
        self.calls += 1
        call = f"c{self.calls}"
        expected = self._strategy_choice(queue)
        made = self._do(CallQueued(call, queue, priority))
        # Only the new call can take a free agent (any other waiting call would have taken it already).
        assert sorted(offers_in(made)) == [(agent, call) for agent in expected], QUEUES[queue].strategy
        self.model.waiting[call] = queue
        self.model.entered[call] = self.model.arrived[call] = self.desk.now

    def _strategy_choice(self, queue_id: str) -> list[str]:
        """Whom the queue's strategy must offer a new call, worked out from the rules as the README states them:
        the free eligible agents of the lowest penalty tier; LONGEST_IDLE the one free longest (then by id),
        RING_ALL all of them."""
        state, queue = self.desk.state, QUEUES[queue_id]
        holding = {o.agent_id for o in state.offers.values()}
        free = [
            a
            for a in state.agents.values()
            if a.presence is Presence.AVAILABLE
            and a.agent_id not in holding
            and queue_id in a.queues
            and all(a.skills.get(skill, -1) >= level for skill, level in queue.required_skills.items())
        ]
        if not free:
            return []
        lowest = min(a.queues[queue_id] for a in free)
        tier = sorted((a for a in free if a.queues[queue_id] == lowest), key=lambda a: a.agent_id)
        if queue.strategy is Strategy.RING_ALL:
            return [a.agent_id for a in tier]
        assert queue.strategy is Strategy.LONGEST_IDLE
        now = self.desk.now

        def idle(agent: Agent) -> timedelta:
            return now - agent.idle_since if agent.idle_since is not None else timedelta(0)

        longest = max(idle(a) for a in tier)
        return [next(a.agent_id for a in tier if idle(a) == longest)]

    @precondition(lambda self: bool(self.model.waiting or self.model.with_agent))
    @rule(data=st.data())
    def call_ends(self, data: st.DataObject) -> None:
        model = self.model
        call = data.draw(st.sampled_from(sorted({*model.waiting, *model.with_agent})))
        made = self._do(CallGone(call))
        if call in model.waiting:
            del model.waiting[call]
            assert not [o for o in model.offers.values() if o[1] == call], "an abandoned call kept an offer"
            assert all(d.why is WithdrawnWhy.ABANDONED for d in made if isinstance(d, OfferWithdrawn))
        else:
            agent, queue = model.with_agent.pop(call)
            then = model.after_call[agent]
            if QUEUES[queue].wrap_up and then is not Presence.OFFLINE:
                model.presence[agent] = Presence.WRAP_UP
                model.wrap_up_until[agent] = self.desk.now + QUEUES[queue].wrap_up
            else:
                model.presence[agent] = then or Presence.AVAILABLE
                model.after_call[agent] = None

    @precondition(lambda self: bool(self.model.offers))
    @rule(data=st.data(), accept=st.booleans())
    def answer_offer(self, data: st.DataObject, accept: bool) -> None:
        model = self.model
        offer_id = data.draw(st.sampled_from(sorted(model.offers)))
        agent, call, _ = model.offers.pop(offer_id)
        if not accept:
            self._do(Decline(offer_id))
            model.not_before[(call, agent)] = self.desk.now + QUEUES[model.waiting[call]].decline_delay
            return
        made = self._do(Accept(offer_id))
        queue = model.waiting.pop(call)
        assert [d for d in made if isinstance(d, Assigned)] == [
            Assigned(call, agent, queue, offer_id, self.desk.now - model.arrived[call])
        ]
        assert not [o for o in model.offers.values() if o[1] == call], "the call still rings elsewhere"
        model.with_agent[call] = (agent, queue)
        model.presence[agent] = Presence.BUSY
        model.missed[agent] = 0

    @rule(offer=st.sampled_from(["offer_1", "offer_999"]))
    def accept_a_stale_offer(self, offer: str) -> None:
        if offer in self.model.offers:
            return
        before = self.desk.state
        with pytest.raises(RoutingRefused):
            self.desk.do(Accept(offer))
        assert self.desk.state == before

    @precondition(lambda self: any(p is Presence.WRAP_UP for p in self.model.presence.values()))
    @rule(data=st.data())
    def end_wrap_up(self, data: st.DataObject) -> None:
        model = self.model
        agent = data.draw(st.sampled_from(sorted(a for a, p in model.presence.items() if p is Presence.WRAP_UP)))
        self._do(EndWrapUp(agent))
        model.presence[agent] = model.after_call[agent] or Presence.AVAILABLE
        model.after_call[agent] = None
        model.wrap_up_until.pop(agent)

    @rule(seconds=st.sampled_from([0.5, 3, 5, 10, 30, 61]))
    def time_passes(self, seconds: float) -> None:
        """The service wakes at every deadline: step there, the model firing its own timers; then at the end."""
        target = self.desk.now + timedelta(seconds=seconds)
        # Catching up in one step ends where waking at every deadline does.
        at_once = step(self.desk.state, Tick(), target).state
        while (due := next_deadline(self.desk.state)) is not None and due <= target:
            self._tick(due)
        self._tick(target)
        assert self.desk.state == at_once

    def _tick(self, now: datetime) -> None:
        model = self.model
        expired = {o: v for o, v in model.offers.items() if v[2] <= now}
        over = {
            c
            for c, q in model.waiting.items()
            if (wait := QUEUES[q].max_wait) is not None and model.entered[c] + wait <= now
        }
        self.desk.now = now
        made = self._do(Tick())
        for offer_id, (agent, call, deadline) in expired.items():  # ring timeouts fire first
            assert offer_id not in model.offers, "an offer outlived its ring timeout"
            model.not_before[(call, agent)] = deadline + QUEUES[model.waiting[call]].no_answer_delay
            model.missed[agent] += 1
            limit = QUEUES[model.waiting[call]].max_missed_offers
            if limit and model.missed[agent] >= limit:
                model.presence[agent] = Presence.AWAY
        for call in over:
            queue = model.waiting.pop(call)
            if queue == "q1":  # overflows to q2, which has no maximum wait
                model.not_before = {k: v for k, v in model.not_before.items() if k[0] != call}  # a new queue
                model.waiting[call] = "q2"
                model.entered[call] = now
                assert Overflowed(call, "q1", "q2") in made
            else:
                assert QueueTimedOut(call, queue) in made
        for agent, until in list(model.wrap_up_until.items()):
            if until <= now:
                del model.wrap_up_until[agent]
                model.presence[agent] = model.after_call[agent] or Presence.AVAILABLE
                model.after_call[agent] = None

    # --- what must hold after every step ---

    @invariant()
    def the_state_survives_the_store(self) -> None:
        state = self.desk.state
        assert codec.decode(json.loads(json.dumps(codec.encode(state)))) == state

    @invariant()
    def presence_agrees_with_the_model(self) -> None:
        for agent in self.members:
            assert self.desk.agent(agent).presence is self.model.presence[agent], agent

    @invariant()
    def calls_agree_with_the_model(self) -> None:
        state = self.desk.state
        assert {c: w.queue_id for c, w in state.waiting.items()} == self.model.waiting
        assert {c: (a.agent_id, a.queue_id) for c, a in state.assigned.items()} == self.model.with_agent
        assert set(state.offers) == set(self.model.offers)

    @invariant()
    def no_call_offered_twice_and_no_agent_given_two_calls(self) -> None:
        state = self.desk.state
        holders = [o.agent_id for o in state.offers.values()]
        assert len(holders) == len(set(holders)), "an agent holds two offers"
        for call in state.waiting.values():
            ringing = [o for o in state.offers.values() if o.call_id == call.call_id]
            if state.queues[call.queue_id].strategy is not Strategy.RING_ALL:
                assert len(ringing) <= 1, "a call rings two agents outside RING_ALL"
        busy = [a.agent_id for a in state.assigned.values()]
        assert len(busy) == len(set(busy)), "an agent has two calls"
        for offer in state.offers.values():
            agent = state.agents[offer.agent_id]
            assert agent.presence is Presence.AVAILABLE, "an offer rings an agent who is not available"
            assert offer.call_id in state.waiting

    @invariant()
    def no_waiting_caller_starves_while_an_eligible_agent_is_free(self) -> None:
        """...except an agent who declined the call or let it ring out, for the queue's delay."""
        state = self.desk.state
        holding = {o.agent_id for o in state.offers.values()}
        free = [a for a in state.agents.values() if a.presence is Presence.AVAILABLE and a.agent_id not in holding]
        for call in state.waiting.values():
            if any(o.call_id == call.call_id for o in state.offers.values()):
                continue
            queue = state.queues[call.queue_id]
            idle = [
                a.agent_id
                for a in free
                if queue.queue_id in a.queues
                and all(a.skills.get(s, -1) >= level for s, level in queue.required_skills.items())
                and self.model.not_before.get((call.call_id, a.agent_id), T0) <= self.desk.now
            ]
            assert not idle, f"{call.call_id} waits unoffered while {idle} are free"


RouterMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_router_against_the_reference_model = RouterMachine.TestCase


def test_a_state_from_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        codec.decode({**codec.encode(EMPTY), "format": 99})
