"""Orthomosaics: validate a GeoTIFF / COG / BigTIFF and describe it; mosaic a split export.

Checks, each a one-line InputError naming the file: empty or not a TIFF, unreadable or truncated
(the first and last block of every band are read), no georeference, sheared grid, zero-size or
absurdly large (``ingest.max_raster_mpix``), not imagery (float/complex rasters such as a DSM),
Gauss-Krüger eastings that carry the zone number under a central-meridian CRS, geographic
coordinates out of range, no valid pixels. Masks: internal mask, alpha band, nodata, or an
implicit 0/255 last band (``pipeline.detection.tiling``). Nothing is read whole: the footprint is traced
on a decimated mask (overviews when present) and data is only touched block by block.
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from pipeline.core.errors import ConfigError, InputError

HASH_CHUNK = 4 << 20
FOOTPRINT_MAX_PX = 1024  # long side of the decimated mask the footprint is traced on
DEFAULT_MAX_MPIX = 100_000.0  # ingest.max_raster_mpix
IMAGE_DTYPES = ("uint8", "uint16")

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
JP2_MAGIC = (b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")  # JPEG 2000 file / codestream
HFA_MAGIC = b"EHFA_HEADER_TAG"  # ERDAS Imagine .img
RASTER_KINDS = ("tiff", "jp2", "hfa")  # accepted orthophoto containers (a VRT is not: it may point anywhere)


def shown(path: str | Path) -> str:
    """A file name safe to print: undecodable bytes replaced."""
    return os.fsencode(str(path)).decode("utf-8", "replace")


def check_name(path: str | Path) -> None:
    """Refuse a file whose name is not valid UTF-8 (GDAL and the store cannot hold it)."""
    try:
        os.fsencode(str(path)).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{shown(path)}: the file name is not valid UTF-8 (another code page?); "
                         f"rename the file and try again",
                         zh="文件名不是 UTF-8 编码（可能来自其他代码页），请重命名后重试") from None


def sniff(path: str | Path) -> str:
    """'tiff', 'jp2', 'hfa', 'jpeg', 'zip', 'vrt', 'empty' or 'other', from the first bytes
    (a FIFO, a device or a socket is refused before it is opened: reading one could block)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"{shown(Path(path).name)} is not a regular file (a pipe or a device?); "
                             f"give the orthophoto or photo files themselves",
                         zh=f"{shown(Path(path).name)} 不是普通文件，请上传正射影像或照片文件本身")
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise InputError(f"{shown(path)} cannot be read ({e.strerror}); check the path and "
                         f"its permissions",
                         zh=f"{shown(path)} 无法读取，请检查路径和权限") from None
    if not head:
        return "empty"
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head[:3] == JPEG_MAGIC:
        return "jpeg"
    if head[:4] in ZIP_MAGIC:
        return "zip"
    if head.startswith(JP2_MAGIC):
        return "jp2"
    if head.startswith(HFA_MAGIC):
        return "hfa"
    if head.lstrip().startswith(b"<VRTDataset"):
        return "vrt"
    return "other"


def file_id(path: str | Path) -> str:
    """sha256 of the file's content (streamed), first 16 hex digits: a re-upload is the same flight."""
    return file_sha256(path)[:16]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def combined_id(hashes: list[str]) -> str:
    """Flight id of several files: sha256 of their sorted content hashes, first 16 hex."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


def capture_time(src, path: Path) -> str:
    """TIFFTAG_DATETIME ('YYYY:MM:DD HH:MM:SS') as ISO, else the file's mtime (local time), seconds."""
    raw = (src.tags().get("TIFFTAG_DATETIME") or "").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y:%m:%d"):
        try:
            return datetime.strptime(raw, fmt).isoformat(timespec="seconds")
        except ValueError:
            continue
    return datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")


