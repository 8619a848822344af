"""Safe zip handling: a zip is unpacked only when every member is harmless.

Refused, naming the zip and the member: path traversal (``../``), absolute paths or drive
letters, symbolic links, encrypted members, more than ``ingest.max_zip_files`` members, a total
over ``ingest.max_zip_mb``, a member compressed more than ``ingest.max_zip_ratio`` times (zip
bomb; small members are judged together: the whole archive may not expand more either), more
than the free disk space or the ``ingest.work_quota_mb`` left. Sizes are enforced while writing
too, so a lying header cannot get past them; a disk that fills up is one line, nothing left. Names not
flagged UTF-8 are decoded as GBK when they read so (Chinese Windows zips), else kept as CP437.
Only image members are written, under generated safe names, into the destination folder.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.core.disk import check_room, os_error_line
from pipeline.core.errors import InputError, one_line
from pipeline.ingest.raster import shown

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg")
RATIO_MIN_BYTES = 64 << 10  # members smaller than this are judged only with the whole archive


@dataclass
class Member:
    name: str  # the name in the zip, decoded
    path: Path  # where it was written


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author wrote it (UTF-8 flag, else GBK when it decodes, else CP437)."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    for enc in ("utf-8", "gbk"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return info.filename


def _unsafe(name: str) -> str | None:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(n).parts:
        return "a path leaving the folder (../)"
    return None


def safe_extract(zip_path: Path, dest: Path, limits, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                 flatten_names: bool = False) -> list[Member]:
    """Check and unpack the members of ``zip_path`` named ``*suffixes`` into ``dest``; ``limits``
    is ``settings.ingest``. Raises InputError (nothing left in ``dest``) for a hostile zip.
    ``flatten_names``: a member whose path leaves the folder is taken by its last name instead of
    refused (members are written under generated names either way)."""
    name = shown(zip_path)
    max_bytes = limits.max_zip_mb << 20
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InputError(f"{name} is not a readable zip archive; zip the files again",
                         zh=f"{name} 不是可读的 zip 压缩包，请重新压缩") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_files:
            raise InputError(f"{name} holds {len(infos)} files, over ingest.max_zip_files "
                             f"({limits.max_zip_files}); split it into smaller zips",
                         zh=f"{name} 含 {len(infos)} 个文件，超过上限 {limits.max_zip_files} 个，请分成较小的压缩包")
        total = 0
        for info in infos:
            mname = shown(member_name(info))
            why = None if flatten_names else _unsafe(info.filename)
            if why:
                raise InputError(f"{name}: member '{mname}' has {why}; refused as unsafe, zip the "
                                 f"photos/orthos again from their folder",
                         zh=f"{name} 中的「{mname}」路径不安全，已拒收，请从文件夹重新压缩照片或正射影像")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InputError(f"{name}: member '{mname}' is a symbolic link; refused as unsafe, "
                                 f"zip the real files",
                         zh=f"{name} 中的「{mname}」是符号链接，不安全，已拒收，请压缩实际文件")
            if info.flag_bits & 0x1:
                raise InputError(f"{name}: member '{mname}' is encrypted; zip it without a password",
                         zh=f"{name} 中的「{mname}」已加密，请不设密码重新压缩")
            total += info.file_size
            if total > max_bytes:
                raise InputError(f"{name} unpacks to more than ingest.max_zip_mb ({limits.max_zip_mb} MiB); "
                                 f"refused (zip bomb?), split it or raise the limit",
                         zh=f"{name} 解压后超过 {limits.max_zip_mb} MiB 上限，已拒收（疑似压缩炸弹），请拆分或提高上限")
            if info.file_size > RATIO_MIN_BYTES and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
                raise InputError(f"{name}: member '{mname}' expands {info.file_size / max(info.compress_size, 1):,.0f} "
                                 f"times (over ingest.max_zip_ratio {limits.max_zip_ratio:g}); refused as a "
                                 f"zip bomb",
                         zh=f"{name} 中的「{mname}」解压后膨胀 {info.file_size / max(info.compress_size, 1):,.0f} 倍，超过上限，疑似压缩炸弹，已拒收")
        packed = sum(i.compress_size for i in infos)
        if total > RATIO_MIN_BYTES and total > limits.max_zip_ratio * max(packed, 1):
            raise InputError(f"{name} expands {total / max(packed, 1):,.0f} times as a whole (over "
                             f"ingest.max_zip_ratio {limits.max_zip_ratio:g}); refused as a zip bomb",
                         zh=f"{name} 整体解压后膨胀 {total / max(packed, 1):,.0f} 倍，超过上限，疑似压缩炸弹，已拒收")
        check_room(dest.parent, total, f"unpacking {name}", quota_mb=limits.work_quota_mb)
        dest.mkdir(parents=True, exist_ok=True)
        out: list[Member] = []
        written = 0
        try:
            for k, info in enumerate(infos):
                if info.is_dir() or not info.filename.lower().endswith(suffixes):
                    continue
                decoded = member_name(info)
                stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in PurePosixPath(decoded).name)
                target = dest / f"{k:05d}_{stem[-80:]}"
                left = min(info.file_size, max_bytes - written)
                with zf.open(info) as fin, open(target, "wb") as fout:
                    while chunk := fin.read(1 << 20):
                        written += len(chunk)
                        left -= len(chunk)
                        if left < 0:
                            raise InputError(f"{name}: member '{shown(decoded)}' unpacks beyond its declared "
                                             f"size or the limits; refused (zip bomb?)",
                         zh=f"{name} 中的「{shown(decoded)}」解压后超出声明大小或上限，已拒收（疑似压缩炸弹）")
                        fout.write(chunk)
                out.append(Member(decoded, target))
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise InputError(f"{name} is damaged ({one_line(e, 80)}); "
                             f"zip the files again",
                         zh=f"{name} 已损坏，请重新压缩") from None
        except OSError as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise InputError(os_error_line(e, f"unpacking {name}"),
                         zh=f"解压 {name} 失败（磁盘或权限问题），请联系管理员") from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return out
