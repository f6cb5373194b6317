"""RFC 3261 §17 transactions: every kind's timer schedule over UDP and over TCP, what reaches the TU, what is absorbed,
the ACK of a non-2xx, matching, and whole exchanges through an in-memory pair of agents (CANCEL/487 included)."""

from __future__ import annotations

import pytest
from sip_pair import Pair

from wacall.sip.message import Headers, Request, Response, parse_message, response_to
from wacall.sip.transactions import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Action,
    CancelTimer,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timer,
    TransactionUsageError,
    ack_for_failure,
    client_key,
    server_key,
)


def request(method: str = "INVITE", *, branch: str = "z9hG4bKtx1", transport: str = "UDP", seq: int = 1) -> Request:
    return Request(
        method,
        "sip:+34612345678@wacall.example.com",
        Headers(
            [
                ("Via", f"SIP/2.0/{transport} 192.0.2.4:5060;branch={branch}"),
                ("Route", "<sip:proxy.example.com;lr>"),
                ("Max-Forwards", "70"),
                ("From", "<sip:+447911123456@pbx.example.com>;tag=pbx1"),
                ("To", "<sip:+34612345678@wacall.example.com>"),
                ("Call-ID", "tx-1@pbx"),
                ("CSeq", f"{seq} {method}"),
                ("Contact", "<sip:pbx@192.0.2.4:5060>"),
            ]
        ),
    )


class Driver:
    """Runs one transaction's timers against a manual clock and logs every action with its time."""

    def __init__(self, transaction: ClientTransaction | ServerTransaction, now: float = 0.0) -> None:
        self.transaction = transaction
        self.now = now
        self.log: list[tuple[float, Action]] = []
        self.record(transaction.start(now))

    def record(self, actions: list[Action]) -> list[Action]:
        self.log.extend((self.now, action) for action in actions)
        return actions

    def run_until(self, until: float) -> None:
        while True:
            pending = self.transaction.pending_timers
            due = sorted((at, timer.value, timer) for timer, at in pending.items() if at <= until)
            if not due:
                break
            at, _, timer = due[0]
            self.now = at
            self.record(self.transaction.timer_fired(timer, at))
        self.now = until

    def receive(self, message: Request | Response, at: float) -> list[Action]:
        self.run_until(at)
        if isinstance(message, Response):
            assert isinstance(self.transaction, ClientTransaction)
            return self.record(self.transaction.response_received(message, at))
        assert isinstance(self.transaction, ServerTransaction)
        return self.record(self.transaction.request_received(message, at))

    def respond(self, response: Response, at: float) -> list[Action]:
        self.run_until(at)
        assert isinstance(self.transaction, ServerTransaction)
        return self.record(self.transaction.respond(response, at))

    def sends(self) -> list[tuple[float, str]]:
        """When something was sent, and what (method or status code)."""
        return [
            (t, a.message.method if isinstance(a.message, Request) else str(a.message.status_code))
            for t, a in self.log
            if isinstance(a, Send)
        ]

    def ends(self) -> list[tuple[float, Terminated]]:
        return [(t, a) for t, a in self.log if isinstance(a, Terminated)]

    def delivered(self) -> list[Request | Response]:
        return [a.message for _, a in self.log if isinstance(a, Deliver)]


def answer(status: int, to: Request | None = None) -> Response:
    return response_to(to or request(), status, to_tag="uas1")


# --- The tables ----------------------------------------------------------------------------------------------------


def test_every_table_leaves_terminated_alone_and_ends_only_through_terminated() -> None:
    for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER):
        assert not any(state is State.TERMINATED for state, _ in table)
        assert all(
            (effects and any(getattr(e, "name", "") in ("END", "TIME_OUT", "FAIL") for e in effects))
            for (_, _), (after, effects) in table.items()
            if after is State.TERMINATED
        )


# --- INVITE client (Figure 5) --------------------------------------------------------------------------------------


