"""Detections on videos, cameras and streams: ``tinyssd predict clip.mp4``.

det = tinyssd.load("runs/bananas")
for line in predict_video(det, "clip.mp4", out="predictions"):   # one dict per frame
    line["frame"], line["boxes"], line["names"]

Every frame is predicted, drawn, and written to ``OUT/NAME.mp4`` (H.264); the
dict of each frame has the keys of ``tinyssd predict``'s image lines plus
``frame`` (0, 1, ...) and ``time`` (seconds, from the source's timestamps).
Decoding and encoding are FFmpeg's, through PyAV (``pip install 'tinyssd[video]'``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .errors import DataError, UsageError
from .extras import require

if TYPE_CHECKING:
    from PIL import Image

    from .data.limits import DataLimits
    from .postprocess import PostprocessConfig
    from .predict import Predictor

log = logging.getLogger("tinyssd")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
# Frame rate written when the source gives none (some cameras and streams).
DEFAULT_FPS = 25
# Seconds a stream may stay silent (opening, then between packets) before it is an error.
NETWORK_TIMEOUT_S = 15.0


def is_video_source(source: str | Path) -> bool:
    """True for a video file (by suffix), a camera index (``"0"``) or a stream URL.

    A digit string that names an existing file or folder is that path, not a camera.
    """
    text = str(source)
    if text.lower().startswith(STREAM_SCHEMES):
        return True
    if text.isdigit():
        return not Path(text).exists()
    return Path(text).suffix.lower() in VIDEO_SUFFIXES


def _camera(index: str) -> tuple[str, str]:
    """(device, FFmpeg input format) of camera ``index`` on this platform."""
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return index, "avfoundation"
    raise UsageError(
        f"camera {index}: camera indices work on Linux and macOS; give the camera's stream URL"
    )


def _open_source(source: str) -> Any:
    """The PyAV input container of a file, camera or URL; DataError naming it if it fails."""
    av = require("av", "video")
    is_url = source.lower().startswith(STREAM_SCHEMES)
    if not is_url and not source.isdigit() and not Path(source).is_file():
        what = "not a regular file" if Path(source).exists() else "no such video file"
        raise DataError(f"{source}: {what}")
    target, fmt = _camera(source) if source.isdigit() else (source, None)
    options = {"rtsp_transport": "tcp"} if source.lower().startswith("rtsp") else {}
    timeout = NETWORK_TIMEOUT_S if is_url or fmt else None
    try:
        container = av.open(target, format=fmt, options=options, timeout=timeout)
    except (av.FFmpegError, OSError) as e:
        raise DataError(
            f"{shown_source(source)}: cannot open video ({_reason(e, source)})"
        ) from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{shown_source(source)}: no video stream")
    return container


def _reason(error: Exception, source: str) -> str:
    """The first line of an FFmpeg error, without the file name or URL it repeats."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).strip().splitlines()[0].replace(source, shown_source(source))


def _check_frame_pixels(width: int, height: int, source: str, budget: int) -> None:
    """DataError (one line naming the source) for frames of more than ``budget`` pixels."""
    if width * height > budget:
        raise DataError(
            f"{shown_source(source)}: frames of {width}x{height} are {width * height} pixels, "
            f"over the budget of {budget} (--max-pixels)"
        )


def _frames(container: Any, source: str, budget: int) -> Iterator[tuple[np.ndarray, float | None]]:
    """Decoded frames as uint8 ``[H, W, 3]`` RGB, turned as the video's display matrix says
    (phone videos), with their time in seconds. Each frame's size is checked against the
    pixel ``budget`` before it is converted: a stream may change size, or give none in
    its header."""
    av = sys.modules["av"]
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    index = 0
    try:
        for frame in container.decode(stream):
            _check_frame_pixels(frame.width, frame.height, source, budget)
            rgb = frame.to_ndarray(format="rgb24")
            turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90
            yield np.ascontiguousarray(np.rot90(rgb, turns)), frame.time
            index += 1
    except (av.FFmpegError, OSError) as e:
        shown = shown_source(source)
        raise DataError(f"{shown}: frame {index}: cannot decode ({_reason(e, source)})") from None


def _frame_rate(container: Any) -> Fraction:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0 or rate > 1000:
        return Fraction(DEFAULT_FPS)
    return Fraction(rate).limit_denominator(1001)


def video_stem(source: str) -> str:
    """The output name of a source: ``clip.mp4`` -> ``clip``, camera 0 -> ``camera0``,
    ``rtsp://host/live/cam1`` -> ``cam1``, ``rtsp://host`` -> ``host``."""
    if source.isdigit():
        return f"camera{source}"
    if source.lower().startswith(STREAM_SCHEMES):
        url = urlsplit(source)
        return Path(url.path.rstrip("/")).stem or url.hostname or "stream"
    return Path(source).stem


def shown_source(source: str) -> str:
    """``source`` as printed and logged: a URL's password replaced by ``***``."""
    url = urlsplit(source)
    if url.password is None:
        return source
    return source.replace(f":{url.password}@", ":***@", 1)


