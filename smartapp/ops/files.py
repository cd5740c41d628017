"""Local state readable only by PeerBridge's own user: folders 0700, files 0600 (the launch store
holds tokens, the outbox holds referrals with PHI). No Flask."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create the folder (0700) or tighten an existing one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create an empty file 0600 (or tighten an existing one) before anything writes to it, in a
    0700 folder; SQLite gives its -wal/-shm files the database file's mode."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    path.chmod(0o600)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.chmod(0o600)
    return path


def private_database(url: str) -> None:
    """For a SQLite file URL, the file and its folder made private; other databases untouched."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        private_file(Path(parsed.database))