def test_an_invite_over_udp_is_retransmitted_at_t1_doubling_until_timer_b_times_out() -> None:
    driver = Driver(ClientTransaction(request(), reliable=False))
    driver.run_until(40.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]
    assert driver.transaction.state is State.TERMINATED
    assert driver.transaction.pending_timers == {}


def test_an_invite_over_tcp_is_sent_once_and_times_out_with_timer_b() -> None:
    driver = Driver(ClientTransaction(request(transport="TCP"), reliable=True))
    driver.run_until(40.0)
    assert driver.sends() == [(0.0, "INVITE")]
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]


def test_a_provisional_response_stops_invite_retransmissions_and_timer_b() -> None:
    driver = Driver(ClientTransaction(request(), reliable=False))
    driver.receive(answer(180), at=0.7)
    driver.run_until(100.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5]
    assert driver.ends() == []  # waits for the final response as long as the TU wants (it may CANCEL)
    assert driver.transaction.state is State.PROCEEDING
    assert [m.status_code for m in driver.delivered() if isinstance(m, Response)] == [180]


def test_a_failure_is_acked_by_the_transaction_and_retransmissions_are_absorbed_until_timer_d() -> None:
    invite = request()
    driver = Driver(ClientTransaction(invite, reliable=False))
    busy = answer(486, invite)
    driver.receive(busy, at=0.2)
    driver.receive(busy, at=1.0)  # our ACK was lost: the UAS sends its 486 again
    driver.run_until(60.0)
    assert driver.sends() == [(0.0, "INVITE"), (0.2, "ACK"), (1.0, "ACK")]
    assert driver.delivered() == [busy]  # the TU hears it once
    assert driver.ends() == [(32.2, Terminated())]


def test_the_ack_of_a_failure_follows_rfc_3261_17_1_1_3() -> None:
    invite = request()
    driver = Driver(ClientTransaction(invite, reliable=False))
    busy = answer(486, invite)
    ack = next(a.message for a in driver.receive(busy, at=0.1) if isinstance(a, Send))
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.headers.get_all("Via") == invite.headers.get_all("Via")[:1]  # same branch
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert ack.call_id == invite.call_id and ack.from_ == invite.from_
    assert ack.to == busy.to and ack.to.tag == "uas1"
    assert str(ack.cseq) == "1 ACK"
    assert parse_message(ack.serialize()) == ack


def test_over_tcp_a_failure_ends_the_invite_client_at_once() -> None:
    invite = request(transport="TCP")
    driver = Driver(ClientTransaction(invite, reliable=True))
    driver.receive(answer(503, invite), at=0.3)
    assert driver.sends() == [(0.0, "INVITE"), (0.3, "ACK")]
    assert driver.ends() == [(0.3, Terminated())]


def test_a_2xx_ends_the_invite_client_and_leaves_the_ack_to_the_tu() -> None:
    driver = Driver(ClientTransaction(request(), reliable=False))
    driver.receive(answer(180), at=0.1)
    ok = answer(200)
    driver.receive(ok, at=2.0)
    assert driver.sends() == [(0.0, "INVITE")]
    assert driver.delivered()[-1] == ok
    assert driver.ends() == [(2.0, Terminated())]


# --- Non-INVITE client (Figure 6) ----------------------------------------------------------------------------------


def test_a_request_over_udp_is_retransmitted_doubling_capped_at_t2_until_timer_f() -> None:
    driver = Driver(ClientTransaction(request("OPTIONS"), reliable=False))
    driver.run_until(40.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]


def test_after_a_provisional_a_request_is_retransmitted_every_t2() -> None:
    options = request("OPTIONS")
    driver = Driver(ClientTransaction(options, reliable=False))
    driver.receive(answer(100, options), at=0.2)
    driver.run_until(12.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5, 4.5, 8.5]


def test_a_request_over_tcp_is_sent_once_and_times_out_with_timer_f() -> None:
    driver = Driver(ClientTransaction(request("BYE", transport="TCP"), reliable=True))
    driver.run_until(40.0)
    assert driver.sends() == [(0.0, "BYE")]
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]


