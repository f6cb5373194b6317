"""Platform legs whose media lives in rtpengine, bridged to a plain-RTP peer (a PBX on a SIP trunk).

One rtpengine call holds both parties: the WhatsApp user (tag `whatsapp`, a WebRTC leg: ICE, DTLS-SRTP, Opus) and
the PBX (tag `business`, RTP/AVP with the trunk's codecs); rtpengine transcodes Opus↔G.711 between them. Two ways
in, both proven against rtpengine 10.5 (tests/test_engine_sip_legs.py):

- *A user's call handed to a PBX* (`accept_offer`): the platform's offer (its session-level `a=ice-lite` copied into
  the media section) → ng `offer` from the user toward plain RTP → the leg's `dial` sends that SDP to the PBX and
  returns the PBX's answer → ng `answer` toward WebRTC → our answer to the platform. The user's call is answered
  only when the PBX answers; a PBX that refuses makes `accept_offer` raise.
- *A business call whose PBX is invited at pickup* (`create_offer`, then `bridge`): our offer to the platform is
  needed before any PBX leg exists, so the business party starts as a placeholder plain-RTP offer (the trunk's
  codecs, toward a discard address) → ng `offer` toward WebRTC → our offer to the platform; its answer → ng
  `answer`. At pickup, `bridge(dial)` re-offers from the user's side with the platform's stored answer → ng `offer`
  toward plain RTP → an early-offer INVITE to the PBX → its answer → ng `answer` toward WebRTC, whose SDP is only
  compared with what the platform holds: the platform cannot be re-offered, and rtpengine keeps the WebRTC side's
  port, ICE credentials and fingerprint across the re-offer (checked on every bridge: `WebRtcSideChanged`).
  The placeholder is a real RTP source on loopback (`RtpTone`): from the platform's answer until the PBX's media
  takes over, the user hears ringback, since the platform drops a call that carries no media for 20 s. A PBX's
  early answer (a 183 with SDP, `early_answer`) goes into the engine at once, so its early media replaces the
  ringback; its final answer is applied as well. `bridge` waits (a while) for the platform's answer when the
  pickup is seen before it.

Pickup evidence, the no-audio watchdog's counters and `close` (the engine call deleted on every path) are the engine
bridge's (`EngineBridgeLeg`), which these legs extend.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType

from wacall.media.bencode import Encodable
from wacall.media.engine_leg import BUSINESS_TAG, WHATSAPP_TAG, EngineBridgeLeg, EngineBridgeUnavailable
from wacall.media.rtp_tone import RtpTone
from wacall.media.rtpengine import (
    TOWARD_PLAIN_RTP,
    TOWARD_WEBRTC,
    EngineError,
    EnginePool,
    EngineProtocolError,
    EngineTimeout,
    Flags,
    NgClient,
)
from wacall.media.sdp import ice_lite_in_media_sections, lines, with_crlf, without_webrtc_attributes

log = logging.getLogger(__name__)

Dial = Callable[[str], Awaitable[str]]
"""Sends our SDP offer to the PBX and returns the PBX's SDP answer (raises when the PBX does not answer)."""

# Static RTP payload types (RFC 3551) and the dynamic ones this leg offers a PBX.
_PAYLOADS = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "opus": (96, "opus/48000/2")}
_G711 = ("PCMU", "PCMA")
# Where the placeholder business party "is" when no ringback source stands for it: the discard port on loopback.
PLACEHOLDER_ADDRESS = ("127.0.0.1", 9)
# How long `bridge` waits for the platform's answer to reach the engine when the pickup is seen first (HOOK-2).
PLATFORM_ANSWER_WAIT = 10.0
_CONNECTION = re.compile(r"^c=IN IP[46] (\S+)", re.MULTILINE)
_AUDIO_PORT = re.compile(r"^m=audio (\d+) ", re.MULTILINE)

# What identifies the WebRTC side toward the platform: its port (from the m= line) and these attribute lines must
# survive a re-offer unchanged.
_MEDIA_PORT = re.compile(r"^m=audio \d+")
_WEBRTC_IDENTITY = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=candidate:")


class WebRtcSideChanged(EngineBridgeUnavailable):
    """Bridging the PBX would change what the platform holds (port, ICE credentials, fingerprint): the platform
    cannot be re-offered, so the call cannot be bridged."""


def _trunk_codecs(codecs: Sequence[str]) -> tuple[str, ...]:
    known = tuple(c for c in codecs if c in _PAYLOADS)
    return known or _G711


