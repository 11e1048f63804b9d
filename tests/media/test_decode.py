"""Decoding untrusted images in bounded memory (media/images.py, budget.py, webp.py), on real files
made with Pillow or written byte by byte: formats Pillow names differently (MPO), the PNG pixel-stream
check, libwebp at a chosen size, decoding to the size needed, and the process-wide budget."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import wait_for

from nanogen.engines.base import InputImage
from nanogen.engines.sandbox import SandboxEngine
from nanogen.media import images, webp
from nanogen.media.budget import DecodeBudget
from nanogen.products import IMAGE_SIZES, ImageAspectRatio, ImageMode, ImageQuality
from nanogen.settings import Settings
from nanogen.storage import new_key
from nanogen.storage.local import LocalStorage
from nanogen.tasks import jobs

RED, BLUE = (230, 20, 20), (20, 20, 230)


def encode(picture: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def mpo(first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, "MPO", save_all=True, append_images=[second])


def pattern(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue: shows whether a picture is decoded (and turned) right."""
    picture = Image.new("RGB", size, RED)
    picture.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return picture


# -- formats ----------------------------------------------------------------------------------------
def test_an_mpo_is_a_jpeg_its_first_picture() -> None:
    data = mpo(Image.new("RGB", (120, 80), RED), Image.new("RGB", (60, 40), BLUE))
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "MPO"  # what Pillow calls it, and what used to raise KeyError
    info = images.probe_image(data, max_pixels=10_000)
    assert info == images.ImageInfo("image/jpeg", 120, 80, "jpeg")
    picture = images.open_rgb(data)
    assert picture.size == (120, 80)
    assert np.abs(np.asarray(picture).astype(int) - RED).max() < 12  # the first picture, not the second


def animated(fmt: str, **options: object) -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, BLUE, (0, 200, 0))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (animated("PNG"), "image/png"),  # APNG: Pillow still says "PNG"
        (animated("GIF"), "image/gif"),
        (animated("WEBP", lossless=True), "image/webp"),
        (animated("WEBP", quality=80), "image/webp"),
        (mpo(Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE)), "image/jpeg"),
    ],
    ids=["apng", "gif", "webp-lossless", "webp-lossy", "mpo"],
)
def test_every_name_pillow_gives_the_four_formats_is_known(data: bytes, mime: str) -> None:
    """Pillow's plugins for PNG, JPEG, WebP and GIF bytes report only these names; each maps to a type,
    and the first frame is what is decoded."""
    info = images.probe_image(data, max_pixels=10_000)
    assert (info.mime_type, info.width, info.height) == (mime, 40, 30)
    assert images.open_rgb(data).getpixel((20, 15)) == pytest.approx(RED, abs=12)


