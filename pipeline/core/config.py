"""Typed settings: config/default.yaml, overridden by environment variables and CLI flags.

Precedence (last wins): the YAML file (``--config`` or ``PATROL_CONFIG``), environment
variables ``PATROL__SECTION__KEY=value`` (``PATROL_STORE`` for the store location),
then CLI overrides (``--store``, ``--set section.key=value``). Relative paths of files
the project ships (model, rules) resolve against the config file's folder; the store
location resolves against the working directory.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from pipeline.core.census import Census, load_census
from pipeline.core.errors import ConfigError
from pipeline.core.rules import Rules, load_rules

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(Section):
    url: str = Field("data/patrol.gpkg", description="embedded store file, or postgresql://… URL")
    crs: str = Field("EPSG:4547", description="projected store CRS in metres")


class DistrictSettings(Section):
    name: str = Field("示范区", description="district name shown on reports")
    case_prefix: str = Field("LW", description="case number prefix: LW2026-000123")


class ProcessingSettings(Section):
    gsd_m: float = Field(0.10, gt=0, le=2, description="ground sample distance the detector sees")
    tile_px: int = Field(640, ge=64, le=4096, description="tile edge in pixels at the processing GSD")
    overlap_px: int = Field(96, ge=0, description="overlap between neighbouring tiles in pixels")
    batch_size: int = Field(8, ge=1, le=256, description="tiles per inference batch")
    stretch_percentiles: tuple[float, float] = Field(
        (2.0, 98.0), description="percentile stretch of uint16 imagery to uint8")

    @field_validator("overlap_px")
    @classmethod
    def _overlap_below_tile(cls, v: int, info) -> int:
        tile = info.data.get("tile_px", 640)
        if v >= tile // 2:
            raise ValueError(f"must be less than half of tile_px ({tile})")
        return v


class DetectorSettings(Section):
    model: Path = Field(Path("../models/lianwei-yolo11n.onnx"), description="weights (.pt or .onnx)")
    confidence: float = Field(0.4, ge=0, le=1, description="minimum detection confidence")
    nms_iou: float = Field(0.5, gt=0, le=1, description="IoU of the model's own non-max suppression")
    merge_iou: float = Field(0.3, gt=0, le=1, description="overlap (IoU or containment) that merges seam duplicates")
    nested_share: float = Field(0.8, gt=0, le=1, description="drop a box lying at least this share inside a bigger one")
    runtime: Literal["auto", "fp32", "int8", "openvino"] = Field(
        "auto", description="auto: whichever of fp32 and openvino runs the model faster on this CPU, measured "
                            "once per machine and model (the same boxes); openvino: the model run by OpenVINO's "
                            "CPU plugin; fp32: by onnxruntime; int8: its statically quantised copy "
                            "(scripts/quantize_int8.py)")
    threads: int = Field(0, ge=0, le=256, description="inference threads per process; 0: every core or every "
                                                     "core less one, whichever is measured faster (shared "
                                                     "out among the Dask workers of a machine)")
    tta: bool = Field(False, description="test-time flips: every tile also read mirrored and the two views "
                                         "fused (twice the inference; a nightly accuracy mode, model card)")
    classes: list[str] = Field(
        ["building", "steel_shed", "under_construction", "greenhouse"],
        description="class names in the model's index order")
    gsd_range_m: tuple[float, float] = Field(
        (0.02, 0.16), description="native ground pixel (m) of the imagery the model was trained and checked on "
                                  "(its model card); a flight outside it is refused unless forced")

    @field_validator("gsd_range_m")
    @classmethod
    def _ordered_gsd_range(cls, v):
        lo, hi = v
        if not 0 < lo < hi <= 10:
            raise ValueError(f"{lo}–{hi} must be two increasing ground pixels in metres (0–10)")
        return v


class TrackingSettings(Section):
    match_iou: float = Field(0.2, ge=0, le=1, description="IoU that ties a finding to an open case")
    centroid_m: float = Field(5.0, ge=0, description="centroid distance that ties a finding to a case")
    regrowth_ratio: float = Field(0.3, ge=0, description="growth that re-raises a dismissed case")


class ChangeCheckSettings(Section):
    coregister: bool = Field(True, description="line a new flight up on the earlier flight it overlaps "
                                               "before its cases are matched (pipeline.cases.change)")
    coregister_gsd_m: float = Field(0.5, gt=0, le=5, description="ground pixel of the co-registration images")
    min_overlap_m2: float = Field(2500.0, ge=0, description="smallest overlap (less max_shift_m on every side) "
                                                            "that is co-registered; less: no shift applied")
    max_shift_m: float = Field(15.0, gt=0, le=100, description="a larger estimated shift is refused")
    agree_m: float = Field(1.0, gt=0, description="blocks whose shift differs more from the median are outliers")
    min_peak: float = Field(8.0, ge=0, description="weakest phase-correlation peak (z-score) a block may give")
    confirm: bool = Field(True, description="look at the other flight's image before a change flag is raised")
    recheck_confidence: float = Field(0.15, ge=0, le=1, description="detector confidence of the re-examination")
    present_share: float = Field(0.5, gt=0, le=1, description="a re-detection covering this share of the outline "
                                                              "means the structure was there")
    sure_confidence: float = Field(0.7, ge=0, le=1, description="a new candidate detected this surely needs no "
                                                               "second look at its own image")
    min_appearance: float = Field(0.2, ge=0, le=1, description="a 新增 needs the place to look at least this "
                                                              "different between the images (when both are there)")
    strong_appearance: float = Field(0.5, ge=0, le=1, description="a place that looks this different is new even "
                                                                 "if a box fainter than detector.confidence is there before")
    chip_gsd_m: float = Field(0.2, gt=0, le=2, description="ground pixel of the before/after comparison chips")


class ReportSettings(Section):
    language: Literal["zh", "en"] = Field("zh", description="labels on maps and lists")
    basemap: Literal["none", "osm", "esri", "tianditu", "amap"] = Field("none", description="web basemap")
    tianditu_token: str = Field("", description="天地图 token (tk) for the tianditu basemap")
    ortho_gsd_m: float = Field(0.25, gt=0, description="GSD of the orthophoto layer drawn on the map")
    cluster_min_cases: int = Field(50, ge=1, description="cluster case markers on the map from this many cases")
    chip_margin_m: float = Field(8.0, ge=0, description="margin around a case in its evidence chips (m)")
    campaign_start: date | None = Field(None, description="first day of the campaign: statistics count 累计 "
                                                           "from it (empty: from the first record)")


#: every column the 台账 can carry (pipeline/report/ledger.py fills them)
LEDGER_FIELDS = (
    "seq", "case_no", "town", "village", "village_code", "coords", "lon", "lat", "x", "y", "land_class",
    "area_m2", "area_mu", "floor_area_m2", "floors", "category", "detector_class", "stock", "party", "phone",
    "source", "first_seen_at", "last_seen_at", "status", "progress", "doc_nos", "order_no", "order_date",
    "deadline", "overdue_days", "unit", "assignee", "demolished_area_m2", "recheck_date", "closed_date",
    "parcel_id", "owner", "basic_farmland_m2", "redline_m2", "farmland_m2", "rules", "reasons", "flags",
    "confidence", "change_confidence", "image_before", "image_after", "site_photo", "remark", "id_number",
    "address", "height_m", "floors_est")
#: the columns of DOMAIN.md's 两违台账, in its order (with the DSM's height and storeys beside 层数)
DEFAULT_LEDGER_COLUMNS = [
    "seq", "case_no", "town", "village", "coords", "land_class", "area_m2", "area_mu", "floor_area_m2", "floors",
    "height_m", "floors_est", "category", "party", "phone", "source", "first_seen_at", "status", "progress", "doc_nos", "deadline",
    "overdue_days", "unit", "assignee", "demolished_area_m2", "image_before", "image_after", "site_photo", "remark"]


class LedgerSettings(Section):
    columns: list[str | dict[str, str]] = Field(
        default_factory=lambda: list[str | dict[str, str]](DEFAULT_LEDGER_COLUMNS),
        description="columns of the case list (台账, xlsx/csv) in order: a field id, or {field: header}")

    @field_validator("columns")
    @classmethod
    def _known(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one column")
        for item in v:
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError(f"{item}: give one field and its header, e.g. {{party: 当事人}}")
            field = next(iter(item)) if isinstance(item, dict) else item
            if field not in LEDGER_FIELDS:
                raise ValueError(f"'{field}' is not a ledger field; fields: {', '.join(LEDGER_FIELDS)}")
        return v


DOCUMENT_WORDS = {"sheet": "巡证", "inspection": "勘验", "stop_notice": "责停", "demolition_notice": "限拆",
                  "recheck": "复查"}


class DocumentSettings(Section):
    template_dir: Path = Field(Path("documents"), description="folder of the document templates (base.html and one "
                                                              "per kind; relative: to the config file)")
    authority: str = Field("示范区住房和城乡建设局", description="the issuing authority printed on every document")
    number_format: str = Field("{word}〔{year}〕第{seq:03d}号", description="document number: {word} the kind's "
                                                                          "word, {year}, {seq} its number that year")
    words: dict[str, str] = Field(default_factory=lambda: dict(DOCUMENT_WORDS),
                                  description="the word of each document kind in its number")

    @field_validator("number_format")
    @classmethod
    def _number_format(cls, v: str) -> str:
        try:
            v.format(word="责停", year=2026, seq=18)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"cannot be filled with {{word}}, {{year}}, {{seq}} ({e})") from None
        if "{seq" not in v:
            raise ValueError("must contain {seq}")
        return v

    @field_validator("words")
    @classmethod
    def _words(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(DOCUMENT_WORDS))
        if unknown:
            raise ValueError(f"'{unknown[0]}' is not a document kind; kinds: {', '.join(DOCUMENT_WORDS)}")
        return {**DOCUMENT_WORDS, **v}


class MediaSettings(Section):
    dir: Path = Field(Path("data/media"), description="on-site photos and videos (relative: to the working folder)")
    max_mb: int = Field(50, ge=1, le=2048, description="largest photo or video accepted (MiB)")
    max_megapixels: float = Field(64.0, gt=0, le=1000, description="largest photo accepted (megapixels, read from "
                                                                  "its header before it is decoded)")
    max_distance_m: float = Field(100.0, gt=0, description="a photo taken farther than this from its case is "
                                                            "flagged")


class DispatchSettings(Section):
    webhook_url: str = Field("", description="chat robot URL the daily digest is posted to (empty: not sent)")
    webhook_format: Literal["wecom", "dingtalk", "json"] = Field("wecom", description="message format of the robot")
    due_soon_days: int = Field(3, ge=0, le=60, description="the digest lists cases due within this many days")
    new_within_hours: float = Field(24.0, gt=0, description="the digest lists suspected cases found this recently")
    timeout_s: float = Field(10.0, gt=0, le=120, description="the most sending the digest may take, every try "
                                                             "together (a slow or dripping answer is cut)")
    allowed_hosts: list[str] = Field(["qyapi.weixin.qq.com", "oapi.dingtalk.com"],
                                     description="hosts the webhook may post to (http or https only, no redirect); "
                                                 "add an intranet robot's host")


class ModelsSettings(Section):
    dir: Path = Field(Path("data/models"), description="the model registry's weights and its frozen evaluation set "
                                                       "(relative: to the working folder)")
    promote_margin: float = Field(0.02, ge=0, le=1, description="promote refuses a candidate whose recall or precision "
                                                                "is lower than the active model's by more than this "
                                                                "on any part of the evaluation set")
    eval_flights: list[str] = Field([], description="reviewed flights held out of every training set (empty: the "
                                                    "first `dataset from-reviews` picks them and freezes them)")
    eval_generated: list[int] = Field([901], description="seeds of the generated districts in the evaluation set")
    eval_generated_size_m: float = Field(160.0, ge=40, le=1000, description="edge of each generated district (m)")
    eval_suite: Path | None = Field(None, description="a folder of labelled real areas (`patrol evaluate --suite`): "
                                                       "its evaluation crops join the evaluation set")
    chip_px: int = Field(320, ge=128, le=1280, description="chip edge of training data from reviews (px at "
                                                           "processing.gsd_m)")
    fine_tune_epochs: int = Field(5, ge=1, le=300, description="epochs of `patrol train --from-reviews`")
    fine_tune_lr: float = Field(0.002, gt=0, le=0.1, description="learning rate of fine-tuning (SGD)")


class ServiceSettings(Section):
    host: str = Field("127.0.0.1", description="address `patrol serve` listens on")
    port: int = Field(8080, ge=1, le=65535, description="port `patrol serve` listens on")
    upload_dir: Path = Field(Path("data/uploads"), description="uploaded flights (relative: to the working folder)")
    work_dir: Path = Field(Path("data/service"), description="maps, chips and downloads the service builds")
    max_upload_mb: int = Field(20480, ge=1, description="largest upload accepted (MiB)")
    chunk_mb: int = Field(16, ge=1, le=1024, description="largest chunk of a resumable upload (MiB)")
    secret_file: Path = Field(Path("data/service.secret"),
                              description="key that signs sessions and API tokens (created on first start)")
    session_hours: float = Field(12.0, gt=0, description="a login session lasts this long")
    token_hours: float = Field(720.0, gt=0, description="an API bearer token lasts this long")
    process_now: bool = Field(True, description="admins may process a flight at once (else nightly only)")
    upload_quota_mb: int = Field(0, ge=0, description="most the upload folder may hold (MiB; 0: the disk)")
    upload_keep_hours: float = Field(48.0, gt=0, description="an unfinished upload untouched this long is removed")
    login_backoff_after: int = Field(3, ge=1, description="failed sign-ins (per account or address) before "
                                                          "each next try must wait, doubling up to a minute")
    login_lockout_after: int = Field(10, ge=1, description="failed sign-ins that lock an account until an "
                                                           "admin unlocks it (patrol users unlock)")
    password_checks: int = Field(1, ge=1, description="password checks run at once (the rest wait briefly, "
                                                      "then are told to retry), so a flood cannot starve users")
    secure_cookies: bool = Field(False, description="mark cookies Secure (set true when served behind HTTPS)")


class Sensor(Section):
    model: str = Field(description="EXIF camera model (Model tag), e.g. FC6310R")
    width_mm: float = Field(gt=0, description="sensor width in mm (long side)")
    height_mm: float = Field(gt=0, description="sensor height in mm")


DJI_SENSORS = [  # common DJI cameras: EXIF Model -> sensor size (mm)
    Sensor(model="FC6310", width_mm=13.2, height_mm=8.8),     # Phantom 4 Pro / Adv
    Sensor(model="FC6310R", width_mm=13.2, height_mm=8.8),    # Phantom 4 RTK
    Sensor(model="FC6310S", width_mm=13.2, height_mm=8.8),    # Phantom 4 Pro V2
    Sensor(model="FC330", width_mm=6.17, height_mm=4.55),     # Phantom 4
    Sensor(model="FC220", width_mm=6.17, height_mm=4.55),     # Mavic Pro
    Sensor(model="L1D-20c", width_mm=13.2, height_mm=8.8),    # Mavic 2 Pro
    Sensor(model="FC3170", width_mm=6.4, height_mm=4.8),      # Mavic Air 2
    Sensor(model="FC3582", width_mm=9.6, height_mm=7.2),      # Mini 3 Pro
    Sensor(model="L2D-20c", width_mm=17.3, height_mm=13.0),   # Mavic 3
    Sensor(model="M3E", width_mm=17.3, height_mm=13.0),       # Mavic 3 Enterprise
    Sensor(model="M3T", width_mm=6.4, height_mm=4.8),         # Mavic 3 Thermal, wide camera
    Sensor(model="ZenmuseP1", width_mm=35.9, height_mm=24.0),  # Zenmuse P1 (M300/M350)
]


class IngestSettings(Section):
    work_dir: Path = Field(Path("data/flights"),
                           description="unpacked zips, photo frames and split-export mosaics "
                                       "(relative: to the working folder)")
    max_raster_mpix: float = Field(100_000, gt=0, description="largest orthophoto accepted (megapixels)")
    max_zip_mb: int = Field(51_200, ge=1, description="largest total a zip may unpack to (MiB)")
    max_zip_ratio: float = Field(200.0, gt=1, description="largest compression ratio of a zip member (zip bomb)")
    max_zip_files: int = Field(20_000, ge=1, description="most files a zip may hold")
    work_quota_mb: int = Field(0, ge=0, description="most work_dir may hold (MiB; 0: the disk)")
    district_margin_m: float = Field(2000.0, ge=0,
                                     description="a flight must come this close to the district: a stored "
                                                 "parcel or zone, or district_boundary when set")
    district_boundary: Path | None = Field(None, description="polygon file of the district boundary "
                                                             "(any CRS); null: use the stored parcels/zones")
    oblique_pitch_deg: float = Field(20.0, gt=0, le=90,
                                     description="photos whose gimbal pitch is further than this from -90° "
                                                 "(nadir) are kept as evidence, not georeferenced")
    gps_error_m: float = Field(5.0, ge=0, description="horizontal position error of a photo without RTK fix (m)")
    rtk_error_m: float = Field(0.1, ge=0, description="horizontal position error of a photo with RTK fix (m)")
    sensors: list[Sensor] = Field(DJI_SENSORS, description="camera sensor sizes by EXIF model; add your cameras")


class HeightSettings(Section):
    gsd_m: float = Field(0.25, gt=0, le=2, description="ground pixel at which a flight's DSM is read")
    gsd_range_m: tuple[float, float] = Field((0.01, 2.0), description="ground pixel a DSM / DTM may have "
                                                                      "(outside: refused at ingest)")
    ground_window_m: float = Field(40.0, gt=1, le=500, description="ground filter window: larger than the "
                                                                  "largest building (docs/HEIGHTS.md)")
    edge_m: float = Field(0.5, ge=0, le=5, description="an outline is eroded this far before its heights "
                                                       "are read (smeared DSM edges)")
    min_structure_m: float = Field(1.5, ge=0, le=20, description="a detection whose median height above the "
                                                                 "ground is lower is flat: dropped")
    flat_classes: list[str] = Field(["under_construction"], description="classes that may be flat (a site, a "
                                                                        "foundation): kept, never dropped")
    storey_m: float = Field(3.1, gt=1.5, le=8, description="height of one storey (floors_est)")
    storey_rise_m: float = Field(2.5, gt=0, le=20, description="a rise this high between flights is 加层")
    candidate_min_m: float = Field(2.5, ge=0, le=50, description="elevated regions this high with no "
                                                                 "detection become candidates")
    candidate_min_area_m2: float = Field(8.0, ge=1, description="smallest candidate footprint")
    candidate_max_area_m2: float = Field(2000.0, ge=1, description="largest candidate footprint")
    candidate_max_roughness_m: float = Field(0.25, gt=0, description="rougher (tree crowns) is not a roof")
    candidate_max_green: float = Field(0.5, ge=0, le=1, description="share of green pixels above which a "
                                                                    "candidate is vegetation")
    candidate_confidence: float = Field(0.5, ge=0, le=1, description="confidence given to a height candidate")


class Settings(Section):
    store: StoreSettings = StoreSettings()
    district: DistrictSettings = DistrictSettings()
    processing: ProcessingSettings = ProcessingSettings()
    detector: DetectorSettings = DetectorSettings()
    tracking: TrackingSettings = TrackingSettings()
    change_check: ChangeCheckSettings = ChangeCheckSettings()
    report: ReportSettings = ReportSettings()
    service: ServiceSettings = ServiceSettings()
    documents: DocumentSettings = DocumentSettings()
    ledger: LedgerSettings = LedgerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    media: MediaSettings = MediaSettings()
    models: ModelsSettings = ModelsSettings()
    ingest: IngestSettings = IngestSettings()
    heights: HeightSettings = HeightSettings()
    rules_file: Path = Field(Path("rules.yaml"), description="violation rules and lifecycle table")
    census_file: Path = Field(Path("census.yaml"), description="the 自建房 census: form fields, measures, "
                                                               "the register's lifecycle")

    source: Path | None = Field(None, exclude=True, description="the config file these came from")
    _rules: tuple[Path, Rules] | None = PrivateAttr(None)
    _census: tuple[Path, Census] | None = PrivateAttr(None)

    def resolve(self, p: Path) -> Path:
        """A path from the config file, made absolute against the file's folder."""
        p = Path(p).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return (self.source.parent / p).resolve()

    @property
    def model_path(self) -> Path:
        """The weights of ``detector.model`` in ``detector.runtime`` (int8: the ``.int8.onnx`` beside)."""
        path = self.resolve(self.detector.model)
        return path.with_suffix(".int8.onnx") if self.detector.runtime == "int8" else path

    @property
    def rules_path(self) -> Path:
        return self.resolve(self.rules_file)

    @property
    def rules(self) -> Rules:
        """The rules of ``rules_file``, read and validated once (``load_rules``: ConfigError naming the
        file and the key); read again only when ``rules_file`` points elsewhere."""
        path = self.rules_path
        if self._rules is None or self._rules[0] != path:
            self._rules = (path, load_rules(path))
        return self._rules[1]


    @property
    def census(self) -> Census:
        """The census of ``census_file``, read and validated once (``load_census``)."""
        path = self.resolve(self.census_file)
        if self._census is None or self._census[0] != path:
            self._census = (path, load_census(path))
        return self._census[1]


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = [k for k in dotted.lower().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{dotted}' names no setting; use section.key=value")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = yaml.safe_load(value) if isinstance(value, str) else value


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Read the YAML file, apply ``PATROL__A__B`` env vars and dotted overrides, validate."""
    env = os.environ if environ is None else environ
    path = Path(path or env.get("PATROL_CONFIG") or DEFAULT_CONFIG).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML; fix its syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 and try again") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    for key, value in sorted(env.items()):
        if key.startswith("PATROL__"):
            _set_dotted(data, key[len("PATROL__"):].replace("__", "."), value)
    if env.get("PATROL_STORE"):
        _set_dotted(data, "store.url", env["PATROL_STORE"])
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        settings = Settings(**data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"config {path}: setting '{loc}' {err['msg'].lower()}; "
                          f"fix it in the file or the override") from None
    settings.source = path
    return settings


def setting_names(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every dotted setting name the loader accepts (for the configuration reference)."""
    names = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += setting_names(ann, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names
