"""The synthetic district generator: determinism, georeference, truth, epochs and changes."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask

from pipeline.core.errors import InputError
from pipeline.synth import CLASSES, Randomisation, generate_district, render_scene
from pipeline.synth.district import render_epoch

SIZE, GSD, EPOCHS, SEED = 80.0, 0.05, 3, 4
LAYERS = ("parcels", "zones", "truth", "changes", "footprints")


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    return generate_district(tmp_path_factory.mktemp("district"), seed=SEED, size_m=SIZE, epochs=EPOCHS,
                             gsd_m=GSD, progress=False)


@pytest.fixture(scope="module")
def layers(district):
    return {name: gpd.read_file(district.vectors, layer=name) for name in LAYERS}


def _digest(res) -> str:
    h = hashlib.sha256()
    for p in res.orthos:
        with rasterio.open(p) as src:
            h.update(src.read().tobytes())
            h.update(src.dataset_mask().tobytes())
    for name in LAYERS:
        g = gpd.read_file(res.vectors, layer=name)
        h.update(g.drop(columns="geometry").to_csv(index=False).encode())
        h.update(b"".join(g.geometry.to_wkb()))
    return h.hexdigest()


def test_same_seed_gives_identical_output(district, tmp_path):
    again = generate_district(tmp_path / "again", seed=SEED, size_m=SIZE, epochs=EPOCHS, gsd_m=GSD,
                              progress=False)
    assert _digest(again) == _digest(district)
    other = render_scene(SEED + 1, 30, 0.1, Randomisation())
    same = render_scene(SEED, 30, 0.1, Randomisation())
    assert not np.array_equal(other.rgb, same.rgb)


def test_orthophotos_are_georeferenced_as_configured(district):
    meta = json.loads((district.out_dir / "district.json").read_text(encoding="utf-8"))
    n = int(round(SIZE / GSD))
    x0, ytop = meta["origin"]["x"], meta["origin"]["y"]
    assert 400_000 < x0 < 600_000 and 3_000_000 < ytop < 3_800_000  # inside the CM 114E zone
    assert len(district.orthos) == EPOCHS == len(meta["epochs"])
    for p, ep in zip(district.orthos, meta["epochs"]):
        with rasterio.open(p) as src:
            assert src.crs.to_epsg() == 4547
            assert (src.width, src.height, src.count) == (n, n, 3)
            assert src.dtypes == ("uint8",) * 3
            assert src.transform.almost_equals(rasterio.Affine(GSD, 0, x0, 0, -GSD, ytop))
            assert src.bounds.right - src.bounds.left == pytest.approx(SIZE)
            assert src.block_shapes[0] == (512, 512)
            assert src.compression.name == "jpeg" and src.photometric.name == "ycbcr"
            assert src.overviews(1)[:2] == [2, 4]
            assert src.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
            mask = src.dataset_mask()
            assert 0.3 < (mask > 0).mean() < 0.999  # an irregular footprint, not the whole square
            stamp = datetime.strptime(src.tags()["TIFFTAG_DATETIME"], "%Y:%m:%d %H:%M:%S")
            assert stamp == datetime.fromisoformat(ep["date"])
    dates = [datetime.fromisoformat(e["date"]) for e in meta["epochs"]]
    gaps = [(b - a).days for a, b in zip(dates, dates[1:])]
    assert all(80 <= g <= 130 for g in gaps)


def test_vector_layers_valid_and_disjoint(layers):
    p, z = layers["parcels"], layers["zones"]
    assert list(p.columns) == ["parcel_id", "owner", "town", "village", "village_code", "land_use",
                               "approved_area_m2", "approved_floors", "permit_no", "geometry"]
    assert list(z.columns) == ["zone_id", "kind", "code", "name", "geometry"]
    for g in (p, z, layers["truth"], layers["changes"], layers["footprints"]):
        assert g.crs.to_epsg() == 4547
        assert g.geometry.is_valid.all() and not g.geometry.is_empty.any()
    assert len(p) > 0 and len(z) > 0
    assert p.parcel_id.is_unique and z.zone_id.is_unique
    assert set(z.kind) <= {"basic_farmland", "farmland", "ecological_redline"}
    assert (p.land_use == "0702").all() and (p.approved_area_m2 > 0).all()
    assert p.geometry.union_all().intersection(z.geometry.union_all()).area < 1e-6


def test_every_structure_inside_footprint_and_visible(district, layers):
    truth, fps = layers["truth"], layers["footprints"]
    for e, path in enumerate(district.orthos, start=1):
        t = truth[truth.epoch == e]
        assert len(t) > 0
        fp = fps[fps.epoch == e].geometry.iloc[0]
        assert t.geometry.within(fp).all()
        bare = np.moveaxis(render_epoch(SEED, SIZE, EPOCHS, GSD, e, structures=False), 2, 0).astype(np.float32)
        with rasterio.open(path) as src:
            img = src.read().astype(np.float32)
            valid = src.dataset_mask() > 0
            for geom in t.geometry:
                inside = ~geometry_mask([geom], img.shape[1:], src.transform)
                ring = ~geometry_mask([geom.buffer(2.0).difference(geom.buffer(0.4))], img.shape[1:],
                                      src.transform)
                assert valid[inside].all()
                # visible: the roof differs from its surroundings (colour or texture)
                a, b = img[:, inside], img[:, ring]
                colour = np.abs(a.mean(1) - b.mean(1)).max()
                texture = abs(a.std(1).mean() - b.std(1).mean())
                assert colour > 12 or texture > 8, (e, geom.centroid, colour, texture)
                # and it changes the picture: the same place without any structure looks different
                core = ~geometry_mask([geom.buffer(-0.3)], img.shape[1:], src.transform)
                assert np.abs(img[:, core] - bare[:, core]).mean() > 20, (e, geom.centroid)


def test_violation_labels_follow_the_rules(layers):
    t, p, z = layers["truth"], layers["parcels"], layers["zones"]
    assert set(t.class_name) <= set(CLASSES)
    assert set(t.violation) <= {"", "illegal_construction", "illegal_land_use", "over_approval"}
    for _, r in t.iterrows():
        g = r.geometry
        over = z[z.intersection(g).area > max(0.5, 0.02 * g.area)]
        frac = (p.intersection(g).area / g.area)
        best = frac.idxmax() if len(p) else None
        if len(over):
            exempt = r.class_name == "greenhouse" and set(over.kind) <= {"farmland"}
            assert r.violation == ("" if exempt else "illegal_land_use")
        elif best is None or frac[best] < 0.5:
            assert r.violation == "illegal_construction"
        elif g.area > p.approved_area_m2[best] * 1.2:
            assert r.violation == "over_approval" and r.parcel_id == p.parcel_id[best]
        else:
            assert r.violation == "" and frac[best] > 0.99 and g.area <= p.approved_area_m2[best]


def test_each_epoch_differs_exactly_as_changes_say(district, layers):
    t, ch = layers["truth"], layers["changes"]
    assert set(ch.epoch) <= set(range(2, EPOCHS + 1))
    seen_kinds = set()
    ever = set(t.loc[t.epoch == 1, "structure_id"])
    imgs = []
    for path in district.orthos:
        with rasterio.open(path) as src:
            imgs.append((src.read().astype(np.float32), src.transform))
    for e in range(2, EPOCHS + 1):
        prev = t[t.epoch == e - 1].set_index("structure_id")
        cur = t[t.epoch == e].set_index("structure_id")
        c = ch[ch.epoch == e]
        ids = {k: set(c.structure_id[c.change == k]) for k in ("new", "grown", "demolished", "rebuilt")}
        seen_kinds |= {k for k, v in ids.items() if v}
        assert set(cur.index) == (set(prev.index) - ids["demolished"]) | ids["new"] | ids["rebuilt"]
        assert not ids["new"] & ever
        assert ids["rebuilt"] <= ever - set(prev.index)
        assert ids["demolished"] <= set(prev.index) and ids["grown"] <= set(prev.index) & set(cur.index)
        for sid in set(prev.index) & set(cur.index):
            a0, a1 = prev.geometry[sid].area, cur.geometry[sid].area
            if sid in ids["grown"]:
                assert a1 > a0 * 1.1 and cur.geometry[sid].buffer(1e-6).contains(prev.geometry[sid])
            else:
                assert prev.geometry[sid].equals_exact(cur.geometry[sid], 1e-6)
            assert prev.class_name[sid] == cur.class_name[sid]
        for _, r in c[c.change == "demolished"].iterrows():
            assert r.geometry.equals_exact(prev.geometry[r.structure_id], 1e-6)
        for _, r in c[c.change.isin(["new", "rebuilt", "grown"])].iterrows():
            assert r.geometry.equals_exact(cur.geometry[r.structure_id], 1e-6)
        # the pixels changed where a structure appeared or went away
        (im0, tr), (im1, _) = imgs[e - 2], imgs[e - 1]
        for _, r in c[c.change.isin(["new", "demolished", "rebuilt"])].iterrows():
            inside = ~geometry_mask([r.geometry.buffer(-0.3)], im0.shape[1:], tr)
            diff = np.abs(im1[:, inside] - im0[:, inside]).mean()
            assert diff > 15, (e, r.structure_id, r.change, diff)
        ever |= set(cur.index)
    assert seen_kinds == {"new", "grown", "demolished", "rebuilt"}


def test_render_scene_for_training():
    rnd = Randomisation.sample(np.random.default_rng(5))
    a = render_scene(9, 48, 0.12, rnd)
    b = render_scene(9, 48, 0.12, rnd)
    n = int(round(48 / 0.12))
    assert a.rgb.shape == (n, n, 3) and a.rgb.dtype == np.uint8
    assert a.valid.shape == (n, n) and a.valid.dtype == bool
    assert np.array_equal(a.rgb, b.rgb)
    assert a.transform.a == pytest.approx(0.12) and a.crs == "EPSG:4547"
    assert len(a.truth) > 0 and set(a.truth.class_name) <= set(CLASSES)
    x0, ytop = a.transform.c, a.transform.f
    assert a.truth.total_bounds[0] >= x0 and a.truth.total_bounds[2] <= x0 + 48
    assert a.truth.total_bounds[1] >= ytop - 48 and a.truth.total_bounds[3] <= ytop
    # randomisation really varies the look
    looks = {Randomisation.sample(np.random.default_rng(i)).palette for i in range(20)}
    assert len(looks) > 1


def test_l_and_t_plan_houses_are_one_structure_with_one_footprint():
    """`Randomisation.l_houses`: a share of houses get a second wing at right angles (L or T plan).
    The wing touches the house, has its roof, and the truth holds one footprint for the two; with
    the default share (0) no house has a wing and the demo district's layout is unchanged."""
    from pipeline.synth.layout import build_layout
    for palette in ("china", "global"):
        lay = build_layout(7_000_101, 128.0, 1, Randomisation(palette=palette, l_houses=1.0), full_region=True)
        winged = [st for st in lay.structures if len(st.parts) == 2]
        assert len(winged) >= 5, palette
        for st in winged:
            house, wing = st.parts
            assert st.cls == "building" and wing.roof == house.roof
            joint = house.polygon().intersection(wing.polygon()).area               # 0.1 m into the house
            assert 0 < joint <= 0.11 * wing.width                                  # (across the wing)
            a = abs((wing.angle - house.angle) % np.pi - np.pi / 2)
            assert a < 1e-6                                                         # at right angles
            fp = st.footprint(1)
            assert fp.geom_type == "Polygon" and fp.area == pytest.approx(
                house.polygon().area + wing.polygon().area - joint, rel=1e-6)
        scene = render_scene(7_000_101, 128.0, 0.2, Randomisation(palette=palette, l_houses=1.0,
                                                                    nodata_edges=False))
        ids = {st.sid for st in scene.layout.structures if len(st.parts) == 2}
        rows = scene.truth[scene.truth.structure_id.isin(ids)]
        assert len(rows) == len(ids) and (rows.geom_type == "Polygon").all()
    plain = build_layout(7_000_101, 128.0, 1, Randomisation(), full_region=True)
    assert not any(len(st.parts) > 1 for st in plain.structures)
    # training looks draw a share of them last; without it a seed draws the look it drew before
    with_l = Randomisation.sample(np.random.default_rng(3))
    without = Randomisation.sample(np.random.default_rng(3), l_houses=None)
    assert 0.2 <= with_l.l_houses <= 0.6 and without.l_houses == 0.0
    assert with_l.with_(l_houses=0.0) == without