# -- PNG: the pixel stream checked without holding the picture --------------------------------------
def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, stream: bytes, interlace: int = 0) -> bytes:
    """An 8-bit RGB PNG with ``stream`` (filtered rows, before deflate) as its pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    compressed = zlib.compress(stream)
    idat = [compressed[: len(compressed) // 2], compressed[len(compressed) // 2 :]]  # two IDAT chunks
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(b"IDAT", part) for part in idat)
        + chunk(b"IEND", b"")
    )


def rows(width: int, height: int, colour: tuple[int, int, int], filters: int = 0) -> bytes:
    return (bytes([filters]) + bytes(colour) * width) * height


def adam7(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """The seven interlaced passes of a plain picture, each row unfiltered."""
    stream = b""
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
    ):
        cols, count = len(range(x0, width, dx)), len(range(y0, height, dy))
        if cols and count:
            stream += rows(cols, count, colour)
    return stream + rows(width, len(range(1, height, 2)), colour)


def test_a_png_pixel_stream_is_checked_row_by_row() -> None:
    assert images.probe_image(png(300, 200, rows(300, 200, RED)), 10**6).format == "png"
    interlaced = png(13, 11, adam7(13, 11, BLUE), interlace=1)
    assert images.probe_image(interlaced, 10**6).format == "png"
    assert images.open_rgb(interlaced).getpixel((12, 10)) == BLUE  # Pillow agrees it is whole

    with pytest.raises(ValueError, match="ends early"):
        images.probe_image(png(300, 200, rows(300, 199, RED)), 10**6)
    bad = bytearray(rows(300, 200, RED))
    bad[150 * 901] = 9  # row 150's filter byte
    with pytest.raises(ValueError, match="unknown filter"):
        images.probe_image(png(300, 200, bytes(bad)), 10**6)
    whole = png(300, 200, rows(300, 200, RED))
    at = whole.index(b"IDAT") + 20
    with pytest.raises(ValueError, match="damaged"):  # the deflate stream itself is corrupt
        images.probe_image(whole[:at] + bytes(64) + whole[at + 64 :], 10**6)


def test_a_png_stream_is_inflated_only_as_far_as_the_picture_needs() -> None:
    """Whatever follows the picture's rows in the deflate stream (more zeros, a gigabyte, garbage) is
    never inflated: this stream turns corrupt right after the rows, and is accepted, as Pillow does."""
    header = struct.pack(">IIBBBBB", 300, 200, 8, 2, 0, 0, 0)
    deflate = zlib.compressobj()
    body = deflate.compress(rows(300, 200, RED) + bytes(5000)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", body + b"\xff" * 64)
        + chunk(b"IEND", b"")
    )
    with pytest.raises(zlib.error):
        zlib.decompress(body + b"\xff" * 64)  # inflating it all fails
    assert images.probe_image(data, 10**6).width == 300
    assert images.open_rgb(data).getpixel((299, 199)) == RED


# -- WebP through libwebp -----------------------------------------------------------------------------
def test_libwebp_is_found() -> None:
    assert webp.decoder() is not None, "Pillow's wheel ships libwebp: it must be found"


@pytest.mark.parametrize(
    "options",
    [{"lossless": True}, {"quality": 90}, {"quality": 90, "alpha": True}, {"lossless": True, "alpha": True}],
    ids=["lossless", "lossy", "lossy-alpha", "lossless-alpha"],
)
def test_webp_decodes_at_the_size_asked(options: dict[str, object]) -> None:
    picture = pattern((400, 300))
    if options.pop("alpha", False):
        picture = picture.convert("RGBA")
        picture.putalpha(Image.new("L", picture.size, 255))
        picture.putpixel((0, 0), (0, 0, 0, 0))
    data = encode(picture, "WEBP", **options)
    bitstream = webp.parse(data)
    assert (bitstream.width, bitstream.height) == (400, 300)
    assert bitstream.lossless is bool(options.get("lossless"))
    full = images.open_rgb(data, background=(255, 255, 255))
    assert full.size == (400, 300)
    small = images.open_rgb(data, cover=(40, 30))
    assert small.size == (40, 30)
    assert small.getpixel((5, 15)) == pytest.approx(RED, abs=16)
    assert small.getpixel((35, 15)) == pytest.approx(BLUE, abs=16)


def test_a_webp_frame_must_fit_its_canvas() -> None:
    """The pixel limit is checked on the canvas: a frame or picture claiming more is refused unread."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, BLUE)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True))
    canvas = data.index(b"VP8X") + 8
    assert webp.parse(bytes(data)).frame == (40, 30)
    data[canvas + 4 : canvas + 10] = (9).to_bytes(3, "little") + (9).to_bytes(3, "little")  # a 10x10 canvas
    with pytest.raises(ValueError, match="larger than its canvas"):
        images.probe_image(bytes(data), 10**6)


def test_without_libwebp_pillow_decodes_webp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no libwebp can be loaded, Pillow's decoder is used, reserved at its full cost."""
    monkeypatch.setattr(webp, "_loaded", [None])
    data = encode(pattern((400, 300)), "WEBP", lossless=True)
    assert images.probe_image(data, 10**6) == images.ImageInfo("image/webp", 400, 300, "webp")
    small = images.open_rgb(data, cover=(40, 30))
    assert small.width >= 40 and small.getpixel((2, 15)) == pytest.approx(RED, abs=16)
    with pytest.raises(ValueError, match="over the limit"):
        images.probe_image(data, 10**4)


def test_damaged_webp_is_refused_with_a_reason() -> None:
    data = encode(pattern((400, 300)), "WEBP", quality=90)
    for broken in (data[: len(data) // 2], data[:40], data[:12] + b"VP8 " + b"\xff" * 40):
        with pytest.raises(ValueError) as info:
            images.probe_image(broken, 10**6)
        assert str(info.value)


def test_webp_pixel_limit_is_checked_from_the_header() -> None:
    """A 16383x16383 lossless header (268 MP) is refused before libwebp or Pillow allocate anything."""
    bits = (16382) | (16382 << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + bytes(16)
    data = (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(vp8l))
        + b"WEBP"
        + b"VP8L"
        + struct.pack("<I", len(vp8l))
        + vp8l
    )
    with pytest.raises(ValueError, match="over the limit"):
        images.probe_image(data, max_pixels=64_000_000)


# -- decoding to the size needed --------------------------------------------------------------------
def test_open_rgb_with_cover_decodes_small_and_keeps_the_shape() -> None:
    for fmt, options in (("JPEG", {"quality": 90}), ("PNG", {}), ("GIF", {})):
        data = encode(pattern((1600, 1200)), fmt, **options)
        picture = images.open_rgb(data, cover=(100, 100))
        assert 134 <= picture.width <= 300 and picture.height >= 100, (fmt, picture.size)
        assert abs(picture.width / picture.height - 4 / 3) < 0.02
        assert picture.getpixel((10, 50)) == pytest.approx(RED, abs=16)
        assert picture.getpixel((picture.width - 10, 50)) == pytest.approx(BLUE, abs=16)


def test_rgba_is_reduced_a_strip_at_a_time_like_a_whole() -> None:
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (1000, 3000, 4), dtype=np.uint8), "RGBA")
    ours = images.open_rgb(encode(picture, "PNG"), background=(0, 0, 0), cover=(300, 100))
    theirs = Image.new("RGB", (300, 100))
    reduced = picture.reduce(10)
    theirs.paste(reduced, mask=reduced.getchannel("A"))
    assert ours.size == (300, 100)
    assert np.abs(np.asarray(ours).astype(int) - np.asarray(theirs)).max() <= 1


