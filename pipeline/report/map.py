"""The offline folium map: orthophoto overlay, footprints, parcels, zones, detections by
class, cases by category coloured by status, legend, fullscreen, measure, minimap and
clustering. Every script, style sheet and icon is inlined from ``static/`` (no CDN);
the orthophoto is a PNG beside the page (relative URL). Popup text from data is
HTML-escaped in Python and the data travels as JSON inside the page, so an owner named
``<script>…`` shows as text and runs nothing.
"""
from __future__ import annotations

import base64
import html
import json
import mimetypes
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.core.errors import ConfigError, PatrolError
from pipeline.core.geo import shift_gcj02, to_wgs84_points, wgs84_to_gcj02
from pipeline.report.common import (
    CATEGORIES,
    CLASS_COLOURS,
    CLASSES,
    FIELDS,
    LAYERS,
    STATUS_COLOURS,
    ZONE_COLOURS,
    ZONE_KINDS,
    js_json,
    label,
    status_label,
    text,
    to_uint8,
)
from pipeline.report.evidence import case_chips, ortho_path, rel_url
from pipeline.report.popups import case_popup, legend_html, popup_rows

STATIC = Path(__file__).parent / "static"
VENDOR = "vendored:"

BASEMAPS: dict[str, list[dict]] = {
    "osm": [{"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "max": 19,
             "attr": "© OpenStreetMap contributors"}],
    "esri": [{"url": "https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/tile/{z}/{y}/{x}",
              "max": 19, "attr": "Esri World Imagery"}],
    "tianditu": [
        {"url": "https://t{s}.tianditu.gov.cn/img_w/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0"
                "&LAYER=img&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles&TILEMATRIX={z}&TILEROW={y}"
                "&TILECOL={x}&tk={tk}", "max": 18, "sub": "01234567", "attr": "天地图 Tianditu"},
        {"url": "https://t{s}.tianditu.gov.cn/cia_w/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0"
                "&LAYER=cia&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles&TILEMATRIX={z}&TILEROW={y}"
                "&TILECOL={x}&tk={tk}", "max": 18, "sub": "01234567", "attr": "天地图 Tianditu"}],
    "amap": [{"url": "https://webst0{s}.is.autonavi.com/appmaptile?style=6&x={x}&y={y}&z={z}",
              "max": 18, "sub": "1234", "attr": "高德 AMap"},
             {"url": "https://webst0{s}.is.autonavi.com/appmaptile?style=8&x={x}&y={y}&z={z}",
              "max": 18, "sub": "1234", "attr": "高德 AMap"}],
}


# ---------------------------------------------------------------- assets
def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or ("image/svg+xml" if path.suffix == ".svg" else "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _css(rel: str) -> str:
    path = STATIC / rel

    def sub(m: re.Match) -> str:
        ref = m.group(2)
        if ref.startswith(("data:", "#")) or "://" in ref:
            return m.group(0)
        target = (path.parent / ref).resolve()
        return f'url("{_data_uri(target)}")' if target.is_file() else m.group(0)
    css = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.S)   # comments hold URLs
    return re.sub(r"url\((['\"]?)([^'\")]+)\1\)", sub, css)


def inline_assets(page: str) -> str:
    """Replace every ``vendored:`` script/style link by the file's content (CSS images as data
    URIs). Raises PatrolError when any other external script or style sheet remains."""
    def js(m: re.Match) -> str:
        code = (STATIC / m.group(1)).read_text(encoding="utf-8").replace("</script", "<\\/script")
        return f"<script>/* {m.group(1)} */\n{code}\n</script>"

    def css(m: re.Match) -> str:
        body = _css(m.group(1)).replace("</style", "<\\/style")
        return f"<style>/* {m.group(1)} */\n{body}\n</style>"

    page = re.sub(r'<script src="vendored:([^"]+)"></script>', js, page)
    page = re.sub(r'<link rel="stylesheet" href="vendored:([^"]+)"\s*/?>', css, page)
    left = re.findall(r'<script[^>]+src="([^"]+)"|<link[^>]+href="([^"]+)"', page)
    if left:
        raise PatrolError(f"map page still links {left[0][0] or left[0][1]}; vendor it into {STATIC}")
    return page


