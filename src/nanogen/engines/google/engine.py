"""The Google engine: Nano Banana images through ``generateContent``, Veo shots as long-running
operations. Configuration, mapping and what nanogen does where Google cannot: docs/engines.md.

Money: an image is one synchronous call (a crash during it means the re-run calls again); a shot is
submitted once (``submit_shot``; the workflow records the operation before anything waits on it) and
awaited (``await_shot``) as often as the task is recovered, so Google is never asked twice.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

import httpx

from nanogen import metrics
from nanogen.engines.base import (
    Check,
    Engine,
    ImageJob,
    Job,
    Output,
    PreparedCalls,
    ProgressFn,
    ShotJob,
)
from nanogen.engines.google import image_answer, images
from nanogen.engines.google.backends import BACKENDS, Backend
from nanogen.engines.google.begun import BegunCalls
from nanogen.engines.google.calls import (
    CALL_LABELS,
    Backoff,
    ProviderError,
    count_refusal,
    remaining,
    retrying,
    sdk,
)
from nanogen.engines.google.models import DEFAULT_VIDEO_MODEL, model_info
from nanogen.engines.google.polling import PollSchedule
from nanogen.engines.google.process_http import ProcessHttp
from nanogen.engines.google.quota import CallGate
from nanogen.engines.google.transport import LoopHttp, Transport
from nanogen.errors import EngineError
from nanogen.media.video import probe_video
from nanogen.products import (
    PRICES_CHECKED,
    GenerationType,
    ImageQuality,
    Product,
    Resolution,
    image_list_price,
    to_micros,
    video_list_price,
)
from nanogen.settings import Settings
from nanogen.tls import ssl_context

log = logging.getLogger(__name__)
T = TypeVar("T")

# Veo reports no progress; a shot usually takes 1-5 minutes. Progress is an estimate from the time
# waited so far that approaches 90% (never 100% before the video is here).
TYPICAL_SHOT_S = 90.0
DOCTOR_TIMEOUT_S = 20.0
# Vertex AI's calls go through the SDK's httpx clients, one pool of connections each: this many
# connections per pool, all kept open between calls (a pool's threads poll their operations every few
# seconds, and each reopened connection costs a TCP and TLS handshake).
POOL_CONNECTIONS = 64
KEEPALIVE_CONNECTIONS = POOL_CONNECTIONS


def shot_progress(waited_s: float) -> int:
    return 5 + int(85 * (1 - math.exp(-waited_s / TYPICAL_SHOT_S)))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity where the system tells it, else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def calls_from_a_child(settings: Settings) -> bool:
    """Whether the REST calls are made by a child process (``NANOGEN_GOOGLE_HTTP_PROCESS``; unset:
    where this process may run on two CPUs or more). The child's gain is the other core: on one CPU
    it only adds the pipe's work (bench c on one CPU: 22.7 s against 21.4 s with the loop here)."""
    if settings.google_http_process is not None:
        return settings.google_http_process
    return usable_cpus() > 1


