"""Tile checkpoints of the nightly run: the finished chunks of a flight, one file each.

``<store>.checkpoints/<flight_id>.<key>/part-<first tile>.npz``, the key hashing the tile
detector (weights, settings) and the tiling; written atomically, removed with the commit.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError


def checkpoint_root(store, override: str | Path | None = None) -> Path:
    """``<store>.checkpoints`` beside an embedded store; for a server store ``override`` or
    ``./patrol-checkpoints``."""
    if override:
        return Path(override).expanduser()
    if getattr(store, "backend", "") == "gpkg":
        p = Path(store.url)
        return p.with_name(p.name + ".checkpoints")
    return Path("patrol-checkpoints")


def safe_name(flight_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", flight_id)
    return name if name == flight_id else name + "-" + hashlib.sha1(flight_id.encode()).hexdigest()[:8]


class Checkpoint:
    """The finished chunks of one flight for one detection key."""

    def __init__(self, root: Path, flight_id: str, key: str):
        self.root = Path(root)
        self.flight_id = flight_id
        self.dir = self.root / f"{safe_name(flight_id)}.{key}"

    def load(self, n_plan: int) -> dict[int, dict]:
        """Saved parts by first tile index; unreadable or foreign parts are dropped."""
        parts: dict[int, dict] = {}
        if not self.dir.is_dir():
            return parts
        for f in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    part = {k: z[k] for k in z.files}
            except (OSError, ValueError, KeyError):
                f.unlink(missing_ok=True)
                continue
            idx = part.get("indices")
            if idx is None or not len(idx) or idx.max() >= n_plan:
                f.unlink(missing_ok=True)
                continue
            parts[int(idx[0])] = part
        return parts

    def save(self, part: dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            first = int(part["indices"][0])
            tmp = self.dir / f".part-{first:07d}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **part)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / f"part-{first:07d}.npz")
        except OSError as e:
            raise InputError(f"cannot write the checkpoint of flight {self.flight_id} in {self.dir} "
                             f"({e.strerror}); make that folder writable or pass --checkpoints DIR") from None

    def remove_all(self) -> None:
        """Every checkpoint of this flight, whatever its key."""
        for d in self.root.glob(f"{safe_name(self.flight_id)}.*"):
            shutil.rmtree(d, ignore_errors=True)




def sweep(store, root: Path) -> None:
    """Remove checkpoints left by a run killed between its commit and its clean-up."""
    if not root.is_dir():
        return
    for d in root.iterdir():
        fid = d.name.split(".", 1)[0]
        flight = store.get_flight(fid) if d.is_dir() else None
        if flight is not None and flight["status"] == "done":
            claim = store.claim_flight(fid)
            if claim is not None:
                with claim:
                    Checkpoint(root, fid, "").remove_all()