def test_terraced_blocks_put_houses_wall_to_wall_each_its_own_footprint():
    """`Randomisation.terraces` (`patrol dataset build --terraces`): village blocks built as rows of
    adjoining houses, each its own structure and footprint; the default (0) keeps every structure
    at least 0.6 m from the next, so the demo district and the scenes drawn before are unchanged."""
    import shapely

    from pipeline.synth.layout import build_layout

    def touching_pairs(lay):
        fps = np.array([st.footprint(1) for st in lay.structures if st.cls == "building"], dtype=object)
        tree = shapely.STRtree(fps)
        a, b = tree.query(fps, predicate="dwithin", distance=0.05)
        pairs = a < b
        overlap = shapely.area(shapely.intersection(fps[a[pairs]], fps[b[pairs]]))
        return int(pairs.sum()), float(overlap.max()) if pairs.any() else 0.0

    for palette in ("china", "global"):
        lay = build_layout(7_000_101, 128.0, 1, Randomisation(palette=palette, terraces=1.0), full_region=True)
        n, overlap = touching_pairs(lay)
        assert n >= 10 and overlap < 0.01, (palette, n, overlap)      # wall to wall, never one inside another
        plain = build_layout(7_000_101, 128.0, 1, Randomisation(palette=palette), full_region=True)
        assert touching_pairs(plain)[0] == 0
        scene = render_scene(7_000_101, 96.0, 0.2, Randomisation(palette=palette, terraces=1.0, nodata_edges=False))
        assert len(scene.truth) == len(scene.layout.structures)            # one footprint per house


