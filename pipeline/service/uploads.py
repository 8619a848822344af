"""Resumable uploads streamed to disk, and the checks that turn a finished one into a flight.

An upload is ``<upload_dir>/parts/<id>.part`` (the bytes so far) plus ``<id>.json`` (who,
declared size, the sanitised file name). Chunks are appended at their offset (a chunk at
an offset already written replaces the tail, so a client may resend after a cut), never
held whole in memory. ``finish`` validates the file with the ingest checks; a refused file
is deleted and nothing reaches the store. Accepted files move to ``<upload_dir>/flights/``
under a name made only of the upload id and the sanitised name, so no name can leave
the folder.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import unicodedata
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from pipeline.core.disk import check_room, unpacking
from pipeline.core.errors import InputError
from pipeline.ingest.archive import safe_extract

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt")
SUFFIXES = RASTER_SUFFIXES + (".zip",)
COPY_CHUNK = 1 << 20


class UploadTooLarge(InputError):
    """The upload (or a chunk) exceeds the configured limit."""


class UploadNotFound(InputError):
    """No such upload, or not this user's."""


def safe_name(name: str, max_len: int = 80) -> str:
    """A file name that is only a name: last path component, letters/digits/'-_.', no
    leading dots, bounded length; '' when nothing usable is left."""
    name = unicodedata.normalize("NFKC", str(name or ""))
    name = name.replace("\\", "/").split("/")[-1]
    name = "".join(ch if (ch.isalnum() or ch in "-_.") else "_" for ch in name)
    name = name.lstrip(".").strip("_")
    while ".." in name:
        name = name.replace("..", ".")
    if len(name) > max_len:
        stem, dot, suf = name.rpartition(".")
        name = (stem[: max_len - len(suf) - 1] + "." + suf) if dot and len(suf) <= 8 else name[:max_len]
    return name


def _inside(path: Path, folder: Path) -> Path:
    p, f = path.resolve(), folder.resolve()
    if not p.is_relative_to(f):
        raise InputError(f"file name {path.name} leaves the upload folder; rename the file")
    return p


