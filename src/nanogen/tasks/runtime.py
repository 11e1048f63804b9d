"""What a running process works with: settings, database, storage, engines, the DBOS client.

DBOS is a process-wide singleton and its workflow functions are module-level, so they reach the
runtime the process was started with through :func:`current`. It is installed once by the entry
point (``nanogen serve`` / ``nanogen worker``), never at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from nanogen.products import Product

if TYPE_CHECKING:
    from dbos import DBOSClient

    from nanogen.engines.base import Engine
    from nanogen.settings import Settings
    from nanogen.storage import Storage


@dataclass
class Runtime:
    settings: Settings
    db: sa.Engine
    storage: Storage
    engines: dict[Product, Engine]
    dbos_client: DBOSClient
    engine_names: dict[Product, str] = field(default_factory=dict)

    def queue_for(self, product: Product) -> str:
        return queue_name(product, self.engine_names[product])


MEDIA_QUEUE = "nanogen.media"
# Workflow names (tasks/workflows.py): what enqueuers refer to without importing the workflows.
RUN_TASK = "nanogen.run_task"
CONCATENATE = "nanogen.concatenate"


def queue_name(product: Product, engine_name: str) -> str:
    return f"nanogen.{product.value}.{engine_name}"


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("nanogen runtime not started in this process")
    return _current
