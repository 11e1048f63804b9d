"""The sandbox engine: real PNGs and H.264 MP4s drawn from the request, at no cost.

It is nanogen's default engine and an honest test mode, like a payment API's test keys: outputs have
the exact pixel size, frame rate and length a real provider returns, they are deterministic (the same
job gives byte-identical files), and they visibly show the request: the prompt text, colours and a
pattern seeded from a hash of the prompt, the options as badges, and the input images.

Videos are drawn straight into the encoder's I420 planes; only a small moving block, a frame counter
and a progress bar change from frame to frame, so a 720p 8 s shot costs well under a second of CPU.

Latency: a job takes ``settings.sandbox_latency_s`` seconds from start to delivery, like a remote
provider's: the file is drawn first (its CPU time overlaps the wait, as a provider's compute would
not be ours), then the rest of the latency is waited out, reporting progress in
``settings.sandbox_progress_steps`` steps (monotonic; 100 only once the job is delivered).

Markers in the prompt (case-insensitive, removed before the prompt is drawn) test failure handling:

``[sandbox:fail]``
    raise :class:`~nanogen.errors.EngineError` after the latency: the task fails and is refunded.
``[sandbox:error]``
    raise a plain ``RuntimeError`` after the latency, as an unexpected engine bug would.
``[sandbox:slow=SECONDS]``
    wait SECONDS instead of ``sandbox_latency_s`` (deadline and restart tests).
"""

from __future__ import annotations

import colorsys
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from nanogen.engines.base import Engine, ImageJob, InputImage, Job, Output, ProgressFn, ShotJob
from nanogen.errors import EngineError
from nanogen.media import images as im
from nanogen.media import video as vid
from nanogen.products import GenerationType, ImageMode, ImageQuality, Product, Resolution

RGB = im.RGB
Box = im.Box

_MARKER = re.compile(r"\[sandbox:\s*(fail|error|slow\s*=\s*(\d+(?:\.\d+)?))\s*\]", re.IGNORECASE)


@dataclass(frozen=True)
class Directives:
    """The prompt without its markers, and what the markers asked for."""

    text: str
    fail: bool = False
    error: bool = False
    slow_s: float | None = None


def parse_prompt(prompt: str) -> Directives:
    fail = error = False
    slow: float | None = None
    for match in _MARKER.finditer(prompt):
        word = match.group(1).lower()
        fail, error = fail or word == "fail", error or word == "error"
        if match.group(2) is not None:
            slow = float(match.group(2))
    text = " ".join(_MARKER.sub(" ", prompt).split())
    return Directives(text, fail, error, slow)


@dataclass(frozen=True)
class Palette:
    """Colours and shapes derived from the prompt's hash, so different prompts look different."""

    corners: tuple[RGB, RGB, RGB, RGB]
    accent: RGB
    circles: tuple[tuple[float, float, float], ...]  # centre x, centre y, radius: fractions of the size

    @classmethod
    def from_text(cls, text: str) -> Palette:
        digest = hashlib.sha256(text.encode()).digest()
        hue = digest[0] / 256

        def hsv(shift: float, s: float, v: float) -> RGB:
            r, g, b = colorsys.hsv_to_rgb((hue + shift) % 1.0, s, v)
            return round(r * 255), round(g * 255), round(b * 255)

        corners = (hsv(0, 0.55, 0.95), hsv(0.12, 0.6, 0.8), hsv(0.5, 0.5, 0.7), hsv(0.62, 0.65, 0.45))
        circles = tuple(
            (digest[i] / 255, digest[i + 1] / 255, 0.05 + digest[i + 2] / 255 * 0.2) for i in range(4, 22, 3)
        )
        return cls(corners, hsv(0.33, 0.9, 1.0), circles)


# -- the card: a picture of the request -------------------------------------------------------------