def valid_footprint(src, store_crs: str, max_px: int = FOOTPRINT_MAX_PX):
    """Polygon/MultiPolygon of the valid-data mask, traced at a decimated resolution, in store CRS."""
    import shapely
    from pyproj import CRS, Transformer
    from rasterio.features import shapes
    from rasterio.transform import Affine

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import ground_pixel_size, low_res_valid

    f = max(1.0, max(src.width, src.height) / max_px)
    h, w = max(1, round(src.height / f)), max(1, round(src.width / f))
    mask = low_res_valid(src, (h, w), any_valid=False)
    if not mask.any():
        mask = low_res_valid(src, (h, w), any_valid=True)
    if not mask.any():
        raise InputError(f"{src.name} holds no valid pixels (all no-data); check the export",
                         zh=f"{src.name} 没有有效像素（全部为无数据），请检查导出成果")
    t = src.transform @ Affine.scale(src.width / w, src.height / h)
    polys = [shapely.geometry.shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=t) if v]
    geom = shapely.union_all(polys)
    cell = max(math.hypot(t.a, t.d), math.hypot(t.b, t.e))
    geom = shapely.simplify(geom, cell, preserve_topology=True)
    src_crs, dst_crs = CRS.from_user_input(src.crs.to_wkt()), CRS.from_user_input(store_crs)
    if not src_crs.equals(dst_crs):
        b = src.bounds
        geom = shapely.segmentize(geom, max(cell * 8, math.hypot(b.right - b.left, b.top - b.bottom) / 64))
        tr = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
        geom = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        cell_m = max(ground_pixel_size(src)) * max(src.width / w, src.height / h)
        geom = shapely.make_valid(shapely.simplify(geom, cell_m, preserve_topology=True))
    if not geom.is_valid or geom.is_empty or not np.isfinite(geom.bounds).all():
        raise InputError(f"{src.name}: its footprint cannot be placed in {store_crs}; check the "
                         f"ortho's CRS",
                         zh=f"{src.name} 的范围无法换算到本系统坐标系，请检查影像的坐标系")
    return geom


def projected_store_crs(store_crs: str) -> None:
    from pyproj import CRS
    try:
        projected = CRS.from_user_input(store_crs).is_projected
    except Exception:
        raise ConfigError(f"store.crs {store_crs} is not a CRS; set e.g. EPSG:4547",
                         zh="系统坐标系 store.crs 设置无效，请设置如 EPSG:4547") from None
    if not projected:
        raise ConfigError(f"store.crs {store_crs} is not a projected CRS in metres; set a projected one",
                         zh="系统坐标系 store.crs 不是以米为单位的投影坐标系，请改为投影坐标系")


