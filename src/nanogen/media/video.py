"""Video with PyAV: probing MP4s, writing H.264 from numpy planes, and concatenating shots.

Frames are handled as I420 (yuv420p) planes end to end: the sandbox draws straight into the encoder's
frame buffer, so no per-frame RGB->YUV conversion or allocation happens. Output is H.264 yuv420p in
MP4 with ``+faststart`` (players start before the download ends) and ``+bitexact`` (no encoder tag
and no creation time, so equal frames give equal bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
from numpy.typing import NDArray

Box = tuple[int, int, int, int]  # left, top, right, bottom, in luma pixels
YUV = tuple[int, int, int]
Plane = NDArray[np.uint8]

MP4_OPTIONS = {"movflags": "+faststart", "fflags": "+bitexact"}
BLACK: YUV = (16, 128, 128)  # limited-range video black


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    has_audio: bool


@dataclass(frozen=True)
class ConcatResult:
    path: Path
    stream_copied: bool
    frames: int
    duration_s: float
    reason: str = ""  # why the inputs had to be re-encoded; empty when stream-copied


# -- probing ----------------------------------------------------------------------------------------


def probe_video(path: Path, *, decode: bool = False) -> VideoInfo:
    """Describe the first video stream; ``decode=True`` counts frames by decoding (slow, exact)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if decode:
            frames = sum(1 for _ in container.decode(stream))
        else:
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            fps=float(stream.average_rate or stream.guessed_rate or 0),
            frames=frames,
            duration_s=duration,
            codec=ctx.name,
            pix_fmt=ctx.format.name if ctx.format else "",
            has_audio=bool(container.streams.audio),
        )


# -- planes -----------------------------------------------------------------------------------------


class Planes(NamedTuple):
    """The Y, U and V planes of an I420 picture (U and V at half width and height)."""

    y: Plane
    u: Plane
    v: Plane


def frame_planes(frame: av.VideoFrame) -> Planes:
    """Writable numpy views of a yuv420p frame's planes (rows may be padded: the views skip that)."""
    views = []
    for plane in frame.planes:
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        views.append(rows[:, : plane.width])
    return Planes(*views)


def rgb_to_planes(rgb: NDArray[np.uint8]) -> Planes:
    """Convert an RGB array (even height and width) to BT.709 limited-range I420, once per picture."""
    f = rgb.astype(np.float32) * (1.0 / 255.0)
    luma = f @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    # Chroma from the 2x2 mean: what yuv420p stores.
    quad = (f[0::2, 0::2] + f[0::2, 1::2] + f[1::2, 0::2] + f[1::2, 1::2]) * 0.25
    quad_luma = quad @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    u = 128.0 + 224.0 * (quad[..., 2] - quad_luma) / 1.8556
    v = 128.0 + 224.0 * (quad[..., 0] - quad_luma) / 1.5748
    return Planes(_u8(16.0 + 219.0 * luma), _u8(u), _u8(v))


def _u8(values: NDArray[np.float32]) -> Plane:
    rounded: Plane = np.clip(values + 0.5, 0, 255).astype(np.uint8)
    return rounded


def _chroma(box: Box) -> Box:
    left, top, right, bottom = box
    return left // 2, top // 2, (right + 1) // 2, (bottom + 1) // 2


def fill_box(dst: Planes, box: Box, colour: YUV) -> None:
    left, top, right, bottom = box
    dst.y[top:bottom, left:right] = colour[0]
    cl, ct, cr, cb = _chroma(box)
    dst.u[ct:cb, cl:cr] = colour[1]
    dst.v[ct:cb, cl:cr] = colour[2]


def copy_box(dst: Planes, src: Planes, box: Box) -> None:
    """Copy one rectangle from ``src`` to the same place in ``dst``."""
    left, top, right, bottom = box
    dst.y[top:bottom, left:right] = src.y[top:bottom, left:right]
    cl, ct, cr, cb = _chroma(box)
    dst.u[ct:cb, cl:cr] = src.u[ct:cb, cl:cr]
    dst.v[ct:cb, cl:cr] = src.v[ct:cb, cl:cr]


def copy_all(dst: Planes, src: Planes) -> None:
    for d, s in zip(dst, src, strict=True):
        np.copyto(d, s)


# -- writing ----------------------------------------------------------------------------------------


class H264Writer:
    """Encode frames drawn into :attr:`planes` to an MP4: libx264 ultrafast, yuv420p, BT.709.

    Constant QP rather than CRF: CRF makes x264 analyse a downscaled copy of every frame, which cost
    about a third more CPU here for the mostly still frames the sandbox draws.

    The same frame buffer is reused for every frame; x264 copies it during ``encode``, so the caller
    may change only what moves between frames (cheap to draw, and the encoder finds skip blocks).
    """

    def __init__(
        self, dest: Path, width: int, height: int, fps: int | Fraction, *, qp: int = 23, threads: int = 1
    ) -> None:
        self._container: Any = av.open(str(dest), "w", format="mp4", options=MP4_OPTIONS)
        keyint = max(1, round(float(fps) * 2))  # a keyframe every 2 s keeps seeking quick
        stream = self._container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "qp": str(qp), "g": str(keyint)}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.thread_count = threads
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
        ctx.color_range = 1  # limited ("tv") range
        self._stream = stream
        self.frame = av.VideoFrame(width, height, "yuv420p")
        self.planes = frame_planes(self.frame)
        self.frames = 0

    def write(self) -> None:
        """Encode the current contents of :attr:`planes` as the next frame."""
        self.frame.pts = self.frames
        self._container.mux(self._stream.encode(self.frame))
        self.frames += 1

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def abort(self) -> None:
        self._container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- concatenation ----------------------------------------------------------------------------------


