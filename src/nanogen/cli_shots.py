"""The video command's shot list: from ``--shot`` / ``--type`` / ``--image`` or a JSON/YAML shots file.

Shots come out in the contract's shape (local image paths are left for the SDK to upload); mistakes
are :class:`Failure` with a message for the user, found before anything is sent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nanogen.products import GenerationType, VideoAspectRatio

TYPE_ALIASES = {
    "text": GenerationType.TEXT_2_VIDEO,
    "frames": GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO,
    "reference": GenerationType.REFERENCE_2_VIDEO,
}
_NUMBERED = re.compile(r"^(\d+)=(.+)$")


class Failure(Exception):
    """Bad command-line input, with a message for the user (the command exits 2)."""


def parse_type(value: str) -> str:
    lowered = value.strip().lower()
    if lowered in TYPE_ALIASES:
        return TYPE_ALIASES[lowered].value
    try:
        return GenerationType(value.strip().upper()).value
    except ValueError:
        names = ", ".join([*TYPE_ALIASES, *(t.value for t in GenerationType)])
        raise Failure(f"unknown shot type {value!r}: use one of {names}") from None


def load_shots_file(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Shots from JSON or YAML: a list of shots, or ``{"shots": [...], "resolution": ...}``. Local image
    paths are taken relative to the file."""
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data: Any = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own types
        raise Failure(
            f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}"
        ) from None
    resolution = None
    if isinstance(data, dict):
        resolution = data.get("resolution")
        data = data.get("shots")
    if not isinstance(data, list) or not data:
        raise Failure(f"{path}: expected a list of shots, or an object with a 'shots' list")
    shots = []
    for index, item in enumerate(data, start=1):
        shot: dict[str, Any] = (
            {"prompt": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else {}
        )
        if not shot:
            raise Failure(f"{path}: shot {index} must be a prompt or an object")
        if isinstance(shot.get("generationType"), str):
            shot["generationType"] = parse_type(shot["generationType"])
        images = shot.get("imageUrls")
        if isinstance(images, list):
            shot["imageUrls"] = [_relative_to(path.parent, str(i)) for i in images]
        shots.append(shot)
    return shots, str(resolution) if resolution is not None else None


def _relative_to(folder: Path, image: str) -> str:
    return image if "://" in image or Path(image).is_absolute() else str(folder / image)


def build_shots(
    prompts: list[str], shots_file: Path | None, types: list[str], images: list[str], aspect: VideoAspectRatio
) -> tuple[list[dict[str, Any]], str | None]:
    if prompts and shots_file:
        raise Failure("use --shot or --shots-file, not both")
    if not prompts and not shots_file:
        raise Failure("give at least one --shot PROMPT (or --shots-file FILE)")
    if shots_file:
        shots, resolution = load_shots_file(shots_file)
    else:
        shots, resolution = [{"prompt": p} for p in prompts], None
    for shot in shots:
        shot.setdefault("aspectRatio", aspect.value)
    if types:
        if len(types) not in (1, len(shots)):
            raise Failure(
                f"give --type once (all shots) or once per shot ({len(shots)}), not {len(types)} times"
            )
        for shot, kind in zip(shots, types * len(shots) if len(types) == 1 else types, strict=False):
            shot["generationType"] = parse_type(kind)
    for value in images:
        numbered = _NUMBERED.match(value)
        if numbered:
            number, image = int(numbered.group(1)), numbered.group(2)
        elif len(shots) == 1:
            number, image = 1, value
        else:
            raise Failure(f"--image {value}: with several shots, say which one: --image N={value} (N from 1)")
        if not 1 <= number <= len(shots):
            raise Failure(f"--image {value}: there is no shot {number} (shots 1-{len(shots)})")
        shots[number - 1].setdefault("imageUrls", []).append(image)
    return shots, resolution