class Uploads:
    def __init__(self, upload_dir: Path, max_bytes: int, chunk_bytes: int, limits=None, quota_mb: int = 0):
        """``limits``: ``settings.ingest`` (zip guards); ``quota_mb``: most the folder may hold."""
        self.root = Path(upload_dir).expanduser().resolve()
        self.parts = self.root / "parts"
        self.flights = self.root / "flights"
        self.max_bytes, self.chunk_bytes = int(max_bytes), int(chunk_bytes)
        self.limits, self.quota_mb = limits, int(quota_mb)
        for d in (self.parts, self.flights):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ state
    def _paths(self, upload_id: str) -> tuple[Path, Path]:
        if not UPLOAD_ID_RE.match(upload_id or ""):
            raise UploadNotFound(f"upload {upload_id!r} not found; start a new upload")
        return self.parts / f"{upload_id}.part", self.parts / f"{upload_id}.json"

    def get(self, upload_id: str, username: str, admin: bool = False) -> dict:
        part, meta = self._paths(upload_id)
        if not meta.is_file():
            raise UploadNotFound(f"upload {upload_id} not found; start a new upload")
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info["user"] != username and not admin:
            raise UploadNotFound(f"upload {upload_id} not found; start a new upload")
        info["offset"] = part.stat().st_size if part.exists() else 0
        info["upload_id"] = upload_id
        return info

    def create(self, filename: str, size: int, username: str) -> dict:
        name = safe_name(filename)
        if not name or not name.lower().endswith(SUFFIXES):
            raise InputError(f"'{filename}' is not an orthophoto GeoTIFF or a zip; upload a "
                             f"{', '.join(SUFFIXES)} file",
                             zh=f"「{filename}」不是正射影像（GeoTIFF）或 zip 压缩包，请上传 {'、'.join(SUFFIXES)} 文件")
        if size <= 0:
            raise InputError(f"'{filename}' is empty; upload the orthophoto file", zh=f"「{filename}」是空文件，请上传正射影像")
        if size > self.max_bytes:
            raise UploadTooLarge(f"'{filename}' is {size / 2**20:.0f} MiB, over the limit of "
                                 f"{self.max_bytes / 2**20:.0f} MiB (service.max_upload_mb)",
                                 zh=f"「{filename}」{size / 2**20:.0f} MiB，超过上限 {self.max_bytes / 2**20:.0f} MiB")
        check_room(self.root, int(size), f"the upload of {name}", quota_mb=self.quota_mb)
        upload_id = secrets.token_hex(16)
        part, meta = self._paths(upload_id)
        part.touch()
        meta.write_text(json.dumps({"filename": name, "size": int(size), "user": username,
                                    "created": datetime.now().isoformat(timespec="seconds")}),
                        encoding="utf-8")
        return self.get(upload_id, username)

    async def write_chunk(self, upload_id: str, username: str, offset: int,
                          chunks: AsyncIterator[bytes], admin: bool = False) -> dict:
        """Append the streamed body at ``offset`` (<= bytes so far). Over the declared size
        or the chunk limit: the part is cut back to ``offset`` and UploadTooLarge raised."""
        info = self.get(upload_id, username, admin)
        part, _ = self._paths(upload_id)
        have = info["offset"]
        if offset < 0 or offset > have:
            raise InputError(f"upload {upload_id}: offset {offset} does not follow the {have} bytes "
                             f"received; resume at {have}")
        limit = min(info["size"] - offset, self.chunk_bytes)
        written = 0
        with open(part, "r+b") as f:
            f.seek(offset)
            f.truncate()
            try:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > limit:
                        raise UploadTooLarge(
                            f"upload {upload_id}: chunk at {offset} is larger than the "
                            f"{'declared size' if limit < self.chunk_bytes else 'chunk limit'} "
                            f"({limit} bytes); send smaller chunks (service.chunk_mb)")
                    f.write(chunk)
            except BaseException:
                f.truncate(offset)
                raise
        return self.get(upload_id, username, admin)

    def discard(self, upload_id: str) -> None:
        for p in self._paths(upload_id):
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------ finishing
    def finish(self, upload_id: str, username: str, admin: bool = False) -> Path:
        """Move the complete upload to ``flights/`` (a zip of one orthophoto: that file, extracted
        by streaming; a zip of a split export or of photos: the zip, which the ingest unpacks) and
        return the path. A refused file is deleted."""
        info = self.get(upload_id, username, admin)
        part, meta = self._paths(upload_id)
        if info["offset"] != info["size"]:
            raise InputError(f"upload {upload_id} has {info['offset']} of {info['size']} bytes; "
                             f"send the rest from offset {info['offset']}")
        name = info["filename"]
        try:
            if name.lower().endswith(".zip"):
                dest = self._unzip(part, upload_id)
                if dest is None:                       # a split export or a photo set: kept whole
                    dest = _inside(self.flights / f"{upload_id}_{name}", self.flights)
                    shutil.move(str(part), dest)
                part.unlink(missing_ok=True)
            else:
                dest = _inside(self.flights / f"{upload_id}_{name}", self.flights)
                shutil.move(str(part), dest)
        except BaseException:
            self.discard(upload_id)
            raise
        meta.unlink(missing_ok=True)
        return dest

    def _unzip(self, part: Path, upload_id: str) -> Path | None:
        """A zip of one orthophoto: that file, unpacked with every guard of the ingest
        (``ingest.archive.safe_extract``); a split export or a photo set: None (kept whole)."""
        try:
            zf = zipfile.ZipFile(part)
        except (zipfile.BadZipFile, OSError):
            raise InputError("the uploaded zip is not a readable zip archive; zip the orthophoto again",
                             zh="上传的 zip 无法读取，请重新压缩") from None
        with zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
        rasters = [m for m in members if m.filename.lower().endswith(RASTER_SUFFIXES)]
        if len(rasters) != 1:
            if not rasters and not any(m.filename.lower().endswith((".jpg", ".jpeg")) for m in members):
                raise InputError("the uploaded zip holds no orthophoto GeoTIFF and no drone photo; "
                                 "zip the flight's files again",
                                 zh="上传的 zip 中没有正射影像或无人机照片，请重新压缩该航次的文件")
            return None              # a split export or a photo set: the ingest unpacks it, safely
        if rasters[0].file_size > self.max_bytes:
            raise UploadTooLarge(f"{safe_name(rasters[0].filename)} in the zip is over the limit of "
                                 f"{self.max_bytes / 2**20:.0f} MiB (service.max_upload_mb)")
        unpacked = self.flights / f"{upload_id}.part-unzip"
        try:
            with unpacking(unpacked):
                (one,) = safe_extract(part, unpacked, self.limits, RASTER_SUFFIXES, flatten_names=True)
            dest = _inside(self.flights / f"{upload_id}_{safe_name(rasters[0].filename) or 'ortho.tif'}", self.flights)
            os.replace(one.path, dest)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        return dest
