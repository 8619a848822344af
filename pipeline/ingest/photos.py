"""Raw drone photos (DJI JPEGs): EXIF/XMP → an approximate georeferenced frame per photo.

A nadir photo taken at ``RelativeAltitude`` h metres above the take-off point with focal length
f mm on a sensor w mm wide and W pixels across has a ground pixel of ``gsd = w·h / (f·W)``
metres (a flat ground at take-off height is assumed). Its centre is the GPS position (moved by
``h·tan(tilt)`` along the heading when the gimbal is a few degrees off nadir), and the image's
up direction points along the gimbal yaw (``GimbalYawDegree``, else ``FlightYawDegree``;
degrees clockwise from north, grid convergence neglected). The affine transform is rotated
accordingly; the tiler and the detector handle rotated transforms.

The position uncertainty recorded per frame is the GPS error (``ingest.gps_error_m``, or
``ingest.rtk_error_m`` with an RTK fix) plus what a 2° yaw and 3 % scale error move the frame's
corners (terrain relief adds more and is not modelled).

Sensor width: ``ingest.sensors`` by EXIF model, else from ``FocalLengthIn35mmFilm``
(w = 36 mm · f / f35). A photo whose gimbal pitch is further than ``ingest.oblique_pitch_deg``
from −90° is oblique: kept as evidence, not georeferenced.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from affine import Affine

from pipeline.core.errors import InputError
from pipeline.ingest.raster import shown

XMP_SCAN_BYTES = 1 << 20  # DJI writes the XMP packet near the start of the file
YAW_ERROR_DEG = 2.0
SCALE_ERROR = 0.03
MAX_ALTITUDE_M = 1500.0


@dataclass
class Photo:
    name: str  # shown to the user (the name in the zip, or the file name)
    path: Path
    width: int
    height: int
    lat: float
    lon: float
    rel_alt: float | None
    pitch: float | None
    yaw: float | None
    focal_mm: float | None
    focal35: float | None
    model: str
    make: str
    captured_at: str | None
    rtk: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Frame:
    transform: Affine  # pixel (col, row) top-left corner -> map (store CRS)
    gsd_m: float
    footprint: Any  # shapely Polygon in the store CRS
    uncertainty_m: float
    tilt_deg: float


# ---------------------------------------------------------------- reading
def parse_xmp(data: bytes) -> dict[str, str]:
    """``drone-dji:*`` values of a DJI XMP packet (attribute or element form)."""
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return {}
    end = data.find(b"</x:xmpmeta>", start)
    text = data[start:end if end > 0 else start + 65536].decode("utf-8", "replace")
    out = {k: v for k, v in re.findall(r'drone-dji:(\w+)\s*=\s*"([^"]*)"', text)}
    out.update({k: v for k, v in re.findall(r"<drone-dji:(\w+)>([^<]*)</drone-dji:\1>", text)})
    return out


def _ratio(v) -> float:
    num, den = v
    if den == 0:
        raise ValueError("zero denominator")
    return num / den


def _dms(v, ref: bytes | str, neg: str) -> float:
    d, m, s = (_ratio(x) for x in v)
    if not (0 <= m < 60 and 0 <= s < 60.001):
        raise ValueError("minutes/seconds out of range")
    deg = d + m / 60 + s / 3600
    ref = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref)
    return -deg if ref.strip().upper() == neg else deg


def _num(xmp: dict, key: str) -> float | None:
    v = xmp.get(key)
    if v is None:
        return None
    x = float(v.strip())  # ValueError on junk
    if not math.isfinite(x):
        raise ValueError(f"{key} is not finite")
    return x


def _text(v) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v).strip("\x00 ").strip()


def read_photo(path: Path, name: str | None = None) -> Photo:
    """EXIF (GPS, focal length, model, time) and DJI XMP of one JPEG; InputError naming it when
    it is unusable (no GPS, junk values)."""
    import piexif
    from PIL import Image, UnidentifiedImageError

    name = name or shown(path.name)
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt, mode = im.format, im.mode
    except (UnidentifiedImageError, OSError, ImportError):
        # ImportError: once ultralytics is imported, its PIL.Image.open patch tries an optional
        # HEIC plugin (pi_heif) on any file PIL cannot identify
        raise InputError(f"{name} is not a readable image; copy the photo from the drone's card again",
                         zh=f"{name} 不是可读的图片，请从无人机存储卡重新拷贝") from None
    if fmt != "JPEG":
        raise InputError(f"{name} is a {fmt} image, not a drone JPEG; give the photos as taken",
                         zh=f"{name} 是 {fmt} 图片，不是无人机 JPEG 原片，请上传原始照片")
    if mode != "RGB":
        raise InputError(f"{name} is a {mode} JPEG, not a colour photo; give the RGB photos",
                         zh=f"{name} 不是彩色照片（{mode}），请上传 RGB 原片")
    try:
        exif = piexif.load(str(path))
    except Exception:
        raise InputError(f"{name}: its EXIF block cannot be read (corrupt); copy the photo from the "
                         f"drone's card again",
                         zh=f"{name} 的 EXIF 信息已损坏，请从无人机存储卡重新拷贝") from None
    gps, ex, zeroth = exif.get("GPS") or {}, exif.get("Exif") or {}, exif.get("0th") or {}
    if piexif.GPSIFD.GPSLatitude not in gps or piexif.GPSIFD.GPSLongitude not in gps:
        raise InputError(f"{name} has no GPS position in its EXIF; it cannot be placed, leave it out "
                         f"or fly with GPS",
                         zh=f"{name} 的 EXIF 中没有 GPS 位置，无法定位，请剔除该照片或开启 GPS 飞行")
    try:
        lat = _dms(gps[piexif.GPSIFD.GPSLatitude], gps.get(piexif.GPSIFD.GPSLatitudeRef, b"N"), "S")
        lon = _dms(gps[piexif.GPSIFD.GPSLongitude], gps.get(piexif.GPSIFD.GPSLongitudeRef, b"E"), "W")
    except (ValueError, TypeError, ZeroDivisionError):
        raise InputError(f"{name}: its EXIF GPS position is junk (unreadable numbers); leave the photo "
                         f"out",
                         zh=f"{name} 的 EXIF GPS 位置无法读取，请剔除该照片") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        raise InputError(f"{name}: its EXIF GPS position ({lat:.5f}, {lon:.5f}) is impossible; leave the "
                         f"photo out",
                         zh=f"{name} 的 EXIF GPS 位置（{lat:.5f}, {lon:.5f}）不可能，请剔除该照片")
    data = path.open("rb").read(XMP_SCAN_BYTES)
    xmp = parse_xmp(data)
    notes: list[str] = []
    try:
        rel_alt = _num(xmp, "RelativeAltitude")
        pitch = _num(xmp, "GimbalPitchDegree")
        yaw = _num(xmp, "GimbalYawDegree")
        if yaw is None:
            yaw = _num(xmp, "FlightYawDegree")
    except ValueError:
        raise InputError(f"{name}: its DJI XMP holds junk (altitude, pitch or yaw is not a number); "
                         f"leave the photo out",
                         zh=f"{name} 的大疆 XMP 信息无效（高度、俯仰或航向不是数值），请剔除该照片") from None
    focal = ex.get(piexif.ExifIFD.FocalLength)
    try:
        focal_mm = _ratio(focal) if focal else None
    except (ValueError, TypeError, ZeroDivisionError):
        focal_mm = None
    f35 = ex.get(piexif.ExifIFD.FocalLengthIn35mmFilm)
    focal35 = float(f35) if isinstance(f35, int) and f35 > 0 else None
    when = None
    raw = _text(ex.get(piexif.ExifIFD.DateTimeOriginal, zeroth.get(piexif.ImageIFD.DateTime, b"")))
    try:
        when = datetime.strptime(raw, "%Y:%m:%d %H:%M:%S").isoformat(timespec="seconds")
    except ValueError:
        if raw:
            notes.append(f"{name}: capture time '{raw[:30]}' is junk; the file time is used")
    rtk = xmp.get("RtkFlag", "").strip() == "50"
    return Photo(name, path, width, height, lat, lon, rel_alt, pitch, yaw, focal_mm, focal35,
                 _text(zeroth.get(piexif.ImageIFD.Model, b"")), _text(zeroth.get(piexif.ImageIFD.Make, b"")),
                 when, rtk, notes)


# ---------------------------------------------------------------- georeferencing
def sensor_width_mm(photo: Photo, sensors) -> float | None:
    """Sensor width (long side) from the configured table, else from the 35 mm equivalent focal length."""
    for s in sensors:
        if s.model.lower() == photo.model.lower():
            return s.width_mm
    if photo.focal_mm and photo.focal35:
        return 36.0 * photo.focal_mm / photo.focal35
    return None


def tilt_deg(pitch: float | None) -> float:
    """Degrees away from straight down (pitch −90°); no pitch recorded counts as nadir."""
    return 0.0 if pitch is None else abs(pitch + 90.0)


def frame_transform(cx: float, cy: float, gsd: float, yaw_deg: float, width: int, height: int) -> Affine:
    """Affine of a nadir frame whose centre is (cx, cy), ground pixel ``gsd`` and whose image top
    points ``yaw_deg`` clockwise from (grid) north."""
    t = math.radians(yaw_deg)
    c, s = math.cos(t), math.sin(t)
    a, b, d, e = gsd * c, -gsd * s, -gsd * s, -gsd * c
    # centre pixel (width/2, height/2) lands on (cx, cy)
    return Affine(a, b, cx - a * width / 2 - b * height / 2, d, e, cy - d * width / 2 - e * height / 2)


def frame_footprint(t: Affine, width: int, height: int):
    import shapely
    return shapely.Polygon([t * (0, 0), t * (width, 0), t * (width, height), t * (0, height)])


@functools.lru_cache(maxsize=8)
def _to_store(store_crs: str):
    from pyproj import Transformer
    return Transformer.from_crs("EPSG:4326", store_crs, always_xy=True)


def georeference(photo: Photo, ingest, store_crs: str) -> Frame:
    """The approximate frame of a nadir photo in the store CRS; InputError when it cannot be
    georeferenced (oblique, no altitude, unknown camera)."""
    tilt = tilt_deg(photo.pitch)
    if tilt > ingest.oblique_pitch_deg:
        raise InputError(f"{photo.name} is oblique (gimbal pitch {photo.pitch:.0f}°, more than "
                         f"{ingest.oblique_pitch_deg:g}° from straight down); kept as evidence, not "
                         f"georeferenced",
                         zh=f"{photo.name} 为倾斜照片（云台俯仰 {photo.pitch:.0f}°，偏离垂直超过 {ingest.oblique_pitch_deg:g}°），仅作为证据保存，不参与定位")
    if photo.rel_alt is None:
        raise InputError(f"{photo.name} has no RelativeAltitude (DJI XMP); its ground size is unknown, "
                         f"give the ortho instead",
                         zh=f"{photo.name} 缺少相对高度（大疆 XMP），无法计算地面尺寸，请改为上传正射影像")
    if not (1.0 <= photo.rel_alt <= MAX_ALTITUDE_M):
        raise InputError(f"{photo.name}: RelativeAltitude {photo.rel_alt:g} m is not a flying height; "
                         f"leave the photo out",
                         zh=f"{photo.name} 的相对高度 {photo.rel_alt:g} 米不是有效航高，请剔除该照片")
    w_mm = sensor_width_mm(photo, ingest.sensors)
    if not photo.focal_mm or not (1.0 <= photo.focal_mm <= 400.0) or not w_mm:
        raise InputError(f"{photo.name}: camera '{photo.model or '?'}' has no usable focal length or sensor "
                         f"size; add it to ingest.sensors",
                         zh=f"{photo.name} 的相机「{photo.model or '?'}」缺少焦距或传感器尺寸，请在配置 ingest.sensors 中补充")
    gsd = w_mm * photo.rel_alt / (photo.focal_mm * photo.width)
    yaw = photo.yaw if photo.yaw is not None else 0.0
    cx, cy = _to_store(store_crs).transform(photo.lon, photo.lat)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise InputError(f"{photo.name}: its position cannot be placed in {store_crs}; check store.crs",
                         zh=f"{photo.name} 的位置无法换算到本系统坐标系，请检查 store.crs 设置")
    if tilt:
        shift = photo.rel_alt * math.tan(math.radians(tilt))
        cx += shift * math.sin(math.radians(yaw))
        cy += shift * math.cos(math.radians(yaw))
    t = frame_transform(cx, cy, gsd, yaw, photo.width, photo.height)
    half_diag = 0.5 * gsd * math.hypot(photo.width, photo.height)
    pos = ingest.rtk_error_m if photo.rtk else ingest.gps_error_m
    if photo.yaw is None:
        photo.notes.append(f"{photo.name}: no gimbal/flight yaw in the XMP; north-up assumed")
    yaw_err = math.radians(180.0 if photo.yaw is None else YAW_ERROR_DEG)
    unc = pos + half_diag * (min(2.0, 2 * math.sin(yaw_err / 2)) + SCALE_ERROR) \
        + photo.rel_alt * math.tan(math.radians(tilt)) * SCALE_ERROR
    return Frame(t, gsd, frame_footprint(t, photo.width, photo.height), round(unc, 2), tilt)


def write_frame_vrt(photo: Photo, frame: Frame, store_crs: str, out: Path) -> Path:
    """A small VRT giving the JPEG its (rotated) geotransform and CRS, for the tiler."""
    from xml.sax.saxutils import escape

    from pyproj import CRS

    t = frame.transform
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{k}"><ColorInterp>{ci}</ColorInterp><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(str(photo.path.resolve()))}</SourceFilename>'
        f"<SourceBand>{k}</SourceBand></SimpleSource></VRTRasterBand>"
        for k, ci in ((1, "Red"), (2, "Green"), (3, "Blue")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f'<VRTDataset rasterXSize="{photo.width}" rasterYSize="{photo.height}">'
        f"<SRS>{escape(CRS.from_user_input(store_crs).to_wkt())}</SRS>"
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
        + (f'<Metadata><MDI key="TIFFTAG_DATETIME">{escape(photo.captured_at.replace("-", ":").replace("T", " "))}'
           f"</MDI></Metadata>" if photo.captured_at else "")
        + bands + "</VRTDataset>", encoding="utf-8")
    return out
