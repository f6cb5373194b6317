"""Server-side files named in an RPC stay inside the configured directories: audio in --media-dir, recordings in
--recordings-dir. `..`, absolute paths elsewhere and symlinks out of them are INVALID_ARGUMENT naming the field and
the directory; nothing is placed or recorded for them."""

from __future__ import annotations

import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from conftest import USER, Running, refused
from test_media_routes import write_wav
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.config import ConfigError, load_settings

MakeService = Callable[..., Awaitable[Running]]


@pytest.fixture
async def confined(make_service: MakeService, tmp_path: Path) -> Running:
    """A service whose media and recordings directories are subdirectories, with a valid audio file outside them."""
    write_wav(tmp_path / "outside.wav", 500, 0.5)
    running = await make_service(media_dir=str(tmp_path / "media"), recordings_dir=str(tmp_path / "recordings"))
    await running.grant(permanent=True)
    await running.phone()  # answers at once
    return running


async def refused_field(call: Awaitable[object], field: str, directory: Path) -> None:
    error = await refused(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violations = error_details(error).field_violations
    assert [v.field for v in violations] == [field]
    assert str(directory) in violations[0].description


def announcement(**fields: object) -> pb.Route:
    return pb.Route(announcement=pb.AnnouncementRoute(**fields))  # type: ignore[arg-type]


async def nothing_placed(running: Running) -> None:
    assert not (await running.calling.ListCalls(pb.ListCallsRequest())).calls


async def test_the_directories_are_created_at_start(confined: Running, tmp_path: Path) -> None:
    assert (tmp_path / "media").is_dir() and (tmp_path / "recordings").is_dir()


@pytest.mark.parametrize(
    "name",
    ["../outside.wav", "OUTSIDE", "media/../../outside.wav", "."],
    ids=["dot-dot", "absolute-outside", "dot-dot-after-a-name", "the-directory-itself"],
)
async def test_an_audio_file_outside_the_media_directory_is_refused(
    confined: Running, tmp_path: Path, name: str
) -> None:
    name = str(tmp_path / "outside.wav") if name == "OUTSIDE" else name
    route = announcement(audio_file=name)
    await refused_field(confined.start_call(route=route), "route.announcement.audio_file", tmp_path / "media")
    await nothing_placed(confined)


async def test_a_symlink_out_of_the_media_directory_is_refused(confined: Running, tmp_path: Path) -> None:
    (tmp_path / "media" / "link.wav").symlink_to(tmp_path / "outside.wav")
    route = announcement(audio_file="link.wav")
    await refused_field(confined.start_call(route=route), "route.announcement.audio_file", tmp_path / "media")
    await nothing_placed(confined)


async def test_a_name_inside_the_media_directory_plays_and_the_recording_is_written_inside(
    confined: Running, tmp_path: Path
) -> None:
    write_wav(tmp_path / "media" / "reminder.wav", 500, 1.0)
    route = announcement(audio_file="reminder.wav", record_to="user.wav")
    call = await confined.start_call(route=route)
    ended = await confined.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason == "announcement finished"
    with wave.open(str(tmp_path / "recordings" / "user.wav"), "rb") as recorded:
        assert recorded.getnframes() > 0 and recorded.getframerate() == 48000
    assert not (tmp_path / "user.wav").exists()


async def test_an_absolute_name_inside_the_media_directory_is_taken(confined: Running, tmp_path: Path) -> None:
    write_wav(tmp_path / "media" / "reminder.wav", 500, 0.5)
    call = await confined.start_call(route=announcement(audio_file=str(tmp_path / "media" / "reminder.wav")))
    ended = await confined.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason == "announcement finished"


@pytest.mark.parametrize("name", ["../user.wav", "OUTSIDE", "out/user.wav"], ids=["dot-dot", "absolute", "symlink"])
async def test_a_recording_outside_the_recordings_directory_is_refused(
    confined: Running, tmp_path: Path, name: str
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "recordings" / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    name = str(tmp_path / "user.wav") if name == "OUTSIDE" else name
    route = announcement(tone_hz=440, record_to=name)
    await refused_field(confined.start_call(route=route), "route.announcement.record_to", tmp_path / "recordings")
    await nothing_placed(confined)
    assert not (tmp_path / "user.wav").exists() and not (tmp_path / "elsewhere" / "user.wav").exists()


@pytest.mark.parametrize("name", ["../outside.wav", "OUTSIDE", "link.wav"], ids=["dot-dot", "absolute", "symlink"])
async def test_the_simulated_users_voice_file_is_confined_too(confined: Running, tmp_path: Path, name: str) -> None:
    (tmp_path / "media" / "link.wav").symlink_to(tmp_path / "outside.wav")
    name = str(tmp_path / "outside.wav") if name == "OUTSIDE" else name
    behavior = sim_pb.SetUserBehaviorRequest(user_number=USER, say_file=name)
    await refused_field(confined.sim.SetUserBehavior(behavior), "say_file", tmp_path / "media")
    assert (await confined.sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=USER))).say_file == ""


async def test_the_simulated_user_says_a_file_named_inside(confined: Running, tmp_path: Path) -> None:
    write_wav(tmp_path / "media" / "voice.wav", 660, 0.5)
    behavior = sim_pb.SetUserBehaviorRequest(user_number=USER, say_file="voice.wav")
    answer = await confined.sim.SetUserBehavior(behavior)
    assert Path(answer.say_file) == (tmp_path / "media" / "voice.wav").resolve()


def test_the_inbound_announcement_must_be_in_the_media_directory(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    write_wav(tmp_path / "outside.wav", 500, 0.5)
    write_wav(media / "welcome.wav", 500, 0.5)
    flags = {"media_dir": str(media)}
    assert load_settings(None, {**flags, "inbound_audio_file": "welcome.wav"}, {}).inbound_audio_file == "welcome.wav"
    for name in ("../outside.wav", str(tmp_path / "outside.wav")):
        with pytest.raises(ConfigError, match="inbound_audio_file") as caught:
            load_settings(None, {**flags, "inbound_audio_file": name}, {})
        assert str(media) in str(caught.value)