@pytest.mark.parametrize(("orientation", "left"), [(1, RED), (3, BLUE), (6, RED), (8, BLUE)])
def test_the_exif_orientation_is_applied_after_reducing(orientation: int, left: object) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(pattern((800, 400)), "JPEG", quality=90, exif=exif.tobytes())
    full, small = images.open_rgb(data), images.open_rgb(data, cover=(50, 50))
    sideways = orientation in (6, 8)
    assert full.size == ((400, 800) if sideways else (800, 400))
    assert (small.height > small.width) is sideways
    # 6 turns the red left half to the top, 8 to the bottom; 3 puts it on the right.
    probe = (small.width // 2, 5) if sideways else (5, small.height // 2)
    assert small.getpixel(probe) == pytest.approx(left, abs=20)


# -- the budget -------------------------------------------------------------------------------------
def test_budget_bounds_what_is_held_at_once_and_serves_in_order() -> None:
    budget = DecodeBudget(100)
    held, most, order = [0], [0], []
    lock = threading.Lock()
    gate = threading.Event()

    def decode(name: str, size: int) -> None:
        with budget.hold(size):
            with lock:
                held[0] += size
                most[0] = max(most[0], held[0])
                order.append(name)
            gate.wait(5)
            time.sleep(0.01)
            with lock:
                held[0] -= size

    threads = []
    for name, size in (("a", 60), ("b", 60), ("big", 500), ("c", 10)):
        threads.append(threading.Thread(target=decode, args=(name, size)))
        threads[-1].start()
        count = len(threads)  # each arrives after the one before
        wait_for(lambda count=count: budget.waiting + (budget.used > 0) >= count, interval=0.001)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert order == ["a", "b", "big", "c"]  # first come first served: "c" fits early but waits its turn
    assert most[0] <= 500  # the oversized one ran alone
    assert budget.peak == 100 and budget.used == 0 and budget.holds == 4


# -- the engine decodes each input once ---------------------------------------------------------------
def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (160, 120)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def test_a_repeated_input_is_read_and_decoded_once_and_still_drawn(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", "http://127.0.0.1")
    red, blue = (
        InputImage(solid_png(RED), "image/png", 160, 120),
        InputImage(solid_png(BLUE), "image/png", 160, 120),
    )
    red_key, blue_key = new_key("in", "input.png"), new_key("in", "input.png")
    storage.put_bytes(red_key, red.data)
    storage.put_bytes(blue_key, blue.data)
    params = {"inputs": [jobs.stored_input(red_key, red)] * 13 + [jobs.stored_input(blue_key, blue)]}
    loaded = jobs.load_inputs(storage, params)
    assert (
        len(loaded) == 14 and all(image is loaded[0] for image in loaded[:13]) and loaded[13] is not loaded[0]
    )

    engine = SandboxEngine(Settings(home=tmp_path, sandbox_latency_s=0))
    width, height = IMAGE_SIZES[(ImageAspectRatio.LANDSCAPE, ImageQuality.Q1K)]
    job = jobs.image_job(
        "img_1",
        {
            "prompt": "fourteen",
            "mode": ImageMode.EDIT.value,
            "aspectRatio": ImageAspectRatio.LANDSCAPE.value,
            "imageQuality": ImageQuality.Q1K.value,
            "width": width,
            "height": height,
            "googleSearch": False,
        },
        loaded,
    )
    before = images.DECODE_BUDGET.holds
    engine.generate_image(job, tmp_path / "out.png", lambda _: None)
    assert images.DECODE_BUDGET.holds - before == 2  # two distinct files, fourteen positions
    pixels = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    near = lambda colour: (np.abs(pixels - colour).max(axis=-1) <= 10).mean()  # noqa: E731
    assert near(RED) > 0.1 and near(BLUE) > 0.005  # thirteen red cells and one blue are drawn
