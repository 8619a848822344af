"""The tables every backend holds, as data: each backend turns this into its own DDL.

Column kinds: text, int, real, date, datetime, json, geometry. A table has at most one
geometry column (polygonal, in the store CRS); frames name it ``geometry``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    name: str
    kind: str                   # text | int | real | date | datetime | json | geometry
    required: bool = False      # NOT NULL
    default: object = None      # JSON default (e.g. []), used when a value is missing


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]        # natural key (unique)
    description: str = ""
    append_only: bool = False
    indexes: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def geometry(self) -> str | None:
        return next((c.name for c in self.columns if c.kind == "geometry"), None)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def C(name: str, kind: str = "text", required: bool = False, default: object = None) -> Column:
    return Column(name, kind, required, default)


FLIGHT = Table("flight", (
    C("flight_id", required=True), C("path"), C("captured_at", "datetime"), C("team"), C("source"),
    C("crs"), C("gsd_m", "real"), C("status", required=True, default="uploaded"), C("error"),
    C("model_version"), C("processed_at", "datetime"), C("footprint", "geometry"), C("error_zh"),
    C("registration", "json", default={}), C("forced"), C("dsm"), C("dtm"),
), key=("flight_id",), description="drone flights (orthophotos) and their processing status",
    indexes=(("captured_at",),))

DETECTION = Table("detection", (
    C("detection_id", required=True), C("flight_id", required=True), C("class_name", required=True),
    C("confidence", "real"), C("area_m2", "real"), C("geometry", "geometry"), C("model_version"),
    C("height_m", "real"), C("floors_est", "int"), C("source"),
), key=("detection_id",), description="structures the detector found, per flight",
    indexes=(("flight_id",),))

PARCEL = Table("parcel", (
    C("parcel_id", required=True), C("owner"), C("town"), C("village"), C("village_code"),
    C("land_use"), C("approved_area_m2", "real"), C("approved_floors", "int"), C("permit_no"),
    C("attrs", "json", default={}), C("geometry", "geometry"),
), key=("parcel_id",), description="宅基地/自建房 registry: approved parcels")

ZONE = Table("zone", (
    C("zone_id", required=True), C("kind"), C("code"), C("name"), C("geometry", "geometry"),
), key=("zone_id",), description="restricted land: basic farmland, farmland, ecological red line",
    indexes=(("kind",),))

CASES = Table("cases", (
    C("case_no", required=True), C("case_uuid", required=True), C("source"), C("stock"),
    C("category"), C("detector_class"), C("status", required=True, default="suspected"),
    C("flags", "json", default=[]), C("area_m2", "real"), C("growth_m2", "real"),
    C("confidence", "real"), C("rules", "json", default=[]), C("reasons", "json", default={}),
    C("parcel_id"), C("owner"), C("town"), C("village"), C("village_code"),
    C("parcel_snapshot", "json", default={}), C("basic_farmland_m2", "real"),
    C("redline_m2", "real"), C("farmland_m2", "real"), C("party"), C("phone"), C("order_no"),
    C("order_date", "date"), C("deadline", "date"), C("assignee"), C("first_seen_flight"),
    C("first_seen_at", "datetime"), C("last_seen_flight"), C("last_seen_at", "datetime"),
    C("recheck_date", "date"), C("closed_date", "date"), C("demolished_area_m2", "real"),
    C("created_at", "datetime"), C("updated_at", "datetime"), C("geometry", "geometry"),
    C("floors", "int"), C("floor_area_m2", "real"), C("unit"), C("remark"), C("id_number"), C("address"),
    C("change_confidence", "real"), C("change_evidence", "json", default={}), C("model_version"),
    C("height_m", "real"), C("floors_est", "int"), C("house_no"),
), key=("case_no",), description="enforcement cases (台账)",
    indexes=(("status",), ("category",), ("town", "village"), ("first_seen_at",)))

CASE_EVENT = Table("case_event", (
    C("event_id", "int", required=True), C("case_no", required=True), C("at", "datetime", required=True),
    C("actor"), C("from_status"), C("to_status"), C("note"),
), key=("event_id",), description="append-only case history", append_only=True,
    indexes=(("case_no",),))

EVIDENCE = Table("evidence", (
    C("case_no", required=True), C("flight_id", required=True), C("role", required=True),
    C("chip_path"), C("file_hash"), C("captured_at", "datetime"), C("gsd_m", "real"),
), key=("case_no", "flight_id", "role"), description="image chips per case and flight",
    indexes=(("case_no",),))

CASE_COUNTER = Table("case_counter", (
    C("prefix", required=True), C("year", "int", required=True), C("last_seq", "int", required=True),
), key=("prefix", "year"), description="last case number handed out per prefix and year")

TABLES: dict[str, Table] = {t.name: t for t in (
    FLIGHT, DETECTION, PARCEL, ZONE, CASES, CASE_EVENT, EVIDENCE, CASE_COUNTER)}

#: accounts of the web service (pipeline/service), added by migration 2 of every backend;
#: not in TABLES, which is the frozen table list of migration 1
USERS = Table("users", (
    C("username", required=True), C("password_hash", required=True), C("role", required=True),
    C("towns", "json", default=[]), C("display_name"), C("disabled", "int", default=0),
    C("created_at", "datetime"), C("updated_at", "datetime"),
    C("failed_logins", "int", default=0), C("locked_at", "datetime"), C("sessions_after", "datetime"),
), key=("username",), description="web service accounts: role patrol/officer/admin, officer towns")
#: the account columns migration 3 added (sign-in lockout, server-side logout)
USER_GUARD_COLUMNS = ("failed_logins", "locked_at", "sessions_after")

#: the ledger columns migration 4 added to cases: 层数, 建筑面积, 责任单位/执法中队, 备注
CASE_LEDGER_COLUMNS = ("floors", "floor_area_m2", "unit", "remark")
#: the 当事人 columns migration 5 added to cases: 身份证号 (masked outside the case page), 地址
CASE_PARTY_COLUMNS = ("id_number", "address")
#: columns each table got after migration 1 (which creates the tables without them)
#: added by migration 6: a failed flight's error in Chinese and the flight's co-registration;
#: a case's change confidence and the evidence behind it (``pipeline.cases.change``)
FLIGHT_CHANGE_COLUMNS = ("error_zh", "registration")
CASE_CHANGE_COLUMNS = ("change_confidence", "change_evidence")
#: added by migration 7: the model version that produced a detection, and a case's latest detection
MODEL_VERSION_COLUMNS = {"detection": ("model_version",), "cases": ("model_version",)}
#: added by migration 9: a flight's heights (DSM, DTM paths); a detection's and a case's height and
#: estimated storeys, and where a detection came from (model / truth / height)
HEIGHT_COLUMNS = {"flight": ("dsm", "dtm"), "detection": ("height_m", "floors_est", "source"),
                  "cases": ("height_m", "floors_est")}
ADDED_LATER = {"cases": CASE_LEDGER_COLUMNS + CASE_PARTY_COLUMNS + CASE_CHANGE_COLUMNS + ("model_version",)
               + HEIGHT_COLUMNS["cases"] + ("house_no",),
               "flight": FLIGHT_CHANGE_COLUMNS + ("forced",) + HEIGHT_COLUMNS["flight"],
               "detection": ("model_version",) + HEIGHT_COLUMNS["detection"]}


def as_created(table: Table) -> Table:
    """The table as migration 1 created it."""
    later = ADDED_LATER.get(table.name, ())
    return Table(table.name, tuple(c for c in table.columns if c.name not in later), table.key,
                 table.description, table.append_only, table.indexes)


#: the migration that adds the document table and the ledger columns
DOCUMENT_VERSION = 4
#: numbered enforcement documents (文书), added by migration 4: one row per number handed out;
#: ``fields`` is everything the document was filled with, so a re-print is identical
DOCUMENT = Table("document", (
    C("doc_no", required=True), C("kind", required=True), C("year", "int", required=True),
    C("seq", "int", required=True), C("case_no", required=True), C("issued_at", "datetime"),
    C("actor"), C("fields", "json", default={}), C("file_hash"),
), key=("doc_no",), description="numbered enforcement documents (文书) per case", indexes=(("case_no",),))

#: the migration that adds the media table
MEDIA_VERSION = 5
#: on-site photos and videos of a case (pipeline/cases/media.py), added by migration 5: the original
#: file is kept as it came (named by its sha256), photos get a stamped copy
MEDIA = Table("media", (
    C("media_id", required=True), C("case_no", required=True), C("kind", required=True), C("filename"),
    C("sha256", required=True), C("bytes", "int"), C("original_path"), C("stamped_path"),
    C("taken_at", "datetime"), C("lon", "real"), C("lat", "real"), C("position_source"),
    C("distance_m", "real"), C("far", "int", default=0), C("uploaded_at", "datetime"), C("actor"), C("note"),
), key=("media_id",), description="on-site photos and videos per case", indexes=(("case_no",),))

#: the migration that adds the model registry
MODEL_VERSION = 7
#: detector weights of the model registry (pipeline/model/registry.py), added by migration 7: the
#: file the detector runs (``path``, its sha256 ``file_hash``; ``pt_path`` the weights training starts
#: from), what it was trained from, its figures; ``state`` candidate | active | retired
MODEL = Table("model", (
    C("version", required=True), C("path", required=True), C("file_hash", required=True), C("pt_path"),
    C("parent"), C("state", required=True, default="candidate"), C("data", "json", default={}),
    C("metrics", "json", default={}), C("created_at", "datetime"), C("created_by"),
    C("promoted_at", "datetime"), C("promoted_by"), C("note"),
), key=("version",), description="detector weights: registry of trained models")
#: what happened to the registry's models, append-only (registered, compared, promoted, refused, rolled back)
MODEL_EVENT = Table("model_event", (
    C("version", required=True), C("at", "datetime", required=True),
    C("actor"), C("action", required=True), C("from_version"), C("note"), C("figures", "json", default={}),
), key=("version", "at", "action"), description="append-only history of the model registry", append_only=True,
    indexes=(("version",),))

#: the migration that adds the building register of the self-built housing census (自建房台账)
HOUSE_VERSION = 10
#: every building the flights show (pipeline/cases/houses.py), one row per 栋, added by migration 10:
#: numbered ZJ<year>-<seq>; seen on ``flights`` (first / last), ``gone_flight`` the flight that covered
#: it and no longer saw it; ``case_no`` the 两违 case of the same house; ``status`` its census step
#: (config/census.yaml), ``inspection`` the 排查 form's facts, ``hazard`` its 初判, ``measures`` the 整治措施
HOUSE = Table("house", (
    C("house_no", required=True), C("source"), C("status", required=True, default="registered"),
    C("parcel_id"), C("owner"), C("town"), C("village"), C("village_code"), C("area_m2", "real"),
    C("floors", "int"), C("floors_source"), C("height_m", "real"), C("flights", "json", default=[]),
    C("first_seen_flight"), C("first_seen_at", "datetime"), C("last_seen_flight"), C("last_seen_at", "datetime"),
    C("gone_flight"), C("gone_at", "datetime"), C("case_no"),
    C("inspection", "json", default={}), C("hazard"), C("business", "int"), C("inspected_on", "date"),
    C("measures", "json", default=[]), C("deadline", "date"), C("assignee"), C("rectified_on", "date"),
    C("closed_on", "date"), C("created_at", "datetime"), C("updated_at", "datetime"), C("geometry", "geometry"),
), key=("house_no",), description="自建房台账: every building the flights show, one row per 栋",
    indexes=(("town", "village"), ("case_no",)))
#: what happened to a register record, append-only (seen, gone, seen again, census steps)
HOUSE_EVENT = Table("house_event", (
    C("house_no", required=True), C("at", "datetime", required=True), C("actor"), C("from_status"),
    C("to_status"), C("note"), C("facts", "json", default={}),
), key=("house_no", "at", "to_status", "note"), description="append-only history of the building register",
    append_only=True, indexes=(("house_no",),))
#: the column migration 10 added to cases: the register record of the case's house
CASE_HOUSE_COLUMNS = ("house_no",)

#: tables reported by Store.status()["counts"]
COUNTED = ("flight", "detection", "parcel", "zone", "cases", "case_event", "evidence", "document", "media",
           "model", "model_event", "house", "house_event")

CASE_COLUMNS = CASES.names
