"""The ``nanogen`` command line: serve, worker, migrate, demo, keys, credits, doctor; and
(cli_generate.py) image, video, status, download.

The database's modules (SQLAlchemy, psycopg, the ledger, the settings that name the database) are
imported by the commands that use them: the client commands (image, status, ...) talk HTTP only, and
importing the server side would make each of them about a third slower to start.
"""

from __future__ import annotations

import logging.config
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nanogen import cli_generate
from nanogen.engines.base import Check
from nanogen.engines.registry import default_registry
from nanogen.errors import NanogenError
from nanogen.products import MAX_GRANT, Product, format_usd

if TYPE_CHECKING:
    import sqlalchemy as sa

    from nanogen.settings import Settings
    from nanogen.tasks.ownership import Claim

app = typer.Typer(
    help="nanogen: self-hosted NanoPhoto-compatible image and video generation.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant and show credits.", no_args_is_help=True)
cli_generate.register(app)
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")

err = Console(stderr=True)
out = Console()

KEY_INTRO = "API key (shown once, stored only as a hash)"
DEMO_ACCOUNT = "demo"
DEMO_CREDITS = 1000


def _settings(**overrides: object) -> Settings:
    """The settings, or exit 2 naming each bad one (no traceback: it is the operator's to fix)."""
    from nanogen.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for problem in exc.errors():
            name = "NANOGEN_" + "_".join(str(part) for part in problem["loc"]).upper()
            message = str(problem["msg"]).removeprefix("Value error, ")
            err.print(f"[red]invalid setting {escape(name)}[/red]: {escape(message)}")
        raise typer.Exit(2) from None


@contextmanager
def _database(settings: Settings) -> Iterator[sa.Engine]:
    from nanogen.db import make_engine
    from nanogen.migrate import migrate

    settings.home.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _writing(settings: Settings) -> Iterator[sa.Connection]:
    """A transaction on the (migrated) database, committed when the block ends."""
    from nanogen.db import write_transaction

    with _database(settings) as db, write_transaction(db) as conn:
        yield conn


@contextmanager
def _reading(settings: Settings) -> Iterator[sa.Connection]:
    from nanogen.db import read_connection

    with _database(settings) as db, read_connection(db) as conn:
        yield conn


def _claim(settings: Settings, role: str) -> tuple[Settings, Claim]:
    """Own this process's SQLite database, or its executor id on PostgreSQL, before touching anything
    (tasks/ownership.py); exit 3 when a live process already does. The settings carry the id owned."""
    import psycopg

    from nanogen.tasks.ownership import AlreadyRunning, claim

    try:
        owned = claim(settings, role)
    except AlreadyRunning as exc:
        err.print(f"[red]not starting[/red]: {escape(str(exc))}")
        raise typer.Exit(3) from None
    except psycopg.OperationalError as exc:
        err.print(f"[red]database unreachable[/red]: {escape(str(exc).strip())}")
        raise typer.Exit(3) from None
    return settings.model_copy(update={"executor_id": owned.executor_id}), owned


@app.command()
def migrate() -> None:
    """Create or upgrade the database (nanogen's tables and DBOS's)."""
    settings = _settings()
    with _database(settings):
        pass
    err.print(f"[green]database ready[/green]: {escape(_safe_url(settings.resolved_database_url))}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Also run generations here.")] = True,
) -> None:
    """Run the API server (and, by default, the generation workers) in this process."""
    import uvicorn

    from nanogen.server.app import create_app
    from nanogen.server.protocol import TimedHttpProtocol

    settings = _settings(host=host, port=port)
    _require_engines(settings)
    settings, _owned = _claim(settings, "serve" if worker else "api")
    with _database(settings):
        pass
    logging.config.dictConfig(_log_config(settings))  # uvicorn applies the same again
    if settings.public_url is None and settings.host in ("0.0.0.0", "::", ""):
        _say(
            settings,
            "[yellow]listening on all interfaces: set NANOGEN_PUBLIC_URL to the address clients use, "
            f"or output URLs will point at {escape(settings.resolved_public_url)}[/yellow]",
            logging.WARNING,
        )
    _say(
        settings,
        f"nanogen {'API + worker' if worker else 'API only'} on "
        f"[bold]{escape(f'http://{settings.host}:{settings.port}')}[/bold]"
        f" (data: {escape(str(settings.home.resolve()))}, engines: images={escape(settings.engine_images)}, "
        f"videos={escape(settings.engine_videos)})",
    )
    uvicorn.run(
        create_app(settings, work=worker),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings),
        access_log=False,  # nanogen logs each request itself (server/direct.py), with its route and id
        # uvicorn's protocol with header and body read deadlines (slow or stalled clients)
        http=TimedHttpProtocol.configured(settings.header_timeout_s, settings.body_timeout_s),
    )


