"""SIP message parse + serialise throughput (`wacall.sip.message`) against same-run baselines.

Run: `.venv/bin/python bench/sip_parse.py` (`--quick` for a smoke run). One process, one core. Each target parses
a typical INVITE from a PBX (with its SDP body) and serialises it back, in interleaved rounds so machine drift hits
every target alike:

- `wacall.sip parse+serialise`: `parse_message` (the strict parser: every mandatory header read and checked) then
  `serialize`;
- `wacall.sip frame+serialise`: the same through `StreamFramer.feed`, as a TCP/TLS connection reads it;
- `email.parser + as_bytes`: the standard library's RFC 5322 parser, the usual "just use email" shortcut;
- `bytes.split (bare)`: split the header block into lines and each line at its colon, join them back: a floor for
  any parser that looks at every header.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import platform
import statistics
import time
from collections.abc import Callable

from wacall.sip.message import StreamFramer, parse_message

SDP = (
    b"v=0\r\n"
    b"o=pbx 2890844526 2890844526 IN IP4 192.0.2.4\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:+34612345678@wacall.example.com:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Contact Centre" <sip:+447911123456@pbx.example.com>;tag=1928301774\r\n'
    b"To: <sip:+34612345678@wacall.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pbx.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:pbx@192.0.2.4:5060>\r\n"
    b"P-Asserted-Identity: <sip:+447911123456@pbx.example.com>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: PBX 1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def wacall_parse() -> bytes:
    return parse_message(INVITE).serialize()


_FRAMER = StreamFramer()


def wacall_frame() -> bytes:
    (message,) = _FRAMER.feed(INVITE)
    return message.serialize()


_EMAIL = email.parser.BytesParser(policy=email.policy.compat32)


def email_parse() -> bytes:
    start, _, rest = INVITE.partition(b"\r\n")
    message = _EMAIL.parsebytes(rest)
    return start + b"\r\n" + message.as_bytes()


def bare_split() -> bytes:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = [line.partition(b":") for line in lines[1:]]
    return b"\r\n".join([lines[0], *(name + b": " + value.strip() for name, _, value in fields)]) + b"\r\n\r\n" + body


TARGETS: dict[str, Callable[[], bytes]] = {
    "wacall.sip parse+serialise": wacall_parse,
    "wacall.sip frame+serialise": wacall_frame,
    "email.parser + as_bytes": email_parse,
    "bytes.split (bare)": bare_split,
}


def rate(target: Callable[[], bytes], seconds: float) -> float:
    """Messages per second over about `seconds`."""
    count = 0
    batch = 200
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            target()
        count += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a fraction of a second")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per target per round")
    args = parser.parse_args()
    rounds, seconds = (1, 0.05) if args.quick else (args.rounds, args.seconds)
    for target in TARGETS.values():  # the same bytes come back (whitespace aside): each does the whole job
        assert b"a=sendrecv" in target() and b"CSeq: 314159 INVITE" in target()
    print(f"python {platform.python_version()} on {platform.machine()}; INVITE of {len(INVITE)} bytes")
    results: dict[str, list[float]] = {name: [] for name in TARGETS}
    for _ in range(rounds):
        for name, target in TARGETS.items():
            results[name].append(rate(target, seconds))
    ours = statistics.median(results["wacall.sip parse+serialise"])
    print(f"{'target':32} {'msgs/s (median)':>16} {'rounds min-max':>22} {'wacall / this':>14}")
    for name, rates in results.items():
        median = statistics.median(rates)
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"{name:32} {median:16,.0f} {spread:>22} {ours / median:13.2f}x")


if __name__ == "__main__":
    main()
