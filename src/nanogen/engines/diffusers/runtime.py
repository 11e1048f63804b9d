"""Running diffusers pipelines for nanogen's jobs: devices, resident pipelines, seeds, steps, failures.

One :class:`PipelineRuntime` per engine instance (one per worker process). Engines call it like this::

    with runtime.session(job, model, progress) as session:
        result = session.pipe(
            prompt=job.prompt,
            generator=session.generator,
            num_inference_steps=steps,
            callback_on_step_end=session.step_callback(steps),
            output_type="pil",
        )
    metadata = {"seed": session.seed, "device": session.device, ...}

``session(job, model, progress)``
    waits for a free device (one generation at a time per GPU, each GPU its own; the CPU when there
    is none, unless ``NANOGEN_DIFFUSERS_DEVICE=cuda``), checking the job's stop and deadline while it
    waits; loads ``model`` (a hub id, or a local directory loaded with ``local_files_only=True``) or
    takes it from that device's resident pipelines (least recently used evicted past the memory
    budget); reports progress 1 then 5; yields a :class:`Session`. On the way out it frees the GPU's
    cached memory and turns failures into :class:`~nanogen.errors.EngineError` with a message for
    the user: out of GPU memory, no GPU, weights not found, a pipeline that raised. A stopped job's
    :class:`~nanogen.engines.base.JobStopped` passes through unchanged (the workflow fails the task
    with its message and refunds).
``Session.step_callback(total_steps, start=5, end=95)``
    the pipeline's ``callback_on_step_end``: reports progress from ``start`` to ``end`` as the steps
    go, and calls ``job.check()`` after each step, so a canceled or late job stops between steps.
``Session.generator`` / ``Session.seed``
    a CPU ``torch.Generator`` seeded from the task id (:func:`seed_for`: the same task re-run after a
    crash draws the same noise); put ``seed`` in the Output's metadata, the workflow records it.
``Session.pipe``, ``Session.device`` (``"cuda:0"``, ``"cpu"``), ``Session.dtype``
    the loaded pipeline (bf16 on a GPU, float32 on the CPU; CPU offload per
    ``NANOGEN_DIFFUSERS_CPU_OFFLOAD``), where it runs.
``unable(message)``
    the EngineError for "the model cannot do what was asked" (a check the submit route could not make).
``runtime.devices`` / ``describe_devices()``
    the devices this process uses, and a line per device for ``nanogen doctor`` (never loads a model).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanogen.engines.base import Job, JobStopped, ProgressFn
from nanogen.engines.diffusers.models import is_local
from nanogen.errors import EngineError
from nanogen.settings import Settings

log = logging.getLogger(__name__)

# The step callback diffusers pipelines call: (pipeline, step index, timestep, tensors) -> tensors.
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]

# A job waiting for a busy device looks at its stop signal and deadline this often.
DEVICE_POLL_S = 0.2
GIB = 1024**3


def seed_for(task_id: str) -> int:
    """A task's seed: stable across re-runs of the same task, different between tasks."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big")


def unable(message: str) -> EngineError:
    """The model cannot do what the job asks (an option only the configured model refuses)."""
    return EngineError(f"The configured model cannot do this: {message}")


@dataclass
class Resident:
    """A loaded pipeline kept on its device, and the memory it is counted for."""

    pipe: Any
    nbytes: int


@dataclass
class Device:
    """One device nanogen runs pipelines on: one generation at a time, its pipelines resident."""

    name: str  # "cuda:0", "cpu"
    budget_gb: float | None  # the setting; None: 90% of the device (asked on first use)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    resident: OrderedDict[str, Resident] = field(default_factory=OrderedDict, repr=False)

    @functools.cached_property
    def budget_bytes(self) -> int:
        """Computed when first needed: asking CUDA about a device creates a context on it, which an
        API process (it builds the engine only to check requests) should never do."""
        return _memory_budget(self.budget_gb, self.name)

    @property
    def is_gpu(self) -> bool:
        return self.name.startswith("cuda")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.is_gpu else torch.float32


