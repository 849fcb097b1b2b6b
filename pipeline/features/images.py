"""One image file -> RGB uint8 pixels, refusing what is not a whole image or is too large.

The format is what the file's first bytes say, whatever its name: PNG, JPEG, BMP or WebP, whose
headers give the size, read before anything is decoded (the whole file is scanned for a JPEG's
frame header), so a small file that would decode to gigabytes (a 770 KB PNG of 16000 x 16000) is
refused at once. Any other format (TIFF, GIF, AVIF, ... named .png or not) is refused unread:
OpenCV would decode it in full first.
"""
from __future__ import annotations

import os
import stat
import struct

import cv2
import numpy as np

from .config import FeatureConfig

MAX_PIXELS = FeatureConfig.max_image_pixels   # the default: larger image files are bad images

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # start-of-frame markers (the rest carry no size)


class BadImage(Exception):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP or WebP file; None if it does not say."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:          # BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                bits = struct.unpack("<I", data[21:25])[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            return None
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:     # a header cut short: the decoder will say what is wrong
        return None
    return None


def _jpeg_size(data: bytes):
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                           # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0xDA:                           # scan data before any frame header: not a JPEG we read
            return None
        i += 2 + length
    return None


def decode_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image file as RGB uint8, whatever its mode; BadImage if it is not a whole image or
    has more than `max_pixels` pixels (checked from the header before decoding where it says)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):      # a FIFO would block the read forever
            raise BadImage(path, "not a regular file")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImage(path, f"cannot read ({e.strerror})") from None
    if data.size == 0:
        raise BadImage(path, "zero-byte file")
    raw = data.tobytes()
    size = header_size(raw)
    if size is None:
        raise BadImage(path, "not a PNG, JPEG, BMP or WebP file whose header gives its size (whatever its name "
                             "says); convert it to PNG")
    _check_pixels(path, *size, max_pixels)
    if raw[:2] == b"\xff\xd8" and not raw.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise BadImage(path, "truncated JPEG (no end-of-image marker)")
    if raw[:4] == b"\x89PNG" and b"IEND" not in raw[-16:]:
        raise BadImage(path, "truncated PNG (no IEND chunk)")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # grayscale, RGBA and palette all become 3-channel
    if img is None:
        raise BadImage(path, "not a readable image")
    _check_pixels(path, img.shape[1], img.shape[0], max_pixels)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_pixels(path, w, h, max_pixels):
    if w * h > max_pixels:
        raise BadImage(path, f"{w} x {h} = {w * h:,} pixels, more than max_image_pixels {max_pixels:,} "
                             "(raise it if the image is meant)")
