"""WebP without Pillow's animation decoder: the container read by hand, pixels from libwebp at any size.

Pillow opens every WebP with libwebp's animation decoder, which holds two full RGBA canvases, and then
copies the frame twice more: about 15 bytes per pixel, a gigabyte for a 2.5 KB lossless 8000x8000 file.
Here the container is parsed in Python (canvas size, and the first frame's bitstream of an animation),
and the bitstream is decoded by ``WebPDecode`` with libwebp's own scaler, straight to the size asked
for. What libwebp still holds while decoding is what the bitstream needs: a lossless (VP8L) picture
keeps 4 bytes per pixel (back-references reach anywhere above), a lossy one a few macroblock rows,
plus a byte per pixel for an alpha plane (up to 5 with a lossless-coded one).

The library is the libwebp already loaded by Pillow's ``_webp`` module (found in ``/proc/self/maps``),
else the system's ``libwebp``. Without either, :func:`decoder` is None and callers fall back to Pillow.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["Bitstream", "Decoder", "decoder", "parse"]

_ABI = 0x0209  # WEBP_DECODER_ABI_VERSION of libwebp 1.x; libwebp refuses another major version
_MODE_RGB, _MODE_RGBA = 0, 1
_STATUS = {
    1: "out of memory",
    2: "invalid parameter",
    3: "bitstream error",
    4: "unsupported feature",
    5: "suspended",
    6: "aborted",
    7: "not enough data",
}


@dataclass(frozen=True)
class Bitstream:
    """What :func:`parse` found: the canvas, and the bytes ``WebPDecode`` takes for the first frame."""

    width: int  # canvas
    height: int
    lossless: bool  # the first frame's picture is VP8L (4 bytes per pixel while decoding)
    alpha: bool
    animated: bool
    data: bytes | memoryview  # the whole file, or an animation's first frame (ALPH + VP8/VP8L chunks)
    frame: tuple[int, int]  # the size of what ``data`` decodes to
    exif: bytes | memoryview | None = None  # the EXIF chunk's payload, if any

    @property
    def decode_bytes(self) -> int:
        """An upper bound of what libwebp allocates to decode ``data`` (before any output)."""
        pixels = self.frame[0] * self.frame[1]
        if self.lossless:
            return 4 * pixels + 64 * self.frame[0]
        return (5 * pixels if self.alpha else 0) + 256 * self.frame[0]


def _u24(data: bytes | memoryview, at: int) -> int:
    return int.from_bytes(data[at : at + 3], "little")


def _chunks(data: bytes | memoryview, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """RIFF chunks in ``data[start:end]``: (fourcc, payload start, payload size)."""
    found = []
    at = start
    while at + 8 <= end:
        fourcc, size = bytes(data[at : at + 4]), struct.unpack_from("<I", data, at + 4)[0]
        if at + 8 + size > end:
            raise ValueError(f"the WebP {fourcc.decode('latin-1')!r} chunk is truncated")
        found.append((fourcc, at + 8, size))
        at += 8 + size + (size & 1)
    return found


def _picture(data: bytes | memoryview, chunks: list[tuple[bytes, int, int]]) -> tuple[int, int, bool, bool]:
    """Size, lossless and alpha of the VP8/VP8L picture among ``chunks``."""
    alpha = any(fourcc == b"ALPH" for fourcc, _, _ in chunks)
    for fourcc, at, size in chunks:
        if fourcc == b"VP8L" and size >= 5 and data[at] == 0x2F:
            bits = struct.unpack_from("<I", data, at + 1)[0]
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, True, bool(bits >> 28 & 1)
        if fourcc == b"VP8 " and size >= 10 and bytes(data[at + 3 : at + 6]) == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", data, at + 6)
            return width & 0x3FFF, height & 0x3FFF, False, alpha
    raise ValueError("the WebP file has no VP8 or VP8L picture")


def parse(data: bytes) -> Bitstream:
    """Read a WebP container without decoding pixels; ValueError when it is not one."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    chunks = _chunks(data, 12, end)
    if not chunks:
        raise ValueError("the WebP file has no chunks")
    if chunks[0][0] != b"VP8X":
        width, height, lossless, alpha = _picture(data, chunks[:1])
        return Bitstream(width, height, lossless, alpha, False, data, (width, height))
    _, at, size = chunks[0]
    if size < 10:
        raise ValueError("the WebP VP8X chunk is truncated")
    flags = data[at]
    width, height = _u24(data, at + 4) + 1, _u24(data, at + 7) + 1
    exif = next((memoryview(data)[at : at + size] for fourcc, at, size in chunks if fourcc == b"EXIF"), None)
    if not flags & 0x02:  # a still image: libwebp decodes the whole file (ALPH + VP8, or VP8L)
        inner_width, inner_height, lossless, alpha = _picture(data, chunks[1:])
        if (inner_width, inner_height) != (width, height):
            raise ValueError("the WebP picture's size differs from its canvas")
        alpha = alpha or bool(flags & 0x10)
        return Bitstream(width, height, lossless, alpha, False, data, (width, height), exif)
    frames = [(at, size) for fourcc, at, size in chunks if fourcc == b"ANMF"]
    if not frames:
        raise ValueError("the animated WebP file has no frames")
    at, size = frames[0]
    if size < 16:
        raise ValueError("the WebP ANMF chunk is truncated")
    view = memoryview(data)[at + 16 : at + size]
    frame = (_u24(data, at + 6) + 1, _u24(data, at + 9) + 1)
    if frame[0] > width or frame[1] > height:  # what is decoded must be within what was counted
        raise ValueError("the WebP frame is larger than its canvas")
    inner_width, inner_height, lossless, alpha = _picture(view, _chunks(view, 0, len(view)))
    if (inner_width, inner_height) != frame:
        raise ValueError("the WebP frame's picture differs from its size")
    return Bitstream(width, height, lossless, alpha, True, view, frame, exif)