class GoogleEngine(Engine):
    name = "google"
    products: ClassVar[frozenset[Product]] = frozenset(Product)
    generation_types: ClassVar[frozenset[GenerationType]] = frozenset(GenerationType)
    resolutions: ClassVar[frozenset[Resolution]] = frozenset(Resolution)
    image_qualities: ClassVar[frozenset[ImageQuality]] = frozenset(ImageQuality)
    supports_google_search = True
    spends_money = True
    long_running: ClassVar[frozenset[Product]] = frozenset({Product.VIDEO})
    begins_image_calls = True
    # A job is a wait on Google (a shot's operation runs for minutes, an image call tens of seconds)
    # and costs one blocked thread and one connection while it waits, so a worker holds thousands
    # (docs/deploy.md sizes them). Google's quotas, not this process, are what limits them.
    default_concurrency = 2000
    # The image queue is polled every 0.1 s, not 0.5: a poll then starts the few dozen calls that
    # arrived meanwhile rather than hundreds at once, whose starts stalled the API's acceptances and
    # each other (bench_google c, 2,000 images, side by side: all done 19.7-20.0 s against 20.4-21.3 s;
    # an idle worker's CPU 4.4% of a core against 2.4%). Shots take minutes: 0.5 s.
    queue_polling_s: ClassVar[dict[Product, float]] = {Product.IMAGE: 0.1, Product.VIDEO: 0.5}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.models = {
            Product.IMAGE: settings.google_image_model,
            Product.VIDEO: settings.google_video_model or DEFAULT_VIDEO_MODEL[settings.google_mode],
        }
        # Every job in flight may hold a connection at once (an image call is one request of tens of
        # seconds). On the Gemini API the jobs' calls are made on one event loop, on a thread here
        # (transport.py) or in a child process (process_http.py), with a connection for each job
        # in flight. On Vertex AI they go through the SDK's httpx client,
        # and one httpx pool that large costs CPU with every request (httpcore scans its connections
        # and waiting requests: ~19 ms of CPU per call at 2,000 open, encode/httpx#3215), so the
        # connections are spread over pools of POOL_CONNECTIONS, one client (and SDK client) each; a
        # thread always uses the same one.
        image_slots = settings.image_concurrency or self.default_concurrency
        in_flight = image_slots + (settings.video_concurrency or self.default_concurrency)
        self._rest: Transport
        if calls_from_a_child(settings):
            self._rest = ProcessHttp(limit=in_flight, spool_dir=settings.scratch_dir)
        else:
            self._rest = LoopHttp(limit=in_flight, ssl_context=ssl_context(), spool_dir=settings.scratch_dir)
        first = self._make_backend()  # checks the settings now: serve refuses to start
        shards = max(1, math.ceil(in_flight / POOL_CONNECTIONS)) if first.jobs_use_sdk else 1
        self._backends: list[Backend | None] = [None] * shards  # made when a thread first needs one
        self._backends[0] = first
        self._thread_backend = threading.local()
        self._dealt = itertools.count()
        self._making = threading.Lock()
        self._backoff = Backoff(settings.google_retry_base_s, settings.google_retry_max_s)
        storage = settings.rate_limit_storage
        prefix = settings.rate_limit_prefix
        self._gates = {
            "image generation": CallGate("image generation", settings.google_image_rate, storage, prefix),
            "video submission": CallGate(
                "video submission", settings.google_video_submit_rate, storage, prefix
            ),
            "polling the video operation": CallGate("polling the video operation"),
            "downloading the video": CallGate("downloading the video"),
        }
        self._polls = PollSchedule(settings.google_poll_interval_s)
        # Image calls begun at acceptance (prepare_image_calls), and the jobs' own, within the slots.
        self._image_calls = BegunCalls(image_slots, keep_s=settings.google_request_timeout_s)
        self._begun_metric = metrics.PROVIDER_CALLS_BEGUN.labels("google", CALL_LABELS["image generation"])
        self._polls_made = metrics.PROVIDER_POLLS.labels("google")

    def start_working(self) -> None:
        """Start the REST calls' loop now (its child process takes ~0.5 s to be ready: started by
        the first call, a burst's calls waited for it), unless the jobs call through the SDK."""
        first = self._backends[0]
        if first is not None and not first.jobs_use_sdk:
            self._rest.start()

    def _make_backend(self) -> Backend:
        client = httpx.Client(
            timeout=self.settings.google_request_timeout_s,
            follow_redirects=False,
            verify=ssl_context(),
            limits=httpx.Limits(
                max_connections=POOL_CONNECTIONS, max_keepalive_connections=KEEPALIVE_CONNECTIONS
            ),
        )
        return BACKENDS[self.settings.google_mode](
            self.settings, client, self._rest, self.models[Product.VIDEO]
        )

    @property
    def _backend(self) -> Backend:
        """This thread's client: threads are dealt to the pools in turn, and keep theirs."""
        found: Backend | None = getattr(self._thread_backend, "backend", None)
        if found is None:
            shard = next(self._dealt) % len(self._backends)
            with self._making:
                found = self._backends[shard]
                if found is None:
                    found = self._backends[shard] = self._make_backend()
            self._thread_backend.backend = found
        return found

    # -- capabilities: those of the configured models -------------------------------------------------
    def capabilities(self, product: Product) -> dict[str, frozenset[str]]:
        info = model_info(product, self.models[product])
        if info is None:
            return super().capabilities(product)
        return {
            "generation_type": info.generation_types,
            "resolution": info.resolutions,
            "quality": info.qualities,
        }

    def unsupported(self, product: Product, **options: str) -> str | None:
        reason = super().unsupported(product, **options)
        return (
            f"{reason} with model {self.models[product]}" if reason and product in self.products else reason
        )

    def cost_micros(self, job: ImageJob | ShotJob) -> int | None:
        if isinstance(job, ImageJob):
            usd = image_list_price(self.models[Product.IMAGE], job.quality)
        else:
            usd = video_list_price(self.models[Product.VIDEO], job.resolution, job.seconds)
        return None if usd is None else to_micros(usd)

    # -- images: one synchronous call ---------------------------------------------------------------------
    def prepare_image_calls(self, jobs: Sequence[ImageJob]) -> PreparedCalls | None:
        """Reserve calls for ``jobs`` (Gemini API only; not an edit, whose input images the job
        reads from storage; only while the image quota's gate is open, within the image slots)."""
        calls = self._backend.image_calls
        if not isinstance(calls, images.ImagesRest) or not self._gates["image generation"].open_now():
            return None
        now = time.time()
        wanted = {job.task_id: job for job in jobs if not job.images and job.deadline > now}
        reserved = self._image_calls.reserve(list(wanted))
        if not reserved:
            return None
        prepared = [(wanted[task_id], future) for task_id, future in reserved.items()]
        return functools.partial(self._send_prepared, calls, prepared)

    def generate_image(self, job: ImageJob, dest: Path, progress: ProgressFn) -> Output:
        with self._image_calls.running():
            return self._generate_image(job, dest, progress)

    def _generate_image(self, job: ImageJob, dest: Path, progress: ProgressFn) -> Output:
        call = images.request(job)
        model = self.models[Product.IMAGE]
        progress(10)  # the request is on its way; nothing else is known until Google answers
        begun = self._image_calls.claim(job.task_id)  # sent at acceptance: its answer is this call's

        def send() -> image_answer.Answer:
            nonlocal begun
            if begun is not None:
                waiting, begun = begun.future, None
                return images.ImagesRest.answer(waiting.result())
            timeout = remaining(job.deadline, self.settings.google_request_timeout_s, "calling Google")
            return self._backend.image_calls.generate(call, model, timeout)

        answer = self._retry(
            send, "image generation", job, idempotent=False, begun_at=begun.began_at if begun else None
        )
        try:
            image_answer.write_png(answer, dest)
        except EngineError as exc:  # a blocked prompt or image (metrics: provider errors by kind)
            count_refusal(CALL_LABELS["image generation"], exc)
            raise
        progress(90)
        return Output(dest, "image/png", {"model": model})

    def _send_prepared(
        self,
        calls: images.ImagesRest,
        prepared: list[tuple[ImageJob, concurrent.futures.Future[httpx.Response]]],
        committed: Collection[str],
    ) -> int:
        going = [(job, future) for job, future in prepared if job.task_id in committed]
        self._image_calls.drop([job.task_id for job, _ in prepared if job.task_id not in committed])
        if not going:
            return 0
        model = self.models[Product.IMAGE]
        cap = self.settings.google_request_timeout_s
        now = time.time()
        try:  # a floor on the timeout: aiohttp reads 0 or less as no limit at all
            calls.begin(
                [(images.request(job), model, max(1.0, min(cap, job.deadline - now))) for job, _ in going],
                [future for _, future in going],
            )
        except Exception as exc:  # never sent: each job makes its own call (a connection error is retried)
            log.warning("could not send %d image call(s) at acceptance: %s", len(going), exc)
            for _, future in going:
                if future.set_running_or_notify_cancel():
                    future.set_exception(httpx.ConnectError(f"not sent at acceptance: {exc}"))
            return 0
        self._begun_metric.inc(len(going))
        return len(going)

    # -- shots: a long-running operation, submitted once -----------------------------------------------
    def submit_shot(self, job: ShotJob) -> str:
        def call() -> str:
            timeout = remaining(job.deadline, self.settings.google_request_timeout_s, "submitting to Google")
            return self._backend.veo.submit(job, timeout)

        operation = self._retry(call, "video submission", job, idempotent=False)
        log.info("task %s: Veo operation %s", job.task_id, operation)
        return operation

    def await_shot(self, job: ShotJob, operation: str, dest: Path, progress: ProgressFn) -> Output:
        # The operation's age counts from its task's start (just before the submission), so a
        # recovered operation is polled as soon as its age says it may be done, not a whole first
        # wait after the restart.
        with self._polls.awaiting():  # before any window, how many poll between them sets the spacing
            submitted = job.started_at or time.time()
            delay = self._polls.delay(time.time() - submitted, first=True)
            while True:
                if time.time() + delay >= job.deadline:
                    raise EngineError(
                        "Generation timed out (deadline exceeded): Google's video operation had not finished"
                    )
                # Ends early when the task ends: the operation is abandoned, not awaited.
                self._polls.wait(job, delay, lambda: time.time() - submitted)
                self._polls_made.inc()
                finished = self._retry(
                    lambda: self._backend.veo.poll(operation, self._timeout(job)),
                    "polling the video operation",
                    job,
                    idempotent=True,
                )
                age = time.time() - submitted
                if finished is not None:
                    break
                progress(shot_progress(age))
                delay = self._polls.delay(age)
        self._polls.finished(age)
        self._retry(
            lambda: self._backend.veo.fetch(finished, dest, self._timeout(job)),
            "downloading the video",
            job,
            idempotent=True,
        )
        try:
            info = probe_video(dest)
        except Exception as exc:  # PyAV raises its own error types for undecodable files
            raise EngineError(
                f"Google returned a malformed response (the video does not decode: {exc})"
            ) from exc
        progress(95)
        return Output(dest, "video/mp4", {"operation": operation, "width": info.width, "height": info.height})

    def _timeout(self, job: ShotJob) -> float:
        return remaining(job.deadline, self.settings.google_request_timeout_s, "calling Google")

    def _retry(
        self, call: Callable[[], T], what: str, job: Job, *, idempotent: bool, begun_at: float | None = None
    ) -> T:
        gate = self._gates[what]
        return retrying(
            call,
            what=what,
            deadline=job.deadline,
            backoff=self._backoff,
            idempotent=idempotent,
            sleep=job.wait,
            before=lambda: gate.admit(job),
            throttled=gate.pause,
            begun_at=begun_at,
        )

    # -- nanogen doctor ---------------------------------------------------------------------------------
    def diagnose(self, products: frozenset[Product]) -> list[Check]:
        checks = [Check("mode", True, self._backend.description), self._backend.check_credentials()]
        for product in sorted(products):
            checks.append(self._check_model(product))
            checks.append(self._check_price(product))
        return checks

    def _check_model(self, product: Product) -> Check:
        model = self.models[product]
        client = self._backend.images if product is Product.IMAGE else self._backend.videos
        label = f"{product.value} model"
        info = model_info(product, model)
        known = (
            f"{info.label}"
            if info
            else "not in nanogen's model table: its abilities are not checked before debit"
        )
        try:
            found = sdk(
                lambda: client.models.get(
                    model=model, config={"http_options": {"timeout": int(DOCTOR_TIMEOUT_S * 1000)}}
                )
            )
        except ProviderError as exc:
            return Check(label, False, f"{model}: {exc.engine_error().message}")
        except EngineError as exc:
            return Check(label, False, f"{model}: {exc.message}")
        except httpx.HTTPError as exc:
            return Check(label, False, f"{model}: cannot reach Google ({type(exc).__name__}: {exc})")
        return Check(label, True, f"{model} answers ({found.display_name or found.name}); {known}")

    def _check_price(self, product: Product) -> Check:
        model = self.models[product]
        if product is Product.IMAGE:
            prices = [(q.value, image_list_price(model, q)) for q in ImageQuality]
            unit = "per image"
        else:
            prices = [(r.value, video_list_price(model, r, 1)) for r in Resolution]
            unit = "per second"
        listed = ", ".join(f"{k} ${v}" for k, v in prices if v is not None)
        if not listed:
            return Check(
                f"{product.value} price", True, f"no list price for {model}: costs are not estimated"
            )
        return Check(
            f"{product.value} price", True, f"{listed} {unit} (list prices checked {PRICES_CHECKED})"
        )