# ---------------------------------------------------------------- geometry helpers
class _Geo:
    """Store CRS → what Leaflet draws (EPSG:4326, shifted to GCJ-02 for AMap)."""

    def __init__(self, crs: str, gcj: bool):
        self.crs, self.gcj = crs, gcj

    def geoms(self, gdf: gpd.GeoDataFrame) -> np.ndarray:
        g = gdf.geometry if gdf.crs is not None else gdf.set_crs(self.crs).geometry
        out = np.asarray(g.to_crs("EPSG:4326").values, dtype=object)
        return shift_gcj02(out) if self.gcj else out

    def lonlat(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return wgs84_to_gcj02(lon, lat) if self.gcj else (np.asarray(lon), np.asarray(lat))


def _fc(geoms: np.ndarray, props: list[dict], precision: int = 7) -> dict:
    feats = []
    for g, p in zip(geoms, props):
        if g is None or g.is_empty:
            continue
        gj = json.loads(shapely.to_geojson(shapely.set_precision(g, 10 ** -precision)))
        feats.append({"type": "Feature", "properties": p, "geometry": gj})
    return {"type": "FeatureCollection", "features": feats}


# ---------------------------------------------------------------- ortho overlay
def ortho_overlay(path: Path, out_png: Path, gsd_m: float) -> list[list[float]]:
    """Warp the orthophoto to EPSG:4326 at about ``gsd_m`` into a palette PNG with the
    valid-data mask as transparency. Returns Leaflet bounds [[south, west], [north, east]].
    Cached beside the PNG (``.json``) while the ortho is unchanged."""
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds

    meta = out_png.with_suffix(".json")
    stamp = {"src": str(Path(path).resolve()), "mtime": Path(path).stat().st_mtime, "gsd_m": gsd_m}
    if out_png.is_file() and meta.is_file():
        cached = json.loads(meta.read_text())
        if cached.get("stamp") == stamp:
            return cached["bounds"]
    with rasterio.open(path) as src:
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        lat0 = (s + n) / 2
        res = (gsd_m / (111320.0 * np.cos(np.radians(lat0))), gsd_m / 110540.0)
        # read decimated (overviews) at about the target GSD first
        px_m = abs(src.res[0]) * (111320.0 if src.crs.is_geographic else 1.0)
        f = max(1.0, gsd_m / px_m)
        h, wd = max(1, int(src.height / f)), max(1, int(src.width / f))
        count = min(src.count, 3)
        data = src.read(list(range(1, count + 1)), out_shape=(count, h, wd), resampling=Resampling.average)
        mask = src.dataset_mask(out_shape=(h, wd), resampling=Resampling.nearest)
        if count == 1:
            data = np.repeat(data, 3, axis=0)
        data = to_uint8(data)
        t = src.transform @ Affine.scale(src.width / wd, src.height / h)
        dst_t, dw, dh = calculate_default_transform(src.crs, "EPSG:4326", wd, h, *src.bounds, resolution=res)
        out = np.zeros((4, dh, dw), dtype=np.uint8)
        for b in range(3):
            reproject(data[b], out[b], src_transform=t, src_crs=src.crs, dst_transform=dst_t,
                      dst_crs="EPSG:4326", resampling=Resampling.bilinear)
        reproject(mask, out[3], src_transform=t, src_crs=src.crs, dst_transform=dst_t,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest)
    out[3] = np.where(out[3] > 0, 255, 0)
    img = Image.fromarray(np.moveaxis(out, 0, -1), "RGBA").quantize(256, method=Image.Quantize.FASTOCTREE)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    img.save(out_png, optimize=True)
    west, north = dst_t.c, dst_t.f
    east, south = west + dst_t.a * dw, north + dst_t.e * dh
    bounds = [[south, west], [north, east]]
    meta.write_text(json.dumps({"stamp": stamp, "bounds": bounds}))
    return bounds


# ---------------------------------------------------------------- folium elements
def _elements():
    """folium/branca element classes (imported lazily)."""
    from branca.element import MacroElement
    from folium.elements import JSCSSMixin
    from folium.template import Template

    class DataLayer(MacroElement):
        """GeoJSON with pre-escaped popup/tooltip HTML in properties _p/_t and style in _s."""
        _template = Template("""
        {% macro script(this, kwargs) %}
        (function () {
          var layer = L.geoJSON({{ this.data }}, {
            style: function (f) { return f.properties._s; },
            interactive: {{ 'true' if this.interactive else 'false' }},
            onEachFeature: function (f, l) {
              if (f.properties._p) { l.bindPopup(f.properties._p, {maxWidth: 460, minWidth: 260}); }
              if (f.properties._t) { l.bindTooltip(f.properties._t, {sticky: true}); }
            }
          });
          layer.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}""")

        def __init__(self, data: dict, interactive: bool = True):
            super().__init__()
            self._name = "DataLayer"
            self.data = js_json(data)
            self.interactive = interactive

    class CaseLayer(JSCSSMixin, MacroElement):
        """Case polygons plus a centroid marker each (clustered when ``cluster``)."""
        default_js = [("markercluster_js", VENDOR + "markercluster/leaflet.markercluster.js")]
        default_css = [("markercluster_css", VENDOR + "markercluster/MarkerCluster.css"),
                       ("markercluster_default_css", VENDOR + "markercluster/MarkerCluster.Default.css")]
        _template = Template("""
        {% macro script(this, kwargs) %}
        (function () {
          var P = window.patrolReport = window.patrolReport || {cases: {}};
          var parent = {{ this._parent.get_name() }};
          var markers = {{ 'L.markerClusterGroup({maxClusterRadius: 40})' if this.cluster else 'L.featureGroup()' }};
          L.geoJSON({{ this.data }}, {
            style: function (f) { return f.properties._s; },
            onEachFeature: function (f, poly) {
              var opts = {maxWidth: 460, minWidth: 280};
              poly.bindPopup(f.properties._p, opts);
              var m = L.circleMarker([f.properties._lat, f.properties._lon], {
                radius: 7, color: '#000', weight: 1, fillColor: f.properties._s.color, fillOpacity: 0.95,
                className: 'patrol-case-marker'});
              m.bindPopup(f.properties._p, opts);
              m.bindTooltip(f.properties._t);
              markers.addLayer(m);
              P.cases[f.properties._id] = {polygon: poly, marker: m, group: markers, parent: parent};
            }
          }).addTo(parent);
          markers.addTo(parent);
        })();
        {% endmacro %}""")

        def __init__(self, data: dict, cluster: bool):
            super().__init__()
            self._name = "CaseLayer"
            self.data = js_json(data)
            self.cluster = cluster

    class ImageLayer(MacroElement):
        _template = Template("""
        {% macro script(this, kwargs) %}
          L.imageOverlay({{ this.url }}, {{ this.bounds }}, {opacity: 1, interactive: false, className: 'patrol-ortho'})
            .addTo({{ this._parent.get_name() }});
        {% endmacro %}""")

        def __init__(self, url: str, bounds):
            super().__init__()
            self._name = "ImageLayer"
            self.url = js_json(url)
            self.bounds = js_json(bounds)

    class Controls(JSCSSMixin, MacroElement):
        """Fullscreen, measure, scale, minimap, legend, title, open-case API and #case= links."""
        default_js = [("fullscreen_js", VENDOR + "fullscreen/Control.FullScreen.js"),
                      ("measure_js", VENDOR + "measure/leaflet-measure.min.js"),
                      ("minimap_js", VENDOR + "minimap/Control.MiniMap.min.js")]
        default_css = [("fullscreen_css", VENDOR + "fullscreen/Control.FullScreen.css"),
                       ("measure_css", VENDOR + "measure/leaflet-measure.css"),
                       ("minimap_css", VENDOR + "minimap/Control.MiniMap.min.css")]
        _template = Template("""
        {% macro header(this, kwargs) %}
        <style>
          .patrol-legend { position: fixed; bottom: 24px; left: 10px; z-index: 650; background: rgba(255,255,255,.92);
            padding: 6px 9px; border-radius: 4px; box-shadow: 0 1px 5px rgba(0,0,0,.4); font: 12px/1.35 sans-serif;
            max-height: 60vh; overflow: auto; }
          .patrol-legend b { display: block; margin-top: 3px; }
          .patrol-legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -2px;
            border: 1px solid #555; }
          .patrol-title { position: fixed; top: 10px; left: 50%; transform: translateX(-50%); z-index: 650;
            background: rgba(255,255,255,.92); padding: 4px 12px; border-radius: 4px; font: bold 14px sans-serif;
            box-shadow: 0 1px 5px rgba(0,0,0,.4); }
          .patrol-popup table { border-collapse: collapse; font-size: 12px; }
          .patrol-popup th { text-align: left; color: #555; font-weight: normal; padding: 1px 6px 1px 0; white-space: nowrap; vertical-align: top; }
          .patrol-popup td { padding: 1px 0; }
          .patrol-popup .chips { display: flex; gap: 4px; margin-top: 4px; }
          .patrol-popup .chips figure { margin: 0; font-size: 11px; text-align: center; }
          .patrol-popup .chips img { width: 140px; height: 140px; object-fit: contain; border: 1px solid #999; }
          .patrol-popup ul { margin: 2px 0; padding-left: 16px; }
          .patrol-legend .legend-toggle { display: none; font: inherit; padding: 4px 10px; }
          @media (max-width: 600px) {
            .leaflet-control-minimap, .leaflet-control-minimap-toggle-display { display: none !important; }
            .patrol-title { font-size: 12px; max-width: 46vw; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
            .patrol-legend { bottom: 30px; max-height: 45vh; }
            .patrol-legend .legend-toggle { display: block; }
            .patrol-legend.folded > :not(.legend-toggle) { display: none; }
            .patrol-popup .chips img { width: 110px; height: 110px; }
          }
        </style>
        {% endmacro %}
        {% macro html(this, kwargs) %}
        <div class="patrol-title">{{ this.title }}</div>
        <div class="patrol-legend" id="patrol-legend"><button type="button" class="legend-toggle">{{ this.t_legend }}</button>{{ this.legend }}</div>
        {% endmacro %}
        {% macro script(this, kwargs) %}
        (function () {
          var map = {{ this._parent.get_name() }};
          var P = window.patrolReport = window.patrolReport || {cases: {}};
          P.map = map;
          L.control.fullscreen({position: 'topleft', title: {{ this.t_full }}, titleCancel: {{ this.t_exit }}}).addTo(map);
          L.Control.Measure.include({
            _setCaptureMarkerIcon: function () {
              this._captureMarker.options.autoPanOnFocus = false;
              this._captureMarker.setIcon(L.divIcon({iconSize: this._map.getSize().multiplyBy(2)}));
            }
          });
          new L.Control.Measure({position: 'topleft', primaryLengthUnit: 'meters', secondaryLengthUnit: 'kilometers',
            primaryAreaUnit: 'sqmeters', secondaryAreaUnit: 'hectares'}).addTo(map);
          L.control.scale({imperial: false}).addTo(map);
          var mm = {{ this.minimap }};
          var mmLayers = [];
          mm.tiles.forEach(function (t) { mmLayers.push(L.tileLayer(t.url, t.opts)); });
          if (mm.image) { mmLayers.push(L.imageOverlay(mm.image.url, mm.image.bounds)); }
          if (mm.outline) { mmLayers.push(L.geoJSON(mm.outline, {style: {color: '#ffd700', weight: 1, fill: false}})); }
          if (mmLayers.length) {
            new L.Control.MiniMap(L.layerGroup(mmLayers), {toggleDisplay: true, position: 'bottomright',
              zoomLevelOffset: -4, width: 160, height: 160}).addTo(map);
          }
          P.openCase = function (id) {
            if (!Object.prototype.hasOwnProperty.call(P.cases, id)) { return false; }
            var c = P.cases[id];
            if (!map.hasLayer(c.parent)) { map.addLayer(c.parent); }
            if (c.group.zoomToShowLayer) {
              c.group.zoomToShowLayer(c.marker, function () { c.marker.openPopup(); });
            } else {
              map.fitBounds(c.polygon.getBounds(), {maxZoom: 20});
              c.marker.openPopup();
            }
            return true;
          };
          var m = /[#&]case=([^&]+)/.exec(window.location.hash);
          if (m) { setTimeout(function () { P.openCase(decodeURIComponent(m[1])); }, 0); }
          // on a phone: the layer list and the legend fold away until tapped, so no control covers a popup
          setTimeout(function () {
            if (window.innerWidth > 600) { return; }
            var lc = document.querySelector('.leaflet-control-layers');
            if (lc) {
              lc.classList.remove('leaflet-control-layers-expanded');
              var t = lc.querySelector('.leaflet-control-layers-toggle');
              if (t) { L.DomEvent.on(t, 'click', function (e) { L.DomEvent.stop(e); lc.classList.toggle('leaflet-control-layers-expanded'); }); }
            }
            var lg = document.getElementById('patrol-legend');
            if (lg) {
              lg.classList.add('folded');
              L.DomEvent.on(lg.querySelector('.legend-toggle'), 'click', function () { lg.classList.toggle('folded'); });
            }
            map.on('click popupopen', function () {
              if (lc) { lc.classList.remove('leaflet-control-layers-expanded'); }
              if (lg) { lg.classList.add('folded'); }
            });
          }, 0);
          P.ready = true;
        })();
        {% endmacro %}""")

        def __init__(self, title: str, legend_html: str, minimap: dict, lang: str):
            super().__init__()
            self._name = "PatrolControls"
            self.title = html.escape(title)
            self.legend = legend_html
            self.minimap = js_json(minimap)
            self.t_full = js_json("全屏" if lang == "zh" else "Full screen")
            self.t_exit = js_json("退出全屏" if lang == "zh" else "Exit full screen")
            self.t_legend = "图例" if lang == "zh" else "Legend"

    return DataLayer, CaseLayer, ImageLayer, Controls


# ---------------------------------------------------------------- the map
def build_map(store, settings, out_html: Path, *, flight_id: str | None = None, cases: gpd.GeoDataFrame | None = None,
              evidence: pd.DataFrame | None = None, rules=None, ortho_dir: Path | None = None,
              sheets: dict[str, Path] | None = None, sees=None) -> Path:
    """Write the map of one flight (``flight_id``) or of the district to ``out_html``.

    ``sees(town, village) -> bool`` limits the flights (their orthophotos) to those over the
    officer's land or cases, and the parcel layer (owners are personal data) to an
    officer's area; ``cases`` are expected scoped already.
    """
    import folium

    rep = settings.report
    lang = rep.language
    out_html = Path(out_html)
    out_dir = out_html.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    ortho_dir = Path(ortho_dir or out_dir / "ortho")
    if rep.basemap == "tianditu" and not rep.tianditu_token:
        raise ConfigError("report.basemap is tianditu but report.tianditu_token is empty; set the 天地图 "
                          "token (PATROL__REPORT__TIANDITU_TOKEN) or choose another basemap")
    geo = _Geo(store.crs, rep.basemap == "amap")

    flights = store.list_flights()
    if flight_id is not None:
        flights = flights[flights["flight_id"] == flight_id]
        if not len(flights):
            raise PatrolError(f"flight {flight_id} is not in {store.url}; see `patrol flights list`")
    flights = flights.sort_values("captured_at")
    if sees is not None:             # an officer: only the flights over their own towns' land or cases
        mine = store.parcels()
        mine = mine[[bool(sees(t, v)) for t, v in zip(mine["town"], mine["village"])]]
        area = shapely.union_all([*mine.geometry.values, *(cases.geometry.values if cases is not None else [])])
        flights = flights[np.array([g is not None and bool(g.intersects(area)) for g in flights.geometry], dtype=bool)]
    fp = flights.geometry.dropna()
    extent = shapely.union_all(fp.values) if len(fp) else None
    if cases is None:
        cases = store.cases(tuple(extent.bounds) if extent is not None else None)
        if extent is not None and len(cases):
            cases = cases[cases.intersects(extent)]
    if extent is None or extent.is_empty:
        src = cases if len(cases) else store.parcels()
        if not len(src):
            raise PatrolError(f"nothing to map in {store.url}: no flights, cases or parcels; "
                              f"run `patrol demo` or process a flight first")
        extent = shapely.box(*src.total_bounds)
    bbox = tuple(extent.bounds)

    m = folium.Map(tiles=None, control_scale=False, prefer_canvas=False, max_zoom=22, zoom_start=17,
                   location=[0, 0])
    m.default_js = [("leaflet", VENDOR + "leaflet/leaflet.js")]
    m.default_css = [("leaflet_css", VENDOR + "leaflet/leaflet.css")]
    DataLayer, CaseLayer, ImageLayer, Controls = _elements()
    from branca.element import MacroElement
    from folium.template import Template

    zoom = MacroElement()
    zoom._template = Template("{% macro script(this, kwargs) %}"
                              "{{ this._parent.get_name() }}.options.maxZoom = 22;"
                              "{{ this._parent.get_name() }}.options.minZoom = 3;{% endmacro %}")
    zoom.add_to(m)

    tiles = []
    if rep.basemap != "none":
        for i, b in enumerate(BASEMAPS[rep.basemap]):
            url = b["url"].replace("{tk}", rep.tianditu_token)
            opts = {"maxNativeZoom": b["max"], "maxZoom": 22, "attribution": b["attr"]}
            if "sub" in b:
                opts["subdomains"] = b["sub"]
            folium.TileLayer(url, attr=b["attr"], name=f"{label(LAYERS, 'basemap', lang)} {i + 1}",
                             overlay=i > 0, control=True, max_zoom=22, max_native_zoom=b["max"],
                             subdomains=b.get("sub", "abc")).add_to(m)
            if i == 0:
                tiles.append({"url": url, "opts": opts})

    # orthophotos: every flight in scope, the latest shown
    ortho_fg = []
    minimap = {"tiles": tiles, "image": None, "outline": None}
    for k, (_, fl) in enumerate(flights.iterrows()):
        path = ortho_path(fl.to_dict(), getattr(store, "url", None))
        if path is None:
            continue
        png = ortho_dir / f"{fl['flight_id']}.png"
        bounds = ortho_overlay(path, png, rep.ortho_gsd_m)
        if geo.gcj:
            (s, w), (n, e) = bounds
            dx, dy = wgs84_to_gcj02((w + e) / 2, (s + n) / 2)
            ox, oy = float(dx) - (w + e) / 2, float(dy) - (s + n) / 2
            bounds = [[s + oy, w + ox], [n + oy, e + ox]]
        last = k == len(flights) - 1
        name = f"{label(LAYERS, 'ortho', lang)} {text(fl['captured_at'])[:10]}"
        fg = folium.FeatureGroup(name=html.escape(name), show=last).add_to(m)
        url = rel_url(png, out_dir)
        ImageLayer(url, bounds).add_to(fg)
        ortho_fg.append(fg)
        if last:
            minimap["image"] = {"url": url, "bounds": bounds}

    # flight footprints
    if len(flights):
        props = [{"_s": {"color": "#ffd700", "weight": 2, "fill": False, "dashArray": "6 4"},
                  "_t": html.escape(f"{label(FIELDS, 'flight', lang)} {f} · {text(t)}")}
                 for f, t in zip(flights["flight_id"], flights["captured_at"])]
        fc = _fc(geo.geoms(flights[flights.geometry.notna()]), props)
        minimap["outline"] = fc
        fg = folium.FeatureGroup(name=html.escape(label(LAYERS, "footprint", lang))).add_to(m)
        DataLayer(fc, interactive=True).add_to(fg)

    # zones
    zones = store.zones(bbox)
    if len(zones):
        props = []
        for z in zones.to_dict("records"):
            pairs = [(label(FIELDS, "category", lang), label(ZONE_KINDS, z.get("kind"), lang)),
                     ("name", text(z.get("name"))), ("code", text(z.get("code"))), ("id", text(z.get("zone_id")))]
            colour = ZONE_COLOURS.get(text(z.get("kind")), "#cccccc")
            props.append({"_s": {"color": colour, "weight": 1, "fillColor": colour, "fillOpacity": 0.25},
                          "_p": f'<div class="patrol-popup"><table>{popup_rows(pairs)}</table></div>'})
        fg = folium.FeatureGroup(name=html.escape(label(LAYERS, "zones", lang)), show=False).add_to(m)
        DataLayer(_fc(geo.geoms(zones), props)).add_to(fg)

    # parcels
    parcels = store.parcels(bbox)
    if sees is not None and len(parcels):
        parcels = parcels[[bool(sees(t, v)) for t, v in zip(parcels["town"], parcels["village"])]]
    if len(parcels):
        props = []
        for p in parcels.to_dict("records"):
            pairs = [(label(FIELDS, "parcel_id", lang), text(p.get("parcel_id"))),
                     (label(FIELDS, "owner", lang), text(p.get("owner"))),
                     (label(FIELDS, "village", lang), f"{text(p.get('town'))} {text(p.get('village'))}".strip()),
                     (label(FIELDS, "land_use", lang), text(p.get("land_use"))),
                     (label(FIELDS, "approved_area_m2", lang), text(p.get("approved_area_m2")))]
            props.append({"_s": {"color": "#00e5ff", "weight": 1, "fill": True, "fillOpacity": 0.02},
                          "_p": f'<div class="patrol-popup"><table>{popup_rows(pairs)}</table></div>'})
        fg = folium.FeatureGroup(name=html.escape(label(LAYERS, "parcels", lang)), show=True).add_to(m)
        DataLayer(_fc(geo.geoms(parcels), props)).add_to(fg)

    # detections of the flight (district: the latest flight), one layer per class
    det_classes: list[str] = []
    if len(flights):
        dets = store.detections(flights["flight_id"].iloc[-1])
        if len(dets):
            for cls, grp in dets.groupby("class_name", sort=True):
                colour = CLASS_COLOURS.get(cls, "#888888")
                det_classes.append(cls)
                props = [{"_s": {"color": colour, "weight": 1.5, "fill": False},
                          "_t": html.escape(f"{label(CLASSES, cls, lang)} {conf:.2f} · {area:.1f} m²")}
                         for conf, area in zip(grp["confidence"].fillna(0), grp["area_m2"].fillna(0))]
                name = f"{label(LAYERS, 'detections', lang)}: {label(CLASSES, cls, lang)}"
                fg = folium.FeatureGroup(name=html.escape(name), show=flight_id is not None).add_to(m)
                DataLayer(_fc(geo.geoms(grp), props)).add_to(fg)

    # cases by category, coloured by status
    statuses: list[str] = []
    if len(cases):
        lonlat = to_wgs84_points(cases, store.crs)
        glon, glat = geo.lonlat(lonlat[:, 0], lonlat[:, 1])
        shown = geo.geoms(cases)
        cluster = len(cases) >= rep.cluster_min_cases
        for cat in list(CATEGORIES) + sorted(set(cases["category"].dropna()) - set(CATEGORIES)):
            sel = np.flatnonzero((cases["category"] == cat).to_numpy())
            if not len(sel):
                continue
            props = []
            for i in sel:
                c = cases.iloc[i].to_dict()
                st = text(c.get("status"))
                if st not in statuses:
                    statuses.append(st)
                chips = [{"url": rel_url(r["chip_path"], out_dir), "role": label(FIELDS, r["role"], lang),
                          "date": text(r.get("captured_at"))[:10]}
                         for r in case_chips(evidence, c["case_no"])]
                sheet = sheets.get(c["case_no"]) if sheets else None
                colour = STATUS_COLOURS.get(st, "#888888")
                props.append({
                    "_id": c["case_no"], "_lon": round(float(glon[i]), 7), "_lat": round(float(glat[i]), 7),
                    "_s": {"color": colour, "weight": 2.5, "fillColor": colour, "fillOpacity": 0.3},
                    "_t": html.escape(f"{c['case_no']} · {status_label(st, lang, rules)}"),
                    "_p": case_popup(c, lang, rules, chips, tuple(lonlat[i]), store.crs,
                                     rel_url(sheet, out_dir) if sheet else None)})
            name = f"{label(LAYERS, 'cases', lang)}: {label(CATEGORIES, cat, lang)} ({len(sel)})"
            fg = folium.FeatureGroup(name=html.escape(name), show=True).add_to(m)
            CaseLayer(_fc(shown[sel], props), cluster).add_to(fg)
    order = list(STATUS_COLOURS)
    statuses.sort(key=lambda s: order.index(s) if s in order else len(order))

    zone_kinds = sorted(set(zones["kind"].dropna())) if len(zones) else []
    title_key = "flight_map" if flight_id else "district_map"
    title = f"{settings.district.name} · {label(LAYERS, title_key, lang)}"
    if flight_id is not None and len(flights):
        title += f" · {text(flights['captured_at'].iloc[-1])[:10]}"
    Controls(title, legend_html(lang, rules, statuses or ["suspected"], det_classes, zone_kinds), minimap,
             lang).add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)

    wb = gpd.GeoSeries([shapely.box(*bbox)], crs=store.crs).to_crs("EPSG:4326").total_bounds
    lons, lats = geo.lonlat(np.array([wb[0], wb[2]]), np.array([wb[1], wb[3]]))
    m.fit_bounds([[float(lats[0]), float(lons[0])], [float(lats[1]), float(lons[1])]])

    page = m.get_root().render()
    page = page.replace("<head>", f'<head>\n<title>{html.escape(title)}</title>', 1)
    out_html.write_text(inline_assets(page), encoding="utf-8")
    return out_html
