"""Films: PyAV in and out, DIS flow, and `jaxstyle video` on synthetic films made here with PyAV
(a window panning over a photo, with a sine-tone audio stream), so that the true motion is known."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from jaxstyle import flow, image_io, video_io, warp

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "images" / "tubingen.jpg"
FH, FW, STEP = 48, 64, 3  # frame size and the pan's pixels per frame (content moves left)


def photo() -> np.ndarray:
    if PHOTO.exists():
        return image_io.to_uint8(image_io.load_image(PHOTO, 128))
    # Without the shared images: smooth random texture (DIS needs structure to track).
    rng = np.random.default_rng(0)
    small = rng.uniform(size=(12, 16, 3)).astype(np.float32)
    return image_io.to_uint8(image_io.resize(small, 96, 128))


def pan_frames(n: int, step: int = STEP) -> list[np.ndarray]:
    """n frames of FH x FW: a window sliding right over the photo by ``step`` px a frame."""
    img = photo()
    return [np.ascontiguousarray(img[20:20 + FH, 4 + step * t:4 + step * t + FW]) for t in range(n)]


def make_film(path: Path, frames: list[np.ndarray], rate: int = 12, audio: bool = True) -> Path:
    """An H.264 MP4 of ``frames`` (uint8) at ``rate`` fps, with an AAC sine tone as long."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        video.options = {"crf": "8"}
        if audio:
            sound = out.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio:
            n = int(16000 * len(frames) / rate)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)[None]
            for s in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[:, s:s + 1024], format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = 16000, s
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        audio = [p for p in c.demux(audio=0) if p.dts is not None] if c.streams.audio else []
    return dict(frames=frames, size=(v.codec_context.height, v.codec_context.width),
                rate=v.average_rate, audio=len(audio), audio_bytes=[bytes(p) for p in audio])


# ----------------------------------------------------------------------------------------------
# Files and flow.


def test_film_round_trip_keeps_frames_rate_and_audio_packets(tmp_path):
    src = make_film(tmp_path / "in.mp4", pan_frames(6), rate=12)
    info = video_io.probe(src)
    assert (info.height, info.width, info.frame_rate, info.num_frames, info.audio) == (
        FH, FW, Fraction(12), 6, True)
    frames = list(video_io.read_frames(src))
    assert len(frames) == 6 and frames[0].shape == (FH, FW, 3) and frames[0].dtype == np.float32
    # Near the source pixels: ~3 levels, mostly 4:2:0 chroma subsampling of a detailed photo.
    assert np.mean(np.abs(frames[2] * 255 - pan_frames(6)[2])) < 6
    out = tmp_path / "out.mp4"
    with video_io.FilmWriter(out, FH, FW, info.frame_rate, audio_from=src) as w:
        for f in frames:
            w.write(f)
    got, want = streams(out), streams(src)
    assert (got["frames"], got["size"], got["rate"]) == (6, (FH, FW), Fraction(12))
    assert got["audio"] == want["audio"] > 0
    assert got["audio_bytes"] == want["audio_bytes"]  # copied, not re-encoded
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_aborted_film_leaves_the_old_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with video_io.FilmWriter(out, FH, FW) as w:
            w.write(np.zeros((FH, FW, 3), np.float32))
            raise RuntimeError("stop")
    assert out.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_dis_flow_recovers_the_pan():
    frames = [f.astype(np.float32) / 255 for f in pan_frames(2)]
    fwd, bwd = flow.DISFlow().pair(*frames)
    inner = (slice(8, -8), slice(8, -8))  # away from the border the pan leaves
    assert abs(np.median(fwd[inner][..., 0]) + STEP) < 0.25
    assert abs(np.median(bwd[inner][..., 0]) - STEP) < 0.25
    assert np.all(np.abs(np.median(fwd[inner][..., 1])) < 0.25)
    # Warping the first frame by the backward flow gives the second where the mask says visible.
    mask = np.asarray(warp.occlusion_mask(fwd, bwd))
    warped = np.asarray(warp.warp(frames[0], bwd))
    err = np.abs(warped - frames[1]).mean(-1)
    assert mask.mean() > 0.75 and np.mean(err[mask > 0]) < 0.03
