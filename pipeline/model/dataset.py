"""Training data: YOLO datasets from synthetic scenes and labelled real flights (`patrol dataset`).

Dataset layout (ultralytics YOLO format)::

    DIR/data.yaml                      path, train, val, names
    DIR/images/{train,val}/<stem>.jpg  chips at the processing GSD
    DIR/labels/{train,val}/<stem>.txt  one line per object: class cx cy w h (normalised)

Real flights (`import_labelled`) are warped on read, window by window, into a local UTM grid at
the processing GSD, so an ortho in EPSG:4326, EPSG:3857 (whose map units are not ground metres)
or any projected CRS gives chips at the same ground scale. Synthetic chips (`build_dataset`) come
from `pipeline.synth.render_scene`; the train/val split is by scene seed, so no val chip overlaps
a train chip.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.core.errors import ConfigError, InputError
from pipeline.synth import render_scene
from pipeline.synth.randomisation import Randomisation

CLASSES = ["building", "steel_shed", "under_construction", "greenhouse"]

# Values of a label column that mean one of our classes (lower-cased).
CLASS_ALIASES = {
    "building": 0, "house": 0, "yes": 0, "residential": 0, "complete": 0, "建筑": 0, "房屋": 0,
    "steel_shed": 1, "shed": 1, "steel shed": 1, "彩钢棚": 1, "彩钢房": 1,
    "under_construction": 2, "construction": 2, "incomplete": 2, "foundation": 2, "在建": 2,
    "greenhouse": 3, "大棚": 3,
}



# ---------------------------------------------------------------- dataset files
@dataclass
class ChipStats:
    """What an import or a build wrote."""
    chips: int = 0
    boxes: int = 0
    per_class: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})
    footprints: int = 0
    blanked: int = 0                # areas painted over (``import_labelled(blank=…)``)
    by_split: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})

    def add(self, other: "ChipStats") -> "ChipStats":
        self.chips += other.chips
        self.boxes += other.boxes
        self.footprints += other.footprints
        self.blanked += other.blanked
        for k, v in other.by_split.items():
            self.by_split[k] = self.by_split.get(k, 0) + v
        for k, v in other.per_class.items():
            self.per_class[k] = self.per_class.get(k, 0) + v
        return self


def write_data_yaml(out_dir: Path, classes: Sequence[str] = CLASSES) -> Path:
    """(Re)write DIR/data.yaml for ultralytics; creates the split folders."""
    import yaml
    out_dir = Path(out_dir).resolve()
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    data = {"path": str(out_dir), "train": "images/train", "val": "images/val",
            "names": {i: c for i, c in enumerate(classes)}}
    p = out_dir / "data.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return p


def chip_labels(polys, cls: np.ndarray, chip_bounds: tuple[float, float, float, float], gsd_m: float,
                chip_px: int, valid: np.ndarray | None = None, min_visible: float = 0.35,
                min_side_px: float = 8.0, min_part_m2: float = 12.0) -> np.ndarray:
    """YOLO-OBB rows (cls, x1, y1, … x4, y4; normalised) of the polygons clipped to one chip.

    Each label is the oriented envelope (minimum rotated rectangle) of the part of the
    polygon inside the chip (map coords, y up), so a tilted roof gets a tight box and its
    area stays honest. A polygon is kept when the part inside the chip is at least
    ``min_visible`` of its area (or at least ``min_part_m2``: a big roof cut by the edge is
    still a roof), its box is ``min_side_px`` or more on each side, and (with ``valid``) at
    least half of its bounding box holds valid pixels. Slivers along the edge go.
    """
    import shapely
    left, bottom, right, top = chip_bounds
    if len(polys) == 0:
        return np.zeros((0, 9))
    clipped = shapely.intersection(polys, shapely.box(left, bottom, right, top))
    area = shapely.area(polys)
    carea = shapely.area(clipped)
    keep = (carea > 0) & ((carea >= min_visible * area) | (carea >= min_part_m2))
    rect = shapely.oriented_envelope(clipped[keep])
    ok_rect = (shapely.get_type_id(rect) == 3) & (shapely.area(rect) > 0)
    rect, c = rect[ok_rect], cls[keep][ok_rect]
    if len(rect) == 0:
        return np.zeros((0, 9))
    xy = shapely.get_coordinates(shapely.get_exterior_ring(rect)).reshape(len(rect), 5, 2)[:, :4]
    px = np.clip((xy[..., 0] - left) / gsd_m, 0, chip_px)
    py = np.clip((top - xy[..., 1]) / gsd_m, 0, chip_px)
    sides = np.hypot(np.diff(px, axis=1, append=px[:, :1]), np.diff(py, axis=1, append=py[:, :1]))
    ok = sides.min(axis=1) >= min_side_px
    if valid is not None and ok.any():
        for i in np.flatnonzero(ok):
            y0, y1 = int(py[i].min()), max(int(np.ceil(py[i].max())), int(py[i].min()) + 1)
            x0, x1 = int(px[i].min()), max(int(np.ceil(px[i].max())), int(px[i].min()) + 1)
            sub = valid[y0:y1, x0:x1]
            if sub.size == 0 or sub.mean() < 0.5:
                ok[i] = False
    corners = np.stack([px, py], axis=2).reshape(len(rect), 8) / chip_px
    return np.column_stack([c, corners])[ok]


def _write_chip(out_dir: Path, split: str, stem: str, image: np.ndarray, rows: np.ndarray,
                stats: ChipStats, classes: Sequence[str]) -> None:
    import cv2
    img_path = out_dir / "images" / split / f"{stem}.jpg"
    if not cv2.imwrite(str(img_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 93]):
        raise InputError(f"cannot write chip {img_path}; check the folder is writable")
    lines = [" ".join([str(int(r[0]))] + [f"{v:.6f}" for v in r[1:]]) for r in rows]
    (out_dir / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    stats.chips += 1
    stats.by_split[split] = stats.by_split.get(split, 0) + 1
    stats.boxes += len(rows)
    for r in rows:
        stats.per_class[classes[int(r[0])]] += 1


def blank_out(image: np.ndarray, polys, chip_bounds: tuple[float, float, float, float], gsd_m: float,
              valid: np.ndarray | None = None) -> np.ndarray:
    """The chip with ``polys`` (chip metres, y up) painted in its mean valid colour."""
    import cv2
    import shapely
    left, _, _, top = chip_bounds
    out = image.copy()
    ok = valid if valid is not None and valid.any() else np.ones(image.shape[:2], bool)
    colour = tuple(int(v) for v in image[ok].mean(axis=0))
    mask = np.zeros(image.shape[:2], np.uint8)
    for g in shapely.get_parts(np.asarray(polys)):
        if g.geom_type != "Polygon" or g.is_empty:
            continue
        xy = np.asarray(g.exterior.coords)
        pts = np.column_stack([(xy[:, 0] - left) / gsd_m, (top - xy[:, 1]) / gsd_m]).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    out[mask.astype(bool)] = colour
    return out


def _chip_origins(width: int, height: int, chip_px: int, stride_px: int) -> Iterator[tuple[int, int]]:
    def starts(n: int) -> list[int]:
        if n <= chip_px:
            return [0]
        s = list(range(0, n - chip_px + 1, stride_px))
        if s[-1] != n - chip_px:
            s.append(n - chip_px)
        return s
    for r in starts(height):
        for c in starts(width):
            yield r, c


def chips_from_array(rgb: np.ndarray, valid: np.ndarray, transform, polys, cls: np.ndarray,
                     out_dir: Path, split: str, stem: str, chip_px: int = 320,
                     stride_px: int | None = None, min_valid: float = 0.5,
                     classes: Sequence[str] = CLASSES, keep_empty: float = 1.0,
                     rng: np.random.Generator | None = None) -> ChipStats:
    """Cut an in-memory image (north-up, square pixels of ``transform.a`` metres) into chips."""
    import shapely
    out_dir = Path(out_dir)
    gsd = float(transform.a)
    stats = ChipStats()
    h, w = rgb.shape[:2]
    polys = np.asarray(polys, dtype=object)
    tree = shapely.STRtree(polys) if len(polys) else None
    for r, c in _chip_origins(w, h, chip_px, stride_px or chip_px):
        v = valid[r:r + chip_px, c:c + chip_px]
        if v.size == 0 or v.mean() < min_valid:
            continue
        img = rgb[r:r + chip_px, c:c + chip_px]
        if img.shape[0] != chip_px or img.shape[1] != chip_px:
            pad = np.zeros((chip_px, chip_px, 3), np.uint8)
            pad[:img.shape[0], :img.shape[1]] = img
            vp = np.zeros((chip_px, chip_px), bool)
            vp[:v.shape[0], :v.shape[1]] = v
            img, v = pad, vp
        left = transform.c + c * gsd
        top = transform.f - r * gsd
        bounds = (left, top - chip_px * gsd, left + chip_px * gsd, top)
        idx = tree.query(shapely.box(*bounds)) if tree is not None else np.zeros(0, int)
        rows = chip_labels(polys[idx], cls[idx], bounds, gsd, chip_px, valid=v)
        if len(rows) == 0 and rng is not None and rng.random() > keep_empty:
            continue
        img = np.where(v[..., None], img, 0).astype(np.uint8)
        _write_chip(out_dir, split, f"{stem}_r{r}_c{c}", img, rows, stats, classes)
    return stats


# ---------------------------------------------------------------- real flights
def _class_indices(gdf, class_column: str | None, default_class: str, src: Path) -> np.ndarray:
    if default_class not in CLASSES:
        raise ConfigError(f"class '{default_class}' is not one of {', '.join(CLASSES)}")
    col = class_column
    if col is None:
        for cand in ("class_name", "class", "condition"):
            if cand in gdf.columns:
                col = cand
                break
    if col is None:
        return np.full(len(gdf), CLASSES.index(default_class))
    if col not in gdf.columns:
        raise InputError(f"label file {src} has no column '{col}'; name one of: {', '.join(map(str, gdf.columns))}")
    vals = gdf[col].astype(str).str.strip().str.lower()
    out = vals.map(lambda v: CLASS_ALIASES.get(v, CLASS_ALIASES.get(v.replace("-", "_"), -1)))
    out = out.to_numpy().astype(int)
    out[(gdf[col].isna()).to_numpy()] = CLASSES.index(default_class)
    return out


def local_utm(crs, bounds) -> Any:
    """The UTM CRS at the centre of a raster (any CRS)."""
    from pyproj import CRS, Transformer
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    crs = CRS.from_user_input(crs)
    if crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter") and \
            "Pseudo-Mercator" not in crs.name and crs.to_epsg() != 3857:
        return crs
    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = t.transform((bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2)
    info = query_utm_crs_info(datum_name="WGS 84",
                              area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(int(info[0].code))


def import_labelled(ortho: str | Path, labels, out_dir: str | Path, gsd_m: float = 0.10,
                    chip_px: int = 320, split: str = "train", stride_px: int | None = None,
                    class_column: str | None = None, default_class: str = "building",
                    layer: str | None = None, min_valid: float = 0.6, prefix: str | None = None,
                    classes: Sequence[str] = CLASSES, near=None, blank=None, val_region=None,
                    gap_m: float = 0.0, holdout: Sequence[float] | None = None,
                    holdout_gap_m: float = 20.0) -> ChipStats:
    """Chips at ``gsd_m`` + YOLO labels from an ortho (any CRS, RGB/RGBA) and labelled polygons
    (a vector file, or a GeoDataFrame).

    The class comes from ``class_column`` (or a `class_name`/`class`/`condition` column; values
    such as building, steel_shed, under_construction, greenhouse, incomplete, 彩钢棚, 大棚),
    else ``default_class``. Rows whose class is unknown are dropped. Chips that are mostly
    no-data (alpha 0, mask, nodata value) are skipped. Geometries in the labels' CRS:
    ``near`` keeps only chips touching one of them; ``blank`` polygons are painted over with the
    chip's mean colour (what may or may not be a structure teaches nothing); with ``val_region``
    chips touching it go to val, chips within ``gap_m`` of it are left out, the rest to ``split``.
    ``holdout`` (left, top, right, bottom fractions of the ortho: an evaluation part) is never
    chipped: chips touching it or within ``holdout_gap_m`` of it are left out.
    """
    import geopandas as gpd
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    from tqdm import tqdm

    ortho, out_dir = Path(ortho), Path(out_dir)
    if split not in ("train", "val"):
        raise ConfigError(f"split '{split}' must be train or val")
    if not ortho.is_file():
        raise InputError(f"ortho {ortho} not found; pass an existing GeoTIFF")
    if isinstance(labels, gpd.GeoDataFrame):
        gdf, labels = labels, Path(f"{ortho.stem}-labels")
    else:
        labels = Path(labels)
        if not labels.is_file():
            raise InputError(f"label file {labels} not found; pass a GeoPackage, GeoJSON or shapefile")
        try:
            gdf = gpd.read_file(labels, layer=layer) if layer else gpd.read_file(labels)
        except Exception as e:
            raise InputError(f"cannot read label file {labels} ({type(e).__name__}); check the format") from None
    if gdf.crs is None:
        raise InputError(f"label file {labels} has no CRS; set one (e.g. with ogr2ogr -a_srs)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    gdf = gdf[gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
    write_data_yaml(out_dir, classes)
    stem_base = prefix or re.sub(r"[^A-Za-z0-9_-]+", "_", f"{ortho.parent.name}_{ortho.stem}")
    stats = ChipStats()
    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import open_raster
    with open_raster(ortho) as src:
        if src.count < 3 and src.count != 1:
            raise InputError(f"ortho {ortho} has {src.count} bands; need RGB or RGBA")
        dst_crs = local_utm(src.crs, src.bounds)
        from rasterio.warp import calculate_default_transform
        tr, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height,
                                               *src.bounds, resolution=gsd_m)
        import shapely
        polys_gdf = gdf.to_crs(dst_crs)
        cls = _class_indices(polys_gdf, class_column, default_class, labels)
        polys_gdf = polys_gdf[cls >= 0]
        cls = cls[cls >= 0]
        polys = shapely.make_valid(polys_gdf.geometry.to_numpy())
        stats.footprints = len(polys)
        tree = shapely.STRtree(polys) if len(polys) else None

        def local(geoms):               # geometries of the labels' CRS in the chips' metres
            if geoms is None:
                return None
            return shapely.make_valid(gpd.GeoSeries(list(geoms), crs=gdf.crs).to_crs(dst_crs).to_numpy())
        near_l, blank_l = local(near), local(blank)
        region_l = None if val_region is None else shapely.union_all(local([val_region]))
        if holdout is not None:
            # lazy: loads rasterio only when used
            from pipeline.detection.tiling import part_polygon
            held_l = part_polygon(src, holdout, dst_crs).buffer(holdout_gap_m)
        near_tree = shapely.STRtree(near_l) if near_l is not None and len(near_l) else None
        blank_tree = shapely.STRtree(blank_l) if blank_l is not None and len(blank_l) else None
        stretch = None
        if src.dtypes[0] != "uint8":
            from rasterio.enums import Resampling as R
            ov = src.read(out_shape=(min(src.count, 3), max(1, src.height // 8), max(1, src.width // 8)),
                          resampling=R.nearest, masked=True)
            stretch = [np.nanpercentile(b.compressed(), [2, 98]) if b.count() else (0, 1) for b in ov]
        bands = [1, 1, 1] if src.count == 1 else [1, 2, 3]
        from rasterio.enums import ColorInterp
        ci = list(src.colorinterp)
        # an alpha band, also when a web-tile mosaic left its 4th band's colour interpretation unset
        alpha = ci.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in ci else (4 if src.count == 4 else 0)
        with WarpedVRT(src, crs=dst_crs, transform=tr, width=w, height=h,
                       resampling=Resampling.bilinear) as vrt:
            origins = list(_chip_origins(w, h, chip_px, stride_px or chip_px))
            for r, c in tqdm(origins, desc=f"import {ortho.name}", unit="chip", leave=False):
                win = Window(c, r, min(chip_px, w - c), min(chip_px, h - r))
                valid = np.zeros((chip_px, chip_px), bool)
                m = vrt.dataset_mask(window=win) > 0
                if alpha:
                    m &= vrt.read(alpha, window=win) > 127
                valid[:win.height, :win.width] = m
                if valid.mean() < min_valid:
                    continue
                arr = np.zeros((3, chip_px, chip_px), src.dtypes[0])
                arr[:, :win.height, :win.width] = vrt.read(bands, window=win)
                if stretch is not None:
                    arr = np.stack([np.clip((a.astype(float) - lo) / max(hi - lo, 1e-9) * 255, 0, 255)
                                    for a, (lo, hi) in zip(arr, stretch)])
                img = np.where(valid[None], arr, 0).astype(np.uint8).transpose(1, 2, 0)
                left, top = tr.c + c * gsd_m, tr.f - r * gsd_m
                bounds = (left, top - chip_px * gsd_m, left + chip_px * gsd_m, top)
                chip_box = shapely.box(*bounds)
                if holdout is not None and chip_box.intersects(held_l):
                    continue
                if near is not None and (near_tree is None or not len(near_tree.query(chip_box, "intersects"))):
                    continue
                chip_split = split
                if region_l is not None:
                    if chip_box.intersects(region_l):
                        chip_split = "val"
                    elif gap_m > 0 and chip_box.distance(region_l) < gap_m:
                        continue
                idx = tree.query(chip_box) if tree is not None else np.zeros(0, int)
                rows = chip_labels(polys[idx], cls[idx], bounds, gsd_m, chip_px, valid=valid)
                if blank_tree is not None:
                    hit = blank_tree.query(chip_box, "intersects")
                    if len(hit):
                        img = blank_out(img, blank_l[hit], bounds, gsd_m, valid)
                        stats.blanked += len(hit)
                _write_chip(out_dir, chip_split, f"{stem_base}_r{r}_c{c}", img, rows, stats, classes)
    return stats


# ---------------------------------------------------------------- synthetic scenes
def scene_seeds(seed: int, scenes: int, val_scenes: int) -> tuple[list[int], list[int]]:
    """Scene seeds of a build: train ``seed … seed+scenes-1``, val the next ``val_scenes``."""
    train = [seed + i for i in range(scenes)]
    val = [seed + scenes + i for i in range(val_scenes)]
    return train, val


def truth_arrays(truth, classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(polygons, class index) of a truth GeoDataFrame with `class_name`; unknown classes dropped."""
    import shapely
    if len(truth) == 0:
        return np.zeros(0, dtype=object), np.zeros(0, int)
    idx = np.array([classes.index(c) if c in classes else -1 for c in truth["class_name"]], dtype=int)
    geoms = shapely.make_valid(truth.geometry.to_numpy())
    ok = idx >= 0
    return geoms[ok], idx[ok]


