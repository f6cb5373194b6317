"""Pure parts of the media engine: the SDP rewrites made around rtpengine and its command line."""

from __future__ import annotations

from pathlib import Path

from wacall.media.engine_process import engine_command
from wacall.media.sdp import ice_lite_in_media_sections, lines, with_crlf, without_webrtc_attributes


def test_session_level_ice_lite_is_copied_into_each_media_section() -> None:
    sdp = with_crlf(
        [
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "s=-",
            "t=0 0",
            "a=ice-lite",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=ice-lite",
            "a=mid:1",
        ]
    )
    fixed = lines(ice_lite_in_media_sections(sdp))
    assert fixed == [
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=ice-lite",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=ice-lite",
        "a=mid:1",
    ]
    full = with_crlf(["v=0", "s=-", "t=0 0", "m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000"])
    assert ice_lite_in_media_sections(full) == full
    assert ice_lite_in_media_sections(sdp.replace("\r\n", "\n")) == ice_lite_in_media_sections(sdp)


def test_webrtc_only_attributes_are_stripped_for_a_plain_rtp_peer() -> None:
    sdp = with_crlf(
        [
            "v=0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "a=msid-semantic: WMS *",
            "m=audio 4000 RTP/AVP 0 101",
            "a=mid:0",
            "a=msid:stream track",
            "a=ssrc:1 cname:x",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=end-of-candidates",
            "a=sendrecv",
            "a=rtcp:4001",
            "a=midnight",
        ]
    )
    assert lines(without_webrtc_attributes(sdp)) == [
        "v=0",
        "s=-",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
        "a=rtcp:4001",
        "a=midnight",
    ]


def test_the_engine_command_line_reads_no_config_file_and_needs_no_kernel_module() -> None:
    command = engine_command(
        "rtpengine",
        interface="127.0.0.1",
        ng_port=2223,
        port_min=20000,
        port_max=20199,
        pidfile=Path("/run/x.pid"),
        num_threads=2,
    )
    assert command[1:3] == ["--config-file=none", "--table=-1"]
    assert "--listen-ng=127.0.0.1:2223" in command and "--port-min=20000" in command
    assert "--port-max=20199" in command and "--foreground" in command and "--delete-delay=0" in command
    assert "--no-fallback" not in command
