"""``nanogen image``, ``video``, ``status``, ``download`` and ``cancel``: the SDK from a shell.

Each command submits (uploading local files first), shows a rich progress display per image or shot
on stderr, downloads the result and prints where it went on stdout (``--json``: one JSON object).
Ctrl-C stops waiting, not the generation, and prints how to resume. Exit codes (``EXIT_CODES``):

====  =================================================================
0     done
1     unexpected error: server error (5xx), server unreachable
2     bad input: usage, a refused request (400/404/409/413/415), a missing file
3     authentication: no key, bad or revoked key (401), not yours (403)
4     insufficient credits (402)
5     the generation failed (credits refunded)
6     rate limited (429)
7     still running when --timeout passed (the generation goes on)
130   interrupted (Ctrl-C); the generation goes on
====  =================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from nanogen import errors, schemas
from nanogen.cli_shots import Failure, build_shots
from nanogen.client import (
    IMAGE_POLL_INTERVAL_S,
    VIDEO_POLL_INTERVAL_S,
    Client,
    ImageGeneration,
    VideoGeneration,
)
from nanogen.products import ImageAspectRatio, ImageQuality, Resolution, VideoAspectRatio

# Every server- or user-provided string printed through rich goes through escape(): "[sandbox:fail]" in
# a message is text, not markup.
err = Console(stderr=True)

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_AUTH, EXIT_CREDITS, EXIT_FAILED, EXIT_RATE, EXIT_TIMEOUT = range(8)
EXIT_INTERRUPTED = 130
# First match wins: order from specific to general.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (Failure, EXIT_INPUT),
    (errors.GenerationFailed, EXIT_FAILED),
    (errors.LoginRequired, EXIT_AUTH),
    (errors.Forbidden, EXIT_AUTH),
    (errors.AdminForbidden, EXIT_AUTH),
    (errors.InsufficientCredits, EXIT_CREDITS),
    (errors.RateLimited, EXIT_RATE),
    (errors.WaitTimeout, EXIT_TIMEOUT),
    (errors.BadRequest, EXIT_INPUT),
    (errors.NotFound, EXIT_INPUT),
    (errors.AlreadyEnded, EXIT_INPUT),  # cancel: nothing left to cancel
    (errors.MethodNotAllowed, EXIT_INPUT),
    (errors.UnsupportedMediaType, EXIT_INPUT),
    (OSError, EXIT_INPUT),  # a local file that is missing or unreadable
)

ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="NANOGEN_API_KEY", show_default=False, help="API key (ng_...)."),
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="NANOGEN_BASE_URL",
        show_default=False,
        help="Server (default http://127.0.0.1:8000).",
    ),
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout; no progress display.")
]
Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="File or folder to save to (default ./<generationId>.<ext>)."),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        min=0, help="Stop waiting after this many seconds (exit 7); default 15 min images, 45 min video."
    ),
]
PollInterval = Annotated[
    float | None,
    typer.Option(
        min=0.05, help="Seconds between status checks (default: the API pages', 3 s images, 5 s video)."
    ),
]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Submit, print the id and return.")]
Webhook = Annotated[
    str | None,
    typer.Option(
        "--webhook",
        help="URL the server POSTs the signed event to when the generation ends (default: the account's).",
        show_default=False,
    ),
]

# The first status checks come sooner than the regular interval (0.5 s, 1 s, 2 s... until it is reached):
# a sandbox image done in a second is seen done then, not after the pages' 3 s.
FIRST_CHECK_S = 0.5


# -- shared plumbing -------------------------------------------------------------------------------------
def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=None, default=str))


def _exit_code(exc: BaseException) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _report_error(exc: BaseException, as_json: bool, resume_id: str | None = None) -> int:
    code = _exit_code(exc)
    if isinstance(exc, errors.GenerationFailed):
        # Raised by the SDK from a failed status, not an HTTP answer: no HTTP status to show.
        body: dict[str, Any] = exc.body()
        if isinstance(exc.result, schemas.ImageStatusResponse | schemas.VideoStatusResponse):
            body["result"] = exc.result.model_dump(mode="json", exclude_none=True)
        text = f"{exc.code}: {exc.message}"
    elif isinstance(exc, errors.APIError):
        body = exc.body() | {"status": exc.status}
        text = f"{exc.code} (HTTP {exc.status}): {exc.message}"
    else:
        body = {"error": str(exc), "errorCode": type(exc).__name__}
        text = str(exc)
    if as_json:
        resumable = {"generationId": resume_id} if isinstance(exc, errors.WaitTimeout) else {}
        _emit({"success": False, **body, **resumable})
    else:
        err.print(f"[red]error[/red]: {escape(text)}", highlight=False, soft_wrap=True)
        hint = _hint(exc)
        if hint:
            err.print(escape(hint), highlight=False)
        if isinstance(exc, errors.WaitTimeout) and resume_id:
            _print_resume("Stopped waiting (--timeout)", resume_id)
    return code


def _print_resume(reason: str, ident: str) -> None:
    """How to pick a generation up again: after Ctrl-C, and after --timeout."""
    err.print(
        f"{reason}; [bold]{escape(ident)}[/bold] goes on on the server.\n"
        f"  nanogen status {escape(ident)}      show where it is\n"
        f"  nanogen download {escape(ident)}    wait for it and save the result",
        highlight=False,
        soft_wrap=True,  # lines to copy: never broken
    )


def _hint(exc: BaseException) -> str:
    if isinstance(exc, errors.LoginRequired):
        return "Pass --api-key or set NANOGEN_API_KEY (nanogen demo / nanogen keys create print one)."
    if isinstance(exc, errors.InsufficientCredits) and exc.required_credits is not None:
        return f"This request costs {exc.required_credits} credits."
    if isinstance(exc, errors.RateLimited) and exc.retry_after is not None:
        return f"Try again in {exc.retry_after} s."
    if isinstance(exc, errors.ConnectionFailed):
        return "Is the server running? (./scripts/serve, or set NANOGEN_BASE_URL)"
    return ""


@contextmanager
def _handled(as_json: bool, resume_id: Callable[[], str | None] = lambda: None) -> Iterator[None]:
    """Errors become messages and exit codes; Ctrl-C says how to pick the generation up again."""
    try:
        yield
    except KeyboardInterrupt:
        ident = resume_id()
        if as_json:
            _emit({"success": False, "errorCode": "INTERRUPTED", "generationId": ident})
        elif ident:
            _print_resume("\nStopped waiting", ident)
        else:
            err.print("\nInterrupted.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (errors.NanogenError, OSError, Failure) as exc:
        raise typer.Exit(_report_error(exc, as_json, resume_id())) from None


def _client(api_key: str | None, base_url: str | None) -> Client:
    return Client(api_key=api_key, base_url=base_url)


def _progress(as_json: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
    )


def _saved(path: Path, as_json: bool, data: dict[str, Any]) -> None:
    if as_json:
        _emit({"success": True, **data, "path": str(path.resolve())})
    else:
        err.print(f"[green]saved[/green] {escape(str(path))}", highlight=False)
        print(path)


# -- images ----------------------------------------------------------------------------------------------
def _image_progress(
    progress: Progress, image: ImageGeneration
) -> Callable[[schemas.ImageStatusResponse], None]:
    task = progress.add_task(escape(f"image {image.id}"), total=100, state="submitted")

    def update(status: schemas.ImageStatusResponse) -> None:
        progress.update(task, completed=status.progress, state=escape(status.status))

    return update


S = TypeVar("S", schemas.ImageStatusResponse, schemas.VideoStatusResponse)


def _first_checks(
    check: Callable[[], S], on_progress: Callable[[S], None], interval: float, timeout: float | None
) -> dict[str, Any]:
    """Status checks at FIRST_CHECK_S, doubling while shorter than ``interval``, before the SDK's wait
    takes over at ``interval``. Answers the wait's arguments: the interval and what is left of ``timeout``."""
    started = time.monotonic()
    delay = FIRST_CHECK_S
    while delay < interval and (timeout is None or time.monotonic() - started + delay < timeout):
        try:
            status = check()
        except (errors.ConnectionFailed, errors.RateLimited, errors.ServiceUnavailable):
            break  # the SDK's wait rides these out (retries, Retry-After)
        on_progress(status)
        if status.status in ("completed", "failed"):
            break
        time.sleep(delay)
        delay *= 2
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    return {"poll_interval": interval} | ({"timeout": left} if left is not None else {})


