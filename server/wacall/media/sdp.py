"""SDP as the platform wants it. Pure text in, text out.

SDP-1: aiortc writes one a=fingerprint line per digest (sha-256, sha-384, sha-512); the platform accepts sha-256
only. SDP-3: CRLF line endings.

`platform_problems` is the one check of a WhatsApp call leg's SDP. The simulator applies it to what wacall sends
(and answers with the platform's error texts); wacall applies it to what the platform sends and to what it produces
itself before sending anything. `peer_problems` is the part any WebRTC peer must meet (an agent's browser).
"""

from __future__ import annotations

import re
from typing import Literal

from aiortc.sdp import SessionDescription

SdpType = Literal["offer", "answer"]

FINGERPRINT = re.compile(r"^a=fingerprint:(\S+)\s+(\S+)$", re.IGNORECASE)

# The platform's own words (error 100 details) where it has them.
NOT_AN_SDP = "Not a valid SDP"
NO_FINGERPRINT = "No fingerprint found in SDP"
NOT_SHA256 = "Fingerprint algo is not SHA256"
NO_OPUS = "No Opus codec found in SDP"
ONE_AUDIO = "SDP must contain exactly one audio media section"
NO_AUDIO = "No audio media section found in SDP"
AUDIO_REFUSED = "The audio media section is refused (port 0)"
NO_ICE_CREDENTIALS = "No ICE credentials (a=ice-ufrag and a=ice-pwd) found in SDP"
NO_RTCP_MUX = "No a=rtcp-mux found in SDP"
ANSWER_SETUP = "An answer's a=setup must be active or passive"


def lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def with_crlf(sdp_lines: list[str]) -> str:
    return "\r\n".join(sdp_lines) + "\r\n"


def only_sha256_fingerprint(sdp: str) -> str:
    """Drop every a=fingerprint line that is not sha-256; keep the rest of the SDP exactly, in CRLF."""
    kept = []
    for line in lines(sdp):
        match = FINGERPRINT.match(line)
        if match and match.group(1).lower() != "sha-256":
            continue
        kept.append(line)
    return with_crlf(kept)


def _parse(sdp: str) -> SessionDescription | None:
    try:
        return SessionDescription.parse(sdp)
    except (ValueError, AssertionError, IndexError, KeyError, TypeError):
        return None  # aiortc's parser asserts on lines it cannot read


def _problems(sdp: str, sdp_type: SdpType, *, whatsapp: bool) -> list[str]:
    parsed = _parse(sdp)
    if parsed is None or not sdp.lstrip().startswith("v=0"):
        return [NOT_AN_SDP]
    body = lines(sdp)
    problems = []
    algorithms = [m.group(1).lower() for m in map(FINGERPRINT.match, body) if m]
    if not algorithms:
        problems.append(NO_FINGERPRINT)
    elif whatsapp and any(a != "sha-256" for a in algorithms):
        problems.append(NOT_SHA256)
    audio = [media for media in parsed.media if media.kind == "audio"]
    if whatsapp and not any(
        c.mimeType.lower() == "audio/opus" and c.clockRate == 48000 for m in audio for c in m.rtp.codecs
    ):
        problems.append(NO_OPUS)
    if whatsapp and (len(audio) != 1 or len(parsed.media) != 1):
        problems.append(ONE_AUDIO)
    elif not audio:
        problems.append(NO_AUDIO)
    if not audio:
        return problems
    section = audio[0]
    if section.port == 0:
        problems.append(AUDIO_REFUSED)
    if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
        problems.append(NO_ICE_CREDENTIALS)
    if not section.rtcp_mux:
        problems.append(NO_RTCP_MUX)
    if sdp_type == "answer" and (section.dtls is None or section.dtls.role not in ("client", "server")):
        problems.append(ANSWER_SETUP)
    return problems


def platform_problems(sdp: str, sdp_type: SdpType) -> list[str]:
    """Why this SDP cannot carry a WhatsApp call (the platform answers such SDP with error 100), in the platform's
    words; empty when acceptable: one audio section with Opus/48000, a sha-256 fingerprint only, ICE credentials,
    rtcp-mux, and in an answer a DTLS role (SDP-7)."""
    return _problems(sdp, sdp_type, whatsapp=True)


def peer_problems(sdp: str, sdp_type: SdpType) -> list[str]:
    """Why this SDP cannot set up an audio leg with any WebRTC peer (codecs and extra sections are the peer's
    business); empty when acceptable."""
    return _problems(sdp, sdp_type, whatsapp=False)


# What only a WebRTC peer reads; a plain-RTP peer (a PBX) may choke on it. rtpengine 10.5 leaves these in the SDP it
# writes toward a plain-RTP side, and its `sdp-attr` removal flag has no effect there.
WEBRTC_ONLY_ATTRIBUTES = ("msid", "ssrc", "mid", "msid-semantic", "end-of-candidates")


def ice_lite_in_media_sections(sdp: str) -> str:
    """Copy a session-level `a=ice-lite` into every media section that lacks one; otherwise the SDP unchanged
    (in CRLF). rtpengine 10.5 reads ice-lite only inside a media section, and the platform writes it at session
    level: without the copy rtpengine waits, ICE-controlled, for a lite peer that never nominates."""
    sdp_lines = lines(sdp)
    first_media = next((i for i, line in enumerate(sdp_lines) if line.startswith("m=")), len(sdp_lines))
    if "a=ice-lite" not in sdp_lines[:first_media]:
        return with_crlf(sdp_lines)
    out: list[str] = []
    section: list[str] = []
    for line in [*sdp_lines[first_media:], "m="]:  # a sentinel closes the last section
        if line.startswith("m=") and section:
            out.extend(section if "a=ice-lite" in section else [*section, "a=ice-lite"])
            section = []
        section.append(line)
    return with_crlf(sdp_lines[:first_media] + out)


def without_webrtc_attributes(sdp: str) -> str:
    """The SDP without msid, ssrc, mid, msid-semantic, end-of-candidates and the BUNDLE group, for a plain-RTP
    peer; every other line kept, in order, in CRLF."""
    kept = []
    for line in lines(sdp):
        if line.startswith("a="):
            name = line[2:].split(":", 1)[0]
            if name in WEBRTC_ONLY_ATTRIBUTES or line.startswith("a=group:BUNDLE"):
                continue
        kept.append(line)
    return with_crlf(kept)
