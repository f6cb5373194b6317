"""SDP as the platform wants it. Pure text in, text out.

SDP-1: aiortc writes one a=fingerprint line per digest (sha-256, sha-384, sha-512); the platform accepts sha-256
only. SDP-3: CRLF line endings. The validator is what the simulator enforces, with the platform's error texts.
"""

from __future__ import annotations

import re

FINGERPRINT = re.compile(r"^a=fingerprint:(\S+)\s+(\S+)$", re.IGNORECASE)


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


def platform_problems(sdp: str) -> list[str]:
    """Why the platform would refuse this SDP (error 100), in its own words; empty when acceptable."""
    body = lines(sdp)
    problems = []
    fingerprints = [FINGERPRINT.match(line) for line in body]
    algorithms = [m.group(1).lower() for m in fingerprints if m]
    if not algorithms:
        problems.append("No fingerprint found in SDP")
    elif any(a != "sha-256" for a in algorithms):
        problems.append("Fingerprint algo is not SHA256")
    if not any(line.lower().startswith("a=rtpmap:") and "opus/48000" in line.lower() for line in body):
        problems.append("No Opus codec found in SDP")
    audio = [line for line in body if line.startswith("m=audio")]
    if len(audio) != 1 or any(line.startswith("m=") and not line.startswith("m=audio") for line in body):
        problems.append("SDP must contain exactly one audio media section")
    return problems