@contextmanager
def _waiting() -> Iterator[None]:
    """A WaitTimeout says how long the command waited in all (the SDK's counts only its own part)."""
    started = time.monotonic()
    try:
        yield
    except errors.WaitTimeout:
        raise errors.WaitTimeout(f"still not finished after {time.monotonic() - started:.0f} s") from None


def _finish_image(
    image: ImageGeneration, output: Path | None, as_json: bool, timeout: float | None, interval: float | None
) -> None:
    with _progress(as_json) as progress, _waiting():
        on_progress = _image_progress(progress, image)
        kwargs = _first_checks(image.status, on_progress, interval or IMAGE_POLL_INTERVAL_S, timeout)
        path = image.download(output, on_progress=on_progress, **kwargs)
    status = image.last_status
    assert status is not None
    _saved(
        path,
        as_json,
        {
            "kind": "image",
            "generationId": image.id,
            "taskId": image.task_id,
            "status": status.status,
            "creditsUsed": image.credits_used,
            "url": status.imageUrl,
        },
    )


def image(
    prompt: Annotated[str, typer.Argument(help="What to draw (or how to change the --edit images).")],
    aspect: Annotated[ImageAspectRatio, typer.Option(help="Aspect ratio.")] = ImageAspectRatio.LANDSCAPE,
    quality: Annotated[
        ImageQuality, typer.Option(case_sensitive=False, help="1K (4 credits), 2K (8) or 4K (16).")
    ] = ImageQuality.Q1K,
    search: Annotated[bool, typer.Option("--search", help="Let the model use Google Search.")] = False,
    edit: Annotated[
        list[str] | None,
        typer.Option("--edit", help="Image to edit: a local file (uploaded) or a URL; repeat for up to 14."),
    ] = None,
    output: Output = None,
    as_json: JsonOut = False,
    no_wait: NoWait = False,
    timeout: Timeout = None,
    poll_interval: PollInterval = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    webhook: Webhook = None,
) -> None:
    """Generate (or, with --edit, edit) an image, show its progress and save it."""
    handle: list[ImageGeneration] = []
    with _handled(as_json, lambda: handle[0].id if handle else None), _client(api_key, base_url) as client:
        if not as_json:
            err.print(
                "submitting…" if not edit else f"uploading and submitting ({plural(len(edit), 'image')})…"
            )
        submitted = client.images.generate(
            prompt,
            aspect_ratio=aspect.value,
            quality=quality.value,
            google_search=search,
            input_images=edit or (),
            webhook_url=webhook,
        )
        handle.append(submitted)
        if not as_json:
            err.print(
                f"generation [bold]{escape(submitted.id)}[/bold] submitted "
                f"({plural(submitted.credits_used or 0, 'credit')})",
                highlight=False,
            )
        if no_wait:
            _submitted(as_json, "image", submitted.id, submitted.credits_used, submitted.id)
            return
        _finish_image(submitted, output, as_json, timeout, poll_interval)