def concat_videos(inputs: Sequence[Path], dest: Path) -> ConcatResult:
    """Concatenate MP4s into ``dest``: stream copy when the inputs match, else re-encode to H.264.

    Stream copy keeps the first audio track too when every input has a matching one; the re-encode
    path (inputs that differ in codec, size, pixel format or time base) writes video only, at the
    first input's size and frame rate, letterboxing the others.
    """
    if not inputs:
        raise ValueError("nothing to concatenate")
    with ExitStack() as stack:  # each input is opened once, for both the check and the copy
        sources = [stack.enter_context(av.open(str(path))) for path in inputs]
        reason = _copy_mismatch(inputs, sources)
        if reason is None:
            frames, duration = _stream_copy(sources, dest)
            return ConcatResult(dest, True, frames, duration)
    frames, duration = _reencode(inputs, dest)
    return ConcatResult(dest, False, frames, duration, reason)


def _signature(stream: Any) -> tuple[object, ...]:
    """What must be equal for packets of two files to play as one stream."""
    ctx = stream.codec_context
    if stream.type == "video":
        shape: tuple[object, ...] = (ctx.width, ctx.height, ctx.format.name if ctx.format else None)
    else:
        shape = (ctx.sample_rate, ctx.layout.name if ctx.layout else None, ctx.format.name)
    # Equal extradata (SPS/PPS) means the decoder set up for the first file can decode them all.
    return (ctx.name, *shape, stream.time_base, bytes(ctx.extradata or b""))


def _copy_mismatch(inputs: Sequence[Path], sources: Sequence[Any]) -> str | None:
    """Why the inputs cannot be stream-copied together, or None when they can."""
    first: tuple[object, ...] | None = None
    for path, container in zip(inputs, sources, strict=True):
        if not container.streams.video:
            raise ValueError(f"{path.name} has no video stream")
        sig = (
            _signature(container.streams.video[0]),
            tuple(_signature(s) for s in container.streams.audio[:1]),
        )
        if first is None:
            first = sig
        elif sig != first:
            return f"{path.name} differs from {inputs[0].name} in codec, size, format or time base"
    return None


def _stream_copy(sources: Sequence[Any], dest: Path) -> tuple[int, float]:
    """Remux every packet, shifting each file's timestamps to start where the previous one ended."""
    offset = Fraction(0)  # seconds already written
    frames = 0
    with av.open(str(dest), "w", format="mp4", options=MP4_OPTIONS) as out:
        templates = [sources[0].streams.video[0], *sources[0].streams.audio[:1]]
        outputs = [out.add_stream_from_template(s) for s in templates]
        for src in sources:
            streams = [src.streams.video[0], *src.streams.audio[:1]]
            end, count = _copy_packets(out, src, streams, outputs, offset)
            offset, frames = end, frames + count
    return frames, float(offset)


def _copy_packets(
    out: Any, src: Any, streams: list[Any], outputs: list[Any], offset: Fraction
) -> tuple[Fraction, int]:
    """Copy one file's packets to ``outputs`` starting at ``offset`` s; returns its end and frame count."""
    shifts: dict[int, int] = {}
    ends = [0] * len(streams)  # in each stream's own ticks: cheaper than Fractions per packet
    slots = {s.index: i for i, s in enumerate(streams)}
    frames = 0
    for packet in src.demux(streams):
        if packet.dts is None:  # the demuxer's empty flush packet
            continue
        slot = slots[packet.stream.index]
        pts = packet.pts if packet.pts is not None else packet.dts
        if slot not in shifts:
            # Each stream starts where the previous file ended. AAC audio's first packet (the
            # encoder's priming, hidden by an edit list) sits before start_time: align on it, or it
            # lands on the previous file's last packet (non-increasing timestamps, refused by the muxer).
            stream = streams[slot]
            shifts[slot] = round(offset / stream.time_base) - min(stream.start_time or 0, pts)
        shift = shifts[slot]
        packet.dts += shift
        packet.pts = pts + shift
        ends[slot] = max(ends[slot], packet.pts + packet.duration)
        frames += slot == 0
        packet.stream = outputs[slot]
        out.mux(packet)
    return max(offset, *(end * s.time_base for end, s in zip(ends, streams, strict=True))), frames


def _reencode(inputs: Sequence[Path], dest: Path) -> tuple[int, float]:
    """Decode every file and encode one H.264 stream at the first file's size, letterboxing others."""
    with av.open(str(inputs[0])) as first:
        stream = first.streams.video[0]
        width, height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
        fps = Fraction(stream.average_rate or 24)
    with H264Writer(dest, width, height, fps) as writer:
        for path in inputs:
            with av.open(str(path)) as src:
                for frame in src.decode(video=0):
                    _letterbox(frame, writer.planes)
                    writer.write()
        frames = writer.frames
    return frames, float(frames / fps)


def _letterbox(frame: av.VideoFrame, dst: Planes) -> None:
    """Scale ``frame`` to fit ``dst`` keeping its aspect ratio, centred on black."""
    height, width = dst.y.shape
    scale = min(width / frame.width, height / frame.height)
    w, h = max(2, round(frame.width * scale / 2) * 2), max(2, round(frame.height * scale / 2) * 2)
    scaled = frame.reformat(width=w, height=h, format="yuv420p")
    left, top = (width - w) // 4 * 2, (height - h) // 4 * 2
    if (w, h) != (width, height):
        fill_box(dst, (0, 0, width, height), BLACK)
    src = frame_planes(scaled)
    dst.y[top : top + h, left : left + w] = src.y
    dst.u[top // 2 : (top + h) // 2, left // 2 : (left + w) // 2] = src.u
    dst.v[top // 2 : (top + h) // 2, left // 2 : (left + w) // 2] = src.v
