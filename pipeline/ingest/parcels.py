"""Parcel (宅基地/自建房 registry) and zone (basic farmland, red line …) files → clean
GeoDataFrames in the store CRS, ready for ``Store.import_parcels`` / ``import_zones``.

Reads GeoPackage, Shapefile (GBK or UTF-8 attributes, with or without .cpg) and GeoJSON
in any CRS. Everything is checked before anything is written, and every problem is an
``InputError`` of one line naming the file and the feature: no CRS, the Gauss-Krüger
zone-prefix mistake, missing columns, duplicate ids, garbled text, invalid geometries
that cannot be repaired without changing their area.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipeline.core.errors import InputError, one_line
from pipeline.core.values import is_missing

log = logging.getLogger(__name__)

PARCEL_REQUIRED = ("parcel_id", "owner", "town", "village", "land_use", "approved_area_m2")
PARCEL_OPTIONAL = ("village_code", "approved_floors", "permit_no")
ZONE_REQUIRED = ("zone_id", "kind", "code")
ZONE_KINDS = ("basic_farmland", "farmland", "ecological_redline")
ZONE_OPTIONAL = ("name",)
#: other names the registry columns go by (Shapefile truncates names to 10 characters;
#: 宅基地 registries use ZDDM 宗地代码, QLR 权利人, DLBM 地类编码, PZMJ 批准面积)
ALIASES = {
    "parcel_id": ("zddm",), "owner": ("qlr", "qlrmc"), "land_use": ("dlbm",),
    "approved_area_m2": ("approved_a", "approved_area", "pzmj"),
    "approved_floors": ("approved_f", "pzcs"), "village_code": ("village_co",),
}
#: a repaired geometry may differ this much in area (relative) from the one given
REPAIR_AREA_TOLERANCE = 0.01
_CPG = {"936": "gb18030", "cp936": "gb18030", "gbk": "gb18030", "gb2312": "gb18030",
        "gb18030": "gb18030", "54936": "gb18030", "65001": "utf-8", "utf-8": "utf-8",
        "utf8": "utf-8", "1252": "cp1252", "cp1252": "cp1252", "iso-8859-1": "latin-1",
        "iso88591": "latin-1", "88591": "latin-1", "latin1": "latin-1", "ansi 1252": "cp1252"}
_SINGLE_BYTE = ("cp1252", "latin-1")
#: bounds of a vector import, checked before and right after reading (a county's 三调 layer holds
#: some 10⁵ polygons of a few hundred corners; a hostile file a million slivers or one huge ring)
MAX_FEATURES = 300_000
MAX_VERTICES = 30_000_000


def read_parcels(path: str | Path, layer: str | None = None, *, store_crs: str) -> gpd.GeoDataFrame:
    """The parcel layer of ``path`` with PARCEL_REQUIRED (+ optional + extra) columns,
    validated, repaired and reprojected to ``store_crs``."""
    gdf, where = _read(Path(path), layer, "parcels", store_crs)
    gdf = _columns(gdf, where, PARCEL_REQUIRED, PARCEL_OPTIONAL)
    gdf["parcel_id"] = _ids(gdf["parcel_id"], where, "parcel_id")
    gdf["approved_area_m2"] = _numbers(gdf, "approved_area_m2", where, "parcel_id")
    if "approved_floors" in gdf.columns:
        gdf["approved_floors"] = _numbers(gdf, "approved_floors", where, "parcel_id").round().astype("Int64")
    for c in ("owner", "town", "village", "land_use", "village_code", "permit_no"):
        if c in gdf.columns:
            gdf[c] = _texts(gdf[c])
    return _finish(gdf, where, "parcel_id", store_crs)


def read_zones(path: str | Path, layer: str | None = None, *, store_crs: str,
               kinds: tuple[str, ...] = ()) -> gpd.GeoDataFrame:
    """The zone layer of ``path`` (zone_id, kind, code, name), validated and reprojected; a kind
    must be one of docs/DATA.md (``ZONE_KINDS``) or of ``kinds`` (the rules' zone kinds)."""
    gdf, where = _read(Path(path), layer, "zones", store_crs)
    gdf = _columns(gdf, where, ZONE_REQUIRED, ZONE_OPTIONAL)
    gdf["zone_id"] = _ids(gdf["zone_id"], where, "zone_id")
    for c in ("kind", "code", "name"):
        if c in gdf.columns:
            gdf[c] = _texts(gdf[c])
    known = (*ZONE_KINDS, *kinds)
    bad = gdf[~gdf["kind"].isin(known)]
    if len(bad):
        raise InputError(f"{where}: zone {bad['zone_id'].iloc[0]} has kind '{bad['kind'].iloc[0]}', not one of "
                         f"{', '.join(dict.fromkeys(known))} (docs/DATA.md); fix the kind or list it in the rules")
    return _finish(gdf, where, "zone_id", store_crs)


# ------------------------------------------------------------------ reading
def import_registry(store, path: str | Path, replace: bool = False) -> tuple[int, int]:
    """Parcels and zones of one file (layers ``parcels`` / ``zones``, e.g. a district.gpkg) into
    ``store`` in one transaction; both are validated before anything is written."""
    parcels = read_parcels(path, store_crs=store.crs)
    zones = read_zones(path, store_crs=store.crs)
    with store.transaction():
        return store.import_parcels(parcels, replace=replace), store.import_zones(zones, replace=replace)


def _read(path: Path, layer: str | None, wanted: str, store_crs: str) -> tuple[gpd.GeoDataFrame, str]:
    import pyogrio
    if not path.exists():
        raise InputError(f"{path} does not exist; give the path of a .gpkg, .shp or .geojson file")
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception:
        raise InputError(f"{path} is not a readable GeoPackage, Shapefile or GeoJSON; "
                         f"export the layer to one of those") from None
    if layer is None:
        names = {n.lower(): n for n in layers}
        if wanted in names:
            layer = names[wanted]
        elif wanted.rstrip("s") in names:
            layer = names[wanted.rstrip("s")]
        elif len(layers) == 1:
            layer = layers[0]
        else:
            raise InputError(f"{path} has layers {', '.join(layers)} and none is named '{wanted}'; "
                             f"pick one with --layer NAME")
    elif layer not in layers:
        raise InputError(f"{path} has no layer '{layer}' (it has {', '.join(layers)}); "
                         f"pick one with --layer NAME")
    where = f"{path}" + (f" layer {layer}" if len(layers) > 1 else "")
    try:
        count = int(pyogrio.read_info(path, layer=layer).get("features") or 0)
    except Exception:
        count = 0                                         # unknown: the read below says what is wrong
    if count > MAX_FEATURES:
        raise InputError(f"{where} holds {count:,} features, more than the {MAX_FEATURES:,} an import takes; "
                         f"split it by town or clip it to the district",
                         zh=f"{path.name} 含 {count:,} 个要素，超过单次导入上限 {MAX_FEATURES:,}，请按乡镇拆分或裁剪到本辖区")
    encoding = _shapefile_encoding(path) if path.suffix.lower() == ".shp" else None
    try:
        gdf = pyogrio.read_dataframe(path, layer=layer, encoding=encoding, force_2d=True,
                                     on_invalid="ignore")
    except Exception as e:
        raise InputError(f"{where} cannot be read ({one_line(e, 200)}); "
                         f"check the file in QGIS") from None
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry is None:
        raise InputError(f"{where} has no geometry; give a polygon layer")
    if gdf.crs is None:
        hint = " (the .prj file is missing)" if path.suffix.lower() == ".shp" else ""
        raise InputError(f"{where} has no CRS{hint}; define it (e.g. in QGIS: Assign Projection) "
                         f"and import again")
    geoms = gdf.geometry.values
    vertices = int(shapely.get_num_coordinates(geoms).sum())
    if vertices > MAX_VERTICES:
        raise InputError(f"{where} holds {vertices:,} vertices, more than the {MAX_VERTICES:,} an import takes; "
                         f"simplify the outlines or split the file",
                         zh=f"{path.name} 的边界点共 {vertices:,} 个，超过导入上限 {MAX_VERTICES:,}，请简化边界或拆分文件")
    if not np.isfinite(shapely.get_coordinates(geoms)).all():
        raise InputError(f"{where} has coordinates that are not finite numbers (inf / NaN); repair the geometries "
                         f"in QGIS and import again",
                         zh=f"{path.name} 含无效坐标（无穷大或非数字），请在 QGIS 中修复几何后重新导入")
    check_gauss_kruger(gdf, where)
    _check_text(gdf, where)
    return gdf, where


def _dbf_records(dbf: Path) -> bytes:
    data = dbf.read_bytes()
    if len(data) < 32:
        return b""
    n = int.from_bytes(data[4:8], "little")
    header = int.from_bytes(data[8:10], "little")
    size = int.from_bytes(data[10:12], "little")
    return data[header:header + n * size]


def _shapefile_encoding(shp: Path) -> str:
    """The encoding of the DBF text: the .cpg when its bytes decode with it, else UTF-8 when
    they are valid UTF-8, else GBK (GB18030) — the usual output of Chinese desktop GIS."""
    dbf = next((p for p in (shp.with_suffix(".dbf"), shp.with_suffix(".DBF")) if p.exists()), None)
    if dbf is None:
        raise InputError(f"{shp}: the .dbf file with the attributes is missing; copy it next to the .shp")
    raw = _dbf_records(dbf)
    cpg = next((p for p in (shp.with_suffix(".cpg"), shp.with_suffix(".CPG")) if p.exists()), None)
    declared = None
    if cpg is not None:
        text = cpg.read_text(encoding="ascii", errors="ignore").strip().lower()
        declared = _CPG.get(text) or _CPG.get(text.replace("-", "").replace("_", ""))
        if declared is None:
            try:
                import codecs
                declared = codecs.lookup(text).name
            except LookupError:
                declared = None
    if declared and _decodes(raw, declared):
        if declared in _SINGLE_BYTE and _is_gbk_text(raw):
            log.warning("%s: .cpg says %s but the text is GBK; reading it as GBK", shp, declared)
            return "gb18030"
        return declared
    if _decodes(raw, "utf-8"):
        return "utf-8"
    if _decodes(raw, "gb18030"):
        if declared:
            log.warning("%s: the text is not %s as the .cpg says but GBK; reading it as GBK",
                        shp, declared)
        return "gb18030"
    raise InputError(f"{shp}: the attribute text is neither UTF-8 nor GBK; save a .cpg next to "
                     f"the .shp naming its encoding (e.g. GBK) and import again")


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
        return True
    except (UnicodeDecodeError, LookupError):
        return False


_CJK = re.compile(r"[\u4e00-\u9fff]")


def _is_gbk_text(raw: bytes) -> bool:
    """Bytes with non-ASCII content that read as Chinese in GBK."""
    high = bytes(b for b in raw if b >= 0x80)
    if not high:
        return False
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return False
    return len(_CJK.findall(text)) * 2 >= len(high) * 0.8


def _mojibake(value: str) -> str | None:
    """What ``value`` would read as if it were GBK bytes decoded as Latin-1/CP1252."""
    if not any("\u0080" <= ch <= "\u00ff" or ch in "\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u2030\u2039\u203a\u20ac\u2122" for ch in value):
        return None
    for enc in ("latin-1", "cp1252"):
        try:
            fixed = value.encode(enc).decode("gb18030")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if _CJK.search(fixed):
            return fixed
    return None


def _check_text(gdf: gpd.GeoDataFrame, where: str) -> None:
    for col in gdf.columns:
        if col == gdf.geometry.name or not (gdf[col].dtype == object or pd.api.types.is_string_dtype(gdf[col])):
            continue
        for v in gdf[col].dropna().astype(str).head(200):
            if "\ufffd" in v:
                raise InputError(f"{where}: column {col} holds undecodable text ('{v}'); "
                                 f"save the file as UTF-8 (or give the Shapefile a .cpg) and import again")
            fixed = _mojibake(v)
            if fixed:
                raise InputError(f"{where}: column {col} looks garbled ('{v}' reads as '{fixed}' "
                                 f"in GBK); re-save the source with the right encoding and import again")


def check_gauss_kruger(gdf: gpd.GeoDataFrame, where: str) -> None:
    """Eastings above 10⁶ under a central-meridian Transverse Mercator CRS: the zone number
    was left in the coordinates (38,500,000) while the .prj says false easting 500,000."""
    crs = CRS.from_user_input(gdf.crs)
    op = crs.coordinate_operation
    if not crs.is_projected or op is None or "transverse mercator" not in op.method_name.lower():
        return
    params = {p.name.lower(): float(p.value) for p in op.params}
    false_e = params.get("false easting")
    if false_e is None or false_e >= 1e6 or not len(gdf):
        return
    minx, _, maxx, _ = gdf.total_bounds
    if not np.isfinite(minx) or minx <= 1e6:
        return
    zone = int(minx // 1e6)
    cm = params.get("longitude of natural origin")
    hint = ""
    if "2000" in (crs.datum.name if crs.datum else ""):
        if 25 <= zone <= 45 and cm is not None and abs(3 * zone - cm) < 1e-6:
            hint = f" EPSG:{4513 + zone - 25} (CGCS2000 3-degree GK zone {zone})"
        elif 13 <= zone <= 23 and cm is not None and abs(6 * zone - 3 - cm) < 1e-6:
            hint = f" EPSG:{4491 + zone - 13} (CGCS2000 6-degree GK zone {zone})"
    raise InputError(f"{where}: eastings like {minx:,.0f} carry the Gauss-Kruger zone number "
                     f"{zone}, but its CRS '{crs.name}' has false easting {false_e:,.0f}; "
                     f"assign the zone-prefixed CRS{hint or ' of that zone'} and import again")


# ------------------------------------------------------------------ columns and values
def _columns(gdf: gpd.GeoDataFrame, where: str, required: tuple, optional: tuple) -> gpd.GeoDataFrame:
    by_lower = {str(c).lower(): c for c in gdf.columns if c != gdf.geometry.name}
    rename = {}
    for want in required + optional:
        for cand in (want, want[:10], *ALIASES.get(want, ())):
            if cand in by_lower and by_lower[cand] not in rename:
                rename[by_lower[cand]] = want
                break
    missing = [c for c in required if c not in rename.values()]
    if missing:
        have = ", ".join(str(c) for c in gdf.columns if c != gdf.geometry.name) or "none"
        raise InputError(f"{where} lacks the required column(s) {', '.join(missing)} "
                         f"(it has: {have}); add or rename them and import again")
    gdf = gdf.rename(columns=rename)
    if gdf.geometry.name != "geometry":
        gdf = gdf.rename_geometry("geometry")
    return gdf


def _ids(values: pd.Series, where: str, name: str) -> pd.Series:
    ids = _texts(values).replace("", None)
    empty = np.flatnonzero(ids.isna().to_numpy())
    if len(empty):
        raise InputError(f"{where}: {len(empty)} feature(s) have no {name} (first: feature "
                         f"#{int(empty[0]) + 1}); fill it in and import again")
    dup = ids[ids.duplicated(keep=False)].unique().tolist()
    if dup:
        shown = ", ".join(map(str, dup[:5])) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
        raise InputError(f"{where}: duplicate {name} {shown}; each {name} must be unique, "
                         f"fix the file and import again")
    return ids


def _numbers(gdf: gpd.GeoDataFrame, col: str, where: str, id_col: str) -> pd.Series:
    nums = pd.to_numeric(gdf[col], errors="coerce")
    bad = nums.isna() & gdf[col].notna() & (gdf[col].astype(str).str.strip() != "")
    if bad.any():
        i = np.flatnonzero(bad.to_numpy())[0]
        raise InputError(f"{where}: {col} of {id_col} {gdf[id_col].iloc[i]} is "
                         f"'{gdf[col].iloc[i]}', not a number; fix it and import again")
    return nums.astype("float64")


def _texts(values: pd.Series) -> pd.Series:
    """Cells as stripped text (whole floats without '.0'), None when missing."""
    def one(v):
        if is_missing(v):
            return None
        return str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v).strip()
    return pd.Series([one(v) for v in values], index=values.index, dtype=object)


# ------------------------------------------------------------------ geometry
def _finish(gdf: gpd.GeoDataFrame, where: str, id_col: str, store_crs: str) -> gpd.GeoDataFrame:
    geoms = gdf.geometry.values
    ids = gdf[id_col].to_numpy()
    missing = shapely.is_missing(np.asarray(geoms)) | shapely.is_empty(np.asarray(geoms))
    if missing.any():
        raise InputError(f"{where}: {id_col} {ids[missing][0]} has no geometry; draw it or "
                         f"drop the feature and import again")
    arr = np.asarray(geoms)
    types = shapely.get_type_id(arr)
    bad = ~np.isin(types, (3, 6))
    if bad.any():
        raise InputError(f"{where}: {id_col} {ids[bad][0]} is a {arr[bad][0].geom_type}, "
                         f"not a polygon; give a polygon layer")
    invalid = ~shapely.is_valid(arr)
    if invalid.any():
        arr = arr.copy()
        fixed = shapely.make_valid(arr[invalid])
        polys = np.array([_polygonal(g) for g in fixed], dtype=object)
        before = shapely.area(arr[invalid])
        after = np.array([0.0 if g is None else g.area for g in polys])
        ok = np.array([g is not None for g in polys]) & (
            np.abs(after - before) <= REPAIR_AREA_TOLERANCE * np.maximum(before, 1e-9))
        if not ok.all():
            j = np.flatnonzero(~ok)[0]
            reason = shapely.is_valid_reason(arr[invalid][j])
            raise InputError(f"{where}: {id_col} {ids[invalid][j]} has an invalid geometry "
                             f"({reason}) that cannot be repaired without changing its area; "
                             f"fix it in QGIS (Fix Geometries) and import again")
        arr[invalid] = polys
        log.info("%s: repaired %d invalid geometries", where, int(invalid.sum()))
    out = gdf.set_geometry(gpd.GeoSeries(arr, index=gdf.index, crs=gdf.crs))
    out = out.to_crs(CRS.from_user_input(store_crs))
    if not np.isfinite(out.total_bounds).all():
        raise InputError(f"{where}: coordinates do not fit the store CRS {store_crs}; "
                         f"check the file's CRS")
    return out.reset_index(drop=True)


def _polygonal(g) -> shapely.Geometry | None:
    """The polygonal part of a repaired geometry (None when nothing polygonal is left)."""
    if g is None or g.is_empty:
        return None
    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return None
    u = shapely.union_all(parts)
    return u if u.geom_type in ("Polygon", "MultiPolygon") and not u.is_empty else None