def test_a_final_response_is_delivered_once_and_timer_k_absorbs_retransmissions() -> None:
    bye = request("BYE")
    ok = answer(200, bye)
    udp = Driver(ClientTransaction(bye, reliable=False))
    udp.receive(ok, at=0.1)
    udp.receive(ok, at=2.0)
    udp.run_until(10.0)
    assert udp.delivered() == [ok]
    assert udp.ends() == [(5.1, Terminated())]  # Timer K = T4
    tcp = Driver(ClientTransaction(request("BYE", transport="TCP"), reliable=True))
    tcp.receive(ok, at=0.1)
    assert tcp.ends() == [(0.1, Terminated())]  # Timer K = 0


# --- INVITE server (Figure 7) --------------------------------------------------------------------------------------


def test_the_invite_server_sends_100_trying_after_200_ms_if_the_tu_is_silent() -> None:
    invite = request()
    driver = Driver(ServerTransaction(invite, reliable=False))
    assert driver.delivered() == [invite]
    driver.run_until(1.0)
    assert driver.sends() == [(0.2, "100")]
    trying = driver.log[-1][1]
    assert isinstance(trying, Send) and isinstance(trying.message, Response)
    assert trying.message.to.tag is None
    # A retransmitted INVITE gets the 100 again, and is not delivered twice.
    driver.receive(invite, at=1.5)
    assert driver.sends() == [(0.2, "100"), (1.5, "100")]
    assert driver.delivered() == [invite]


def test_the_invite_server_sends_no_100_when_the_tu_answers_within_200_ms() -> None:
    invite = request()
    driver = Driver(ServerTransaction(invite, reliable=False))
    driver.respond(answer(180, invite), at=0.05)
    driver.run_until(2.0)
    assert driver.sends() == [(0.05, "180")]
    driver.receive(invite, at=2.5)  # the INVITE again: the latest provisional again
    assert driver.sends() == [(0.05, "180"), (2.5, "180")]


def test_a_failure_is_retransmitted_doubling_capped_at_t2_until_timer_h() -> None:
    invite = request()
    driver = Driver(ServerTransaction(invite, reliable=False))
    driver.respond(answer(486, invite), at=0.0)
    driver.run_until(40.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]


def test_the_ack_stops_retransmissions_and_timer_i_absorbs_further_acks() -> None:
    invite = request()
    busy = answer(486, invite)
    driver = Driver(ServerTransaction(invite, reliable=False))
    driver.respond(busy, at=0.0)
    ack = ack_for_failure(invite, busy)
    assert driver.receive(ack, at=0.7) == [CancelTimer(Timer.G), CancelTimer(Timer.H), StartTimer(Timer.I, 5.7)]
    assert driver.receive(ack, at=1.0) == []
    driver.run_until(10.0)
    assert [t for t, _ in driver.sends()] == [0.0, 0.5]
    assert driver.ends() == [(5.7, Terminated())]
    assert all(not isinstance(a, Deliver) or a.message is invite for _, a in driver.log)  # the ACK stays inside


def test_over_tcp_the_invite_server_sends_a_failure_once_and_ends_at_the_ack() -> None:
    invite = request(transport="TCP")
    busy = answer(486, invite)
    driver = Driver(ServerTransaction(invite, reliable=True))
    driver.respond(busy, at=0.0)
    driver.run_until(10.0)
    assert driver.sends() == [(0.0, "486")]
    driver.receive(ack_for_failure(invite, busy), at=11.0)
    assert driver.ends() == [(11.0, Terminated())]  # Timer I = 0


def test_over_tcp_a_missing_ack_times_out_with_timer_h() -> None:
    invite = request(transport="TCP")
    driver = Driver(ServerTransaction(invite, reliable=True))
    driver.respond(answer(486, invite), at=0.0)
    driver.run_until(40.0)
    assert driver.ends() == [(32.0, Terminated(timed_out=True))]


