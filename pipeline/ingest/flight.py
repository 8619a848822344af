"""The flight record: one flight from an ortho, a split export, or a folder/zip of photos.

``ingest_flight(paths, settings, team)`` looks at what it is given (content, not extension):

- one GeoTIFF: the flight is that file (``source`` 'ortho', id = content hash, as ``register_ortho``);
- several GeoTIFFs (a folder, several paths, a zip): one split export (``source`` 'orthos'); id =
  hash of the sorted member hashes; ``path`` = a VRT mosaic in ``ingest.work_dir/<id>/`` whose
  mask is the union of the members' masks (so tiling, the nightly run and the reports read it
  like one ortho); ``members.json`` beside it lists the member files;
- JPEG photos (a folder, several paths, a zip): ``source`` 'photos'; id = hash of the sorted
  photo hashes; ``path`` = the folder ``ingest.work_dir/<id>/`` holding ``frames.json`` (per
  photo: file, frame VRT, GSD, position uncertainty, footprint; oblique photos as evidence
  only) and ``frames/NNNNN.vrt``; detection runs frame by frame (``flight_frames``).

Files that cannot be used are refused one by one (``IngestResult.refused``: name, one-line
reason) and the flight is made from the rest; when nothing is left, the one InputError says
why. Footprint = union of the members' valid-data footprints (store CRS); GSD = median of the
members'; capture time = the earliest. ``check_district`` refuses a flight that lies outside
the district. Nothing is written to the store here.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pipeline.core.disk import unpacking
from pipeline.core.errors import InputError, one_line
from pipeline.ingest.archive import safe_extract
from pipeline.ingest.dsm import is_height_raster
from pipeline.ingest.photos import georeference, read_photo, write_frame_vrt
from pipeline.ingest.raster import (
    RASTER_KINDS,
    check_name,
    combined_id,
    describe_ortho,
    file_sha256,
    projected_store_crs,
    register_ortho,
    shown,
    sniff,
    write_mosaic_vrt,
)

SIDECARS = {".tfw", ".tifw", ".jgw", ".prj", ".xml", ".aux", ".ovr", ".txt", ".json", ".kml", ".kmz",
            ".mrk", ".obs", ".nav", ".bin", ".rtk", ".log", ".csv", ".md5", ".las", ".laz", ".ply",
            ".obj", ".mtl", ".html", ".pdf", ".db", ".ini", ".dat", ".cpg", ".dbf", ".shp", ".shx",
            ".qpj", ".srt", ".mp4", ".mov", ".dng", ".png", ".vrt"}


class Refusal(NamedTuple):
    """A file left out of a flight: its name and the one-line reason, in English and Chinese."""
    file: str
    reason: str
    zh: str

    @classmethod
    def of(cls, name: str, error: InputError) -> "Refusal":
        return cls(name, one_line(error), one_line(error.zh) if error.zh else one_line(error))


@dataclass
class IngestResult:
    flight: dict
    refused: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heights: list[Path] = field(default_factory=list)   # float rasters found beside the imagery (DSM / DTM)


@dataclass
class _Item:
    name: str  # shown to the user
    path: Path
    kind: str  # tiff / jpeg


def work_dir(settings) -> Path:
    return Path(settings.ingest.work_dir).expanduser().resolve()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _collect(paths: list[Path], settings, refused: list) -> list[_Item]:
    """Files to consider, with zips unpacked safely; unusable ones go to ``refused``."""
    items: list[_Item] = []

    def add_file(p: Path, name: str, direct: bool) -> None:
        try:
            check_name(p)
            kind = sniff(p)
        except InputError as e:
            refused.append(Refusal.of(name, e))
            return
        if kind in RASTER_KINDS or kind == "jpeg":
            items.append(_Item(name, p, "jpeg" if kind == "jpeg" else "tiff"))
        elif kind == "zip" and direct:
            zid = file_sha256(p)[:16]
            dest = work_dir(settings) / f"zip-{zid}"
            if not dest.is_dir():
                part = dest.with_name(f"{dest.name}.part-{uuid.uuid4().hex[:8]}")
                try:
                    with unpacking(part):
                        safe_extract(p, part, settings.ingest)
                    (part / ".busy").unlink(missing_ok=True)
                except InputError as e:
                    shutil.rmtree(part, ignore_errors=True)
                    refused.append(Refusal.of(name, e))
                    return
                try:
                    os.replace(part, dest)
                except OSError:  # another ingest of the same zip won the race
                    shutil.rmtree(part, ignore_errors=True)
            members = sorted(q for q in dest.iterdir() if q.is_file())
            if not members:
                refused.append(Refusal(name, f"{name} holds no GeoTIFF or JPEG; zip the orthophoto or the photos",
                                       f"{name} 中没有 GeoTIFF 或 JPEG，请压缩正射影像或照片"))
            before = len(items)
            for q in members:
                add_file(q, f"{name}:{q.name.split('_', 1)[-1]}", False)
            if len(items) == before:                    # nothing of it usable: nothing of it kept
                shutil.rmtree(dest, ignore_errors=True)
        elif kind == "empty":
            refused.append(Refusal(name, f"{name} is empty (0 bytes); copy the file again",
                                   f"{name} 是空文件（0 字节），请重新拷贝"))
        elif direct or p.suffix.lower() not in SIDECARS:
            refused.append(Refusal(name, f"{name} is not an image (neither a GeoTIFF nor a JPEG photo); "
                                         f"give orthophotos or drone photos",
                                   f"{name} 不是影像（既非 GeoTIFF 也非 JPEG 照片），请上传正射影像或无人机照片"))

    for p in paths:
        name = shown(p)
        if not p.exists():
            refused.append(Refusal(name, f"{name} not found; check the path", f"找不到 {name}，请检查路径"))
        elif p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not files:
                refused.append(Refusal(name, f"{name} is an empty folder; give the folder holding the flight",
                                       f"{name} 是空文件夹，请选择存放该航线成果的文件夹"))
            for q in files:
                add_file(q, shown(q), False)
        else:
            add_file(p, name, True)
    return items


def ingest_flight(paths: str | Path | list[str | Path], settings, team: str | None = None) -> IngestResult:
    """Validate and describe one flight (see the module docstring). Raises InputError (one line)
    when nothing usable is left."""
    store_crs = settings.store.crs
    projected_store_crs(store_crs)
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not given:
        raise InputError("no file given; give an orthophoto, a folder or a zip",
                         zh="未提供文件，请上传正射影像、文件夹或 zip 压缩包")
    files = [Path(p).expanduser() for p in given]
    max_mpix = settings.ingest.max_raster_mpix
    if len(files) == 1 and files[0].is_file():  # one file: the original rules, its errors as they come
        check_name(files[0])
        if sniff(files[0]) != "zip":
            if sniff(files[0]) == "jpeg":
                return _photos([_Item(shown(files[0]), files[0].resolve(), "jpeg")], settings, team, [])
            return IngestResult(register_ortho(files[0], store_crs, team, max_mpix=max_mpix))
    refused: list[Refusal] = []
    items = _collect(files, settings, refused)
    what = ", ".join(shown(p) for p in files[:3]) + (" …" if len(files) > 3 else "")
    tiffs = [i for i in items if i.kind == "tiff"]
    heights = [i.path for i in tiffs if is_height_raster(i.path)]      # an export's DSM / DTM beside its ortho
    if heights and len(heights) < len(tiffs) + sum(i.kind == "jpeg" for i in items):
        tiffs = [i for i in tiffs if i.path not in heights]
        items = [i for i in items if i.path not in heights]
    else:
        heights = []
    jpegs = [i for i in items if i.kind == "jpeg"]
    if tiffs and jpegs:  # an export folder with quick-look JPEGs: the orthos are the flight
        refused += [Refusal(j.name, f"{j.name} is a JPEG beside orthophotos, left out; register photos as a "
                                    f"flight of their own", f"{j.name} 是与正射影像放在一起的 JPEG，已略去；照片请单独登记为一个航线")
                    for j in jpegs]
    if not items:
        if len(refused) == 1:
            raise InputError(refused[0].reason, zh=refused[0].zh)
        raise InputError(f"{what}: no orthophoto GeoTIFF or drone photo"
                         + (f" ({len(refused)} files refused, e.g. {refused[0].reason})" if refused else "")
                         + "; give the flight's files",
                         zh=f"{what} 中没有正射影像 GeoTIFF 或无人机照片"
                         + (f"（{len(refused)} 个文件被拒收，例如：{refused[0].zh}）" if refused else "")
                         + "，请上传该航线的成果文件")
    result = _orthos(tiffs, settings, team, refused) if tiffs else _photos(jpegs, settings, team, refused)
    result.heights = heights
    return result


def _orthos(items: list[_Item], settings, team, refused) -> IngestResult:
    store_crs = settings.store.crs
    good = []
    for it in items:
        try:
            info = describe_ortho(it.path, store_crs, settings.ingest.max_raster_mpix)
        except InputError as e:
            refused.append(Refusal.of(it.name, e))
            continue
        good.append((it, info))
    if not good:
        if len(refused) == 1:
            raise InputError(refused[0].reason, zh=refused[0].zh)
        raise InputError(f"none of the {len(items)} GeoTIFFs is usable (e.g. {refused[0].reason})",
                         zh=f"{len(items)} 个 GeoTIFF 均无法使用（例如：{refused[0].zh}）")
    if len(good) == 1:
        it = good[0][0]
        return IngestResult(register_ortho(it.path, store_crs, team, max_mpix=settings.ingest.max_raster_mpix),
                            refused)
    import shapely
    hashes = [file_sha256(it.path) for it, _ in good]
    fid = combined_id(hashes)
    folder = work_dir(settings) / fid
    folder.mkdir(parents=True, exist_ok=True)
    vrt = write_mosaic_vrt([it.path.resolve() for it, _ in good], folder / "mosaic.vrt")
    members = [{"file": str(it.path.resolve()), "name": it.name, "sha256": h, "gsd_m": info["gsd_m"],
                "captured_at": info["captured_at"]} for (it, info), h in zip(good, hashes)]
    _atomic_write(folder / "members.json", json.dumps(
        {"flight_id": fid, "source": "orthos", "members": members,
         "refused": [r._asdict() for r in refused]}, ensure_ascii=False, indent=1))
    footprint = shapely.make_valid(shapely.union_all([info["footprint"] for _, info in good]))
    flight = {"flight_id": fid, "path": str(vrt), "captured_at": min(i["captured_at"] for _, i in good),
              "team": team, "source": "orthos", "crs": good[0][1]["crs"],
              "gsd_m": round(statistics.median(i["gsd_m"] for _, i in good), 4),
              "footprint": footprint, "status": "uploaded"}
    return IngestResult(flight, refused, [f"split export: {len(good)} orthos mosaicked in {vrt}"])


def _photos(items: list[_Item], settings, team, refused) -> IngestResult:
    import shapely

    store_crs = settings.store.crs
    frames, evidence, notes = [], [], []
    for it in items:
        try:
            photo = read_photo(it.path.resolve(), it.name)
        except InputError as e:
            refused.append(Refusal.of(it.name, e))
            continue
        try:
            frame = georeference(photo, settings.ingest, store_crs)
        except InputError as e:
            if "oblique" in str(e):
                evidence.append((photo, one_line(e)))
                notes.append(one_line(e))
            else:
                refused.append(Refusal.of(it.name, e))
            continue
        notes += photo.notes
        frames.append((photo, frame))
    if not frames:
        if len(refused) == 1 and not evidence:
            raise InputError(refused[0].reason, zh=refused[0].zh)
        raise InputError(f"none of the {len(items)} photos can be georeferenced"
                         + (f" (e.g. {(refused or evidence)[0][1]})" if refused or evidence else "")
                         + "; give nadir photos with GPS, or the orthophoto",
                         zh=f"{len(items)} 张照片均无法定位"
                         + (f"（例如：{refused[0].zh}）" if refused else "（均为倾斜照片）" if evidence else "")
                         + "，请上传带 GPS 的垂直照片或正射影像")
    hashes = {id(p): file_sha256(p.path) for p, _ in frames}
    hashes.update({id(p): file_sha256(p.path) for p, _ in evidence})
    fid = combined_id(list(hashes.values()))
    folder = work_dir(settings) / fid
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (photo, frame) in enumerate(sorted(frames, key=lambda pf: (pf[0].captured_at or "", pf[0].name))):
        vrt = write_frame_vrt(photo, frame, store_crs, folder / "frames" / f"{k:05d}.vrt")
        rows.append({"file": str(photo.path), "name": photo.name, "frame": str(vrt), "sha256": hashes[id(photo)],
                     "captured_at": photo.captured_at, "gsd_m": round(frame.gsd_m, 4),
                     "uncertainty_m": frame.uncertainty_m, "tilt_deg": round(frame.tilt_deg, 1),
                     "lat": photo.lat, "lon": photo.lon, "relative_altitude_m": photo.rel_alt,
                     "yaw_deg": photo.yaw, "pitch_deg": photo.pitch, "camera": photo.model, "rtk": photo.rtk,
                     "footprint_wkt": frame.footprint.wkt})
    manifest = {"flight_id": fid, "source": "photos", "crs": store_crs, "frames": rows,
                "evidence_only": [{"file": str(p.path), "name": p.name, "sha256": hashes[id(p)],
                                   "captured_at": p.captured_at, "lat": p.lat, "lon": p.lon, "reason": why}
                                  for p, why in evidence],
                "refused": [r._asdict() for r in refused]}
    _atomic_write(folder / "frames.json", json.dumps(manifest, ensure_ascii=False, indent=1))
    times = [p.captured_at for p, _ in frames if p.captured_at]
    if not times:
        from datetime import datetime
        times = [datetime.fromtimestamp(min(p.path.stat().st_mtime for p, _ in frames)).isoformat(timespec="seconds")]
    footprint = shapely.make_valid(shapely.union_all([f.footprint for _, f in frames]))
    flight = {"flight_id": fid, "path": str(folder), "captured_at": min(times), "team": team,
              "source": "photos", "crs": store_crs,
              "gsd_m": round(statistics.median(f.gsd_m for _, f in frames), 4),
              "footprint": footprint, "status": "uploaded"}
    notes.insert(0, f"{len(frames)} photo frames georeferenced (position uncertainty "
                    f"{min(f.uncertainty_m for _, f in frames):g}–{max(f.uncertainty_m for _, f in frames):g} m)"
                 + (f", {len(evidence)} oblique kept as evidence" if evidence else ""))
    return IngestResult(flight, refused, notes)


# ---------------------------------------------------------------- after ingest
def flight_frames(flight: dict) -> list[Path]:
    """The rasters detection runs on: the ortho (or split-export mosaic), or one VRT per photo."""
    p = Path(str(flight["path"]))
    if flight.get("source") == "photos" or p.is_dir():
        manifest = p / "frames.json"
        if not manifest.is_file():
            raise InputError(f"flight {flight['flight_id']}: {manifest} is gone; register the photos again "
                             f"with `patrol ingest`",
                         zh=f"航线 {flight['flight_id']} 的照片清单已丢失，请重新登记该批照片")
        return [Path(r["frame"]) for r in json.loads(manifest.read_text(encoding="utf-8"))["frames"]]
    return [p]


def manifest_summary(flight: dict) -> list[tuple[str, str]]:
    """(label, text) lines describing a split export's members or a photo flight's frames."""
    p = Path(str(flight.get("path") or ""))
    try:
        if flight.get("source") == "photos":
            m = json.loads((p / "frames.json").read_text(encoding="utf-8"))
            unc = [fr["uncertainty_m"] for fr in m["frames"]]
            return [("frames", f"{len(m['frames'])} photos, position uncertainty {min(unc):g}–{max(unc):g} m"),
                    ("evidence", f"{len(m['evidence_only'])} oblique photos kept as evidence only"),
                    ("refused", f"{len(m['refused'])} files")]
        if flight.get("source") == "orthos":
            m = json.loads((p.parent / "members.json").read_text(encoding="utf-8"))
            return [("members", ", ".join(mm["file"] for mm in m["members"])),
                    ("refused", f"{len(m['refused'])} files")]
    except (OSError, ValueError, KeyError):
        return [("manifest", f"missing or unreadable beside {p}")]
    return []


def check_district(flight: dict, store, settings) -> None:
    """Refuse a flight whose footprint lies further than ``ingest.district_margin_m`` from the
    district: ``ingest.district_boundary`` when set, else every stored parcel and zone (no check
    while the store holds neither)."""
    import shapely

    ing = settings.ingest
    fp = flight.get("footprint")
    if fp is None or fp.is_empty:
        return
    near = fp.buffer(ing.district_margin_m)
    if ing.district_boundary is not None:
        area = _boundary(settings.resolve(ing.district_boundary), settings.store.crs)
        if not shapely.intersects(area, near):
            raise InputError(f"flight {flight['flight_id']} ({shown(flight['path'])}) lies outside the district "
                             f"boundary {ing.district_boundary} (more than {ing.district_margin_m:g} m away); "
                             f"check the flight or its CRS",
                         zh=f"航线 {flight['flight_id']} 位于辖区边界外（超出 {ing.district_margin_m:g} 米），请检查航线或其坐标系")
        return
    counts = store.status().get("counts", {})
    if not counts.get("parcel") and not counts.get("zone"):
        return
    bbox = near.bounds
    for layer in (store.parcels(bbox), store.zones(bbox)):
        if len(layer) and shapely.intersects(near, layer.geometry.values).any():
            return
    raise InputError(f"flight {flight['flight_id']} ({shown(flight['path'])}) lies outside the district: no "
                     f"parcel or zone within {ing.district_margin_m:g} m of its footprint; check the flight "
                     f"(another district?) or its CRS",
                         zh=f"航线 {flight['flight_id']} 不在本辖区：其范围 {ing.district_margin_m:g} 米内没有任何宅基地或管控图斑，请检查是否为其他辖区的航线，或其坐标系")


def _boundary(path: Path, store_crs: str):
    import geopandas as gpd
    import shapely
    try:
        gdf = gpd.read_file(path)
    except Exception:
        raise InputError(f"ingest.district_boundary {path} cannot be read; give a GeoPackage, Shapefile "
                         f"or GeoJSON polygon",
                         zh="辖区边界文件无法读取，请提供 GeoPackage、Shapefile 或 GeoJSON 面文件") from None
    if gdf.crs is None:
        raise InputError(f"ingest.district_boundary {path} has no CRS; save it with its CRS",
                         zh="辖区边界文件没有坐标系，请带坐标系保存")
    return shapely.union_all(gdf.to_crs(store_crs).geometry.values)


def gsd_outside(gsd_m, settings) -> str | None:
    """Why a flight of native ground pixel ``gsd_m`` lies outside the range the model was trained and
    checked on (``detector.gsd_range_m``), or None when it is inside (or unknown)."""
    # lazy: loads pandas only when used
    from pipeline.core.values import is_missing
    lo, hi = settings.detector.gsd_range_m
    if is_missing(gsd_m) or lo <= float(gsd_m) <= hi:
        return None
    side = "coarser" if float(gsd_m) > hi else "finer"
    return f"ground pixel {float(gsd_m):.3f} m is {side} than the {lo:g}–{hi:g} m the detector was trained and checked on"


def check_gsd(name: str, gsd_m, settings, force: bool = False, name_zh: str | None = None) -> str | None:
    """Refuse imagery outside the model's GSD range with one line (InputError naming the measured
    GSD and the range); with ``force`` return what the flight records instead ("0.500 m ∉ 0.02–0.16 m
    · 2026-12-06 05:10"); None inside the range."""
    from datetime import datetime
    why = gsd_outside(gsd_m, settings)
    lo, hi = settings.detector.gsd_range_m
    if why is None:
        return None
    if force:
        return f"{float(gsd_m):.3f} m ∉ {lo:g}–{hi:g} m · {datetime.now():%Y-%m-%d %H:%M}"
    raise InputError(f"{name}: {why} (its model card); its detections would not be trustworthy — use imagery "
                     f"of {lo:g}–{hi:g} m, or --force to run it anyway",
                     zh=f"{name_zh or name}：影像分辨率 {float(gsd_m):.3f} m 超出模型适用范围 {lo:g}–{hi:g} m，识别结果不可信；"
                        f"请使用该范围内的影像（管理员可强制处理）")


def check_flight_gsd(flight: dict, settings, force: bool = False) -> str | None:
    """``check_gsd`` for a registered (or being registered) flight, named by its id and file."""
    return check_gsd(f"flight {flight['flight_id']} ({shown(flight['path'])})", flight.get("gsd_m"), settings, force,
                     name_zh=f"航次 {flight['flight_id']}（{shown(flight['path'])}）")
