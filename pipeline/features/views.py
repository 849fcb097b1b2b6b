"""Augmented views, cached once: the notebook's ImageDataGenerator wish (horizontal_flip,
width_shift_range, height_shift_range), applied to the small image before the upscale.

A view spec is `none`, or a comma list of `flip` (the horizontal mirror) and `shiftN` (N views,
each shifted by up to --shift-range of the width and height and mirrored with probability 1/2, the
uncovered border filled with the nearest pixels, as Keras' fill_mode="nearest"). View 0 is always
the original. Shifts are seeded by (--views-seed, split, row, view), so a view does not depend on
batch size, shards or resumes; `predict` seeds an image's shifts by its pixels instead (`render_by_content`),
so an image gets the same views wherever it comes in a call.
"""
from __future__ import annotations

import hashlib
import re

import cv2
import numpy as np

from ..errors import SettingError

SPLIT_IDS = {"train": 0, "test": 1}
BY_CONTENT = 2        # in place of a split id: shifts seeded by the image's pixels (predict)


def parse_views(spec: str) -> list[str]:
    """View names, the original first: none -> [orig]; flip,shift2 -> [orig, flip, shift0, shift1]."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    flips = [i for i in items if i == "flip"]
    shifts = [int(m[1]) for m in (re.fullmatch(r"shift(\d+)", i) for i in items) if m]
    if items == ["none"]:
        return ["orig"]
    if len(flips) + len(shifts) != len(items) or len(flips) > 1 or len(shifts) > 1 or any(not 1 <= n <= 64 for n in shifts):
        raise SettingError("views", f"expected none, or a comma list of flip and shiftN (N in 1..64, once each), "
                           f"got {spec!r}", "FeatureConfig")
    return ["orig"] + (["flip"] if flips else []) + [f"shift{i}" for i in range(shifts[0] if shifts else 0)]


def canonical(names: list) -> str:
    """The spec of these view names (parse_views) in one spelling: none, flip, shiftN or flip,shiftN."""
    shifts = sum(n.startswith("shift") for n in names)
    parts = (["flip"] if "flip" in names else []) + ([f"shift{shifts}"] if shifts else [])
    return ",".join(parts) or "none"


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    h, w = img.shape[:2]
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


def render(images, names: list, shift_range: float, seed: int, split: str, first_row: int) -> list:
    """For each view, the list of images as that view shows them (rows first_row, first_row + 1, ...)."""
    return _render(images, names, shift_range, [[seed, SPLIT_IDS[split], first_row + i] for i in range(len(images))])


def render_by_content(images, names: list, shift_range: float, seed: int) -> list:
    """render's views for images that are no cache's rows: each image's shifts seeded by a hash of its
    pixels (and shape), so the same image always gets the same views."""
    def digest(img):
        h = hashlib.sha256(repr(img.shape).encode() + np.ascontiguousarray(img).tobytes()).digest()
        return int.from_bytes(h[:16], "little")
    return _render(images, names, shift_range, [[seed, BY_CONTENT, digest(img)] for img in images])


def _render(images, names: list, shift_range: float, seeds: list) -> list:
    """The views of images[i] with its shifts drawn from default_rng(seeds[i] + [view index])."""
    out = []
    for k, name in enumerate(names):
        if name == "orig":
            out.append(list(images))
        elif name == "flip":
            out.append([np.ascontiguousarray(img[:, ::-1]) for img in images])
        else:
            view = []
            for img, entropy in zip(images, seeds):
                rng = np.random.default_rng([*entropy, k])
                h, w = img.shape[:2]
                dx, dy = (int(round(v)) for v in rng.uniform(-shift_range, shift_range, 2) * (w, h))
                img = img[:, ::-1] if rng.random() < 0.5 else img
                view.append(_shift(np.ascontiguousarray(img), dx, dy))
            out.append(view)
    return out