@dataclass
class Session:
    """A device held for one job, with the pipeline loaded on it."""

    job: Job
    progress: ProgressFn
    model: str
    pipe: Any
    device: str
    dtype: torch.dtype
    seed: int
    generator: torch.Generator

    def step_callback(self, total_steps: int, start: int = 5, end: int = 95) -> StepCallback:
        job, progress = self.job, self.progress
        total = max(1, total_steps)

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress(start + (end - start) * min(step + 1, total) // total)
            job.check()  # raises JobStopped: the pipeline's loop ends here
            return tensors

        return on_step_end


def _memory_budget(budget_gb: float | None, name: str) -> int:
    if budget_gb is not None:
        return int(budget_gb * GIB)
    if name.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(name)).total_memory * 0.9)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 64 * GIB
    return int(physical * 0.5)


def pipeline_bytes(pipe: Any) -> int:
    """Memory a pipeline's weights take (parameters and buffers of its torch modules)."""
    total = 0
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


def weights_bytes(source: str) -> int:
    """What a local pipeline directory's weights take on disk (0 for a hub id): an estimate made
    before loading, so room is made first."""
    if not is_local(source):
        return 0
    root = Path(source).expanduser()
    return sum(p.stat().st_size for p in root.rglob("*") if p.suffix in {".safetensors", ".bin"})


def gpu_required_message() -> str:
    return (
        "No GPU: NANOGEN_DIFFUSERS_DEVICE=cuda but torch sees no CUDA device "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
    )