def toward_pbx(codecs: Sequence[str]) -> Flags:
    """The flags of an ng request whose SDP goes to the PBX: plain RTP, Opus transcoded to the trunk's G.711 codecs
    (in the trunk's order), Opus itself offered only if the trunk allows it."""
    allowed = _trunk_codecs(codecs)
    codec: dict[str | bytes, Encodable] = {"transcode": [c for c in allowed if c in _G711]}
    if "opus" not in allowed:
        codec["mask"] = ["opus"]
    return MappingProxyType({**TOWARD_PLAIN_RTP, "codec": codec})


# The placeholder business party offers G.711; the platform is offered Opus only, and rtpengine transcodes.
PLACEHOLDER_TOWARD_WEBRTC: Flags = MappingProxyType(
    {**TOWARD_WEBRTC, "codec": {"transcode": ["opus"], "mask": list(_G711)}}
)


def placeholder_codecs(codecs: Sequence[str]) -> list[str]:
    """The trunk's G.711 codecs in its order (PCMU when it has none): what the placeholder offers."""
    return [c for c in _trunk_codecs(codecs) if c in _G711] or ["PCMU"]


def placeholder_offer(codecs: Sequence[str], address: tuple[str, int] = PLACEHOLDER_ADDRESS) -> str:
    """A plain-RTP offer with the trunk's G.711 codecs (PCMU when it has none) at `address`."""
    g711 = placeholder_codecs(codecs)
    host, port = address
    payloads = [_PAYLOADS[c] for c in g711]
    return with_crlf(
        [
            "v=0",
            f"o=- 1 1 IN IP4 {host}",
            "s=-",
            f"c=IN IP4 {host}",
            "t=0 0",
            f"m=audio {port} RTP/AVP {' '.join(str(pt) for pt, _ in payloads)}",
            *(f"a=rtpmap:{pt} {name}" for pt, name in payloads),
            "a=ptime:20",
            "a=sendrecv",
        ]
    )


def _media_address(sdp: str) -> tuple[str, int] | None:
    """Where the audio of `sdp` goes: its connection address and audio port (None when it names no such thing)."""
    address, port = _CONNECTION.search(sdp), _AUDIO_PORT.search(sdp)
    if address is None or port is None:
        return None
    return address.group(1), int(port.group(1))


def webrtc_identity(sdp: str) -> list[str]:
    """The lines of an SDP toward the platform that it keeps from our offer: port, ICE credentials and candidates,
    the DTLS fingerprint."""
    identity = []
    for line in lines(sdp):
        if port := _MEDIA_PORT.match(line):
            identity.append(port.group())
        elif line.startswith(_WEBRTC_IDENTITY):
            identity.append(line)
    return identity


