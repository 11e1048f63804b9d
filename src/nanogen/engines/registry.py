"""Engine names to classes, imported on first use (fsspec's registry, llm's plugins).

Importing nanogen never imports an engine's heavy dependencies: a name maps to a dotted path and an
install hint, and the class is imported only when a process is configured to use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanogen.errors import NanogenError

if TYPE_CHECKING:
    from nanogen.engines.base import Engine
    from nanogen.settings import Settings


@dataclass(frozen=True)
class EngineEntry:
    target: str  # "module:Class"
    install_hint: str = ""


class UnknownEngine(NanogenError):
    pass


class EngineRegistry:
    def __init__(self) -> None:
        self._entries: dict[str, EngineEntry] = {}

    def register(self, name: str, target: str, install_hint: str = "") -> None:
        self._entries[name] = EngineEntry(target, install_hint)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def load(self, name: str) -> type[Engine]:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownEngine(f"unknown engine {name!r}; known engines: {', '.join(self.names())}")
        module_name, _, class_name = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" ({entry.install_hint})" if entry.install_hint else ""
            raise UnknownEngine(f"engine {name!r} cannot be imported: {exc}{hint}") from exc
        cls: type[Engine] = getattr(module, class_name)
        return cls

    def create(self, name: str, settings: Settings) -> Engine:
        return self.load(name)(settings)


def default_registry() -> EngineRegistry:
    registry = EngineRegistry()
    registry.register("sandbox", "nanogen.engines.sandbox:SandboxEngine")
    registry.register("google", "nanogen.engines.google:GoogleEngine", "pip install google-genai")
    registry.register(
        "diffusers", "nanogen.engines.diffusers.engine:DiffusersEngine", "pip install 'nanogen[diffusers]'"
    )
    return registry