# -- libwebp through ctypes ------------------------------------------------------------------------
class _Features(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("has_alpha", ctypes.c_int),
        ("has_animation", ctypes.c_int),
        ("format", ctypes.c_int),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _RGBA(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVA(ctypes.Structure):
    _fields_ = [
        ("y", ctypes.c_void_p),
        ("u", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("a", ctypes.c_void_p),
        ("y_stride", ctypes.c_int),
        ("u_stride", ctypes.c_int),
        ("v_stride", ctypes.c_int),
        ("a_stride", ctypes.c_int),
        ("y_size", ctypes.c_size_t),
        ("u_size", ctypes.c_size_t),
        ("v_size", ctypes.c_size_t),
        ("a_size", ctypes.c_size_t),
    ]


class _Union(ctypes.Union):
    _fields_ = [("RGBA", _RGBA), ("YUVA", _YUVA)]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("colorspace", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("is_external_memory", ctypes.c_int),
        ("u", _Union),
        ("pad", ctypes.c_uint32 * 4),
        ("private_memory", ctypes.c_void_p),
    ]


class _Options(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int)
        for name in (
            "bypass_filtering",
            "no_fancy_upsampling",
            "use_cropping",
            "crop_left",
            "crop_top",
            "crop_width",
            "crop_height",
            "use_scaling",
            "scaled_width",
            "scaled_height",
            "use_threads",
            "dithering_strength",
            "flip",
            "alpha_dithering_strength",
        )
    ] + [("pad", ctypes.c_uint32 * 5)]


class _Config(ctypes.Structure):
    _fields_ = [("input", _Features), ("output", _Buffer), ("options", _Options)]


class Decoder:
    """``WebPDecode`` of one bitstream into a Pillow image of a chosen size (libwebp's scaler)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._init = lib.WebPInitDecoderConfigInternal
        self._init.argtypes, self._init.restype = [ctypes.POINTER(_Config), ctypes.c_int], ctypes.c_int
        self._decode = lib.WebPDecode
        self._decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Config)]
        self._decode.restype = ctypes.c_int
        config = _Config()
        if not self._init(ctypes.byref(config), _ABI):
            raise OSError("libwebp has an incompatible ABI")

    def decode(self, bitstream: Bitstream, size: tuple[int, int]) -> Image.Image:
        """The first frame at ``size`` (RGBA when it has alpha, else RGB); ValueError when damaged."""
        width, height = max(1, size[0]), max(1, size[1])
        mode = "RGBA" if bitstream.alpha else "RGB"
        image = Image.new(mode, (width, height))
        stride = width * len(mode)
        output = ctypes.create_string_buffer(stride * height)
        config = _Config()
        if not self._init(ctypes.byref(config), _ABI):
            raise ValueError("libwebp refused the decoder configuration")
        config.output.colorspace = _MODE_RGBA if bitstream.alpha else _MODE_RGB
        config.output.is_external_memory = 1
        config.output.u.RGBA.rgba = ctypes.cast(output, ctypes.c_void_p)
        config.output.u.RGBA.stride = stride
        config.output.u.RGBA.size = len(output)
        if (width, height) != bitstream.frame:
            config.options.use_scaling = 1
            config.options.scaled_width, config.options.scaled_height = width, height
        data = bytes(bitstream.data)  # ctypes wants bytes; an animation's frame is a slice (a copy)
        status = self._decode(data, len(data), ctypes.byref(config))
        if status:
            raise ValueError(f"the WebP image is damaged: {_STATUS.get(status, f'status {status}')}")
        image.frombytes(output.raw, "raw", mode, stride, 1)
        return image


def _library_path() -> str | None:
    """The libwebp Pillow's ``_webp`` module loaded into this process, else the system's."""
    with contextlib.suppress(ImportError):
        from PIL import _webp  # noqa: F401 - loads Pillow's libwebp
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = line.partition("/")[2]
            name = Path("/" + path).name if path else ""
            if name.startswith("libwebp") and name[7:8] in ("-", ".") and ".so" in name:
                return "/" + path
    return ctypes.util.find_library("webp")


_lock = threading.Lock()
_loaded: list[Decoder | None] = []


def decoder() -> Decoder | None:
    """libwebp's decoder, loaded once; None when no compatible libwebp can be loaded."""
    with _lock:
        if not _loaded:
            found: Decoder | None = None
            path = _library_path()
            if path:
                try:
                    found = Decoder(ctypes.CDLL(path))
                except (OSError, AttributeError):
                    found = None
            _loaded.append(found)
        return _loaded[0]