class PipelineRuntime:
    """Devices and their resident pipelines, for one worker process."""

    def __init__(self, settings: Settings, loader: Callable[[str, Device], Any] | None = None) -> None:
        self.settings = settings
        self._loader = loader or self._load
        self.gpu_missing = settings.diffusers_device == "cuda" and not torch.cuda.is_available()
        if settings.diffusers_device != "cpu" and torch.cuda.is_available():
            names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            names = ["cpu"]
        self.devices = [Device(name, settings.diffusers_memory_budget_gb) for name in names]
        self._free = threading.Condition()

    # -- devices ------------------------------------------------------------------------------------
    def _acquire(self, job: Job) -> Device:
        """A free device, waiting while all are busy; raises JobStopped when the job must stop."""
        while True:
            job.check()
            for device in self.devices:
                if device.lock.acquire(blocking=False):
                    return device
            with self._free:
                self._free.wait(DEVICE_POLL_S)

    def _release(self, device: Device) -> None:
        device.lock.release()
        with self._free:
            self._free.notify()

    def describe_devices(self) -> list[str]:
        lines = []
        for device in self.devices:
            if device.is_gpu:
                props = torch.cuda.get_device_properties(torch.device(device.name))
                free, total = torch.cuda.mem_get_info(torch.device(device.name))
                lines.append(
                    f"{device.name}: {props.name}, {total / GIB:.1f} GiB ({free / GIB:.1f} GiB free), "
                    f"budget {device.budget_bytes / GIB:.1f} GiB"
                )
            else:
                lines.append(
                    f"cpu: no GPU, float32 (slow: minutes per image), "
                    f"budget {device.budget_bytes / GIB:.1f} GiB"
                )
        return lines

    # -- pipelines ----------------------------------------------------------------------------------
    def pipeline(self, model: str, device: Device) -> Any:
        """``model`` on ``device``, loaded now or taken from the resident ones; call with the
        device held."""
        entry = device.resident.get(model)
        if entry is not None:
            device.resident.move_to_end(model)
            return entry.pipe
        self._make_room(device, weights_bytes(model), keep=None)
        started = time.monotonic()
        pipe = self._loader(model, device)
        nbytes = pipeline_bytes(pipe)
        device.resident[model] = Resident(pipe, nbytes)
        log.info(
            "diffusers: loaded %s on %s in %.1f s (%.2f GiB)",
            model,
            device.name,
            time.monotonic() - started,
            nbytes / GIB,
        )
        self._make_room(device, 0, keep=model)
        return pipe

    def _make_room(self, device: Device, needed: int, keep: str | None) -> None:
        """Evict the least recently used pipelines until ``needed`` more bytes fit the budget."""
        evicted = False
        while True:
            used = sum(r.nbytes for r in device.resident.values())
            candidates = [m for m in device.resident if m != keep]
            if used + needed <= device.budget_bytes or not candidates:
                break
            victim = candidates[0]
            log.info("diffusers: evicting %s from %s (memory budget)", victim, device.name)
            del device.resident[victim]
            evicted = True
        if evicted:
            gc.collect()
            if device.is_gpu:
                torch.cuda.empty_cache()

    def _load(self, model: str, device: Device) -> Any:
        import transformers
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        # Their progress bars would fill a worker's log; nanogen reports progress itself.
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        kwargs: dict[str, Any] = {"dtype": device.dtype}
        if is_local(model):
            root = Path(model).expanduser()
            if not (root / "model_index.json").is_file():
                raise EngineError(
                    f"Model weights not found at {root} (a diffusers pipeline directory, with "
                    "model_index.json, as save_pretrained or `hf download` writes it)"
                )
            source, kwargs["local_files_only"] = str(root), True
        else:
            source = model
        try:
            pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:  # missing files, an unreachable or refusing hub
            raise EngineError(f"Model weights not found at {model}: {_first_line(exc)}") from exc
        offload = self.settings.diffusers_cpu_offload
        if device.is_gpu and offload == "model":
            pipe.enable_model_cpu_offload(device=device.name)
        elif device.is_gpu and offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device.name)
        else:
            pipe.to(device.name)
        pipe.set_progress_bar_config(disable=True)
        self._tune(pipe)
        return pipe

    def _tune(self, pipe: Any) -> None:
        """The speed settings, on the denoising transformers only (not the VAE or text encoder):
        an attention backend, and regional torch.compile of their repeated blocks."""
        backend, compile_blocks = self.settings.diffusers_attention_backend, self.settings.diffusers_compile
        for name, component in getattr(pipe, "components", {}).items():
            if not name.startswith("transformer") or component is None:
                continue
            if backend:
                component.set_attention_backend(backend)
            if compile_blocks and getattr(component, "_repeated_blocks", None):
                component.compile_repeated_blocks(fullgraph=True)

    # -- one job ------------------------------------------------------------------------------------
    @contextmanager
    def session(self, job: Job, model: str, progress: ProgressFn, *, task_id: str = "") -> Iterator[Session]:
        if self.gpu_missing:
            raise EngineError(gpu_required_message())
        device = self._acquire(job)
        try:
            progress(1)
            with _failures(model, device):
                pipe = self.pipeline(model, device)
                job.check()
                progress(5)
                seed = seed_for(task_id or getattr(job, "task_id", "") or model)
                generator = torch.Generator(device="cpu").manual_seed(seed)
                yield Session(job, progress, model, pipe, device.name, device.dtype, seed, generator)
        finally:
            if device.is_gpu:  # what a stopped or failed job's tensors held goes back to the GPU
                gc.collect()
                torch.cuda.empty_cache()
            self._release(device)


@contextmanager
def _failures(model: str, device: Device) -> Iterator[None]:
    """Failures as the user reads them: never a traceback in a task's error."""
    try:
        yield
    except (JobStopped, EngineError):
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise EngineError(
            f"Out of GPU memory on {device.name} running {model}: set NANOGEN_DIFFUSERS_CPU_OFFLOAD=model, "
            "a smaller NANOGEN_DIFFUSERS_MEMORY_BUDGET_GB (fewer resident models) or a smaller model"
        ) from exc
    except Exception as exc:
        log.exception("diffusers: %s raised on %s", model, device.name)
        raise EngineError(f"The model {model} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