def render_chips(seed: int, out_dir: Path, split: str, size_m: float, chip_px: int,
                 gsd_range: tuple[float, float], classes: Sequence[str] = CLASSES,
                 coarse: tuple[float, float, float] | None = None, gsd_m: float = 0.10,
                 l_houses: bool = True, terraces: float = 0.0) -> ChipStats:
    """Render one randomised scene and cut it into chips at the scene's (jittered) GSD.

    ``coarse`` (share, finest, coarsest): that share of scenes is rendered at a native GSD drawn in
    finest–coarsest (e.g. a 0.3 m aerial survey) and resampled to ``gsd_m`` bilinearly, as the tiler
    resamples such imagery; the model then sees the blur of coarse flights. ``l_houses`` False: no
    L / T-plan houses (the scenes as drawn before they existed). ``terraces``: that share of village
    blocks built as rows of adjoining houses (one structure each)."""
    import cv2
    from affine import Affine

    rng = np.random.default_rng(seed)
    rnd = Randomisation.sample(rng, gsd_range=gsd_range, **({} if l_houses else {"l_houses": None}))
    rnd = rnd.with_(terraces=terraces)
    native = rnd.gsd_m
    if coarse is not None and rng.random() < coarse[0]:
        native = float(rng.uniform(coarse[1], coarse[2]))
    scene = render_scene(seed, size_m, native, rnd)
    rgb, valid, transform = scene.rgb, np.asarray(scene.valid, bool), scene.transform
    if native != rnd.gsd_m:                    # coarse: up to the processing GSD, as the tiler would
        n = int(round(size_m / gsd_m))
        rgb = cv2.resize(rgb, (n, n), interpolation=cv2.INTER_LINEAR)
        valid = cv2.resize(valid.astype(np.uint8), (n, n), interpolation=cv2.INTER_NEAREST).astype(bool)
        transform = Affine(gsd_m, 0, transform.c, 0, -gsd_m, transform.f)
    polys, cls = truth_arrays(scene.truth, classes)
    stats = chips_from_array(rgb, valid, transform, polys, cls,
                             out_dir, split, f"syn{seed:07d}", chip_px=chip_px, min_valid=0.5,
                             classes=classes, keep_empty=0.3, rng=rng)
    stats.footprints = len(polys)
    return stats


