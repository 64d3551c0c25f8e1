"""Videos, cameras and streams (tinyssd.video): every clip is written here with PyAV."""

from __future__ import annotations

import functools
import http.server
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fixtures import save_untrained_checkpoint

import tinyssd
from tinyssd.cli import main
from tinyssd.errors import DataError, UsageError
from tinyssd.video import is_video_source, predict_video, shown_source, video_stem

av = pytest.importorskip("av")

IMAGE_KEYS = {"image", "width", "height", "boxes", "scores", "labels", "names", "picture"}


def write_video(path: Path, frames: int = 7, size=(96, 64), fps: int = 10, rotation=None) -> Path:
    """An H.264 clip of a yellow block moving right on a dark background."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            rgb = np.full((height, width, 3), 30, np.uint8)
            rgb[10:40, 4 + 6 * i : 34 + 6 * i] = (230, 200, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decoded_frames(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return save_untrained_checkpoint(folder / "model.safetensors", ["block", "other"])


@pytest.fixture(scope="module")
def det(checkpoint):
    return tinyssd.load(checkpoint, precision="fp32")


def test_each_frame_gives_one_json_line_and_one_drawn_frame(det, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=7)
    lines = list(predict_video(det, clip, out=tmp_path / "out", threshold=0.3, progress=False))

    assert [d["frame"] for d in lines] == list(range(7))
    assert all(set(d) == IMAGE_KEYS | {"frame", "time"} for d in lines)
    assert [d["time"] for d in lines] == pytest.approx([i / 10 for i in range(7)])
    assert {(d["width"], d["height"], d["image"]) for d in lines} == {(96, 64, str(clip))}
    assert lines[0]["picture"] == str(tmp_path / "out" / "clip.mp4")
    assert all(len(d["boxes"]) == len(d["scores"]) == len(d["names"]) for d in lines)
    assert any(d["boxes"] for d in lines)
    frames = decoded_frames(lines[0]["picture"])
    assert len(frames) == 7
    assert frames[0].shape == (64, 96, 3)
    with av.open(lines[0]["picture"]) as container:
        assert container.streams.video[0].average_rate == 10


def test_the_drawn_video_shows_the_boxes(det, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    lines = list(predict_video(det, clip, out=tmp_path, threshold=0.3, progress=False))
    drawn = decoded_frames(lines[0]["picture"])[0].astype(int)
    plain = decoded_frames(clip)[0].astype(int)
    assert lines[0]["boxes"]
    assert np.abs(drawn - plain).max() > 100  # box outlines and labels, not codec noise


def test_the_cli_prints_a_line_per_frame(checkpoint, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", frames=5)
    code = main(["predict", str(clip), "--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [d["frame"] for d in lines] == list(range(5))
    assert len(decoded_frames(tmp_path / "o" / "clip.mp4")) == 5


def test_videos_and_images_in_one_command(checkpoint, tmp_path, capsys):
    from PIL import Image

    clip = write_video(tmp_path / "clip.mp4", frames=3)
    Image.new("RGB", (40, 30), "grey").save(tmp_path / "still.png")
    argv = ["predict", str(tmp_path / "still.png"), str(clip), "--weights", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [d.get("frame") for d in lines] == [None, 0, 1, 2]
    assert lines[0]["picture"] == str(tmp_path / "o" / "still.png")


def test_the_output_never_overwrites_the_input_or_an_earlier_video(det, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    original = clip.read_bytes()
    pictures = [
        next(iter(predict_video(det, clip, out=tmp_path, progress=False)))["picture"]
        for _ in range(2)
    ]
    assert pictures == [str(tmp_path / "clip_2.mp4"), str(tmp_path / "clip_3.mp4")]
    assert clip.read_bytes() == original


def test_max_frames_stops_early(det, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=7)
    lines = list(predict_video(det, clip, out=tmp_path / "o", max_frames=3, progress=False))
    assert [d["frame"] for d in lines] == [0, 1, 2]
    assert len(decoded_frames(tmp_path / "o" / "clip.mp4")) == 3


def test_a_stopped_run_leaves_a_playable_video_of_the_frames_so_far(det, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=7)
    lines = predict_video(det, clip, out=tmp_path / "o", progress=False)
    next(lines), next(lines)
    lines.close()  # what Ctrl-C or a closed pipe does to the generator
    assert len(decoded_frames(tmp_path / "o" / "clip.mp4")) == 2


def test_a_phone_video_turned_by_its_display_matrix_is_predicted_upright(det, tmp_path):
    clip = write_video(tmp_path / "phone.mp4", frames=2, size=(96, 64), rotation=90)
    lines = list(predict_video(det, clip, out=tmp_path, progress=False))
    assert (lines[0]["width"], lines[0]["height"]) == (64, 96)
    assert decoded_frames(lines[0]["picture"])[0].shape == (96, 64, 3)


def test_odd_frame_sizes_are_encoded(det, tmp_path):
    clip = tmp_path / "odd.mkv"
    with av.open(str(clip), "w") as container:  # FFV1 keeps odd sides, H.264 4:2:0 cannot
        stream = container.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 51, 37, "yuv444p"
        for _ in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((37, 51, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    lines = list(predict_video(det, clip, out=tmp_path, progress=False))
    assert (lines[0]["width"], lines[0]["height"]) == (51, 37)
    assert decoded_frames(lines[0]["picture"])[0].shape == (36, 50, 3)


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_stream_url_is_read(det, tmp_path):
    write_video(tmp_path / "live.mp4", frames=4)
    handler = functools.partial(QuietFiles, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.mp4"
        lines = list(predict_video(det, url, out=tmp_path / "o", progress=False))
    finally:
        server.shutdown()
        server.server_close()
    assert [d["frame"] for d in lines] == [0, 1, 2, 3]
    assert {d["image"] for d in lines} == {url}
    assert lines[0]["picture"] == str(tmp_path / "o" / "live.mp4")


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a video\n" * 50, "truncated"],
    ids=["empty", "text", "truncated"],
)
def test_a_broken_video_is_one_data_error_naming_the_file(det, tmp_path, content):
    clip = tmp_path / "broken.mp4"
    if content == "truncated":
        good = write_video(tmp_path / "good.mp4", frames=7).read_bytes()
        content = good[: len(good) // 2]
    clip.write_bytes(content)
    with pytest.raises(DataError, match=r"broken\.mp4") as raised:
        list(predict_video(det, clip, out=tmp_path / "o", progress=False))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "o" / "broken.mp4").exists()


def test_the_cli_reports_a_broken_or_missing_video_in_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    for clip in (tmp_path / "broken.mp4", tmp_path / "missing.mp4"):
        assert main(["predict", str(clip), "--weights", str(checkpoint)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"tinyssd: error: {clip}: ")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("clip.mp4", True),
        ("CLIP.MOV", True),
        ("a/b.webm", True),
        ("x.mkv", True),
        ("x.avi", True),
        ("0", True),
        ("rtsp://cam.local/stream1", True),
        ("https://example.com/live.m3u8", True),
        ("photo.jpg", False),
        ("folder", False),
        ("mp4", False),
    ],
)
def test_is_video_source(source, expected):
    assert is_video_source(source) is expected


def test_a_digit_that_names_a_folder_is_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2").mkdir()
    assert not is_video_source("2")


@pytest.mark.parametrize(
    ("source", "stem"),
    [("d/clip.mp4", "clip"), ("0", "camera0"), ("rtsp://h:554/live/cam1?x=1", "cam1")],
)
def test_video_stem(source, stem):
    assert video_stem(source) == stem


def test_a_stream_password_is_never_printed(det, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"rtsp://viewer:s3cret@127.0.0.1:{port}/live"
    assert shown_source(url) == f"rtsp://viewer:***@127.0.0.1:{port}/live"
    assert video_stem(url) == "live"
    assert video_stem("rtsp://viewer:s3cret@cam.local") == "cam.local"
    with pytest.raises(DataError) as raised:
        list(predict_video(det, url, out=tmp_path, progress=False))
    assert str(raised.value).startswith(f"rtsp://viewer:***@127.0.0.1:{port}/live: cannot open")
    assert "s3cret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_without_pyav_the_error_says_what_to_install(det, tmp_path, monkeypatch):
    clip = write_video(tmp_path / "clip.mp4", frames=1)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(UsageError, match=r"pip install 'tinyssd\[video\]'"):
        list(predict_video(det, clip, out=tmp_path, progress=False))


def write_noise_video(path: Path, frames: int = 10) -> Path:
    """An MP4 of noise frames, every one a key frame, its index (moov) at the start: cut
    short, it still opens and its header still promises ``frames``."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"g": "1"}
        for _ in range(frames):
            rgb = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_a_truncated_video_says_it_ended_early(det, tmp_path, caplog):
    whole = write_noise_video(tmp_path / "whole.mp4", frames=10).read_bytes()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(whole[: len(whole) // 2])
    skipped: list[str] = []
    lines = list(predict_video(det, clip, out=tmp_path / "o", skipped=skipped, progress=False))
    assert 0 < len(lines) < 10
    assert f"{clip}: ended after {len(lines)} of 10 frames (file truncated?)" in caplog.messages
    assert skipped == [str(clip)]


def test_a_whole_video_and_max_frames_are_not_called_truncated(det, tmp_path, caplog):
    clip = write_noise_video(tmp_path / "clip.mp4", frames=4)
    skipped: list[str] = []
    for max_frames in (None, 2):
        list(
            predict_video(
                det, clip, tmp_path, max_frames=max_frames, skipped=skipped, progress=False
            )
        )
    assert skipped == []
    assert not any("ended after" in m for m in caplog.messages)


def test_frames_over_the_pixel_budget_are_refused_before_any_is_decoded(
    det, checkpoint, tmp_path, capsys, monkeypatch
):
    from tinyssd.data.limits import DataLimits

    # 192 x 128 = 24576 pixels a frame; the budget still holds the model's 128 x 128 input
    clip = write_video(tmp_path / "clip.mp4", frames=2, size=(192, 128))
    message = f"{clip}: frames of 192x128 are 24576 pixels, over the budget of 20000 (--max-pixels)"
    with pytest.raises(DataError) as raised:
        list(predict_video(det, clip, out=tmp_path / "o", limits=DataLimits(max_pixels=20000)))
    assert str(raised.value) == message
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("TINYSSD_MAX_PIXELS", "20000")
    argv = ["predict", str(clip), "--weights", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"tinyssd: error: {message}"
    assert not (tmp_path / "o").exists()


def test_max_frames_0_is_refused_naming_the_option(det, checkpoint, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    with pytest.raises(UsageError, match=r"^--max-frames 0: must be > 0$"):
        list(predict_video(det, clip, out=tmp_path / "o", max_frames=0))
    argv = ["predict", str(clip), "--weights", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--max-frames", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "tinyssd: error: --max-frames 0: must be > 0"
    assert not (tmp_path / "o").exists()


def test_without_out_each_video_goes_into_a_new_runs_predict_folder(det, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    pictures = [next(iter(predict_video(det, clip, progress=False)))["picture"] for _ in range(2)]
    assert pictures == ["runs/predict/clip.mp4", "runs/predict2/clip.mp4"]
    assert not (tmp_path / "predictions").exists()


def test_predict_of_a_truncated_video_exits_1_naming_it(checkpoint, tmp_path, capsys, caplog):
    whole = write_noise_video(tmp_path / "whole.mp4", frames=10).read_bytes()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(whole[: len(whole) // 2])
    code = main(["predict", str(clip), "--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert any(m.startswith(f"{clip}: ended after") for m in caplog.messages)
    assert (
        err.rstrip().splitlines()[-1] == "tinyssd: 1 input(s) skipped or cut short (listed above)"
    )
    assert "Traceback" not in err
