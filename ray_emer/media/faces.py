"""Face crops with OpenCV's bundled Haar cascade (the published best variant feeds faces).

A frame with a detected face becomes the largest face box (plus a margin), squared and
resized; a frame without one falls back to the whole frame (resize + centre crop), and
the caller records how many frames had a face. Detection runs on a downscaled grey
copy, so full-resolution frames never leave the decoding step.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ray_emer.media.video import resize_square

DETECT_MAX_SIDE = 320  # detection resolution: Haar is slow and gains nothing above this


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV Haar cascade not found at {path} (opencv-python-headless<5 ships it)")
    return cascade


def detect_face(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest face in an RGB ``[H, W, 3]`` frame as ``(x, y, w, h)`` in frame pixels, or None."""
    h, w = frame.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    boxes = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(boxes) == 0:
        return None
    x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
    return tuple(int(round(v / scale)) for v in (x, y, bw, bh))


def crop_box(frame: np.ndarray, box: tuple[int, int, int, int], size: int, margin: float = 0.25) -> np.ndarray:
    """Square crop around ``box`` (grown by ``margin`` per side, clipped to the frame) -> ``[size, size, 3]``."""
    h, w = frame.shape[:2]
    x, y, bw, bh = box
    side = int(max(bw, bh) * (1 + 2 * margin))
    cx, cy = x + bw // 2, y + bh // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    x1, y1 = min(w, x0 + side), min(h, y0 + side)
    return resize_square(np.ascontiguousarray(frame[y0:y1, x0:x1]), size)


def face_frames(raw: list[np.ndarray], size: int, detector=detect_face) -> tuple[np.ndarray, int]:
    """Raw frames -> (``[T, size, size, 3]`` uint8 face crops or whole frames, frames with a face)."""
    out, found = [], 0
    for frame in raw:
        box = detector(frame)
        if box is None:
            out.append(resize_square(frame, size))
        else:
            out.append(crop_box(frame, box, size))
            found += 1
    return np.stack(out).astype(np.uint8), found
