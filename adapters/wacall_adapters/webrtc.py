"""`webrtc`: bridge the WhatsApp leg to another WebRTC peer (a browser softphone, any WebRTC stack).

Bridge mode (default): when a media engine (rtpengine) runs, the agent's offer goes through it and both legs live
there: packets are relayed without decoding, no audio through the service (wacall.media.engine_leg). Without an
engine the service answers the agent's offer with a second aiortc leg and relays audio both ways; that works with
any peer (any codec set) and the service can measure the audio, at the price of an Opus decode and encode per
direction per call (MEDIA-2). Each direction plays from a latency-aware `QueueSource`: audio one side sends before
the other's leg connects is not kept (only the newest frame), and a backlog left by a burst is dropped, so the
bridge adds no standing delay.

Passthrough mode: the agent's own offer goes to the platform (trimmed to the sha-256 fingerprint) and only
signalling passes through the service; the platform's answer is handed back. No media CPU in the service, but the
agent must meet the platform's media rules itself (Opus, sha-256 DTLS fingerprint, one audio m-line, ICE-full and
controlling, reachable from the platform's ICE-lite candidates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField, bounded_text
from wacall.media.leg import AudioLeg
from wacall.media.sdp import only_sha256_fingerprint, peer_problems, platform_problems
from wacall.media.tracks import QueueSource
from wacall_adapters.base import CallLeg, MediaAdapter
from wacall_adapters.routes import RoutePlan, RouteSpec, ServerFiles

MAX_SDP = 64 * 1024
MAX_ICE_SERVERS = 8
MAX_URL = 4096


AGENT_MEDIA_ENDED = "the agent's media ended"


class WebRtcBridgeAdapter(MediaAdapter):
    """The call bridged to the agent's WebRTC peer in process. When the peer goes away (its tab closed or reloaded,
    its network gone: the connection closes or fails) the call is hung up, as a PBX ends a bridge whose agent leg
    hangs up: the customer is not left on the line with silence."""

    def __init__(self, *, offer_sdp: str, ice_servers: Sequence[str] = ()) -> None:
        self.offer_sdp = offer_sdp
        self.ice_servers = [RTCIceServer(urls=url) for url in ice_servers]
        self.to_user = QueueSource(max_frames=10)
        self.to_agent = QueueSource(max_frames=10)
        self.agent: AudioLeg | None = None
        self._answer = ""
        self._closing = False
        self._hangup: asyncio.Task[None] | None = None

    async def attach(self, leg: CallLeg) -> None:
        def on_state(state: str) -> None:
            if state in ("failed", "closed") and not self._closing and self._hangup is None:
                self._hangup = asyncio.ensure_future(leg.hangup(AGENT_MEDIA_ENDED))

        # The agent's codecs are its own business: do not force Opus on this leg.
        self.agent = AudioLeg(
            name="agent",
            source=self.to_agent,
            handlers=[self.to_user.push],
            ice_servers=self.ice_servers,
            opus_only=False,
            on_state=on_state,
        )
        self._answer = await self.agent.accept_offer(self.offer_sdp)
        leg.play(self.to_user)
        leg.listen(self.to_agent.push)

    def answer_sdp(self) -> str:
        return self._answer

    async def close(self) -> None:
        self._closing = True  # our own close is not the agent going away
        if self.agent is not None:
            await self.agent.close()


class WebRtcPassthroughAdapter(MediaAdapter):
    def __init__(self, *, offer_sdp: str) -> None:
        self.passthrough_offer = only_sha256_fingerprint(offer_sdp)
        self._answer = ""

    async def platform_answer(self, sdp: str) -> None:
        self._answer = sdp

    def answer_sdp(self) -> str:
        return self._answer


# --- the route: `webrtc` in wacall.v1.Route ------------------------------------------------------------------------


def _ice_servers(urls: Sequence[str]) -> list[str]:
    if len(urls) > MAX_ICE_SERVERS:
        raise InvalidField("ice_servers", f"at most {MAX_ICE_SERVERS}")
    for index, url in enumerate(urls):
        field = f"ice_servers[{index}]"
        bounded_text(url, field, max_chars=MAX_URL)
        try:
            scheme = parse_stun_turn_uri(url)["scheme"]
        except ValueError:
            raise InvalidField(field, "a STUN URL, e.g. stun:stun.example.com:3478") from None
        if scheme != "stun":
            # TURN needs a username and credential, which a WebRtcRoute cannot carry.
            raise InvalidField(field, "only stun: URLs are supported (TURN needs credentials)")
    return list(urls)


async def plan(route: pb.WebRtcRoute, files: ServerFiles) -> RoutePlan:
    offer = bounded_text(route.offer_sdp, "offer_sdp", max_chars=MAX_SDP, multiline=True)
    # Passthrough: the platform gets the agent's offer (trimmed), so it must meet the platform's rules.
    problems = (
        platform_problems(only_sha256_fingerprint(offer), "offer")
        if route.passthrough
        else peer_problems(offer, "offer")
    )
    if problems:
        raise InvalidField("offer_sdp", "an SDP offer with one audio section: " + "; ".join(problems))
    ice_servers = _ice_servers(route.ice_servers)
    if route.passthrough:
        return RoutePlan("webrtc_passthrough", lambda: WebRtcPassthroughAdapter(offer_sdp=offer), offer)
    # A media engine relays the agent's packets without decoding them, so it carries only an agent that speaks Opus
    # (the platform's one codec); otherwise, or without an engine, the service bridges in process and transcodes.
    relayable = "opus/48000" in offer.lower()
    return RoutePlan(
        "webrtc",
        lambda: WebRtcBridgeAdapter(offer_sdp=offer, ice_servers=ice_servers),
        offer,
        engine_bridge=offer if relayable else None,
    )


ROUTE = RouteSpec("webrtc", plan)