class EngineSipLeg(EngineBridgeLeg):
    """The platform leg of a call bridged in rtpengine to a PBX with `codecs` (the trunk's, in its order).

    A user's call: `accept_offer` dials the PBX through `dial` (given at construction) and answers the platform with
    the PBX's answer passed through the engine. A business call: `create_offer` and `apply_answer` set up the
    WhatsApp side alone; `bridge(dial)` invites the PBX once the user has picked up."""

    def __init__(self, pool: EnginePool[NgClient], engine_call_id: str, codecs: Sequence[str], dial: Dial) -> None:
        self.ringback = RtpTone(placeholder_codecs(codecs)[0])
        super().__init__(pool, engine_call_id, placeholder_offer(codecs, self.ringback.address))
        self.codecs = tuple(codecs)
        self._dial = dial
        self._toward_platform = ""  # our SDP the platform holds (offer or answer)
        self._platform_answer = ""  # the platform's answer to our offer, as the engine was given it
        self._platform_answered = asyncio.Event()
        self._offered_pbx = False  # the engine's offer toward the PBX is made: its (early) answers may come
        self.bridged = False
        self.early_media = False

    async def _engine_request(self, command: str, fields: Mapping[str, Encodable]) -> str:
        """One ng offer/answer; the SDP it returns. Failures become EngineBridgeUnavailable (a dead engine is taken
        out of rotation)."""
        engine = self._pinned()
        try:
            reply = await engine.request(command, {**fields, "call-id": self.engine_call_id})
        except EngineTimeout as error:
            self._pool.mark(engine, alive=False)
            raise EngineBridgeUnavailable(f"rtpengine does not answer: {error}") from error
        except (EngineError, EngineProtocolError) as error:
            raise EngineBridgeUnavailable(f"rtpengine: {error}") from error
        sdp = reply.get(b"sdp")
        if not isinstance(sdp, bytes):
            raise EngineBridgeUnavailable(f"rtpengine's {command} reply has no SDP")
        return sdp.decode(errors="replace")

    async def _started(self) -> None:
        """After the first ng request: a call that ended meanwhile is deleted again; else its counters are polled."""
        if self._closed:
            engine = self._pinned()
            await self._delete(engine)
            raise EngineBridgeUnavailable("the call ended while rtpengine was preparing it")
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name=f"wacall-engine-counters {self.engine_call_id}")

    # --- a business call: the platform first, the PBX at pickup ---------------------------------------------------

    async def create_offer(self) -> str:
        offer = await self._engine_request(
            "offer", {**PLACEHOLDER_TOWARD_WEBRTC, "from-tag": BUSINESS_TAG, "sdp": self._peer_offer}
        )
        await self._started()
        self._toward_platform = offer
        return offer

    async def apply_answer(self, sdp: str) -> None:
        """The platform's answer into the engine; ringback starts toward the user until the PBX's media comes."""
        answer = ice_lite_in_media_sections(sdp)
        toward_placeholder = await self._engine_request(
            "answer", {**TOWARD_PLAIN_RTP, "from-tag": BUSINESS_TAG, "to-tag": WHATSAPP_TAG, "sdp": answer}
        )
        self._platform_answer = answer
        self._platform_answered.set()
        engine_side = _media_address(toward_placeholder)
        if engine_side is not None and not self._closed and not self.bridged and not self.early_media:
            self.ringback.start(engine_side)

    async def bridge(self, dial: Dial, *, answer_wait: float = PLATFORM_ANSWER_WAIT) -> str:
        """Invite the PBX (the user has picked up): our offer for it through `dial`, its answer into the engine.
        Returns the PBX's answer. Waits up to `answer_wait` s for the platform's answer when the pickup came
        first. Raises what `dial` raises when the PBX does not answer, EngineBridgeUnavailable when the engine
        cannot carry it (WebRtcSideChanged if the platform's side would change)."""
        try:
            await asyncio.wait_for(self._platform_answered.wait(), answer_wait)
        except TimeoutError:
            raise EngineBridgeUnavailable(
                "the platform has not answered: there is no WhatsApp side to bridge"
            ) from None
        offer = await self._engine_request(
            "offer",
            {
                **toward_pbx(self.codecs),
                "from-tag": WHATSAPP_TAG,
                "to-tag": BUSINESS_TAG,
                "sdp": self._platform_answer,
            },
        )
        self._offered_pbx = True
        pbx_answer = await dial(without_webrtc_attributes(offer))
        await self._pbx_answered(pbx_answer)
        self.bridged = True
        return pbx_answer

    async def _pbx_answered(self, pbx_answer: str) -> None:
        toward_platform = await self._engine_request(
            "answer", {**TOWARD_WEBRTC, "from-tag": WHATSAPP_TAG, "to-tag": BUSINESS_TAG, "sdp": pbx_answer}
        )
        self.ringback.stop()  # the PBX's media reaches the user from here on
        if webrtc_identity(toward_platform) != webrtc_identity(self._toward_platform):
            raise WebRtcSideChanged("rtpengine changed the WhatsApp side when the PBX was bridged")

    async def early_answer(self, pbx_answer: str) -> None:
        """A PBX's early answer (a 183's SDP) for a business call being bridged: into the engine now, so the PBX's
        early media (its ringback, announcements) replaces ours. Ignored when nothing awaits the PBX's answer."""
        if not self._offered_pbx or self.bridged or self._closed:
            return
        await self._pbx_answered(pbx_answer)
        self.early_media = True

    async def close(self) -> None:
        self.ringback.close()
        await super().close()

    # --- a user's call: the PBX answers for the business ----------------------------------------------------------

    async def accept_offer(self, sdp: str) -> str:
        offer = await self._engine_request(
            "offer",
            {**toward_pbx(self.codecs), "from-tag": WHATSAPP_TAG, "sdp": ice_lite_in_media_sections(sdp)},
        )
        await self._started()
        pbx_answer = await self._dial(without_webrtc_attributes(offer))
        answer = await self._engine_request(
            "answer", {**TOWARD_WEBRTC, "from-tag": WHATSAPP_TAG, "to-tag": BUSINESS_TAG, "sdp": pbx_answer}
        )
        self._toward_platform = answer
        self.bridged = True
        return answer
