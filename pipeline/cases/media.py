"""On-site evidence: photos and short videos an officer attaches to a case.

``add_media`` checks the file by its content (JPEG / PNG photos, MP4 / MOV videos; a script
named .jpg, a truncated picture, an oversized file, a photo without EXIF are refused with one
line), reads the EXIF time and GPS position (else the position the phone's browser gave),
measures the distance to the case (``media.max_distance_m``: farther is flagged), keeps the
original as it came, named by its SHA-256, makes a stamped copy of a photo (case no., time,
coordinates, officer) for sheets and exports, and records the row and a case event in one
store transaction. Files are written first and removed again if the record fails, so nothing
is stored half.
"""
from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.disk import check_room, os_error_line
from pipeline.core.errors import InputError

PHOTO_MAGIC = {b"\xff\xd8\xff": ("photo", "jpg"), b"\x89PNG\r\n\x1a\n": ("photo", "png")}
VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"3gp4", b"3gp5"}
CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
STAMP_MAX_PX = 1600


def sniff(data: bytes, filename: str) -> tuple[str, str]:
    """(kind, extension) from the content, or one InputError line."""
    for magic, kt in PHOTO_MAGIC.items():
        if data.startswith(magic):
            return kt
    if len(data) > 12 and data[4:8] == b"ftyp" and data[8:12] in VIDEO_BRANDS:
        return ("video", "mov" if data[8:12] == b"qt  " else "mp4")
    raise InputError(f"{filename}: not a photo or video (JPEG, PNG, MP4 or MOV by its content); "
                     f"take it with the phone's camera and send that file",
                     zh=f"{filename}：不是照片或视频（按内容识别：JPEG、PNG、MP4、MOV），请用手机相机拍摄后上传")


def _rational(v) -> float:
    return v[0] / v[1] if isinstance(v, tuple) and v[1] else float("nan")