def _unit(size: tuple[int, int]) -> int:
    """The layout's base length (margins, font sizes): a 24th of the short side, even."""
    return max(8, min(size) // 48 * 2)


def render_card(
    size: tuple[int, int],
    text: str,
    badges: Sequence[str],
    palette: Palette,
    inputs: Sequence[Image.Image] = (),
    bottom_reserve: int = 0,
) -> Image.Image:
    """Background, badges, the prompt in a panel, and (when given) the input images beside it."""
    width, height = size
    unit = _unit(size)
    card = im.gradient(size, palette.corners)
    draw = ImageDraw.Draw(card)
    for cx, cy, r in palette.circles:
        radius = r * min(size)
        box = (cx * width - radius, cy * height - radius, cx * width + radius, cy * height + radius)
        draw.ellipse(box, outline=palette.accent, width=max(2, unit // 4))
    top = _draw_badges(card, badges, palette, unit) + unit
    content = (unit, top, width - unit, height - unit - bottom_reserve)
    text_box = content
    if inputs:
        image_box, text_box = _split(content, unit)
        _shade(card, image_box)
        im.compose_grid(card, inputs, _inset(image_box, unit // 2), unit // 2)
    _shade(card, text_box)
    _draw_prompt(card, text, _inset(text_box, unit), unit)
    return card


def _draw_badges(card: Image.Image, badges: Sequence[str], palette: Palette, unit: int) -> int:
    """Lay badges out left to right, wrapping rows; returns the y below the last row."""
    x, y, size = unit, unit, max(8, unit * 3 // 4)
    row_height = size + 2 * max(2, size // 3) + unit // 2
    for i, label in enumerate(badges):
        face_width = int(im.font(size).getlength(label)) + 2 * max(2, size // 3)
        if x > unit and x + face_width > card.width - unit:
            x, y = unit, y + row_height
        fill, ink = ((20, 20, 24), (255, 255, 255)) if i else (palette.accent, (0, 0, 0))
        x += im.draw_badge(card, (x, y), label, size, fill, ink) + unit // 2
    return y + row_height


def _split(content: Box, unit: int) -> tuple[Box, Box]:
    """Images on the left (landscape) or top (portrait); the prompt in the rest."""
    left, top, right, bottom = content
    if right - left >= bottom - top:
        middle = left + (right - left) * 11 // 20
        return (left, top, middle, bottom), (middle + unit, top, right, bottom)
    middle = top + (bottom - top) // 2
    return (left, top, right, middle), (left, middle + unit, right, bottom)


def _inset(box: Box, by: int) -> Box:
    return box[0] + by, box[1] + by, box[2] - by, box[3] - by


def _shade(card: Image.Image, box: Box) -> None:
    """Darken a panel so the text on it stays legible on any background."""
    region = card.crop(box)
    card.paste(Image.blend(region, Image.new("RGB", region.size), 0.6), box[:2])


def _draw_prompt(card: Image.Image, text: str, box: Box, unit: int) -> None:
    # Short prompts are drawn large; long ones smaller so more of them fits.
    size = unit * 2 if len(text) <= 60 else unit * 3 // 2 if len(text) <= 240 else unit
    im.draw_text_block(card, text or "(empty prompt)", box, size, (255, 255, 255))


def _load_inputs(images: Sequence[InputImage], cover: tuple[int, int]) -> list[Image.Image]:
    """The inputs as RGB pictures about as large as they are drawn (``cover``), not as the files are:
    each decoded once however many times it is named (the same object repeats), one at a time."""
    decoded: dict[int, Image.Image] = {}
    for image in images:
        if id(image) not in decoded:
            decoded[id(image)] = im.open_rgb(image.data, cover=cover)
    return [decoded[id(image)] for image in images]


def _input_cell(size: tuple[int, int], count: int) -> tuple[int, int]:
    """At least the size of the grid cell each of ``count`` inputs gets on a card of ``size``
    (:func:`render_card`'s layout, before the badges take their rows)."""
    unit = _unit(size)
    box, _ = _split((unit, unit, size[0] - unit, size[1] - unit), unit)
    left, top, right, bottom = im.grid_cells(max(1, count), _inset(box, unit // 2), unit // 2)[0]
    return right - left, bottom - top


# -- the engine -------------------------------------------------------------------------------------


class SandboxEngine(Engine):
    name = "sandbox"
    products: ClassVar[frozenset[Product]] = frozenset(Product)
    generation_types: ClassVar[frozenset[GenerationType]] = frozenset(GenerationType)
    resolutions: ClassVar[frozenset[Resolution]] = frozenset(Resolution)
    image_qualities: ClassVar[frozenset[ImageQuality]] = frozenset(ImageQuality)
    supports_google_search = True
    default_concurrency = 32  # jobs mostly sleep through the simulated latency
    # A sandbox image takes milliseconds: its queue is polled often so that the wait for a slot
    # does not dominate it (each poll costs ~1.5-2 ms of CPU: 3-4% of a core at this rate).
    queue_polling_s: ClassVar[dict[Product, float]] = {Product.IMAGE: 0.05, Product.VIDEO: 0.5}

    def generate_image(self, job: ImageJob, dest: Path, progress: ProgressFn) -> Output:
        started = time.monotonic()
        directives = parse_prompt(job.prompt)
        if directives.fail or directives.error:  # nothing to deliver: wait, then fail as asked
            self._simulate(job, directives, started, progress)
        badges = ["NANOGEN SANDBOX", f"{job.quality.value} · {job.aspect_ratio.value}", job.mode.value]
        if job.google_search:
            badges.append("search")
        cell = _input_cell((job.width, job.height), len(job.images))
        inputs = _load_inputs(job.images, cell) if job.mode is ImageMode.EDIT else []
        palette = Palette.from_text(directives.text)
        card = render_card((job.width, job.height), directives.text, badges, palette, inputs)
        im.save_png(card, dest)
        self._simulate(job, directives, started, progress)
        progress(100)
        return Output(dest, "image/png", {"engine": self.name, "width": job.width, "height": job.height})

    def generate_shot(self, job: ShotJob, dest: Path, progress: ProgressFn) -> Output:
        started = time.monotonic()
        directives = parse_prompt(job.prompt)
        if directives.fail or directives.error:  # nothing to deliver: wait, then fail as asked
            self._simulate(job, directives, started, progress)
        frames = render_shot(job, directives.text, dest)
        self._simulate(job, directives, started, progress)
        progress(100)
        metadata: dict[str, object] = {
            "engine": self.name,
            "width": job.width,
            "height": job.height,
            "fps": job.fps,
            "frames": frames,
        }
        return Output(dest, "video/mp4", metadata)

    def _simulate(self, job: Job, directives: Directives, started: float, progress: ProgressFn) -> None:
        """Wait out what is left of the simulated latency in steps, then fail if the prompt asks to.
        The wait is the job's: it ends at the task's deadline or when the task ends, freeing the slot
        (a free ``[sandbox:slow=...]`` prompt must not hold a worker thread past its task)."""
        latency = self.settings.sandbox_latency_s if directives.slow_s is None else directives.slow_s
        steps = self.settings.sandbox_progress_steps
        for step in range(1, steps + 1):
            job.wait(started + latency * step / steps - time.monotonic())
            if step < steps:  # 100 is reported only once the job is delivered
                progress(step * 100 // steps)
        if directives.fail:
            raise EngineError("The sandbox engine failed as asked by [sandbox:fail] in the prompt")
        if directives.error:
            raise RuntimeError("sandbox engine crashed as asked by [sandbox:error] in the prompt")


# -- video shots ------------------------------------------------------------------------------------


def render_shot(job: ShotJob, text: str, dest: Path) -> int:
    """Write the shot's MP4 to ``dest``; returns the number of frames."""
    size = (job.width, job.height)
    palette = Palette.from_text(text)
    motion = Motion(size, job.seconds * job.fps, job.fps, palette.accent)
    first, last = _scene(job, text, palette, motion.reserve)
    background = vid.rgb_to_planes(np.asarray(first))
    target = vid.rgb_to_planes(np.asarray(last)) if last is not None else None
    with vid.H264Writer(dest, job.width, job.height, job.fps, threads=1) as writer:
        vid.copy_all(writer.planes, background)
        dirty: list[Box] = []
        for index in range(motion.frames):
            if target is not None:  # wipe: reveal the last picture column by column
                for box in motion.wipe(index):
                    vid.copy_box(background, target, box)
                    vid.copy_box(writer.planes, background, box)
            for box in dirty:
                vid.copy_box(writer.planes, background, box)
            dirty = motion.draw(writer.planes, index, wiping=target is not None)
            writer.write()
        return writer.frames


def _scene(job: ShotJob, text: str, palette: Palette, reserve: int) -> tuple[Image.Image, Image.Image | None]:
    """The still picture(s) the shot animates: a card, or the first and last frames."""
    size = (job.width, job.height)
    kind = job.generation_type
    badges = ["NANOGEN SANDBOX", f"{job.resolution.value} · {job.aspect_ratio.value}", kind.value]
    if kind is GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO and job.images:
        inputs = _load_inputs(job.images, size)
        first = _captioned(im.fit_cover(inputs[0], size), text, badges, palette)
        if len(inputs) > 1:
            last = _captioned(im.fit_cover(inputs[1], size), text, badges, palette)
        else:
            last = render_card(size, text, badges, palette, bottom_reserve=reserve)
        return first, last
    references = (
        _load_inputs(job.images, _input_cell(size, len(job.images)))
        if kind is GenerationType.REFERENCE_2_VIDEO
        else []
    )
    return render_card(size, text, badges, palette, references, bottom_reserve=reserve), None


def _captioned(picture: Image.Image, text: str, badges: Sequence[str], palette: Palette) -> Image.Image:
    """A frame image with the badges and two lines of the prompt across its top."""
    unit = _unit(picture.size)
    strip = (0, 0, picture.width, unit * 7)
    _shade(picture, strip)
    top = _draw_badges(picture, badges, palette, unit)
    im.draw_text_block(picture, text, (unit, top, picture.width - unit, strip[3]), unit, (255, 255, 255))
    return picture


class Motion:
    """What changes from frame to frame, drawn in I420: a bouncing block, a counter, a progress bar."""

    def __init__(self, size: tuple[int, int], frames: int, fps: int, accent: RGB) -> None:
        self.width, self.height = size
        self.frames, self.fps = frames, fps
        unit = _unit(size)
        self.block = unit * 2
        self.bar = max(2, unit // 2 // 2 * 2)
        self.lane_top = self.height - self.bar - unit - self.block
        self.reserve = self.bar + 2 * unit + self.block
        self.glyphs = _glyphs(unit, self.block)
        cell = next(iter(self.glyphs.values())).shape[1]
        width = len(self._label(frames - 1)) * cell + unit
        left = (self.width - unit - width) // 2 * 2
        self.counter = (left, self.lane_top, left + width, self.lane_top + self.block)
        self.accent = _yuv(accent)
        self.hold = min(fps, frames // 4)  # wipes hold the first and last picture this long

    def draw(self, planes: vid.Planes, index: int, wiping: bool) -> list[Box]:
        """Draw frame ``index``'s moving parts; returns the boxes to restore before the next frame."""
        dirty = [self._block(planes, index)]
        if wiping:
            x = self._wipe_x(index)
            if 0 < x < self.width:
                edge = (max(0, x - 2), 0, min(self.width, x + 2), self.height)
                vid.fill_box(planes, edge, (235, 128, 128))
                dirty.append(edge)
        self._counter(planes, index)
        self._bar(planes, index)
        return dirty

    def wipe(self, index: int) -> list[Box]:
        """The columns the wipe reveals at frame ``index``."""
        start, end = self._wipe_x(index - 1) if index else 0, self._wipe_x(index)
        return [(start, 0, end, self.height)] if end > start else []

    def _wipe_x(self, index: int) -> int:
        span = max(1, self.frames - 2 * self.hold - 1)
        t = min(1.0, max(0.0, (index - self.hold) / span))
        return round(t * self.width / 2) * 2

    def _block(self, planes: vid.Planes, index: int) -> Box:
        travel = max(2, self.counter[0] - self.block - 2 * self.block)
        period = 4 * self.fps  # there and back every 4 s
        phase = (index % period) / (period / 2)
        x = self.block + round((phase if phase <= 1 else 2 - phase) * travel / 2) * 2
        box = (x, self.lane_top, x + self.block, self.lane_top + self.block)
        vid.fill_box(planes, box, self.accent)
        return box

    def _label(self, index: int) -> str:
        return f"{index + 1:03d}/{self.frames} {index / self.fps:5.2f}s"

    def _counter(self, planes: vid.Planes, index: int) -> None:
        """Paste pre-rendered glyphs: rendering text with Pillow every frame cost more than encoding."""
        left, top, right, bottom = self.counter
        planes.y[top:bottom, left:right] = self.glyphs[" "][0, 0]
        x = left + _unit((self.width, self.height)) // 2
        for char in self._label(index):
            glyph = self.glyphs[char]
            planes.y[top:bottom, x : x + glyph.shape[1]] = glyph
            x += glyph.shape[1]
        planes.u[top // 2 : bottom // 2, left // 2 : right // 2] = 128
        planes.v[top // 2 : bottom // 2, left // 2 : right // 2] = 128

    def _bar(self, planes: vid.Planes, index: int) -> None:
        filled = round((index + 1) / self.frames * self.width / 2) * 2
        vid.fill_box(planes, (0, self.height - self.bar, self.width, self.height), (40, 128, 128))
        vid.fill_box(planes, (0, self.height - self.bar, filled, self.height), self.accent)


def _glyphs(size: int, height: int) -> dict[str, vid.Plane]:
    """Luma of each counter character in a fixed-width cell: light digits on a dark box."""
    face = im.font(size)
    chars = "0123456789/. s"
    cell = max(int(face.getlength(c)) for c in chars) + 1
    lut = np.linspace(32, 235, 256).astype(np.uint8)
    glyphs = {}
    for char in chars:
        label = Image.new("L", (cell, height))
        ImageDraw.Draw(label).text((0, (height - size) // 2), char, 255, face)
        glyphs[char] = lut[np.asarray(label)]
    return glyphs


def _yuv(colour: RGB) -> vid.YUV:
    planes = vid.rgb_to_planes(np.full((2, 2, 3), colour, dtype=np.uint8))
    return int(planes.y[0, 0]), int(planes.u[0, 0]), int(planes.v[0, 0])
