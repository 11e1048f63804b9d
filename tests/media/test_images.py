"""probe_image against real files made with Pillow, and the drawing helpers the sandbox uses."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from nanogen.media import images


def encode(fmt: str, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_probe_accepts_the_four_formats(fmt: str, mime: str) -> None:
    info = images.probe_image(encode(fmt, (64, 48)), max_pixels=10_000)
    assert info == images.ImageInfo(mime, 64, 48, fmt.lower())


def test_probe_reads_the_first_frame_of_an_animated_gif() -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    info = images.probe_image(buffer.getvalue(), max_pixels=10_000)
    assert (info.mime_type, info.width, info.height) == ("image/gif", 30, 20)
    assert images.open_rgb(buffer.getvalue()).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    "data",
    [b"", b"this is text, not a picture", b"%PDF-1.4\n", encode("BMP"), encode("PNG")[:60]],
    ids=["empty", "text", "pdf", "bmp", "truncated-png"],
)
def test_probe_refuses_what_is_not_an_image(data: bytes) -> None:
    with pytest.raises(ValueError) as info:
        images.probe_image(data, max_pixels=10_000_000)
    assert str(info.value)  # a human-readable reason


def test_probe_refuses_too_many_pixels() -> None:
    with pytest.raises(ValueError, match="over the limit"):
        images.probe_image(encode("PNG", (100, 100)), max_pixels=9_999)


def test_probe_refuses_a_pixel_bomb_from_its_header() -> None:
    # 9000 x 9000 is under Pillow's own bomb limit: our limit must stop it before decoding.
    with pytest.raises(ValueError, match="over the limit"):
        images.probe_image(png_header(9000, 9000), max_pixels=64_000_000)
    # 100000 x 100000 trips Pillow's DecompressionBombError, which must also become a ValueError.
    with pytest.raises(ValueError):
        images.probe_image(png_header(100_000, 100_000), max_pixels=10**12)


def test_open_rgb_flattens_transparency() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(buffer, "PNG")
    assert images.open_rgb(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_fit_helpers_give_the_exact_size() -> None:
    source = Image.new("RGB", (300, 100), "red")
    assert images.fit_cover(source, (64, 64)).size == (64, 64)
    padded = images.fit_contain(source, (64, 64))
    assert padded.size == (64, 64)
    assert padded.getpixel((32, 2)) == (0, 0, 0)  # letterbox bar
    assert padded.getpixel((32, 32)) == (255, 0, 0)


def test_wrap_text_fits_the_width_and_marks_cuts() -> None:
    text = "word " * 200
    lines = images.wrap_text(text, 20, 300, 4)
    assert len(lines) == 4
    assert lines[-1].endswith("…")
    assert all(images.font(20).getlength(line) <= 300 for line in lines)
    assert images.wrap_text("short", 20, 300, 4) == ["short"]
    # A single word wider than the box is clipped, not overflowing.
    (long_line,) = images.wrap_text("x" * 500, 20, 100, 1)
    assert images.font(20).getlength(long_line) <= 100


def test_compose_grid_shows_every_input() -> None:
    canvas = Image.new("RGB", (400, 200), "white")
    inputs = [Image.new("RGB", (50, 50), c) for c in ("red", "lime", "blue")]
    images.compose_grid(canvas, inputs, (0, 0, 400, 200), gap=4)
    colours = {colour for _, colour in canvas.getcolors(maxcolors=100_000) or []}
    assert {(255, 0, 0), (0, 255, 0), (0, 0, 255)} <= colours


def test_gradient_and_png_are_deterministic(tmp_path: Path) -> None:
    corners = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    images.save_png(images.gradient((320, 200), corners), a)
    images.save_png(images.gradient((320, 200), corners), b)
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as picture:
        assert picture.size == (320, 200)
        left, right = picture.getpixel((0, 0)), picture.getpixel((319, 0))
    assert left[0] > 200 and right[1] > 200  # type: ignore[index]