def exif_facts(data: bytes) -> dict[str, Any] | None:
    """EXIF capture time and GPS position of a JPEG (None: no EXIF at all)."""
    import piexif
    try:
        ex = piexif.load(data)
    except Exception:                # noqa: BLE001 — piexif raises many kinds on junk
        return None
    if not any(ex.get(k) for k in ("0th", "Exif", "GPS")):
        return None
    out: dict[str, Any] = {"taken_at": None, "lon": None, "lat": None}
    raw = ex.get("Exif", {}).get(piexif.ExifIFD.DateTimeOriginal) or ex.get("0th", {}).get(piexif.ImageIFD.DateTime)
    if raw:
        try:
            out["taken_at"] = datetime.strptime(raw.decode("ascii", "replace").strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            pass
    gps = ex.get("GPS", {})
    lat, lon = gps.get(piexif.GPSIFD.GPSLatitude), gps.get(piexif.GPSIFD.GPSLongitude)
    if lat and lon and len(lat) == 3 and len(lon) == 3:
        la = sum(_rational(v) / d for v, d in zip(lat, (1, 60, 3600)))
        lo = sum(_rational(v) / d for v, d in zip(lon, (1, 60, 3600)))
        if gps.get(piexif.GPSIFD.GPSLatitudeRef, b"N") in (b"S", "S"):
            la = -la
        if gps.get(piexif.GPSIFD.GPSLongitudeRef, b"E") in (b"W", "W"):
            lo = -lo
        if -90 <= la <= 90 and -180 <= lo <= 180 and (la or lo):
            out["lat"], out["lon"] = round(la, 7), round(lo, 7)
    return out


def stamp(data: bytes, lines: list[str]) -> bytes:
    """A JPEG copy of the photo (at most STAMP_MAX_PX on its long side) with ``lines``
    printed on a dark band at the bottom: the 水印相机 practice."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    im.thumbnail((STAMP_MAX_PX, STAMP_MAX_PX))
    w, h = im.size
    size = max(14, w // 40)
    font = ImageFont.truetype(str(CJK_FONT), size) if CJK_FONT.is_file() else ImageFont.load_default()
    band = int(size * 1.35 * len(lines) + size * 0.8)
    d = ImageDraw.Draw(im, "RGBA")
    d.rectangle([0, h - band, w, h], fill=(0, 0, 0, 150))
    for k, line in enumerate(lines):
        d.text((size // 2, h - band + size * 0.4 + k * size * 1.35), line, font=font, fill=(255, 255, 255))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=88)
    return out.getvalue()


def _distance_m(store, case_geom, lon: float, lat: float) -> float:
    import geopandas as gpd
    import shapely
    p = gpd.GeoSeries([shapely.Point(lon, lat)], crs="EPSG:4326").to_crs(store.crs).iloc[0]
    return round(float(case_geom.distance(p)), 1)


def check_pixels(data: bytes, name: str, max_megapixels: float) -> None:
    """Refuse a picture whose header claims more than ``max_megapixels`` or more than one frame,
    before a pixel of it is decoded (a small file can claim a gigabyte of pixels)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:          # reads the header only
            (w, h), frames = im.size, int(getattr(im, "n_frames", 1))
    except Exception:            # noqa: BLE001 — Pillow raises many kinds on a broken header
        raise InputError(f"{name}: the picture is damaged or cut short; take it again",
                         zh=f"{name}：图片已损坏或不完整，请重新拍摄") from None
    if w * h > max_megapixels * 1e6:
        raise InputError(f"{name}: {w:,} × {h:,} pixels is more than media.max_megapixels ({max_megapixels:g} "
                         f"megapixels); send the phone camera's photo, not an enlarged copy",
                         zh=f"{name}：{w}×{h} 像素，超过上限 {max_megapixels:g} 百万像素，请上传手机相机原图")
    if frames > 1:
        raise InputError(f"{name}: an animated picture of {frames} frames; send a photo",
                         zh=f"{name}：动图（{frames} 帧），请上传照片")


def add_media(store, settings, case_no: str, data: bytes, filename: str, actor: str, note: str = "",
              device_lon: float | None = None, device_lat: float | None = None,
              now: datetime | None = None) -> dict[str, Any]:
    """Check, keep and record one photo or video of a case; returns the media row."""
    # lazy: loads geopandas, shapely only when used
    from pipeline.cases.casework import add_note, check_note, get_case
    m = settings.media
    name = Path(filename or "photo").name[:200]
    check_note(note, f"case {case_no}", f"案件 {case_no}")
    if not data:
        raise InputError(f"{name}: the file is empty; take the photo again", zh=f"{name}：文件是空的，请重新拍摄")
    if len(data) > m.max_mb * 2**20:
        raise InputError(f"{name}: {len(data) / 2**20:.0f} MiB is more than the {m.max_mb} MiB a photo or video "
                         f"may have; send a shorter video or a smaller photo",
                         zh=f"{name}：{len(data) / 2**20:.0f} MiB，超过照片/视频上限 {m.max_mb} MiB，请缩短视频或压缩照片")
    kind, ext = sniff(data, name)
    case = get_case(store, case_no).iloc[0]
    facts: dict[str, Any] = {"taken_at": None, "lon": None, "lat": None}
    if kind == "photo":
        from PIL import Image, ImageFile
        check_pixels(data, name, m.max_megapixels)
        try:
            Image.open(io.BytesIO(data)).verify()
            lax, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False   # WeasyPrint sets it
            try:
                Image.open(io.BytesIO(data)).load()      # verify() does not see a cut-short picture
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = lax
        except Exception:            # noqa: BLE001 — Pillow raises many kinds on a broken file
            raise InputError(f"{name}: the picture is damaged or cut short; take it again",
                             zh=f"{name}：图片已损坏或不完整，请重新拍摄") from None
        got = exif_facts(data) if ext == "jpg" else None
        if got is None:
            raise InputError(f"{name}: the photo has no EXIF (time, place); take it with the phone's camera, "
                             f"not a screenshot or an edited copy",
                             zh=f"{name}：照片没有拍摄信息（时间、位置），请用手机相机拍摄，不要用截图或修改过的图片")
        facts.update(got)
    source = "exif" if facts["lon"] is not None else None
    if source is None and device_lon is not None and device_lat is not None:
        facts["lon"], facts["lat"], source = round(float(device_lon), 7), round(float(device_lat), 7), "device"
    distance = _distance_m(store, case["geometry"], facts["lon"], facts["lat"]) if source else None
    sha = hashlib.sha256(data).hexdigest()
    at = pd.Timestamp(now or datetime.now()).floor("s")
    folder = Path(m.dir).expanduser().resolve()
    original = folder / sha[:2] / f"{sha}.{ext}"
    stamped = folder / sha[:2] / f"{sha}_stamped.jpg" if kind == "photo" else None
    written: list[Path] = []
    try:
        check_room(folder, len(data) * 2, "saving the photo", 0)
        original.parent.mkdir(parents=True, exist_ok=True)
        for path, content in ((original, data), (stamped, None)):
            if path is None or path.exists():
                continue
            if content is None:
                when = facts["taken_at"] or at
                pos = f"{facts['lat']:.6f}°N {facts['lon']:.6f}°E" if source else "无位置"
                content = stamp(data, [f"案件 {case_no}  {pd.Timestamp(when):%Y-%m-%d %H:%M}",
                                       f"{pos}  拍摄 {actor}" + (f"  距案件 {distance:.0f} m" if distance is not None
                                                               else "")])
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(content)
            tmp.replace(path)
            written.append(path)
        row = {"media_id": uuid.uuid4().hex, "case_no": case_no, "kind": kind, "filename": name, "sha256": sha,
               "bytes": len(data), "original_path": str(original), "stamped_path": str(stamped) if stamped else None,
               "taken_at": facts["taken_at"], "lon": facts["lon"], "lat": facts["lat"], "position_source": source,
               "distance_m": distance, "far": int(distance is not None and distance > m.max_distance_m),
               "uploaded_at": at, "actor": actor, "note": note}
        where = f"距案件 {distance:.0f} m" if distance is not None else "无位置"
        flag = "，超出 {:.0f} m，请核实拍摄位置".format(m.max_distance_m) if row["far"] else ""
        with store.transaction():
            store.add_media(row)
            add_note(store, case_no, f"现场{'照片' if kind == 'photo' else '视频'} {name}（{where}{flag}）"
                     + (f"：{note}" if note else ""), actor, at)
    except BaseException as e:
        for p in written:                    # nothing stored half: the files go with the record
            p.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(os_error_line(e, f"saving {name}"), zh=f"{name}：服务器无法保存，请稍后重试或通知管理员") from None
        raise
    return row
