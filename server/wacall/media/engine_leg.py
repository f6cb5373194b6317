"""A platform leg whose media lives in rtpengine: the WhatsApp user bridged to a WebRTC peer with no audio through
this process.

One rtpengine call holds both parties: the business peer (tag `business`, who offers) and the WhatsApp user (tag
`whatsapp`). Placing a call: the peer's offer → ng `offer` toward WebRTC → our offer to the platform; the platform's
answer (its session-level `a=ice-lite` copied into the media section, which rtpengine 10.5 only reads there) → ng
`answer` toward the peer → the peer's answer. A WebRTC peer (`WEBRTC_PEER`, the `webrtc` bridge) has its packets
relayed without decoding; a plain-RTP peer (a PBX: `PLAIN_RTP_PEER`, or `PLAIN_RTP_PEER_TRANSCODED` when it offers
no Opus and rtpengine transcodes G.711↔Opus) gets RTP/AVP without the WebRTC-only attributes.

What the leg knows of the audio comes from rtpengine's `query` counters, polled: packets from the user drive the
no-audio watchdog as frames do for an in-process leg, and a packet counts as audible when the packets of its poll
interval average more than `AUDIBLE_PACKET_BYTES` (Opus packs a 20 ms frame of silence into a few bytes: measured
here, about 24 bytes a packet for silence against over 300 for a tone). The engine does not decode, so it reports no
level. `close` deletes the engine's call on every path, and unpins it from its engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from wacall.media.counters import MediaCounters
from wacall.media.rtpengine import (
    PLAIN_RTP_OFFER_TOWARD_WEBRTC_TRANSCODED,
    TOWARD_PLAIN_RTP,
    TOWARD_WEBRTC,
    CallCounters,
    EngineError,
    EnginePool,
    EngineProtocolError,
    EngineTimeout,
    Flags,
    NgClient,
)
from wacall.media.sdp import ice_lite_in_media_sections, without_webrtc_attributes
from wacall.media.tracks import AudioSource, FrameHandler, Unsubscribe

log = logging.getLogger(__name__)

BUSINESS_TAG = "business"
WHATSAPP_TAG = "whatsapp"
POLL_INTERVAL = 0.5
AUDIBLE_PACKET_BYTES = 48


class MediaNotInProcess(RuntimeError):
    """Audio was asked of a leg whose media lives in the engine: this process neither hears nor plays it."""


class EngineBridgeUnavailable(Exception):
    """The media engine cannot carry the call (none answers, or it refused the SDP): the call is not placed."""


@dataclass(frozen=True, slots=True)
class PeerMedia:
    """How the engine faces the business peer: the flags of the offer (toward the user's WebRTC leg), those of the
    answer (toward the peer), and whether the peer speaks plain RTP (WebRTC-only attributes stripped from its
    answer: a PBX may choke on them, and rtpengine 10.5 leaves them in)."""

    offer_flags: Flags
    answer_flags: Flags
    plain_rtp: bool = False


WEBRTC_PEER = PeerMedia(TOWARD_WEBRTC, TOWARD_WEBRTC)
PLAIN_RTP_PEER = PeerMedia(TOWARD_WEBRTC, TOWARD_PLAIN_RTP, plain_rtp=True)
# "always transcode" keeps the PBX's RFC 4733 telephone-event on its side when the WebRTC side takes none (the
# simulator's aiortc phone does not): measured with rtpengine 10.5, without it the answer to the PBX drops it.
PLAIN_RTP_PEER_TRANSCODED = PeerMedia(
    {**PLAIN_RTP_OFFER_TOWARD_WEBRTC_TRANSCODED, "flags": ["always transcode"]}, TOWARD_PLAIN_RTP, plain_rtp=True
)


@dataclass(slots=True)
class _Tally:
    packets_from_user: int = 0
    bytes_from_user: int = 0
    packets_to_user: int = 0
    audible_from_user: int = 0


class EngineBridgeLeg:
    """The platform leg of a call bridged in rtpengine to the business peer whose offer is `peer_offer`.

    `peer_answer()` is the SDP answer for that peer, once the platform's answer went through the engine."""

    def __init__(
        self, pool: EnginePool[NgClient], engine_call_id: str, peer_offer: str, peer: PeerMedia = WEBRTC_PEER
    ) -> None:
        self.engine_call_id = engine_call_id
        self.peer = peer
        self._pool = pool
        self._peer_offer = peer_offer
        self._engine: NgClient | None = None
        self._peer_answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tally = _Tally()
        self._heard = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    def _pinned(self) -> NgClient:
        if self._engine is None:
            self._engine = self._pool.engine_for(self.engine_call_id)
        return self._engine

    async def create_offer(self) -> str:
        engine = self._pinned()
        try:
            offer = await engine.offer(self.engine_call_id, BUSINESS_TAG, self._peer_offer, self.peer.offer_flags)
        except EngineTimeout as error:
            self._pool.mark(engine, alive=False)
            raise EngineBridgeUnavailable(f"rtpengine at {_address(engine)} does not answer: {error}") from error
        except (EngineError, EngineProtocolError) as error:
            raise EngineBridgeUnavailable(f"rtpengine at {_address(engine)}: {error}") from error
        if self._closed:
            # The call ended while the engine was making the offer: its delete may have run before the engine
            # knew the call, so delete again, and start nothing.
            await self._delete(engine)
            raise EngineBridgeUnavailable("the call ended while rtpengine was preparing it")
        self._poller = asyncio.create_task(self._poll(), name=f"wacall-engine-counters {self.engine_call_id}")
        return offer

    async def accept_offer(self, sdp: str) -> str:
        # The bridge starts from the business peer's offer; a user's call offers first and has no such peer.
        raise EngineBridgeUnavailable("an engine bridge places calls from a peer's offer; it cannot answer one")

    async def apply_answer(self, sdp: str) -> None:
        engine = self._pinned()
        answer = await engine.answer(
            self.engine_call_id, BUSINESS_TAG, WHATSAPP_TAG, ice_lite_in_media_sections(sdp), self.peer.answer_flags
        )
        if self.peer.plain_rtp:
            answer = without_webrtc_attributes(answer)
        if not self._peer_answer.done():
            self._peer_answer.set_result(answer)

    async def peer_answer(self) -> str:
        """The SDP answer for the business peer (waits for the platform's answer to pass through the engine)."""
        return await asyncio.shield(self._peer_answer)

    def peer_answer_now(self) -> str:
        """The business peer's SDP answer if it is ready, else ""."""
        if self._peer_answer.done() and self._peer_answer.exception() is None:
            return self._peer_answer.result()
        return ""

    def play(self, source: AudioSource) -> None:
        raise MediaNotInProcess("the call's media lives in rtpengine: nothing in this process reaches the user")

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        raise MediaNotInProcess("the call's media lives in rtpengine: this process does not hear the user")

    async def first_audio(self) -> bool:
        if self._closed:
            return False
        await self._heard.wait()
        return not self._closed

    def counters(self) -> MediaCounters:
        tally = self._tally
        return MediaCounters(
            frames_sent=tally.packets_to_user,
            frames_received=tally.packets_from_user,
            audible_frames_received=tally.audible_from_user,
        )

    def _count(self, counters: CallCounters) -> None:
        tally = self._tally
        packets = counters.rtp_packets_from(WHATSAPP_TAG)
        received = counters.rtp_bytes_from(WHATSAPP_TAG)
        new_packets, new_bytes = packets - tally.packets_from_user, received - tally.bytes_from_user
        if new_packets > 0 and new_bytes / new_packets > AUDIBLE_PACKET_BYTES:
            tally.audible_from_user += new_packets
            self._heard.set()
        tally.packets_from_user, tally.bytes_from_user = max(packets, tally.packets_from_user), received
        # What the engine received from the peer is what it relays to the user.
        tally.packets_to_user = max(counters.rtp_packets_from(BUSINESS_TAG), tally.packets_to_user)

    async def _query(self) -> None:
        engine = self._pinned()
        self._count(await engine.query(self.engine_call_id))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self._query()
            except (EngineTimeout, EngineError, EngineProtocolError) as error:
                # The watchdog sees no progress while the engine is silent, and ends the call in time.
                log.info("call %s: rtpengine counters unavailable: %s", self.engine_call_id, error)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._heard.set()  # first_audio() returns False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if not self._peer_answer.done():
            self._peer_answer.set_exception(EngineBridgeUnavailable("the call ended before the platform answered"))
            self._peer_answer.exception()  # retrieved here: nobody may be waiting
        engine = self._engine
        if engine is None:
            return
        # The final counters, when the engine gives them; the delete runs whatever the query did.
        with contextlib.suppress(EngineError, EngineTimeout, EngineProtocolError, OSError):
            await self._query()
        await self._delete(engine)

    async def _delete(self, engine: NgClient) -> None:
        try:
            await engine.delete(self.engine_call_id)
        except EngineError as error:  # a call the engine never knew, or already deleted
            log.info("call %s: rtpengine delete: %s", self.engine_call_id, error)
        except (EngineTimeout, EngineProtocolError, OSError) as error:
            log.warning("call %s: rtpengine did not confirm the delete: %s", self.engine_call_id, error)
        finally:
            self._pool.release(self.engine_call_id)


def _address(engine: NgClient) -> str:
    host, port = engine.address
    return f"{host}:{port}"