def test_a_2xx_ends_the_invite_server_transaction() -> None:
    invite = request()
    driver = Driver(ServerTransaction(invite, reliable=False))
    driver.respond(answer(180, invite), at=0.1)
    driver.respond(answer(200, invite), at=0.5)
    assert driver.sends() == [(0.1, "180"), (0.5, "200")]
    assert driver.ends() == [(0.5, Terminated())]


def test_a_second_final_response_is_a_usage_error() -> None:
    invite = request()
    transaction = ServerTransaction(invite, reliable=False)
    transaction.start(0.0)
    transaction.respond(answer(486, invite), 0.1)
    with pytest.raises(TransactionUsageError, match="TU sends 2xx in state Completed"):
        transaction.respond(answer(200, invite), 0.2)
    with pytest.raises(TransactionUsageError, match="a response to BYE sent on a INVITE"):
        transaction.respond(answer(200, request("BYE")), 0.2)
    with pytest.raises(TransactionUsageError, match="ACK"):
        ClientTransaction(request("ACK"), reliable=False)


# --- Non-INVITE server (Figure 8) ----------------------------------------------------------------------------------


def test_the_non_invite_server_absorbs_retransmissions_until_it_has_a_response_then_repeats_it() -> None:
    bye = request("BYE")
    driver = Driver(ServerTransaction(bye, reliable=False))
    assert driver.receive(bye, at=0.5) == []  # Trying: nothing to repeat yet
    ok = answer(200, bye)
    driver.respond(ok, at=0.6)
    driver.receive(bye, at=1.0)
    driver.run_until(40.0)
    assert driver.sends() == [(0.6, "200"), (1.0, "200")]
    assert driver.delivered() == [bye]
    assert driver.ends() == [(32.6, Terminated())]  # Timer J = 64*T1


def test_over_tcp_the_non_invite_server_ends_with_its_final_response() -> None:
    bye = request("BYE", transport="TCP")
    driver = Driver(ServerTransaction(bye, reliable=True))
    driver.respond(answer(200, bye), at=0.1)
    assert driver.ends() == [(0.1, Terminated())]  # Timer J = 0


def test_a_transport_error_ends_a_transaction_as_such() -> None:
    transaction = ClientTransaction(request(), reliable=False)
    transaction.start(0.0)
    actions = transaction.transport_error(0.1)
    assert actions[-1] == Terminated(transport_error=True)
    assert transaction.state is State.TERMINATED and transaction.pending_timers == {}


# --- Matching (§17.1.3, §17.2.3) -----------------------------------------------------------------------------------


def test_responses_match_client_transactions_by_branch_and_method() -> None:
    invite = request()
    assert client_key(answer(200, invite)) == client_key(invite) == ("z9hG4bKtx1", "INVITE")
    cancel = request("CANCEL")
    assert client_key(answer(200, cancel)) == ("z9hG4bKtx1", "CANCEL") != client_key(invite)


def test_requests_match_server_transactions_by_branch_sent_by_and_method() -> None:
    invite = request()
    busy = answer(486, invite)
    ack = ack_for_failure(invite, busy)
    assert server_key(ack) == server_key(invite)  # the ACK of a failure belongs to its INVITE's transaction
    cancel = request("CANCEL")
    assert server_key(cancel) != server_key(invite)  # a CANCEL is a transaction of its own...
    assert server_key(cancel, cancelled=True) == server_key(invite)  # ...that finds the INVITE it cancels
    other_host = Request(
        "INVITE", invite.uri, invite.headers.replaced("Via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKtx1")
    )
    assert server_key(other_host) != server_key(invite)


def test_requests_without_the_magic_cookie_match_the_rfc_2543_way() -> None:
    old = request(branch="1234")
    assert server_key(old) == server_key(request(branch="1234"))
    assert server_key(old) != server_key(request(branch="1234", seq=2))


