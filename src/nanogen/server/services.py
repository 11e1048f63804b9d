"""What the routes use, built in the app's lifespan (never at import) and given to each request as
lifespan state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from nanogen.db import Reads
from nanogen.media.fetch import FetchPolicy, ImageFetcher
from nanogen.ratelimit import RateLimiter
from nanogen.settings import Settings
from nanogen.tasks.early import EarlyImageCalls
from nanogen.tasks.lifecycle import Process, launch
from nanogen.tasks.runtime import Runtime
from nanogen.tasks.submit import SubmitWriter, dbos_enqueue


@dataclass
class Services:
    settings: Settings
    process: Process
    writer: SubmitWriter
    fetcher: ImageFetcher
    limiter: RateLimiter
    reads: Reads

    @property
    def runtime(self) -> Runtime:
        return self.process.runtime


@asynccontextmanager
async def start_services(settings: Settings, *, work: bool) -> AsyncIterator[Services]:
    # DBOS.launch on a worker thread: launched on uvicorn's loop, async workflows would share it.
    process = await asyncio.to_thread(launch, settings, "serve" if work else "api", work=work)
    writer = SubmitWriter(
        process.runtime.db,
        dbos_enqueue(process.runtime.dbos_client, settings.application_version),
        ahead=EarlyImageCalls.for_process(process.runtime, process.queues),
    )
    writer.start()
    fetcher = ImageFetcher(FetchPolicy.from_settings(settings))
    limiter = RateLimiter(
        settings.rate_limit_generate,
        settings.rate_limit_status,
        settings.rate_limit_storage,
        upload=settings.rate_limit_upload,
        key_prefix=settings.rate_limit_prefix,
        fail_closed=settings.rate_limit_fail == "closed",
    )
    reads = Reads(process.runtime.db, settings.db_read_connections)
    try:
        yield Services(settings, process, writer, fetcher, limiter, reads)
    finally:
        await reads.aclose()
        writer.stop()
        await fetcher.aclose()
        await asyncio.to_thread(process.stop)


def lifespan(
    settings: Settings, *, work: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Services]]]:
    """Starts the services and hands them to every request as lifespan state (``scope["state"]``)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with start_services(settings, work=work) as services:
            yield {"services": services}

    return run