def _submitted(
    as_json: bool, kind: str, ident: str | None, credits: int | None, resume_id: str, **extra: Any
) -> None:
    """``--no-wait``: the id to pass to ``nanogen status`` / ``download`` (stdout), or the JSON."""
    if as_json:
        _emit(
            {
                "success": True,
                "kind": kind,
                "generationId": ident,
                "status": "submitted",
                "creditsUsed": credits,
                **extra,
            }
        )
    else:
        print(resume_id)


# -- videos ----------------------------------------------------------------------------------------------
def _video_progress(
    progress: Progress, video: VideoGeneration
) -> Callable[[schemas.VideoStatusResponse], None]:
    tasks: dict[str, TaskID] = {
        ref.taskId: progress.add_task(escape(f"shot {ref.shotId}"), total=100, state="submitted")
        for ref in video.shots
    }
    whole: list[TaskID] = []

    def update(status: schemas.VideoStatusResponse) -> None:
        for shot in status.shots:
            if shot.taskId not in tasks:
                tasks[shot.taskId] = progress.add_task(escape(f"shot {shot.shotId}"), total=100, state="")
            done = 100 if shot.status == "completed" else shot.progress
            progress.update(tasks[shot.taskId], completed=done or 0, state=escape(shot.status))
        if len(status.shots) > 1 and all(s.status == "completed" for s in status.shots):
            if not whole:
                whole.append(progress.add_task("whole video", total=1, state="joining shots"))
            joined = status.status == "completed"
            progress.update(
                whole[0], completed=1 if joined else 0, state="joined" if joined else "joining shots"
            )

    return update


def _finish_video(
    video: VideoGeneration, output: Path | None, as_json: bool, timeout: float | None, interval: float | None
) -> None:
    with _progress(as_json) as progress, _waiting():
        on_progress = _video_progress(progress, video)
        kwargs = _first_checks(video.status, on_progress, interval or VIDEO_POLL_INTERVAL_S, timeout)
        path = video.download(output, on_progress=on_progress, **kwargs)
    status = video.last_status
    assert status is not None
    _saved(
        path,
        as_json,
        {
            "kind": "video",
            "generationId": video.id,
            "status": status.status,
            "creditsUsed": video.credits_used,
            "url": status.concatenatedVideoUrl or status.shots[0].videoUrl,
            "shots": [s.model_dump(mode="json", exclude_none=True) for s in status.shots],
        },
    )


