"""Images with Pillow: proving that fetched bytes are an image, and the drawing the sandbox needs.

:func:`probe_image` is the gate for untrusted input: it reads the header, refuses oversized images
before decoding any pixels, then decodes the (first) frame to prove the file is really an image.
The other helpers are small drawing tools: fitting inputs to a size, wrapped text, badges, grids.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom

# Pillow format name -> media type; only these are accepted as inputs.
FORMATS: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


@dataclass(frozen=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int
    format: str  # lower case: "png", "jpeg", "webp" or "gif"


def probe_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Prove ``data`` is a PNG, JPEG, WebP or GIF of at most ``max_pixels``; ValueError says why not."""
    if not data:
        raise ValueError("the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=tuple(FORMATS))
    except Image.DecompressionBombError as exc:
        raise ValueError(f"the image is too large to decode safely ({exc})") from exc
    except Exception as exc:  # Pillow raises many types for garbage input
        raise ValueError("the file is not a PNG, JPEG, WebP or GIF image") from exc
    with image:
        fmt = image.format or ""
        width, height = image.size
        # The header is read; refuse before any pixel data is decoded.
        if width < 1 or height < 1:
            raise ValueError(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ValueError(
                f"the image is {width}x{height} ({width * height:,} pixels), over the limit of {max_pixels:,}"
            )
        try:
            image.load()  # decodes the first frame only (GIF, animated WebP)
        except Exception as exc:
            raise ValueError(f"the {fmt} image is damaged or truncated: {exc}") from exc
    return ImageInfo(FORMATS[fmt], width, height, fmt.lower())


def open_rgb(data: bytes, background: RGB = (255, 255, 255)) -> Image.Image:
    """Decode the first frame as upright RGB, flattening any transparency onto ``background``."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        upright = ImageOps.exif_transpose(image)
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return upright.convert("RGB")


def fit_cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale and centre-crop ``image`` so it fills ``size`` exactly."""
    return ImageOps.fit(image, size, Image.Resampling.BILINEAR)


def fit_contain(image: Image.Image, size: tuple[int, int], background: RGB = (0, 0, 0)) -> Image.Image:
    """Scale ``image`` to fit inside ``size`` and letterbox it with ``background``."""
    return ImageOps.pad(image, size, Image.Resampling.BILINEAR, color=background)


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels: no font files needed."""
    return ImageFont.load_default(size=max(size, 6))


def wrap_text(text: str, size: int, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; the last line ends in "…" when text is cut."""
    face = font(size)
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if face.getlength(candidate) <= max_width or not current:
            current = _clip(candidate, face, max_width)
            continue
        lines.append(current)
        current = _clip(word, face, max_width)
        if len(lines) == max_lines:
            break
    if current and len(lines) < max_lines:
        lines.append(current)
        current = ""
    if current or len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _clip(lines[-1] + "…", face, max_width, force_ellipsis=True)
    return lines


def _clip(
    text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, force_ellipsis: bool = False
) -> str:
    """Shorten one over-long word (or line) to ``width`` pixels."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if (text or force_ellipsis) else text


def draw_text_block(image: Image.Image, text: str, box: Box, size: int, fill: RGB) -> None:
    """Draw ``text`` wrapped into ``box``, as many lines as fit, in the bundled font."""
    left, top, right, bottom = box
    line_height = int(size * 1.25)
    max_lines = max(1, (bottom - top) // line_height)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(wrap_text(text, size, right - left, max_lines)):
        draw.text((left, top + i * line_height), line, font=font(size), fill=fill)


def draw_badge(image: Image.Image, xy: tuple[int, int], text: str, size: int, fill: RGB, ink: RGB) -> int:
    """Draw a rounded label at ``xy``; returns its width so badges can be laid out in a row."""
    draw = ImageDraw.Draw(image)
    pad = max(2, size // 3)
    width = int(font(size).getlength(text)) + 2 * pad
    x, y = xy
    draw.rounded_rectangle((x, y, x + width, y + size + 2 * pad), radius=pad, fill=fill)
    draw.text((x + pad, y + pad), text, font=font(size), fill=ink)
    return width


def grid_cells(count: int, box: Box, gap: int) -> list[Box]:
    """Split ``box`` into ``count`` cells in a near-square grid, row by row."""
    left, top, right, bottom = box
    cols = 1
    while cols * cols < count:
        cols += 1
    if (right - left) < (bottom - top):  # tall boxes: fewer columns, more rows
        cols = max(1, count // cols) if count > 2 else 1
    rows = -(-count // cols)
    cell_w = max(1, (right - left - gap * (cols - 1)) // cols)
    cell_h = max(1, (bottom - top - gap * (rows - 1)) // rows)
    cells = []
    for i in range(count):
        row, col = divmod(i, cols)
        x, y = left + col * (cell_w + gap), top + row * (cell_h + gap)
        cells.append((x, y, x + cell_w, y + cell_h))
    return cells


def compose_grid(image: Image.Image, inputs: Sequence[Image.Image], box: Box, gap: int) -> None:
    """Paste ``inputs`` into ``box`` as a grid, each letterboxed so nothing is cropped away."""
    background = (24, 24, 28)
    for source, cell in zip(inputs, grid_cells(len(inputs), box, gap), strict=False):
        size = (cell[2] - cell[0], cell[3] - cell[1])
        image.paste(fit_contain(source, size, background), cell[:2])


def gradient(size: tuple[int, int], corners: Sequence[RGB]) -> Image.Image:
    """A smooth four-corner gradient (top-left, top-right, bottom-left, bottom-right).

    Interpolated on a 16x16 grid with numpy and upscaled, so even 4K costs milliseconds.
    """
    c = np.array(corners, dtype=np.float32).reshape(2, 2, 3)
    t = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    top = c[0, 0] + (c[0, 1] - c[0, 0]) * t[:, None]
    bottom = c[1, 0] + (c[1, 1] - c[1, 0]) * t[:, None]
    grid = top[None, :, :] + (bottom - top)[None, :, :] * t[:, None, None]
    small = Image.fromarray(grid.round().astype(np.uint8), "RGB")
    return small.resize(size, Image.Resampling.BILINEAR)


def save_png(image: Image.Image, path: Path, compress_level: int = 1) -> None:
    """PNG without timestamps or metadata, so equal pixels give equal bytes; level 1 keeps 4K fast."""
    image.save(path, format="PNG", compress_level=compress_level)
