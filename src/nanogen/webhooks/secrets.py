"""Signing secrets: derived, never stored.

An account's secret is ``whsec_`` + base64(HMAC-SHA256(master key, "<account id>:<version>")); the
database keeps only the version (``nanogen_webhook_accounts.secret_version``), so a copy of the
database gives no one the power to sign. The master key is ``NANOGEN_WEBHOOK_MASTER_KEY`` or, unset,
32 random bytes in ``<home>/webhook-master-key``, created on first use with mode 0600. Every process
of a deployment must use the same master key (processes on several machines: set the variable);
changing it changes every account's secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from datetime import datetime
from pathlib import Path

from standardwebhooks import Webhook

from nanogen.settings import Settings

PREFIX = "whsec_"
MASTER_KEY_FILE = "webhook-master-key"
ROTATION_OVERLAP_S = 24 * 3600.0  # after a rotation, the secret before it still signs this long

_lock = threading.Lock()
_loaded: dict[str, bytes] = {}


def master_key(settings: Settings) -> bytes:
    """The master key (the setting, else the data directory's file, made on first use)."""
    if settings.webhook_master_key is not None and settings.webhook_master_key.get_secret_value().strip():
        return settings.webhook_master_key.get_secret_value().strip().encode()
    path = settings.home.resolve() / MASTER_KEY_FILE
    with _lock:
        found = _loaded.get(str(path))
        if found is None:
            found = _loaded[str(path)] = _read_or_create(path)
    return found


def _read_or_create(path: Path) -> bytes:
    """Read the key file, or create it atomically (written aside, then linked into place: two
    processes starting at once end up with the same key, and none ever reads a partial file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it (every webhook secret changes) or set one")
    return key.encode()


def secret(settings: Settings, account_id: str, version: int) -> str:
    """The account's signing secret of this version, as Standard Webhooks writes one."""
    raw = hmac.new(master_key(settings), f"{account_id}:{version}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.b64encode(raw).decode()


def signing_versions(version: int, rotated_at: float | None, now: float) -> list[int]:
    """The secret versions that sign at ``now``: the current one, and the one before it within 24 h
    of a rotation."""
    if rotated_at is not None and version > 1 and now < rotated_at + ROTATION_OVERLAP_S:
        return [version, version - 1]
    return [version]


def signature(secrets_: list[str], message_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret, space-separated."""
    return " ".join(Webhook(s).sign(message_id, timestamp, body) for s in secrets_)
