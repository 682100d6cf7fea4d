"""Films in and out (the edge): frames streamed from any container FFmpeg reads (through PyAV) or a
folder of images, and written as a video (H.264 for .mp4/.mov/.mkv/.avi, VP9 for .webm) at the
input's frame rate with the input's audio copied unchanged (its packets remuxed, not re-encoded).

Frames are float32[H, W, 3] in [0, 1], one at a time: memory does not grow with the film. A video
is written to a temporary file beside the destination and renamed onto it when complete, so a
half-written film never replaces a good one. PyAV is an optional dependency
(``pip install "jaxstyle[video]"``); `require` turns its absence into one line.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxstyle import image_io
from jaxstyle.errors import JaxstyleError

INSTALL_HINT = 'pip install "jaxstyle[video]"'
# Output containers by extension, and the video codec each gets.
CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264",
          ".avi": "libx264", ".webm": "libvpx-vp9"}
VIDEO_SUFFIXES = frozenset(CODECS) | {".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".ogv", ".3gp",
                                      ".gif"}
DEFAULT_RATE = Fraction(25)


class BrokenStream(JaxstyleError):
    """The film's data breaks after ``good`` decoded frames."""

    def __init__(self, path, good: int, reason: str):
        super().__init__(f"'{path}' breaks after frame {good} ({reason})")
        self.good = good