def reserve_video_path(source: str, out: str | Path) -> Path:
    """Create and return ``out/NAME.mp4``, or ``out/NAME_2.mp4``, ... : the first name not
    taken, so neither an existing file nor the source itself is ever overwritten."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem, i = video_stem(source), 1
    while True:
        candidate = out / (f"{stem}.mp4" if i == 1 else f"{stem}_{i}.mp4")
        try:
            with open(candidate, "x"):
                return candidate
        except FileExistsError:
            i += 1


class VideoWriter:
    """H.264 MP4 written frame by frame; closing it (also on Ctrl-C or an error) leaves a
    playable video of the frames written so far."""

    def __init__(self, path: Path, fps: Fraction) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None

    def _open(self, width: int, height: int) -> None:
        av = require("av", "video")
        self._container = av.open(str(self.path), mode="w", format="mp4")
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        stream.options = {"preset": "veryfast", "crf": "23"}
        self._stream = stream

    def write(self, picture: Image.Image) -> None:
        """Append one RGB picture; odd sides lose their last row or column (H.264 4:2:0)."""
        av = require("av", "video")
        width, height = picture.width - picture.width % 2, picture.height - picture.height % 2
        if self._container is None:
            self._open(width, height)
        frame = av.VideoFrame.from_image(picture.crop((0, 0, width, height)))
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file; an empty reserved file is removed."""
        if self._container is None:
            self.path.unlink(missing_ok=True)
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None


def predict_video(
    det: Predictor,
    source: str | Path,
    out: str | Path | None = None,
    post: PostprocessConfig | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    threshold: float | None = None,
    limits: DataLimits | None = None,
    skipped: list[str] | None = None,
) -> Iterator[dict]:
    """Predict every frame of a video file, camera (``"0"``) or stream URL; write the drawn
    frames to ``out/NAME.mp4`` (see :func:`reserve_video_path`) and yield one dict per frame.

    Args:
        out: the folder of the drawn video (None: the first free ``runs/predict``,
            ``runs/predict2``, ..., as ``tinyssd predict`` without ``--out``).
        post: the post-processing settings (default ``PostprocessConfig()``), with
            ``threshold``, when given, as its ``score_threshold``.
        max_frames: stop after this many frames (a camera or live stream never ends).
        progress: a tqdm bar on stderr with frames/s.
        limits: ``max_pixels`` bounds a frame, checked from the stream's header before
            any frame is decoded (None: ``DataLimits.from_env()``).
        skipped: a source that ends before the frame count of its header (a truncated
            file) is logged and appended here, as ``predict_files`` does for images.
    Yields:
        ``{"image": source, "frame": i, "time": s, "width", "height", "boxes", "scores",
        "labels", "names", "picture": the output video}``, boxes xyxy in the frame's pixels.
    Raises:
        UsageError: ``max_frames`` < 1. DataError: the source cannot be opened or decoded,
            or its frames are over the pixel budget (one line naming it).
    """
    from tqdm import tqdm

    from .data.limits import DataLimits
    from .engine.run_folder import new_run_dir
    from .predict.base import resolve_for_model
    from .predict.output import detection_line, drawn

    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames {max_frames}: must be > 0")
    budget = (limits if limits is not None else DataLimits.from_env()).max_pixels
    post = resolve_for_model(det.score_threshold, post, threshold)
    source = str(source)
    container = _open_source(source)
    try:
        header = container.streams.video[0].codec_context  # 0 x 0 when the header has none
        _check_frame_pixels(header.width, header.height, source, budget)
        out = out if out is not None else new_run_dir("runs", "predict")
        writer = VideoWriter(reserve_video_path(source, out), _frame_rate(container))
    except BaseException:
        container.close()
        raise
    in_header = container.streams.video[0].frames or None  # 0: unknown (cameras, streams)
    promised = in_header if max_frames is None or in_header is None else min(in_header, max_frames)
    total = promised or max_frames
    bar = tqdm(total=total, unit="frame", desc=video_stem(source), disable=not progress)
    start = time.perf_counter()
    try:
        for index, (rgb, seconds) in enumerate(_frames(container, source, budget)):
            if max_frames is not None and index >= max_frames:
                break
            image = torch.from_numpy(rgb).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
            d = det.predict(image, post=post)[0]
            writer.write(drawn(image, d, det.classes))
            bar.update()
            yield {
                "image": shown_source(source),
                "frame": index,
                "time": None if seconds is None else round(seconds, 3),
                **detection_line(d, width=rgb.shape[1], height=rgb.shape[0]),
                "picture": str(writer.path),
            }
    finally:
        bar.close()
        container.close()
        writer.close()
    if not writer.frames:
        raise DataError(f"{shown_source(source)}: no video frames decoded")
    if promised is not None and writer.frames < promised:
        log.warning(
            "%s: ended after %d of %d frames (file truncated?)",
            shown_source(source),
            writer.frames,
            promised,
        )
        if skipped is not None:
            skipped.append(shown_source(source))
    elapsed = time.perf_counter() - start
    fps = writer.frames / max(elapsed, 1e-9)
    log.info(
        "%s: %d frames, %.1f frames/s -> %s", shown_source(source), writer.frames, fps, writer.path
    )