def build_dataset(out_dir: str | Path, scenes: int = 100, val_scenes: int = 20, seed: int = 1,
                  size_m: float = 96.0, chip_px: int = 320, gsd_range: tuple[float, float] = (0.08, 0.14),
                  real: Sequence[tuple] = (), real_val: Sequence[tuple] = (),
                  gsd_m: float = 0.10, real_stride_px: int | None = None, progress: bool = True,
                  coarse: tuple[float, float, float] | None = None, l_houses: bool = True,
                  terraces: float = 0.0) -> dict:
    """A YOLO dataset of synthetic scenes (split by scene seed) plus labelled real flights
    (``(ortho, labels)`` or ``(ortho, labels, holdout)``: see ``import_labelled``); ``coarse``,
    ``l_houses`` and ``terraces``: see ``render_chips``.

    Returns a summary that is also written to DIR/manifest.json (seeds per split, chips, boxes).
    """
    from tqdm import tqdm
    out_dir = Path(out_dir)
    if scenes < 0 or val_scenes < 0:
        raise ConfigError("--scenes and --val-scenes must be 0 or more")
    write_data_yaml(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "classes": CLASSES, "synthetic": {"train": [], "val": []}, "real": [], "chip_px": chip_px}
    train_seeds, val_seeds = scene_seeds(seed, scenes, val_scenes)
    used = set(manifest["synthetic"]["train"]) | set(manifest["synthetic"]["val"])
    clash = used & (set(train_seeds) | set(val_seeds))
    if clash:
        raise ConfigError(f"dataset {out_dir} already holds scene seeds {sorted(clash)[:3]}…; "
                          f"pick another --seed or a new --out")
    totals = {"train": ChipStats(), "val": ChipStats()}
    if terraces:
        manifest["terraces"] = terraces
    jobs = [(s, "train") for s in train_seeds] + [(s, "val") for s in val_seeds]
    for s, split in tqdm(jobs, desc="render scenes", unit="scene", disable=not progress):
        totals[split].add(render_chips(s, out_dir, split, size_m, chip_px, gsd_range, coarse=coarse, gsd_m=gsd_m,
                                       l_houses=l_houses, terraces=terraces))
        manifest["synthetic"][split].append(s)
        manifest_path.write_text(json.dumps(manifest, indent=1))
    for items, split in ((real, "train"), (real_val, "val")):
        for ortho, labels, *holdout in items:    # (ortho, labels[, evaluation part never chipped])
            held = holdout[0] if holdout else None
            st = import_labelled(ortho, labels, out_dir, gsd_m=gsd_m, chip_px=chip_px, split=split,
                                 stride_px=real_stride_px if split == "train" else None, holdout=held)
            totals[split].add(st)
            manifest["real"].append({"ortho": str(ortho), "labels": str(labels), "split": split,
                                     "holdout": held, "chips": st.chips, "boxes": st.boxes,
                                     "footprints": st.footprints})
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return {"out_dir": str(out_dir), "train_seeds": train_seeds, "val_seeds": val_seeds,
            "train": totals["train"], "val": totals["val"]}


