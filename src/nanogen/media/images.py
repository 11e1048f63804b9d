"""Images with Pillow: proving that untrusted bytes are an image in bounded memory, and the drawing
the sandbox needs.

:func:`probe_image` is the gate for untrusted input: it reads the header, refuses oversized images
before decoding any pixels, then proves the (first) frame decodes without holding it at full size
where the format allows: a JPEG is decoded at 1/8 scale (``draft``), a WebP by libwebp scaled to a
thumbnail (:mod:`nanogen.media.webp`), a PNG's pixel stream is inflated and its rows checked in 1 MiB
pieces. :func:`open_rgb` decodes to the size the caller needs, not the file's. Every decode reserves
its worst case from one process-wide :data:`DECODE_BUDGET` first (:mod:`nanogen.media.budget`), so
memory stays bounded whatever clients send and however many decode at once.

The other helpers are small drawing tools: fitting inputs to a size, wrapped text, badges, grids.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps

from nanogen.media import webp
from nanogen.media.budget import MIB, DecodeBudget

RGB = tuple[int, int, int]
T = TypeVar("T")
Box = tuple[int, int, int, int]  # left, top, right, bottom

# Pillow format name -> media type; only these are accepted as inputs. Pillow's JPEG plugin reports a
# JPEG with a multi-picture segment (most phone photos: a depth map or a preview after the picture) as
# "MPO": it is a JPEG whose first picture is the image. The PNG plugin reports an animated PNG as "PNG",
# WebP and GIF have no other names.
FORMATS: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}

#: Bytes that image decodes may hold at once in this process (a decode larger than this runs alone).
DECODE_BUDGET = DecodeBudget(256 * MIB)

_PIECE = MIB  # a PNG's pixel stream is checked this much at a time
_SLACK = 16 * MIB  # decoder state besides the pixels, and strips while reducing


@dataclass(frozen=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int
    format: str  # lower case: "png", "jpeg", "webp" or "gif" (an MPO is "jpeg")


def _sniff(data: bytes) -> str:
    """The format the first bytes announce (Pillow's name); ValueError for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise ValueError("the file is not a PNG, JPEG, WebP or GIF image")


class _Source:
    """An image file whose header has been read: its format and size, and a way to decode it."""

    def __init__(self, data: bytes) -> None:
        if not data:
            raise ValueError("the file is empty")
        self.data = data
        self.kind = _sniff(data)
        self.image: ImageFile.ImageFile | None = None
        self.bitstream: webp.Bitstream | None = None
        self.decoder = webp.decoder() if self.kind == "WEBP" else None
        try:
            if self.decoder is not None:
                self.bitstream = webp.parse(data)
                self.format, self.size = "WEBP", (self.bitstream.width, self.bitstream.height)
                return
            if self.kind == "WEBP":  # no libwebp of our own: Pillow's decoder, reserved at its full cost
                webp.parse(data)  # its size, before Pillow allocates canvases for it
            self.image = Image.open(io.BytesIO(data), formats=(self.kind,))
        except Image.DecompressionBombError as exc:
            raise ValueError(f"the image is too large to decode safely ({exc})") from exc
        except ValueError:
            raise
        except Exception as exc:  # Pillow raises many types for garbage input
            raise ValueError(f"the file is not a valid {self.kind} image") from exc
        self.format, self.size = self.image.format or self.kind, self.image.size

    def close(self) -> None:
        if self.image is not None:
            self.image.close()

    def check_size(self, max_pixels: int) -> None:
        width, height = self.size
        if width < 1 or height < 1:
            raise ValueError(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ValueError(
                f"the image is {width}x{height} ({width * height:,} pixels), over the limit of {max_pixels:,}"
            )

    @property
    def orientation(self) -> int:
        """The EXIF orientation (1: upright; a damaged EXIF block is drawn as stored)."""
        # Only what the header holds: Pillow's getexif() decodes a whole PNG to look after its pixels.
        if self.image is not None and self.kind == "JPEG":
            raw: bytes | memoryview | None = self.image.info.get("exif")
        elif self.image is not None:
            raw = self.image.info.get("exif") if self.kind == "PNG" else None
        else:
            raw = self.bitstream.exif if self.bitstream is not None else None
        if not raw:
            return 1
        try:
            exif = Image.Exif()
            exif.load(bytes(raw))
            value = exif.get(0x0112, 1)
        except Exception:
            return 1
        return value if isinstance(value, int) and value in range(1, 9) else 1

    # -- what decoding costs, from the header (an upper bound of what the decoder holds)
    def _jpeg_cost(self, scale: int) -> int:
        assert self.image is not None
        width, height = self.size
        out = math.ceil(width / scale) * math.ceil(height / scale) * 4 + 64 * width
        # A progressive or multi-scan JPEG keeps every DCT coefficient of the picture (2 bytes each)
        # until the last scan, whatever the output scale.
        if self.image.info.get("progressive") or _jpeg_scans(self.data) > 1:
            layers = getattr(self.image, "layer", None) or [(0, 1, 1, 0)] * 4
            h_max = max(h for _, h, _, _ in layers) or 1
            v_max = max(v for _, _, v, _ in layers) or 1
            out += sum(
                (math.ceil(width * h / h_max / 8) + 2) * (math.ceil(height * v / v_max / 8) + 2) * 128
                for _, h, v, _ in layers
            )
        return out + _SLACK

    def _full_cost(self) -> int:
        """A Pillow decode of the whole frame: its bytes per pixel, and a conversion if one follows."""
        assert self.image is not None
        width, height = self.size
        if self.kind == "WEBP":  # Pillow's animation decoder and its copies: ~15 bytes a pixel
            return 16 * width * height + _SLACK
        per_pixel = 1 if self.image.mode in ("1", "L", "P") else 4
        if self.image.mode not in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX"):
            per_pixel *= 3  # 16-bit and other modes: converted at full size
        return per_pixel * width * height + _SLACK

    # -- decoding
    def verify(self) -> None:
        """Prove the first frame decodes, holding as little of it as the format allows."""
        if self.bitstream is not None and self.decoder is not None:
            with DECODE_BUDGET.hold(self.bitstream.decode_bytes + _SLACK):
                self.decoder.decode(self.bitstream, _thumbnail(self.bitstream.frame))
            return
        assert self.image is not None
        if self.kind == "PNG":
            _check_png_pixels(self.data)
            return
        if self.kind == "JPEG":
            self.image.draft(None, (1, 1))  # 1/8 scale: every coefficient is still decoded
            cost = self._jpeg_cost(8)
        else:
            cost = self._full_cost()
        with DECODE_BUDGET.hold(cost):
            self.image.load()  # the first frame only (GIF, animated PNG)

    def decode(self, cover: tuple[int, int] | None, finish: Callable[[Image.Image], T], extra: int = 0) -> T:
        """``finish`` of the first frame, upright, at least ``cover`` in both directions when that is
        smaller than the file (``None``: full size). ``finish`` runs within the reservation, which
        includes ``extra`` bytes for what it makes."""
        width, height = self.size
        orientation = self.orientation
        if cover is not None and orientation in (5, 6, 7, 8):
            cover = (cover[1], cover[0])  # stored sideways: cover the transposed size
        ratio = 1.0 if cover is None else min(1.0, max(cover[0] / width, cover[1] / height))
        need = (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio)))
        copies = 3 * need[0] * need[1] * 4 + extra  # the reduced picture, turned upright, flattened
        if self.bitstream is not None and self.decoder is not None:
            frame = self.bitstream.frame
            size = (max(1, math.ceil(frame[0] * ratio)), max(1, math.ceil(frame[1] * ratio)))
            with DECODE_BUDGET.hold(self.bitstream.decode_bytes + copies + _SLACK):
                return finish(_upright(self.decoder.decode(self.bitstream, size), orientation))
        assert self.image is not None
        image: Image.Image = self.image
        if self.kind == "JPEG":
            self.image.draft(None, need)  # decodes at 1/2, 1/4 or 1/8 when that still covers
            cost = self._jpeg_cost(max(1, width // image.width))
        else:
            cost = self._full_cost()
        with DECODE_BUDGET.hold(cost + copies):
            image.load()
            factor = max(1, min(image.width // need[0], image.height // need[1]))
            if factor > 1:
                image = _reduce(image, factor)
            return finish(_upright(image, orientation))


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image`` made ``factor`` times smaller (box filter), holding little more than the result."""
    width, height = image.size
    if image.mode in ("1", "P", "PA"):  # palette indices cannot be averaged
        target = (math.ceil(width / factor), math.ceil(height / factor))
        return image.resize(target, Image.Resampling.NEAREST)
    if image.mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "I", "F"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    if image.mode not in ("LA", "RGBA"):
        return image.reduce(factor)
    # Pillow reduces these premultiplied, converting the whole picture first: a strip at a time instead.
    reduced = Image.new(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
    rows = factor * max(1, 8 * MIB // (width * 4 * factor))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        reduced.paste(strip.reduce(factor), (0, top // factor))
    return reduced


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as its EXIF orientation says (read from the file: a reduced copy has none)."""
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker: not stuffing, a restart or fill


def _jpeg_scans(data: bytes) -> int:
    """How many scans (SOS segments) the first picture has, counted up to two; 2 when unsure."""
    at, scans = 2, 0
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return 2
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # end of the picture
            return scans
        length = struct.unpack_from(">H", data, at + 2)[0]
        at += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans > 1:
                return scans
            found = _MARKER.search(data, at)  # the entropy-coded data ends at the next marker
            if found is None:
                return scans
            at = found.start()
    return scans


def _thumbnail(size: tuple[int, int]) -> tuple[int, int]:
    """A small size of the same shape: what a proof of decoding needs to write."""
    scale = min(1.0, 64 / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_rows(data: bytes) -> list[tuple[int, int]]:
    """(rows, bytes per row including its filter byte) of each pass of the pixel stream."""
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    bits = _CHANNELS.get(colour, 4) * depth
    if not interlace:
        return [(height, 1 + (width * bits + 7) // 8)]
    passes = []
    for x0, y0, dx, dy in _ADAM7:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            passes.append((rows, 1 + (cols * bits + 7) // 8))
    return passes


def _idat(data: bytes) -> Iterator[memoryview]:
    view, at = memoryview(data), 8
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IDAT":
            yield view[at + 8 : at + 8 + size]
        elif kind == b"IEND":
            return
        at += 12 + size


def _inflated(data: bytes, total: int) -> Iterator[bytes]:
    """The pixel stream in pieces of at most 1 MiB, up to ``total`` bytes (more is never inflated)."""
    stream = zlib.decompressobj()
    produced = 0
    for chunk in _idat(data):
        pending: bytes | memoryview = chunk
        while pending and produced < total and not stream.eof:
            piece = stream.decompress(pending, min(_PIECE, total - produced))
            pending = stream.unconsumed_tail
            produced += len(piece)
            yield piece
        if produced >= total or stream.eof:
            return


def _check_png_pixels(data: bytes) -> None:
    """Inflate a PNG's pixel stream piece by piece: it must hold every row, each with a known filter."""
    layout = _png_rows(data)
    total = sum(rows * stride for rows, stride in layout)
    position = 0  # of the current piece in the stream
    index, start = 0, 0  # the current pass and where it starts
    try:
        for piece in _inflated(data, total):
            values = np.frombuffer(piece, np.uint8)
            end = position + len(piece)
            while index < len(layout):
                rows, stride = layout[index]
                stop = start + rows * stride
                first = start + -(-(max(position, start) - start) // stride) * stride
                last = min(end, stop)
                if first < last and values[first - position : last - position : stride].max() > 4:
                    raise ValueError("the PNG image is damaged: a row has an unknown filter")
                if stop > end:
                    break
                index, start = index + 1, stop
            position = end
    except zlib.error as exc:
        raise ValueError(f"the PNG image is damaged: {exc}") from None
    if position < total:
        raise ValueError("the PNG image is damaged or truncated: its pixel data ends early")


def probe_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Prove ``data`` is a PNG, JPEG, WebP or GIF of at most ``max_pixels``; ValueError says why not."""
    source = _Source(data)
    try:
        # The header is read; refuse before any pixel data is decoded.
        source.check_size(max_pixels)
        try:
            source.verify()
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"the {source.format} image is damaged or truncated: {exc}") from exc
    finally:
        source.close()
    width, height = source.size
    return ImageInfo(FORMATS[source.format], width, height, FORMATS[source.format].partition("/")[2])


_pool: list[ThreadPoolExecutor] = []


def _decode_pool() -> ThreadPoolExecutor:
    """The threads that prove images for the event loop: a few, so waiting decodes never take over
    the server's shared thread pool."""
    if not _pool:
        _pool.append(ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="nanogen-decode"))
    return _pool[0]


async def probe_image_async(data: bytes, max_pixels: int) -> ImageInfo:
    """:func:`probe_image` on the decode threads."""
    return await asyncio.get_running_loop().run_in_executor(_decode_pool(), probe_image, data, max_pixels)


def open_rgb(
    data: bytes, background: RGB = (255, 255, 255), cover: tuple[int, int] | None = None
) -> Image.Image:
    """Decode the first frame as upright RGB, flattening any transparency onto ``background``.

    With ``cover``, the picture is decoded (or reduced right after decoding) to about the smallest size
    that still covers ``cover`` in both directions, so a 64 MP input drawn into a small box costs the
    box, not the file. Its aspect ratio is kept.
    """

    def flatten(upright: Image.Image) -> Image.Image:
        if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
            rgba = upright.convert("RGBA")
            flat = Image.new("RGB", rgba.size, background)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return upright.convert("RGB")

    source = _Source(data)
    try:
        return source.decode(cover, flatten)
    finally:
        source.close()


def png_bytes(data: bytes) -> bytes:
    """The first frame, full size, as a PNG (for an engine that does not take the file's format)."""

    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    source = _Source(data)
    try:
        width, height = source.size
        return source.decode(None, encode, extra=4 * width * height)  # the PNG, at worst uncompressed
    finally:
        source.close()


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
        if not current:  # a line's first word: kept, clipped if it is wider than the line
            current = _clip(word, face, max_width)
            continue
        candidate = f"{current} {word}"
        if face.getlength(candidate) <= max_width:
            current = candidate
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
    keep = _fitting_prefix(text, face, width)
    if keep == len(text):
        return text
    text = text[: _fitting_prefix(text[:keep], face, width, "…")]
    return text + "…" if (text or force_ellipsis) else text


# A word or line of up to this many characters is measured whole first (one measurement when it fits).
FIRST_MEASURED_CHARS = 64


def _fitting_prefix(
    text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, suffix: str = ""
) -> int:
    """The length of the longest prefix of ``text`` that, followed by ``suffix``, is at most ``width``
    pixels wide: lengths doubled from FIRST_MEASURED_CHARS until one is too wide, then halved between,
    so a few short strings are measured whatever the text's length. (Dropping one character at a
    time measured the whole word once per character: a 10,000-character prompt's 1K image held a
    core for 154 s.)"""

    def fits(length: int) -> bool:
        return face.getlength(text[:length] + suffix) <= width

    fitting, too_long = 0, min(len(text), FIRST_MEASURED_CHARS)
    while fits(too_long):
        if too_long == len(text):
            return too_long
        fitting, too_long = too_long, min(too_long * 2, len(text))
    while too_long - fitting > 1:  # fitting fits (or is 0), too_long does not
        middle = (fitting + too_long) // 2
        fitting, too_long = (middle, too_long) if fits(middle) else (fitting, middle)
    return fitting


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
