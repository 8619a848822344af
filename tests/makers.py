"""Test inputs shared by several test modules: DJI-like photos, phone JPEGs, a signed-in web app,
a flickering detector.
(Shared fixtures live in conftest.py; these are plain functions.)"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from fastapi.testclient import TestClient

from pipeline.detection.detectors import TileDetector

LON, LAT = 114.02, 30.05  # the test site, near the store CRS central meridian
GOOD = "admin-pass-01"


def dms(x: float):
    """Degrees as EXIF rationals (degrees, minutes, seconds)."""
    d = int(x)
    m = int((x - d) * 60)
    s = round(((x - d) * 60 - m) * 60 * 10000)
    return ((d, 1), (m, 1), (s, 10000))


def make_photo(path: Path, lat=LAT, lon=LON, rel_alt="+100.00", yaw="+30.0", pitch="-90.0", model="FC6310R",
               focal=(88, 10), size=(400, 300), when="2026:03:14 10:20:30", gps=None, rtk=True,
               image=None, xmp_extra="") -> Path:
    import piexif
    from PIL import Image

    if image is None:
        image = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(60, 200, (size[1], size[0], 3)).astype(np.uint8)
    exif = {"0th": {piexif.ImageIFD.Make: b"DJI", piexif.ImageIFD.Model: model.encode()},
            "Exif": {piexif.ExifIFD.FocalLength: focal, piexif.ExifIFD.DateTimeOriginal: when.encode(),
                     piexif.ExifIFD.FocalLengthIn35mmFilm: 24},
            "GPS": gps if gps is not None else {
                piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: dms(lat),
                piexif.GPSIFD.GPSLongitudeRef: b"E", piexif.GPSIFD.GPSLongitude: dms(lon),
                piexif.GPSIFD.GPSAltitude: (15000, 100)}}
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90, exif=piexif.dump(exif))
    jpg = buf.getvalue()
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" '
           f'drone-dji:AbsoluteAltitude="+150.00" drone-dji:RelativeAltitude="{rel_alt}" '
           f'drone-dji:GimbalRollDegree="+0.00" drone-dji:GimbalYawDegree="{yaw}" '
           f'drone-dji:GimbalPitchDegree="{pitch}" drone-dji:FlightYawDegree="+29.9" '
           f'drone-dji:RtkFlag="{50 if rtk else 0}" {xmp_extra}/></rdf:RDF></x:xmpmeta>').encode()
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    seg = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    path.write_bytes(jpg[:2] + seg + jpg[2:])
    return path


def jpeg(lon=None, lat=None, when="2026:11:30 10:15:00", exif=True, size=(640, 480)) -> bytes:
    import piexif
    from PIL import Image
    im = Image.new("RGB", size, (120, 140, 90))
    out = io.BytesIO()
    if not exif:
        im.save(out, format="JPEG")
        return out.getvalue()
    def dms(v):
        v = abs(v)
        d, m = int(v), int((v - int(v)) * 60)
        return ((d, 1), (m, 1), (int(round(((v - d) * 60 - m) * 60 * 1000)), 1000))
    gps = {}
    if lon is not None:
        gps = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: dms(lat),
               piexif.GPSIFD.GPSLongitudeRef: b"E", piexif.GPSIFD.GPSLongitude: dms(lon)}
    im.save(out, format="JPEG", exif=piexif.dump({"0th": {piexif.ImageIFD.Make: b"DJI"},
                                                  "Exif": {piexif.ExifIFD.DateTimeOriginal: when.encode()},
                                                  "GPS": gps}))
    return out.getvalue()


def make_app(small_district_store, tmp_path, **sets):
    from pipeline.core import accounts
    from pipeline.core.config import load_settings
    from pipeline.service.app import create_app
    from pipeline.store import open_store

    src, _, _ = small_district_store
    store = tmp_path / "patrol.gpkg"
    shutil.copy(src, store)
    base = {"store.url": str(store), "service.upload_dir": str(tmp_path / "up"),
            "service.work_dir": str(tmp_path / "work"), "service.secret_file": str(tmp_path / "secret")}
    settings = load_settings(overrides={**base, **{f"service.{k}": v for k, v in sets.items()}})
    with open_store(store, settings.store.crs) as s:
        accounts.add_user(s, "adm", GOOD, "admin")
        accounts.add_user(s, "wang", "officer-pass-1", "officer", ["东山镇"])
    app = create_app(settings)
    return app, TestClient(app, follow_redirects=False)


def token(client, user="adm", password=GOOD):
    return client.post("/api/token", json={"username": user, "password": password})


class Flicker(TileDetector):
    """A detector that misses ``drop`` of a flight's structures at random and adds ``spurious``
    boxes on the ground, flight by flight (the n-th flight it finishes: the n-th entry); its
    second look (``at_confidence``) is the detector underneath, which keeps fainter boxes."""

    def __init__(self, inner: TileDetector, drop=(0.2, 0.0, 0.0), spurious=(3, 3, 3), seed=0):
        self.inner, self.drops, self.spurs, self.seed, self.n = inner, drop, spurious, seed, 0
        self.version = f"flicker({inner.version})"

    def key(self) -> str:
        return f"flicker-{self.inner.key()}-{self.n}"

    def detect_chunk(self, chunk, progress=None):
        return self.inner.detect_chunk(chunk, progress)

    def at_confidence(self, confidence, flip=False):
        return self.inner.at_confidence(confidence, flip)

    def finish(self, parts, raster_crs, store_crs, detector_settings):
        g = self.inner.finish(parts, raster_crs, store_crs, detector_settings)
        drop, spurious = self.drops[self.n], self.spurs[self.n]
        rng = np.random.default_rng([self.seed, self.n])
        self.n += 1
        g = g[rng.random(len(g)) >= drop].reset_index(drop=True)
        if spurious and len(g):
            x0, y0, x1, y1 = g.total_bounds
            xs, ys = rng.uniform(x0, x1, spurious), rng.uniform(y0, y1, spurious)
            boxes = [shapely.box(x, y, x + rng.uniform(6, 12), y + rng.uniform(6, 12)) for x, y in zip(xs, ys)]
            sp = gpd.GeoDataFrame({"class_name": ["building"] * spurious, "confidence": 0.5}, geometry=boxes,
                                  crs=g.crs)
            sp["area_m2"] = sp.area
            g = gpd.GeoDataFrame(pd.concat([g, sp], ignore_index=True), geometry="geometry", crs=g.crs)
        return g