# --- Whole exchanges in memory -------------------------------------------------------------------------------------


def test_a_lost_invite_is_retransmitted_and_answered() -> None:
    pair = Pair()
    lost: list[bytes] = []

    def lose_first_invite(sender: object, data: bytes) -> bool:
        if sender is pair.uac and not lost:
            lost.append(data)
            return True
        return False

    pair.drop = lose_first_invite
    invite = request()
    pair.uac.send_request(invite, pair.now)
    pair.flush()
    assert pair.uas.received == []
    pair.advance(0.5)  # Timer A
    assert pair.uas.received == [invite]
    pair.uas.respond(invite, answer(200, invite), pair.now)
    pair.flush()
    assert [m.status_code for m in pair.uac.received if isinstance(m, Response)] == [200]
    assert pair.uac.clients == {} and pair.uas.servers == {}


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
def test_cancel_before_answer_gets_200_and_the_invite_487_then_both_sides_clean_up(reliable: bool) -> None:
    transport = "TCP" if reliable else "UDP"
    pair = Pair(reliable=reliable)
    invite = request(transport=transport)
    pair.uac.send_request(invite, pair.now)
    pair.flush()
    pair.uas.respond(invite, answer(180, invite), pair.now)
    pair.flush()
    pair.advance(1.0)
    # The caller gives up: CANCEL, same branch and CSeq number (§9.1).
    cancel = Request(
        "CANCEL",
        invite.uri,
        Headers(
            [
                ("Via", invite.headers.get_all("Via")[0]),
                *[("Route", v) for v in invite.headers.get_all("Route")],
                ("Max-Forwards", "70"),
                ("From", invite.headers.get("From") or ""),
                ("To", invite.headers.get("To") or ""),
                ("Call-ID", invite.call_id),
                ("CSeq", f"{invite.cseq.seq} CANCEL"),
            ]
        ),
    )
    pair.uac.send_request(cancel, pair.now)
    pair.flush()
    # The UAS's TU sees the CANCEL, finds the INVITE's transaction, answers both (§9.2).
    assert pair.uas.received == [invite, cancel]
    assert server_key(cancel, cancelled=True) in pair.uas.servers
    pair.uas.respond(cancel, answer(200, cancel), pair.now)
    pair.uas.respond(invite, answer(487, invite), pair.now)
    pair.flush()
    statuses = [(m.cseq.method, m.status_code) for m in pair.uac.received if isinstance(m, Response)]
    assert statuses == [("INVITE", 180), ("CANCEL", 200), ("INVITE", 487)]
    acks = [m for m in pair.uac.sent if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) == 1 and acks[0].to.tag == "uas1"
    pair.advance(100.0)
    assert pair.uac.clients == {} and pair.uas.servers == {}
    assert all(not end.timed_out for _, end in pair.uac.ended + pair.uas.ended)
    if reliable:  # nothing is ever sent twice over TCP
        assert len(pair.uas.sent) == len({id(m) for m in pair.uas.sent}) == 3


def test_a_lost_ack_is_answered_by_a_retransmitted_failure_and_a_second_ack() -> None:
    pair = Pair()
    dropped: list[bytes] = []

    def lose_first_ack(sender: object, data: bytes) -> bool:
        if sender is pair.uac and data.startswith(b"ACK ") and not dropped:
            dropped.append(data)
            return True
        return False

    pair.drop = lose_first_ack
    invite = request()
    pair.uac.send_request(invite, pair.now)
    pair.flush()
    pair.uas.respond(invite, answer(603, invite), pair.now)
    pair.flush()
    pair.advance(0.5)  # Timer G: the 603 again, and a second ACK gets through
    acks = [m for m in pair.uac.sent if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) == 2 and len(dropped) == 1
    assert [m.status_code for m in pair.uac.received if isinstance(m, Response)] == [603]  # heard once
    pair.advance(60.0)
    assert pair.uas.servers == {} and all(not end.timed_out for _, end in pair.uas.ended)