@app.command(name="worker")
def run_worker(
    engines: Annotated[
        str | None,
        typer.Option(help="Comma-separated engines whose queues to take (default: every configured one)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Generations this worker runs at once, per queue.")
    ] = None,
) -> None:
    """Run generation workers only, on the same database as the API processes."""
    from nanogen.tasks.lifecycle import launch

    settings = _settings(worker_engines=engines, image_concurrency=concurrency, video_concurrency=concurrency)
    _require_engines(settings)
    configured = {settings.engine_images, settings.engine_videos}
    if unknown := set(settings.worker_engines) - configured:
        err.print(
            f"[red]--engines {escape(', '.join(sorted(unknown)))}: not configured here[/red] "
            f"(images: {escape(settings.engine_images)}, videos: {escape(settings.engine_videos)})"
        )
        raise typer.Exit(2)
    settings, owned = _claim(settings, "worker")
    with _database(settings):
        pass
    logging.config.dictConfig(_log_config(settings))
    process = launch(settings, "worker", work=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    queues = ", ".join(process.queues)
    _say(settings, escape(f"nanogen worker {settings.executor_id_for('worker')} running (queues: {queues})"))
    stop.wait()
    _say(settings, "stopping worker")
    process.stop()
    owned.release()


@app.command()
def demo() -> None:
    """Set up the demo account (1000 credits) and print a fresh demo API key on the last line."""
    from nanogen import ledger

    with _writing(_settings()) as conn:
        account = ledger.find_account(conn, DEMO_ACCOUNT) or ledger.create_account(
            conn, DEMO_ACCOUNT, DEMO_CREDITS
        )
        _key_id, key = ledger.create_key(conn, account.id, "demo")
        balance = ledger.balance(conn, account.id)
    err.print(f"demo account [bold]{escape(account.name)}[/bold] ({account.id}), balance {balance} credits")
    _print_key(KEY_INTRO, key)


@keys_app.command("create")
def keys_create(
    credits: Annotated[int, typer.Option(min=0, max=MAX_GRANT, help="Credits granted with the key.")] = 0,
    name: Annotated[str, typer.Option(help="Name of the new account (or of the key with --account).")] = "",
    account: Annotated[str | None, typer.Option(help="Add the key to this existing account instead.")] = None,
) -> None:
    """Create an API key (for a new account unless --account). The key is the last line of stdout."""
    from nanogen import ledger

    with _writing(_settings()) as conn:
        if account is None:
            if name and ledger.find_account(conn, name):
                err.print(
                    f"[red]an account named {escape(repr(name))} exists[/red]: "
                    f"add a key to it with --account {escape(name)}"
                )
                raise typer.Exit(2)
            owner = ledger.create_account(conn, name or ledger.new_id("account"), credits)
        else:
            found = ledger.find_account(conn, account)
            if found is None:
                err.print(f"[red]no account {escape(repr(account))}[/red]")
                raise typer.Exit(2)
            owner = found
            if credits:
                ledger.grant(conn, owner.id, credits, memo="granted with a new key")
        key_id, key = ledger.create_key(conn, owner.id, name if account else "")
        balance = ledger.balance(conn, owner.id)
    err.print(escape(f"account {owner.name} ({owner.id}), balance {balance}; key {key_id}"))
    _print_key(KEY_INTRO, key)


@keys_app.command("list")
def keys_list(account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None) -> None:
    """List keys (their ids and prefixes; the keys themselves are never stored)."""
    from nanogen import ledger

    with _reading(_settings()) as conn:
        owner = ledger.find_account(conn, account) if account else None
        rows = ledger.list_keys(conn, owner.id if owner else None)
    table = Table("key id", "account", "name", "prefix", "state")
    table.columns[0].overflow = "fold"  # ids are copied into other commands: never cut them
    for k in rows:
        cells = (k.id, k.account_name, k.name, k.prefix + "…", "revoked" if k.revoked_at else "live")
        table.add_row(*map(escape, cells))
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: its next request gets 401 LOGIN_REQUIRED."""
    from nanogen import ledger

    with _writing(_settings()) as conn:
        revoked = ledger.revoke_key(conn, key_id)
    if not revoked:
        err.print(f"[red]no live key {escape(repr(key_id))}[/red]")
        raise typer.Exit(2)
    err.print(f"revoked {escape(key_id)}")


@credits_app.command("grant")
def credits_grant(
    account: str,
    amount: Annotated[int, typer.Argument(min=1, max=MAX_GRANT)],
    memo: Annotated[str, typer.Option(help="Why (kept in the ledger).")] = "",
) -> None:
    """Grant credits to an account (id or name)."""
    from nanogen import ledger

    with _writing(_settings()) as conn:
        found = ledger.find_account(conn, account)
        if found is None:
            err.print(f"[red]no account {escape(repr(account))}[/red]")
            raise typer.Exit(2)
        try:
            balance = ledger.grant(conn, found.id, amount, memo)
        except ValueError as exc:
            err.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None
    err.print(escape(f"{found.name}: +{cli_generate.plural(amount, 'credit')}, balance {balance}"))


@credits_app.command("show")
def credits_show(account: Annotated[str | None, typer.Argument()] = None) -> None:
    """Balances with their ledger totals (granted - debited + refunded = balance)."""
    from nanogen import ledger
    from nanogen.tasks import store

    with _reading(_settings()) as conn:
        accounts = ledger.list_accounts(conn)
        if account:
            accounts = [a for a in accounts if account in (a.id, a.name)]
            if not accounts:
                err.print(f"[red]no account {escape(repr(account))}[/red]")
                raise typer.Exit(2)
        rows = [(a, ledger.totals(conn, a.id)) for a in accounts]
        costs = store.provider_costs(conn)
    table = Table("account", "id", "balance", "granted", "debited", "refunded", "provider cost (USD)")
    table.columns[1].overflow = "fold"
    for a, t in rows:
        table.add_row(
            escape(a.name),
            escape(a.id),
            str(a.balance),
            str(t.granted),
            str(t.debited),
            str(t.refunded),
            format_usd(costs.get(a.id, 0)),
        )
    out.print(table)
    err.print(
        "provider cost: the providers' list prices of the work done, and a local engine's GPU-seconds at "
        "NANOGEN_DIFFUSERS_GPU_HOUR_USD (estimates, see docs/engines.md)"
    )


def _engine_names(settings: Settings) -> dict[str, list[Product]]:
    names: dict[str, list[Product]] = {}
    for product, name in ((Product.IMAGE, settings.engine_images), (Product.VIDEO, settings.engine_videos)):
        names.setdefault(name, []).append(product)
    return names


def _require_engines(settings: Settings) -> None:
    """Fail before serving when a configured engine cannot be built (unknown, or a missing key)."""
    registry = default_registry()
    for name, products in _engine_names(settings).items():
        try:
            registry.create(name, settings)
        except NanogenError as exc:
            served = " and ".join(p.value + "s" for p in products)
            err.print(f"[red]cannot start the {escape(name)} engine for {served}[/red]: {escape(str(exc))}")
            err.print("`nanogen doctor` checks the engine settings")
            raise typer.Exit(2) from None


@app.command()
def doctor() -> None:
    """Check the configured engines: settings, credentials, models and prices. Makes no paid call."""
    settings = _settings()
    registry = default_registry()
    healthy = True
    for name, products in _engine_names(settings).items():
        out.print(
            f"[bold]{escape(name)}[/bold] engine, serving {' and '.join(p.value + 's' for p in products)}"
        )
        try:
            checks = registry.create(name, settings).diagnose(frozenset(products))
        except NanogenError as exc:
            checks = [Check("configuration", False, str(exc))]
        for check in checks:
            healthy = healthy and check.ok
            mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
            out.print(
                f"  {mark}  {escape(check.name)}: {escape(check.detail)}", soft_wrap=True, highlight=False
            )
    if not healthy:
        err.print("[red]some checks failed[/red]: see the details above and docs/engines.md")
        raise typer.Exit(1)
    err.print("[green]all engine checks passed[/green]")


def _print_key(intro: str, key: str) -> None:
    """A new key on stdout (its last line, for scripts), announced on stderr only when stdout is a
    terminal: piped (``key=$(nanogen demo | tail -n 1)``), the announcement would end in nothing."""
    if sys.stdout.isatty():
        err.print(f"{intro}:")
    print(key)


def _say(settings: Settings, markup: str, level: int = logging.INFO) -> None:
    """A server's or worker's own announcement: on the console, or a log line with JSON logs."""
    if settings.log_format == "json":
        logging.getLogger("nanogen.cli").log(level, Text.from_markup(markup).plain)
    else:
        err.print(markup)


def _log_config(settings: Settings) -> dict[str, Any]:
    """Logging of a server or worker process (nanogen/logs.py), scrubbing the configured secrets."""
    import sqlalchemy as sa

    from nanogen.logs import config

    secrets = [
        value.get_secret_value()
        for value in (
            settings.google_api_key,
            settings.admin_token,
            settings.metrics_token,
            settings.s3_secret_access_key,
        )
        if value is not None
    ]
    password = sa.make_url(settings.resolved_database_url).password
    if password:
        secrets.append(str(password))
    return config(settings.log_format, settings.log_level, secrets)


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()
