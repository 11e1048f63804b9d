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


class CountingFace:
    """The bundled font, counting the characters it is asked to measure."""

    def __init__(self, size: int) -> None:
        self.face = images.font(size)
        self.measured = 0

    def getlength(self, text: str) -> float:
        self.measured += len(text)
        return self.face.getlength(text)


def clip_one_character_at_a_time(
    text: str, face: CountingFace, width: int, force_ellipsis: bool = False
) -> str:
    """What the sandbox did until 2026-12-07: the reference for what a clip keeps."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if (text or force_ellipsis) else text


@pytest.mark.parametrize(
    "text",
    [
        "x" * 500,
        "Wide shot of a city skyline at dawn",
        "ẞtraße-naïve-façade-" * 12,
        "日本語のテキスト" * 20,
        "a\u0301" * 90,
    ],
)
@pytest.mark.parametrize("width", [0, 7, 100, 301])
def test_a_clip_keeps_what_dropping_one_character_at_a_time_kept(text: str, width: int) -> None:
    face = CountingFace(20)
    assert images._clip(text, face, width) == clip_one_character_at_a_time(text, CountingFace(20), width)  # type: ignore[arg-type]


def wrap_as_before(text: str, size: int, max_width: int, max_lines: int) -> list[str]:
    """The word wrap as it was until 2026-12-07, clipping one character at a time: the reference."""
    face = CountingFace(size)
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if face.getlength(candidate) <= max_width or not current:
            current = clip_one_character_at_a_time(candidate, face, max_width)
            continue
        lines.append(current)
        current = clip_one_character_at_a_time(word, face, max_width)
        if len(lines) == max_lines:
            break
    if current and len(lines) < max_lines:
        lines.append(current)
        current = ""
    if current or len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = clip_one_character_at_a_time(lines[-1] + "…", face, max_width, force_ellipsis=True)
    return lines


@pytest.mark.parametrize(
    "text",
    [
        "Wide shot of a city skyline at dawn, golden hour lighting " * 6,
        "a " + "x" * 300 + " short words after a long one " + "y" * 120,
        "Fahrräder  an\tder Laterne,\nim Morgenlicht " * 5,
        "漢字かな交じり文 " * 30,
        "",
    ],
)
@pytest.mark.parametrize(("size", "max_width", "max_lines"), [(20, 300, 4), (12, 90, 2), (40, 1200, 3)])
def test_wrapping_keeps_the_lines_it_kept_before(
    text: str, size: int, max_width: int, max_lines: int
) -> None:
    assert images.wrap_text(text, size, max_width, max_lines) == wrap_as_before(
        text, size, max_width, max_lines
    )


def test_clipping_a_prompt_long_word_measures_a_few_short_strings() -> None:
    """A 10,000-character word (the longest prompt) clipped to a 1K card's line after measuring strings
    about as long as what fits, not the whole word once per character."""
    word = "p" * 10_000
    face = CountingFace(40)
    clipped = images._clip(word, face, 900)  # type: ignore[arg-type]
    assert clipped.endswith("…") and face.face.getlength(clipped) <= 900
    assert face.face.getlength(clipped[:-1] + "p…") > 900  # the longest that fits
    fitting = len(clipped)
    # Dropping one character at a time measured 50 million characters here (minutes of a core).
    assert face.measured < 40 * fitting, face.measured


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