def require():
    """The PyAV module, or a one-line error naming the extra to install."""
    try:
        import av
    except ImportError:
        raise JaxstyleError(f"video needs PyAV and OpenCV: {INSTALL_HINT}") from None
    return av


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a film by its extension (a folder of frames is not)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclasses.dataclass(frozen=True)
class FilmInfo:
    """width, height: of the frames as stored; frame_rate: frames per second; num_frames: as the
    container says (None where it does not; a folder: its images); audio: has an audio stream;
    variable_rate: the container's average and nominal rates disagree."""

    width: int
    height: int
    frame_rate: Fraction
    num_frames: int | None
    audio: bool = False
    variable_rate: bool = False


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def probe(path: str | os.PathLike) -> FilmInfo:
    """What a film (a video file or a folder of images) holds; one-line errors for what is not a
    film."""
    path = Path(path)
    if path.is_dir():
        frames = image_io.collect_images([path])
        if not frames:
            raise JaxstyleError(f"'{path}' holds no frames (no images in the folder)")
        dims = image_io.image_dimensions(frames[0])
        if dims is None:
            raise JaxstyleError(f"cannot read the first frame of '{path}' ({frames[0].name})")
        return FilmInfo(dims[1], dims[0], DEFAULT_RATE, len(frames))
    if not path.exists():
        raise JaxstyleError(f"no such file: '{path}'")
    av = require()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise JaxstyleError(f"'{path}' has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
            nominal = stream.base_rate or rate
            count = stream.frames or None
            return FilmInfo(stream.codec_context.width, stream.codec_context.height,
                            Fraction(rate), count, bool(container.streams.audio),
                            abs(float(nominal) - float(rate)) > 0.01 * float(rate))
    except av.FFmpegError as e:
        raise JaxstyleError(f"'{path}' is not a video FFmpeg can read ({_one_line(e)})") from None


def read_frames(path: str | os.PathLike, height: int | None = None, width: int | None = None,
                skip: int = 0) -> Iterator[np.ndarray]:
    """The film's frames one at a time, float32[height, width, 3] in [0, 1] (resized when a size
    is given), after skipping the first ``skip`` (decoded, not converted). A stream that breaks
    raises `BrokenStream` after the good frames."""
    path = Path(path)
    if path.is_dir():
        for i, frame in enumerate(image_io.collect_images([path])):
            if i < skip:
                continue
            image = image_io.load_image(frame, role="frame")
            if height is not None and image.shape[:2] != (height, width):
                image = image_io.resize(image, height, width)
            yield image
        return
    av = require()
    good = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            listed = stream.frames or None
            for frame in container.decode(stream):
                good += 1
                if good <= skip:
                    continue
                kwargs = {} if height is None else dict(width=width, height=height,
                                                         interpolation="AREA")
                yield frame.to_ndarray(format="rgb24", **kwargs).astype(np.float32) / 255.0
    except av.FFmpegError as e:
        raise BrokenStream(path, good, _one_line(e)) from None
    # A file cut short (e.g. an MP4 with its index first, truncated) decodes without an error,
    # only fewer frames than its container lists.
    if listed is not None and good < listed:
        raise BrokenStream(path, good, f"its container lists {listed} frames; the data ends "
                                       f"after {good}")


def _audio_packets(container, stream) -> Iterator:
    for packet in container.demux(stream):
        if packet.dts is not None:
            yield packet


class FilmWriter:
    """Writes frames (float32[H, W, 3] in [0, 1]) into a video at ``frame_rate``, copying the audio
    of ``audio_from`` (a video file; None: no audio), or into a folder of PNGs when ``path`` has no
    video extension. Atomic: `close` renames the finished file onto ``path``; `abort` (or an
    exception inside ``with``) removes it. H.264 needs even sides: odd ones are refused."""

    def __init__(self, path: str | os.PathLike, height: int, width: int,
                 frame_rate: Fraction = DEFAULT_RATE, audio_from: str | os.PathLike | None = None,
                 crf: int = 18):
        self.path = Path(path)
        self.count = 0
        self.folder = not is_video(self.path)
        if self.folder:
            self.path.mkdir(parents=True, exist_ok=True)
            return
        codec = CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise JaxstyleError(f"cannot write '{self.path.suffix}' videos; use one of "
                                f"{', '.join(sorted(CODECS))} or a folder")
        if height % 2 or width % 2:
            raise JaxstyleError(f"a {width}x{height} film has an odd side, which {codec} cannot "
                                "encode; choose an --image-size that gives even sides")
        av = require()
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.",
                                         suffix=self.path.suffix)
        os.close(fd)
        self._out = av.open(self._tmp, "w")
        self._rate = Fraction(frame_rate)
        self._video = self._out.add_stream(codec, rate=self._rate)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf + 12),
                                                                             "b": "0"}
        self._in = self._audio_in = self._audio = None
        if audio_from is not None and not Path(audio_from).is_dir():
            self._in = av.open(str(audio_from))
            if self._in.streams.audio:
                self._audio_in = self._in.streams.audio[0]
                self._audio = self._out.add_stream_from_template(self._audio_in)
                self._packets = _audio_packets(self._in, self._audio_in)
                self._next = next(self._packets, None)

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copies the input's audio packets that start before ``seconds`` (None: all), so the
        file is interleaved as it is written."""
        while self._audio is not None and self._next is not None:
            packet = self._next
            if seconds is not None and float(packet.pts * packet.time_base) > seconds:
                return
            packet.stream = self._audio
            self._out.mux(packet)
            self._next = next(self._packets, None)

    def write(self, image: np.ndarray) -> None:
        if self.folder:
            image_io.save_image(image, self.path / f"frame_{self.count:06d}.png")
            self.count += 1
            return
        av = require()
        frame = av.VideoFrame.from_ndarray(image_io.to_uint8(np.asarray(image)), format="rgb24")
        frame.pts = self.count
        frame.time_base = 1 / self._rate
        self._mux_audio_until(float(self.count / self._rate))
        self._out.mux(self._video.encode(frame))
        self.count += 1

    def close(self) -> Path:
        """Flushes the encoder, copies the rest of the audio, and renames the file into place."""
        if self.folder:
            return self.path
        try:
            self._out.mux(self._video.encode(None))
            self._mux_audio_until(None)
            self._out.close()
        except BaseException:
            self.abort()
            raise
        finally:
            if self._in is not None:
                self._in.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self.folder:
            return
        for closing in (self._out, self._in):
            try:
                if closing is not None:
                    closing.close()
            except Exception:
                pass
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> "FilmWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