def video(
    shot: Annotated[
        list[str] | None,
        typer.Option("--shot", help="A shot's prompt (8 s each); repeat for up to 21 shots."),
    ] = None,
    shots_file: Annotated[
        Path | None,
        typer.Option(
            "--shots-file",
            exists=True,
            dir_okay=False,
            help="Shots as JSON or YAML: a list of prompts/shot objects, or {shots: [...], resolution: ...}.",
        ),
    ] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="text, frames, reference (or the API's names); once for all shots or once per shot. "
            "Default: text without images, frames with 1-2, reference with 3.",
        ),
    ] = None,
    image_: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="[N=]IMAGE: a local file (uploaded) or URL for shot N (1-based; N= optional with one shot).",
        ),
    ] = None,
    aspect: Annotated[
        VideoAspectRatio, typer.Option(help="Aspect ratio of every shot.")
    ] = VideoAspectRatio.LANDSCAPE,
    resolution: Annotated[
        Resolution | None,
        typer.Option(
            case_sensitive=False, help="720p (10 credits a shot); 1080p (14) or 4k (30): one shot only."
        ),
    ] = None,
    output: Output = None,
    as_json: JsonOut = False,
    no_wait: NoWait = False,
    timeout: Timeout = None,
    poll_interval: PollInterval = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    webhook: Webhook = None,
) -> None:
    """Generate a video of 1-21 shots (joined into one), show each shot's progress and save it."""
    handle: list[VideoGeneration] = []
    with (
        _handled(as_json, lambda: _resume_id(handle[0]) if handle else None),
        _client(api_key, base_url) as client,
    ):
        shots, file_resolution = build_shots(shot or [], shots_file, type_ or [], image_ or [], aspect)
        chosen = resolution.value if resolution else file_resolution
        if not as_json:
            err.print(f"submitting {plural(len(shots), 'shot')}…")
        submitted = client.videos.generate(shots, resolution=chosen, webhook_url=webhook)
        handle.append(submitted)
        if not as_json:
            err.print(
                f"video [bold]{escape(_resume_id(submitted))}[/bold] submitted "
                f"({plural(submitted.credits_used or 0, 'credit')})",
                highlight=False,
            )
        if no_wait:
            _submitted(
                as_json,
                "video",
                submitted.id,
                submitted.credits_used,
                _resume_id(submitted),
                taskIds=submitted.task_ids,
            )
            return
        _finish_video(submitted, output, as_json, timeout, poll_interval)


def _resume_id(video: VideoGeneration) -> str:
    """The id ``nanogen status`` takes: the generationId (nanogen), else the task ids joined by commas."""
    return video.id or ",".join(video.task_ids)


# -- status and download --------------------------------------------------------------------------------
def _find(client: Client, ident: str) -> ImageGeneration | VideoGeneration:
    """An image or video generation by id, whichever it is (one status call each way at most).

    ``a,b,c`` are a video's task ids (the hosted service's only handle)."""
    if "," in ident:
        refs = [schemas.TaskRef(taskId=t.strip()) for t in ident.split(",") if t.strip()]
        by_tasks = client.videos.get(task_ids=refs)
        by_tasks.status()
        return by_tasks
    found_image = client.images.get(ident)
    try:
        found_image.status()
        return found_image
    except errors.NotFound:
        pass
    by_generation = client.videos.get(ident)
    try:
        by_generation.status()
        return by_generation
    except (errors.TaskNotFound, errors.TaskIdsRequired, errors.InvalidParameter):
        pass  # not a video's generationId here, or a server without that lookup: try it as a task id
    single = client.videos.get(task_ids=[schemas.TaskRef(taskId=ident)])
    try:
        single.status()
    except errors.TaskNotFound:
        raise errors.NotFound(f"No image or video generation {ident!r} for this key") from None
    return single


def _show_image(found: ImageGeneration, as_json: bool) -> None:
    status = found.last_status
    assert status is not None
    if as_json:
        _emit({"kind": "image", **status.model_dump(mode="json", exclude_none=True)})
        return
    print(f"image {status.generationId}: {status.status} {status.progress}%")
    if status.imageUrl:
        print(f"  {status.imageUrl}")
    if status.error:
        print(f"  error: {status.error}")