def test_dataset_build_passes_the_generator_levers_on(tmp_path):
    """`patrol dataset build --terraces 1 --no-l-houses` gives the chips and labels of
    `build_dataset(terraces=1.0, l_houses=False)`, and records the share in the manifest."""
    from pipeline.cli import main
    from pipeline.model.dataset import build_dataset
    args = dict(scenes=1, val_scenes=0, seed=7_000_101, size_m=64.0, chip_px=320)
    assert main(["dataset", "build", "--out", str(tmp_path / "cli"), "--scenes", "1", "--val-scenes", "0",
                 "--seed", "7000101", "--size-m", "64", "--chip-px", "320", "--terraces", "1",
                 "--no-l-houses"]) == 0
    build_dataset(tmp_path / "api", progress=False, terraces=1.0, l_houses=False, **args)
    build_dataset(tmp_path / "default", progress=False, **args)

    def labels(name):
        return {p.name: p.read_text() for p in (tmp_path / name / "labels" / "train").glob("*.txt")}
    assert labels("cli") == labels("api") != labels("default")
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["terraces"] == 1.0


@pytest.mark.parametrize("kw", [{"size_m": 5}, {"epochs": 0}, {"gsd_m": 0}])
def test_bad_parameters_raise_one_line_error(tmp_path, kw):
    with pytest.raises(InputError) as err:
        generate_district(tmp_path, **{"seed": 1, **kw})
    assert "\n" not in str(err.value)
