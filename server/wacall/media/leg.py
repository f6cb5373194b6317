"""One WebRTC audio leg (aiortc): the WhatsApp leg, an agent's leg, or a simulated phone.

Built for the platform's media facts: no STUN/TURN by default (ICE-2: the default STUN server stalls gathering
where there is no Internet), Opus only on the WhatsApp leg (SDP-4), a single sendrecv audio transceiver (SDP-8),
our offer trimmed to the sha-256 fingerprint (SDP-1), audio flowing from the first moment (MEDIA-1), a consumer on
every remote track (MEDIA-4), and incoming frames handed on the moment they are complete (`wacall.media.jitter`).
`close()` releases the peer connection, its tasks and sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from wacall.media.jitter import hand_on_complete_frames
from wacall.media.sdp import only_sha256_fingerprint
from wacall.media.tracks import AudioSource, FrameHandler, PacedAudioTrack, TrackConsumer

log = logging.getLogger(__name__)


class AudioLeg:
    def __init__(
        self,
        *,
        name: str,
        source: AudioSource | None = None,
        handlers: Sequence[FrameHandler] = (),
        ice_servers: Sequence[RTCIceServer] = (),
        opus_only: bool = True,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.outgoing = PacedAudioTrack(source)
        self.handlers = list(handlers)
        self.consumer: TrackConsumer | None = None
        self.remote_track = asyncio.get_running_loop().create_future()
        self._opus_only = opus_only
        self._on_state = on_state
        self.closed = False

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio" or self.consumer is not None:
                return
            self.consumer = TrackConsumer(track, *self.handlers)
            if not self.remote_track.done():
                self.remote_track.set_result(track)

        @self.pc.on("connectionstatechange")
        async def on_state_change() -> None:
            log.info("%s leg: connection %s", self.name, self.pc.connectionState)
            if self._on_state is not None:
                self._on_state(self.pc.connectionState)

    def _prefer_codecs(self) -> None:
        if not self._opus_only:
            return
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        for transceiver in self.pc.getTransceivers():
            transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() == "audio/opus"])

    async def create_offer(self) -> str:
        """Our offer (we are the offerer and ICE-controlling, as the platform expects of us)."""
        transceiver = self.pc.addTransceiver("audio", direction="sendrecv")
        transceiver.sender.replaceTrack(self.outgoing)
        hand_on_complete_frames(transceiver.receiver)
        self._prefer_codecs()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return only_sha256_fingerprint(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def accept_offer(self, sdp: str) -> str:
        """Answer a remote offer (a simulated phone, or an agent's browser)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                transceiver.direction = "sendrecv"
                transceiver.sender.replaceTrack(self.outgoing)
                hand_on_complete_frames(transceiver.receiver)
        self._prefer_codecs()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return only_sha256_fingerprint(self.pc.localDescription.sdp)

    def set_source(self, source: AudioSource) -> None:
        self.outgoing.set_source(source)

    @property
    def ice_controlling(self) -> bool:
        transports = [t.sender.transport for t in self.pc.getTransceivers() if t.sender.transport]
        return (
            bool(transports)
            and transports[0].transport.iceGatherer is not None
            and transports[0].transport._connection.ice_controlling
        )

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # aiortc starts a transceiver's RTP/RTCP tasks when DTLS completes; closing in the middle of that
        # handshake lets them start after close() stopped everything, and they then run forever. Let a handshake
        # in progress finish (briefly) first, and stop the transceivers again afterwards.
        for _ in range(100):
            if self.pc.connectionState != "connecting":
                break
            await asyncio.sleep(0.02)
        if self.consumer is not None:
            await self.consumer.stop()
        self.outgoing.stop()
        await self.pc.close()
        await asyncio.sleep(0)
        for transceiver in self.pc.getTransceivers():
            await transceiver.sender.stop()
            await transceiver.receiver.stop()
