import struct
import zlib

import cv2
import numpy as np
import pytest

from pipeline.features import images
from pipeline.features.images import BadImage, decode_image, header_size


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_header_size_matches_the_decoded_image(tmp_path, ext):
    img = np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok and header_size(buf.tobytes()) == (37, 45)
    p = tmp_path / f"x{ext}"
    p.write_bytes(buf.tobytes())
    assert decode_image(str(p)).shape == (45, 37, 3)


def test_jpeg_size_found_past_large_metadata():
    ok, buf = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8))
    data = buf.tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 60002) + b"\0" * 60000    # a 60 KB EXIF-like segment first
    assert header_size(data[:2] + app1 + data[2:]) == (30, 20)


def giant_png(w, h):
    """A valid PNG of w x h black pixels: a few hundred KB on disk, w * h * 3 bytes decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z, row, parts = zlib.compressobj(9), b"\0" * (1 + 3 * w), []
    for _ in range(h):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_pixel_bomb_refused_before_decoding(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    p.write_bytes(giant_png(8000, 8000))                   # 64 MP: 192 MB decoded, ~190 KB on disk
    assert p.stat().st_size < 400_000
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("decoded despite its header"))
    with pytest.raises(BadImage, match=r"8000 x 8000 = 64,000,000 pixels, more than max_image_pixels 50,000,000"):
        decode_image(str(p))


def test_pixel_limit_can_be_raised(tmp_path):
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(BadImage, match="120 x 100"):
        decode_image(str(p), max_pixels=5000)
    assert decode_image(str(p), max_pixels=12000).shape == (100, 120, 3)


@pytest.mark.parametrize("name,content,reason", [
    ("x.jpg", b"", "zero-byte"), ("x.jpg", b"not an image at all", "not a PNG, JPEG, BMP or WebP"),
    ("g.bmp", b"BM garbage", "not a PNG, JPEG, BMP or WebP"),
    ("t.jpg", cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()[:-20], "truncated JPEG")])
def test_bad_image_files(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        decode_image(str(p))


def test_truncated_png(tmp_path):
    ok, buf = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "t.png").write_bytes(buf.tobytes()[:-30])
    with pytest.raises(BadImage, match="truncated PNG"):
        decode_image(str(tmp_path / "t.png"))


def _jpeg_with_late_frame_header(w, h) -> bytes:
    """A valid JPEG of w x h whose frame header (SOF) comes after 70 KB of comment segments."""
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = buf.tobytes()
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):                # find SOF0/SOF2 and patch its size
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data = data[:i + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[i + 9:]
    comment = b"\xff\xfe" + (65535).to_bytes(2, "big") + b"x" * 65533
    return data[:2] + comment * 2 + data[2:]


def test_the_real_format_decides_and_the_whole_header_is_read(tmp_path):
    late = tmp_path / "late.jpg"
    late.write_bytes(_jpeg_with_late_frame_header(20000, 20000))       # 400 MP declared after 128 KB
    with pytest.raises(BadImage, match="20000 x 20000"):
        decode_image(str(late))
    for ext in (".tiff", ".gif"):                                       # formats OpenCV decodes, named .png
        ok, buf = cv2.imencode(ext, np.zeros((16, 16, 3), np.uint8)) if ext == ".tiff" else (True, np.frombuffer(
            b"GIF89a\x10\x00\x10\x00\x00\x00\x00;", np.uint8))
        (tmp_path / f"x{ext}.png").write_bytes(buf.tobytes())
        with pytest.raises(BadImage, match="not a PNG, JPEG, BMP or WebP"):
            decode_image(str(tmp_path / f"x{ext}.png"))
    ok, buf = cv2.imencode(".png", np.zeros((4, 6, 3), np.uint8))
    (tmp_path / "png.jpg").write_bytes(buf.tobytes())                   # a PNG named .jpg is read as a PNG
    assert decode_image(str(tmp_path / "png.jpg")).shape == (4, 6, 3)


def test_a_fifo_is_refused_unopened(tmp_path):
    import os
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(BadImage, match="not a regular file"):
        decode_image(str(tmp_path / "f.png"))