def check_ortho(src, path: Path, max_mpix: float = DEFAULT_MAX_MPIX) -> None:
    """The checks every orthophoto passes (see the module docstring)."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.windows import Window

    # lazy: loads geopandas, pandas, shapely only when used
    from pipeline.ingest.parcels import check_gauss_kruger

    name = shown(path)
    if src.width < 1 or src.height < 1:
        raise InputError(f"{name} has no pixels ({src.width}x{src.height}); export the ortho again",
                         zh=f"{name} 没有像素，请重新导出正射影像")
    mpix = src.width * src.height / 1e6
    if mpix > max_mpix:
        raise InputError(f"{name} is {src.width}x{src.height} pixels ({mpix:,.0f} Mpx), over "
                         f"ingest.max_raster_mpix ({max_mpix:,.0f}); split the export into tiles "
                         f"or raise the limit",
                         zh=f"{name} 为 {src.width}×{src.height} 像素（{mpix:,.0f} 百万像素），超过上限 {max_mpix:,.0f} 百万像素，请分幅导出或提高上限")
    dtypes = set(src.dtypes)
    if not dtypes <= set(IMAGE_DTYPES):
        raise InputError(f"{name} holds {'/'.join(sorted(dtypes))} values, not 8/16-bit imagery "
                         f"(a DSM or index map?); give the RGB orthophoto",
                         zh=f"{name} 不是 8/16 位影像（可能是 DSM 或指数图），请上传 RGB 正射影像")
    if src.count > 4:
        raise InputError(f"{name} has {src.count} bands (multispectral?); give the RGB or RGBA "
                         f"orthophoto",
                         zh=f"{name} 有 {src.count} 个波段（多光谱？），请上传 RGB 或 RGBA 正射影像")
    from rasterio.enums import ColorInterp

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import implicit_alpha
    masks = sum(c == ColorInterp.alpha for c in src.colorinterp) or (1 if implicit_alpha(src) else 0)
    if src.count - masks < 3:
        raise InputError(f"{name} has {src.count - masks} colour band(s) (grey or panchromatic?), the "
                         f"detector needs RGB; export the orthophoto in colour",
                         zh=f"{name} 只有 {src.count - masks} 个彩色波段（灰度或全色？），识别需要 RGB，请导出彩色正射影像")
    if src.crs.is_geographic:
        b = src.bounds
        if not (-180 <= min(b.left, b.right) and max(b.left, b.right) <= 360
                and -90 <= min(b.bottom, b.top) and max(b.bottom, b.top) <= 90):
            raise InputError(f"{name}: coordinates ({b.left:,.0f}, {b.top:,.0f}) are not degrees "
                             f"but its CRS {src.crs} is geographic; assign the right projected CRS",
                         zh=f"{name} 的坐标不是经纬度，但其坐标系为地理坐标系，请指定正确的投影坐标系")
    else:
        box = shapely.box(*src.bounds)
        check_gauss_kruger(gpd.GeoDataFrame(geometry=[box], crs=src.crs.to_wkt()), name)
    # truncated files: GDAL opens them from the header; the missing blocks only fail on read
    windows = {Window(0, 0, 1, 1), Window(src.width - 1, src.height - 1, 1, 1)}
    try:
        for w in windows:
            src.read(window=w)
            src.dataset_mask(window=w)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{name} is truncated or corrupt (its image blocks cannot be read); "
                         f"copy or export the file again",
                         zh=f"{name} 文件不完整或已损坏（影像块无法读取），请重新拷贝或导出") from None


def describe_ortho(path: Path, store_crs: str, max_mpix: float = DEFAULT_MAX_MPIX) -> dict:
    """CRS, ground GSD, capture time, footprint (store CRS) and format facts of one ortho."""
    import rasterio

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import BLOCK_CACHE_BYTES

    check_name(path)
    kind = sniff(path)
    if kind == "empty":
        raise InputError(f"{shown(path)} is empty (0 bytes); copy or export the file again",
                         zh=f"{shown(path)} 是空文件（0 字节），请重新拷贝或导出")
    if kind not in RASTER_KINDS:
        what = {"jpeg": "a JPEG photo", "zip": "a zip", "vrt": "a GDAL VRT, which may point to any file"
                }.get(kind, "not an image")
        raise InputError(f"{shown(path)} is not a readable raster ({what}, not a GeoTIFF); give the "
                         f"orthophoto GeoTIFF, or a folder/zip of drone photos",
                         zh=f"{shown(path)} 不是可读的 GeoTIFF 影像，请上传正射影像 GeoTIFF，或无人机照片的文件夹/zip 压缩包")
    with rasterio.Env(GDAL_CACHEMAX=BLOCK_CACHE_BYTES):  # GDAL's default cache (5 % of RAM) would fill
        return _describe(path, store_crs, max_mpix)


def _describe(path: Path, store_crs: str, max_mpix: float) -> dict:
    import rasterio

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import ground_pixel_size, open_raster

    src = open_raster(path)
    try:
        check_ortho(src, path, max_mpix)
        gx, gy = ground_pixel_size(src)
        try:
            footprint = valid_footprint(src, store_crs)
        except rasterio.errors.RasterioIOError:
            raise InputError(f"{shown(path)} is truncated or corrupt (its mask cannot be read); "
                             f"copy or export the file again",
                         zh=f"{shown(path)} 文件不完整或已损坏（掩膜无法读取），请重新拷贝或导出") from None
        return {"crs": src.crs.to_string(), "crs_wkt": src.crs.to_wkt(), "gsd_m": round((gx + gy) / 2, 4),
                "captured_at": capture_time(src, path), "footprint": footprint,
                "dtype": src.dtypes[0], "count": src.count, "transform": tuple(src.transform)[:6],
                "width": src.width, "height": src.height}
    finally:
        src.close()


def register_ortho(path: str | Path, store_crs: str, team: str | None = None,
                   max_mpix: float = DEFAULT_MAX_MPIX) -> dict:
    """Validate an orthophoto and describe it as a Flight dict (status 'uploaded')."""
    path = Path(path).expanduser().resolve()
    projected_store_crs(store_crs)
    info = describe_ortho(path, store_crs, max_mpix)
    return {
        "flight_id": file_id(path),
        "path": str(path),
        "captured_at": info["captured_at"],
        "team": team,
        "source": "ortho",
        "crs": info["crs"],
        "gsd_m": info["gsd_m"],
        "footprint": info["footprint"],
        "status": "uploaded",
    }


# ---------------------------------------------------------------- split exports
def write_mosaic_vrt(members: list[Path], out: Path) -> Path:
    """A GDAL VRT mosaic of the orthos of one split export (same CRS, north-up): RGB(/grey)
    bands, and a dataset mask that is the union of the members' own masks (internal mask,
    alpha, nodata or implicit alpha), so the tiler sees one raster with no seams."""
    import rasterio
    from pyproj import CRS

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import implicit_alpha, rgb_bands

    infos = []
    for p in members:
        with rasterio.open(p) as src:
            t = src.transform
            if t.b or t.d:
                raise InputError(f"{shown(p)} is rotated; a split export must be north-up tiles "
                                 f"(warp it with gdalwarp) or register each file as its own flight",
                         zh=f"{shown(p)} 是旋转的影像；分幅成果须为正北朝上的图幅，请用 gdalwarp 重采样，或将每个文件单独登记为一个航线")
            alpha = implicit_alpha(src)
            infos.append(dict(path=p, t=t, w=src.width, h=src.height, crs=CRS.from_user_input(src.crs.to_wkt()),
                              dtype=src.dtypes[0], bands=rgb_bands(src), alpha=alpha,
                              tags=src.tags()))
    first = infos[0]
    for i in infos[1:]:
        if not i["crs"].equals(first["crs"]):
            raise InputError(f"{shown(i['path'])} is in {i['crs'].to_string()} but {shown(first['path'])} in "
                             f"{first['crs'].to_string()}; export every part of a flight in one CRS",
                         zh=f"{shown(i['path'])} 与 {shown(first['path'])} 坐标系不同，同一航线的各分幅须使用同一坐标系导出")
        if i["dtype"] != first["dtype"]:
            raise InputError(f"{shown(i['path'])} is {i['dtype']} but {shown(first['path'])} {first['dtype']}; "
                             f"export every part of a flight with the same bit depth",
                         zh=f"{shown(i['path'])} 与 {shown(first['path'])} 位深不同，同一航线的各分幅须使用相同位深导出")
    xres = min(abs(i["t"].a) for i in infos)
    yres = min(abs(i["t"].e) for i in infos)
    left = min(i["t"].c for i in infos)
    top = max(i["t"].f for i in infos)
    right = max(i["t"].c + i["t"].a * i["w"] for i in infos)
    bottom = min(i["t"].f + i["t"].e * i["h"] for i in infos)
    width, height = max(1, round((right - left) / xres)), max(1, round((top - bottom) / yres))
    nb = len(first["bands"]) if len(set(first["bands"])) > 1 else 1
    dtype = {"uint8": "Byte", "uint16": "UInt16"}[first["dtype"]]
    colours = ["Red", "Green", "Blue"] if nb == 3 else ["Gray"]

    def source(i, band: str) -> str:
        c0, r0 = (i["t"].c - left) / xres, (top - i["t"].f) / yres
        dw, dh = i["w"] * abs(i["t"].a) / xres, i["h"] * abs(i["t"].e) / yres
        return (f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(i["path"]))}</SourceFilename>'
                f'<SourceBand>{band}</SourceBand>'
                f'<SrcRect xOff="0" yOff="0" xSize="{i["w"]}" ySize="{i["h"]}"/>'
                f'<DstRect xOff="{c0:.6f}" yOff="{r0:.6f}" xSize="{dw:.6f}" ySize="{dh:.6f}"/></SimpleSource>')

    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(first['crs'].to_wkt())}</SRS>",
             f"<GeoTransform>{left!r}, {xres!r}, 0, {top!r}, 0, {-yres!r}</GeoTransform>"]
    dt = first["tags"].get("TIFFTAG_DATETIME")
    if dt:
        parts.append(f'<Metadata><MDI key="TIFFTAG_DATETIME">{escape(dt)}</MDI></Metadata>')
    for k in range(nb):
        parts.append(f'<VRTRasterBand dataType="{dtype}" band="{k + 1}"><ColorInterp>{colours[k]}</ColorInterp>'
                     + "".join(source(i, str(i["bands"][k])) for i in infos) + "</VRTRasterBand>")
    mask_sources = "".join(source(i, str(i["alpha"]) if i["alpha"] else f"mask,{i['bands'][0]}") for i in infos)
    parts.append(f'<MaskBand><VRTRasterBand dataType="Byte">{mask_sources}</VRTRasterBand></MaskBand>'
                 f"</VRTDataset>")  # a 16-bit implicit alpha clips to 0/255
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