def _show_video(found: VideoGeneration, as_json: bool) -> None:
    status = found.last_status
    assert status is not None
    if as_json:
        _emit({"kind": "video", **status.model_dump(mode="json", exclude_none=True)})
        return
    print(f"video {_resume_id(found)}: {status.status}")
    for shot in status.shots:
        progress = f" {shot.progress}%" if shot.progress is not None else ""
        print(f"  shot {shot.shotId} ({shot.taskId}): {shot.status}{progress}")
        if shot.videoUrl:
            print(f"    {shot.videoUrl}")
        if shot.error:
            print(f"    error: {shot.error}")
    if status.concatenatedVideoUrl:
        print(f"  whole video: {status.concatenatedVideoUrl}")
    if status.concatenationError:
        print(f"  joining failed: {status.concatenationError}")


def status(
    ident: Annotated[
        str,
        typer.Argument(metavar="ID", help="A generationId (image or video), or a video's task ids a,b,c."),
    ],
    as_json: JsonOut = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Show where an image or video generation is (one status check)."""
    with _handled(as_json), _client(api_key, base_url) as client:
        found = _find(client, ident)
        if isinstance(found, ImageGeneration):
            _show_image(found, as_json)
        else:
            _show_video(found, as_json)


def download(
    ident: Annotated[
        str,
        typer.Argument(metavar="ID", help="A generationId (image or video), or a video's task ids a,b,c."),
    ],
    output: Output = None,
    as_json: JsonOut = False,
    timeout: Timeout = None,
    poll_interval: PollInterval = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Wait for a generation to finish (with progress) and save its image or video."""
    with _handled(as_json, lambda: ident), _client(api_key, base_url) as client:
        found = _find(client, ident)
        if isinstance(found, ImageGeneration):
            _finish_image(found, output, as_json, timeout, poll_interval)
        else:
            _finish_video(found, output, as_json, timeout, poll_interval)


def cancel(
    ident: Annotated[str, typer.Argument(metavar="ID", help="The generationId (image or video).")],
    shot: Annotated[
        list[str] | None,
        typer.Option("--shot", help="Cancel only this shot of a video (its id as submitted); repeatable."),
    ] = None,
    as_json: JsonOut = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Cancel a running generation (or some shots of a video): its work stops, what had not completed is
    refunded, what completed is kept."""
    with _handled(as_json), _client(api_key, base_url) as client:
        done = client.cancel(ident, shot_ids=shot or None)
        if as_json:
            _emit(done.model_dump(mode="json", exclude_none=True))
            return
        print(
            f"{done.product} {done.generationId}: {plural(len(done.canceledTaskIds), 'task')} canceled, "
            f"{plural(done.creditsRefunded, 'credit')} refunded; now {done.status}"
        )
        for s in done.shots or []:
            error = f" ({s.error})" if s.error else ""
            print(f"  shot {s.shotId} ({s.taskId}): {s.status}{error}")


def history(
    product: Annotated[
        str | None, typer.Option("--product", help="Only image or video generations.", show_default=False)
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only these (pending, generating, processing, completed, failed, canceled); repeatable.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many (newest first).")] = 20,
    cursor: Annotated[
        str | None,
        typer.Option("--cursor", help="The next page: a listing's nextCursor.", show_default=False),
    ] = None,
    as_json: JsonOut = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """List the account's generations, newest first (a page; --cursor for the next)."""
    with _handled(as_json), _client(api_key, base_url) as client:
        page = client.list(product=product, status=status or None, limit=limit, cursor=cursor)
        if as_json:
            _emit(page.model_dump(mode="json"))
            return
        table = Table(box=None)
        table.add_column("generation", no_wrap=True)
        for name in ("product", "status", "created (UTC)", "credits", "prompt"):
            table.add_column(name)
        for g in page.data:
            deleted = " (files deleted)" if g.filesDeletedAt else ""
            table.add_row(
                escape(g.generationId),
                g.product,
                escape(g.status) + deleted,
                g.createdAt.strftime("%Y-%m-%d %H:%M:%S"),
                str(g.credits),
                escape(_clipped(g.prompt or "")),
            )
        if page.data:
            Console().print(table)
        else:
            err.print("No generations.")
        if page.nextCursor:
            err.print(f"More: nanogen history --cursor {escape(page.nextCursor)}")


def _clipped(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


EPILOG = (
    "Exit codes: 0 done, 1 server error or unreachable, 2 bad input, 3 authentication, "
    "4 insufficient credits, 5 generation failed, 6 rate limited, 7 --timeout passed, "
    "130 interrupted (the generation goes on)."
)


def register(app: typer.Typer) -> None:
    """Add the generation commands to the ``nanogen`` command line."""
    for command in (image, video, status, download, cancel):
        app.command(name=command.__name__, epilog=EPILOG)(command)
    app.command(name="history", epilog=EPILOG)(history)
