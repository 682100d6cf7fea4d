"""Optical flow between a film's frames: OpenCV's DIS (Kroeger et al. 2016, "Fast Optical Flow
using Dense Inverse Search"), forward and backward, computed once per pair on the input frames.

The flows follow `jaxstyle.warp`'s conventions: float32[H, W, 2] in pixels (dx, dy); forward
(t-1 → t) on frame t-1's grid, backward (t → t-1) on frame t's. OpenCV is an optional dependency
(``pip install "jaxstyle[video]"``).
"""

from __future__ import annotations

import numpy as np

from jaxstyle.errors import JaxstyleError

PRESETS = ("ultrafast", "fast", "medium")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise JaxstyleError('video needs PyAV and OpenCV: pip install "jaxstyle[video]"') from None
    return cv2


def _grey(frame: np.ndarray, cv2) -> np.ndarray:
    rgb = np.clip(np.rint(np.asarray(frame, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class DISFlow:
    """DIS optical flow with one of OpenCV's presets ("medium" by default: a finer search than
    "fast" for about twice its time, still a few ms a pair at 256 px)."""

    def __init__(self, preset: str = "medium"):
        cv2 = _cv2()
        if preset not in PRESETS:
            raise JaxstyleError(f"flow preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(
            getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))

    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The flow from ``source`` to ``target`` (float32[H, W, 3] in [0, 1]) on ``source``'s
        grid: source(x) ≈ target(x + flow(x)). -> float32[H, W, 2]."""
        flow = self._dis.calc(_grey(source, self._cv2), _grey(target, self._cv2), None)
        return np.asarray(flow, np.float32)

    def pair(self, previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forward t-1 → t, backward t → t-1) between two consecutive frames."""
        return self(previous, current), self(current, previous)
