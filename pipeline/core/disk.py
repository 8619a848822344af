"""Disk hygiene: room checks before writing, quotas, OS errors as one line, and clean-up of
refused, interrupted and abandoned work (``patrol gc``; also at the start of ``patrol serve``
and ``patrol nightly``)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

from pipeline.core.errors import InputError

FREE_MARGIN_BYTES = 64 << 20          # left free on the disk after a write
PART_GRACE_S = 3600                   # an unpacking younger than this may still be running


def folder_bytes(folder: Path) -> int:
    """Bytes of the files below ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def check_room(folder: str | Path, incoming: int, what: str, quota_mb: int = 0) -> None:
    """Refuse in one line when ``incoming`` bytes would not fit on the disk (with a margin) or
    in the folder's quota (MiB, 0 = none)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if incoming + FREE_MARGIN_BYTES > free:
        raise InputError(f"{what} needs {incoming / 2**20:,.0f} MiB but the disk has {free / 2**20:,.0f} MiB "
                         f"free; free some space (patrol gc) and try again")
    if quota_mb and folder_bytes(folder) + incoming > quota_mb << 20:
        raise InputError(f"{what} would take its folder over its quota of {quota_mb:,} MiB; run "
                         f"`patrol gc`, remove old flights or raise the quota")


def os_error_line(e: OSError, what: str) -> str:
    """One line for an OS error while doing ``what`` (no path, no traceback)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}: the disk is full; free some space (patrol gc) and try again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}: permission denied (read-only or protected folder); ask the administrator"
    return f"{what} failed ({e.strerror or type(e).__name__}); try again or ask the administrator"


@contextlib.contextmanager
def unpacking(folder: Path):
    """Hold ``folder`` (a ``*.part-*`` unpacking) as in progress: an flock on ``folder/.busy`` that
    dies with its process, so ``collect_garbage`` knows a killed unpacking from a running one."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".busy", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)


def _abandoned(part: Path, now: float) -> bool:
    """A killed unpacking (its lock is free), or one older than the grace period without a lock."""
    busy = part / ".busy"
    if not busy.exists():
        return now - part.stat().st_mtime > PART_GRACE_S
    fd = os.open(busy, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def collect_garbage(settings, now: float | None = None) -> dict[str, int]:
    """Remove what no flight needs: unpackings left by a killed or refused ingest
    (``*.part-*`` folders whose unpacking process is gone), resumable uploads untouched for
    ``service.upload_keep_hours``, and temporary checkpoint files. Returns counts and bytes."""
    now = time.time() if now is None else now
    out = {"partial_unpackings": 0, "abandoned_uploads": 0, "bytes": 0}

    def drop(p: Path, key: str) -> None:
        size = folder_bytes(p) if p.is_dir() else p.stat().st_size
        (shutil.rmtree if p.is_dir() else Path.unlink)(p)
        out[key] += 1
        out["bytes"] += size

    for folder in (Path(settings.ingest.work_dir).expanduser(), Path(settings.service.upload_dir).expanduser() / "flights"):
        for p in (folder.glob("*.part-*") if folder.is_dir() else []):
            if p.is_dir() and _abandoned(p, now):
                drop(p, "partial_unpackings")
    parts = Path(settings.service.upload_dir).expanduser() / "parts"
    if parts.is_dir():
        keep_s = settings.service.upload_keep_hours * 3600
        for meta in parts.glob("*.json"):
            part = meta.with_suffix(".part")
            last = max(meta.stat().st_mtime, part.stat().st_mtime if part.exists() else 0)
            if now - last > keep_s:
                if part.exists():
                    drop(part, "abandoned_uploads")
                meta.unlink(missing_ok=True)
        for part in parts.glob("*.part"):                 # a part whose description is gone
            if not part.with_suffix(".json").exists() and now - part.stat().st_mtime > PART_GRACE_S:
                drop(part, "abandoned_uploads")
    return out
