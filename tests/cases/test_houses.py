"""The building register (自建房台账, pipeline/cases/houses.py): every building of a flight is one
numbered record; later flights see it again, add new houses and mark the ones they cover but no
longer see; a 两违 case and the record of the same house point to each other."""
from __future__ import annotations

import json
import subprocess

import geopandas as gpd
import openpyxl
import pandas as pd
import pytest

from pipeline.cases.houses import inspect_house, set_house_status
from pipeline.core.census import load_census
from pipeline.core.config import load_settings
from pipeline.core.errors import ConfigError, InputError, TransitionError
from pipeline.ingest.parcels import import_registry
from pipeline.process.run import process_flight, register_flight
from pipeline.report.census_stats import census_stats
from pipeline.report.stats import write_stats
from pipeline.store import open_store
from pipeline.synth import generate_district


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    root = tmp_path_factory.mktemp("houses_district")
    result = generate_district(root / "d", seed=2, size_m=100.0, epochs=2, progress=False)
    meta = json.loads(result.meta.read_text(encoding="utf-8"))
    return result, meta, gpd.read_file(result.vectors, layer="truth")


def _detections(truth, epoch, drop=()):
    t = truth[(truth["epoch"] == epoch) & ~truth["structure_id"].isin(drop)]
    return t.assign(confidence=0.9, area_m2=t.geometry.area)


def test_a_village_register_through_three_flights(tmp_path, district, patrol):
    result, meta, truth = district
    settings = load_settings(overrides={"store.url": str(tmp_path / "patrol.gpkg")}, environ={})
    store = open_store(settings.store.url, settings.store.crs)
    import_registry(store, result.vectors)
    buildings = truth[truth["class_name"] == "building"]
    first = set(buildings.loc[buildings["epoch"] == 1, "structure_id"])
    second = set(buildings.loc[buildings["epoch"] == 2, "structure_id"])
    assert first <= second and len(second - first) >= 1, "the district should build a new house"
    demolished = sorted(first)[0]                     # between the flights this house comes down
    e1, e2 = (result.out_dir / ep["ortho"] for ep in meta["epochs"])

    f1 = register_flight(store, e1, settings)
    r1 = process_flight(store, f1["flight_id"], settings, detections=_detections(truth, 1), progress=False)
    assert (r1.houses_new, r1.houses_gone) == (len(first), 0)
    houses = store.houses()
    assert houses["house_no"].str.fullmatch(r"ZJ\d{4}-\d{6}").all() and houses["house_no"].is_unique
    assert (houses["first_seen_flight"] == f1["flight_id"]).all() and houses["town"].notna().all()
    assert houses["floors"].notna().all() and set(houses["floors_source"]) == {"parcel"}
    numbers = set(houses["house_no"])

    f2 = register_flight(store, e2, settings)
    r2 = process_flight(store, f2["flight_id"], settings, detections=_detections(truth, 2, drop=[demolished]),
                        progress=False)
    assert (r2.houses_new, r2.houses_gone) == (len(second - first), 1)
    houses = store.houses()
    assert len(houses) == len(second)
    gone = houses[houses["gone_flight"].notna()]
    assert gone["gone_flight"].tolist() == [f2["flight_id"]]
    kept = houses[houses["first_seen_flight"] == f1["flight_id"]]
    assert set(kept["house_no"]) == numbers                          # numbers stay (a grown house too)
    assert (kept.loc[kept["gone_flight"].isna(), "flights"].map(len) == 2).all()
    assert "疑已拆除" in store.house_events(gone["house_no"].iloc[0])["note"].iloc[-1]

    # the same flight again, with the house standing after all: back in the register, nothing doubled
    process_flight(store, f2["flight_id"], settings, detections=_detections(truth, 2), force=True, progress=False)
    again = store.houses()
    assert len(again) == len(second) and again["gone_flight"].isna().all()
    assert "再次发现" in store.house_events(gone["house_no"].iloc[0])["note"].iloc[-1]

    # cases and houses of the same structure point at each other
    cases = store.cases()
    linked = cases[cases["house_no"].notna()]
    assert len(linked) >= 1
    by_no = again.set_index("house_no")
    for case_no, house_no in zip(linked["case_no"], linked["house_no"]):
        assert by_no.loc[house_no, "case_no"] == case_no
    store.close()

    code, out, _ = patrol("--store", settings.store.url, "houses", "list")
    assert code == 0 and f"{len(second)} houses" in out and linked["case_no"].iloc[0] in out
    code, out, _ = patrol("--store", settings.store.url, "houses", "show", gone["house_no"].iloc[0])
    assert code == 0 and "再次发现" in out and "疑已拆除" in out
    code, _, err = patrol("--store", settings.store.url, "houses", "show", "ZJ1999-000001")
    assert code == 2 and err.strip() == ("error: no house ZJ1999-000001 in the register; list them with "
                                         "`patrol houses list`")


@pytest.fixture
def registered(tmp_path, district):
    """A store whose register holds the first flight's houses."""
    result, meta, truth = district
    settings = load_settings(overrides={"store.url": str(tmp_path / "patrol.gpkg")}, environ={})
    store = open_store(settings.store.url, settings.store.crs)
    import_registry(store, result.vectors)
    f1 = register_flight(store, result.out_dir / meta["epochs"][0]["ortho"], settings)
    process_flight(store, f1["flight_id"], settings, detections=_detections(truth, 1), progress=False)
    yield store, settings, store.houses()["house_no"].tolist()
    store.close()


def _unchanged(store, house_no):
    rec = store.houses(house_no=house_no).drop(columns="updated_at").iloc[0]
    return rec.astype(str).to_dict(), len(store.house_events(house_no))


def test_inspection_rectification_and_closing_with_refusals_that_change_nothing(registered, patrol):
    store, settings, numbers = registered
    census = settings.census
    serious, general, safe = numbers[:3]
    form = {"owner": "李四", "built_year": "1998", "structure": "砖混", "floors": "3", "use": "餐饮",
            "business": "是", "inspected_on": "2026-11-20"}
    assert inspect_house(store, census, serious, {**form, "judgement": "存在严重安全隐患"}, "officer-1")["status"] == "hazard"
    assert inspect_house(store, census, general, {**form, "judgement": "存在一般安全隐患", "use": "自住",
                                                  "business": "否"}, "officer-1")["status"] == "hazard"
    rec = inspect_house(store, census, safe, {**form, "judgement": "未发现安全隐患"}, "officer-2")
    assert (rec["status"], rec["business"], rec["floors"], rec["floors_source"], rec["owner"]) == \
        ("safe", 1, 3, "officer", "李四")
    assert rec["inspection"]["structure"] == "砖混" and rec["inspected_on"] == pd.Timestamp("2026-11-20")

    # refusals: one line each, nothing stored
    before = _unchanged(store, serious)
    with pytest.raises(TransitionError, match="cannot become closed") as e:
        set_house_status(store, census, serious, "closed", "officer-1", note="复核通过")
    assert "不能改为“已销号”" in e.value.zh
    with pytest.raises(InputError, match="结构类型 \\(structure\\): '石头' is not one of"):
        inspect_house(store, census, serious, {**form, "structure": "石头", "judgement": "存在严重安全隐患"}, "x")
    with pytest.raises(InputError, match="lies in the future"):
        inspect_house(store, census, serious, {**form, "inspected_on": "2999-01-01", "judgement": "存在严重安全隐患"}, "x")
    with pytest.raises(InputError, match="judgement\\) is required"):
        inspect_house(store, census, serious, form, "x")
    with pytest.raises(InputError, match="整治措施 must be one or more of"):
        set_house_status(store, census, serious, "rectifying", "x", measures=["推倒"], deadline="2027-01-31",
                         assignee="王五")
    with pytest.raises(InputError, match="deadline"):
        set_house_status(store, census, serious, "rectifying", "x", measures=["加固"])
    assert _unchanged(store, serious) == before

    rec = set_house_status(store, census, serious, "rectifying", "officer-1", measures=["停用/封控", "加固"],
                           deadline="2027-01-31", assignee="王五", on="2026-11-25")
    assert (rec["status"], rec["measures"], rec["assignee"]) == ("rectifying", ["停用/封控", "加固"], "王五")
    set_house_status(store, census, serious, "rectified", "officer-1", on="2026-12-01")
    with pytest.raises(InputError, match="needs the recheck"):
        set_house_status(store, census, serious, "closed", "officer-1")
    rec = set_house_status(store, census, serious, "closed", "officer-1", note="复核：加固完成，隐患消除")
    assert rec["status"] == "closed" and rec["rectified_on"] == pd.Timestamp("2026-12-01")
    history = store.house_events(serious)
    assert history["to_status"].tolist() == ["registered", "hazard", "rectifying", "rectified", "closed"]
    assert history["facts"].iloc[2]["on"] == "2026-11-25" and history["actor"].iloc[-1] == "officer-1"

    # the same through the command line
    code, out, _ = patrol("--store", settings.store.url, "houses", "set-status", general, "rectifying",
                          "--measure", "限期整改", "--deadline", "2027-02-28", "--assignee", "赵六")
    assert code == 0 and "rectifying 整治中" in out
    code, _, err = patrol("--store", settings.store.url, "houses", "inspect", safe, "--fact", "structure=纸板",
                          "--fact", "judgement=未发现安全隐患", "--fact", "inspected_on=2026-11-21")
    assert code == 2 and err.count("\n") == 1 and "'纸板' is not one of" in err


def test_a_census_file_that_breaks_its_own_rules_is_one_line(tmp_path):
    bad = tmp_path / "census.yaml"
    bad.write_text("fields: [{key: judgement, label: 初判, kind: choice}]\nhazard_values: []\nserious_values: []\n"
                   "measures: []\nlifecycle: {states: {registered: 待排查}, transitions: {registered: [safe]}}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"census file .*census.yaml: 'fields.0' .*choice without values"):
        load_census(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_census(tmp_path / "none.yaml")


def test_census_figures_equal_their_hand_counts(registered, district, tmp_path):
    store, settings, numbers = registered
    result, meta, truth = district
    census = settings.census
    serious, general, safe = numbers[:3]
    base = {"structure": "砖混", "inspected_on": "2026-11-20"}
    inspect_house(store, census, serious, {**base, "judgement": "存在严重安全隐患", "use": "餐饮", "business": "是",
                                           "floors": "3"}, "o")
    inspect_house(store, census, general, {**base, "judgement": "存在一般安全隐患", "use": "自住", "business": "否",
                                           "floors": "2"}, "o")
    inspect_house(store, census, safe, {**base, "judgement": "未发现安全隐患", "use": "住宿", "business": "是",
                                        "floors": "4"}, "o")
    # a re-inspection corrects the general hazard: counted once, as what it was last found to be
    inspect_house(store, census, general, {**base, "judgement": "未发现安全隐患", "use": "自住",
                                           "inspected_on": "2026-11-29"}, "o")
    set_house_status(store, census, serious, "rectifying", "o", measures=["加固"], deadline="2027-01-31",
                     assignee="王五", on="2026-11-25")
    set_house_status(store, census, serious, "rectified", "o", on="2026-11-28")
    set_house_status(store, census, serious, "closed", "o", note="复核合格", on="2026-12-02")
    # the second flight: a new house (registered on its capture day) and one house no longer seen
    buildings = truth[truth["class_name"] == "building"]
    first = set(buildings.loc[buildings["epoch"] == 1, "structure_id"])
    f2 = register_flight(store, result.out_dir / meta["epochs"][1]["ortho"], settings)
    process_flight(store, f2["flight_id"], settings, detections=_detections(truth, 2, drop=[sorted(first)[-1]]),
                   progress=False)
    new = [n for n in store.houses()["house_no"] if n not in numbers]
    inspect_house(store, census, new[0], {**base, "judgement": "存在一般安全隐患", "inspected_on": "2026-12-03"}, "o")

    november = census_stats(store, census, "2026-11-01", "2026-12-01")
    assert november["period"] == {"registered": 0, "inspected": 3, "business": 2, "three_storeys": 2, "crowded": 2,
                                  "hazard": 1, "serious": 1, "rectifying": 1, "rectified": 1, "closed": 0}
    flown = sorted(pd.to_datetime(store.list_flights()["captured_at"]))
    assert flown[-1] < pd.Timestamp("2026-11-01")             # both flights before November: registered earlier
    assert november["cumulative"]["registered"] == len(numbers) + len(new) and november["cumulative"]["closed"] == 0
    assert november["rates"] == {"closure_rate": 0.0, "rectification_rate": 1.0}
    everything = census_stats(store, census)
    assert everything["cumulative"]["registered"] == len(numbers) + len(new)
    assert (everything["cumulative"]["inspected"], everything["cumulative"]["hazard"]) == (4, 2)
    assert everything["rates"] == {"closure_rate": 0.5, "rectification_rate": 0.5}
    assert int(november["by_village"]["inspected"].sum()) == 3
    december = census_stats(store, census, "2026-12-01", "2027-01-01")
    assert (december["period"]["inspected"], december["period"]["closed"], december["period"]["hazard"]) == (1, 1, 1)

    paths = write_stats(store, settings, settings.rules, tmp_path / "stats", "2026-11-01", "2026-12-01")
    md = paths["stats_md"].read_text(encoding="utf-8")
    assert "## 自建房安全排查" in md and "| 排查栋数 | 3 | 3 |" in md and "| 销号率 | — | 0.0% |" in md
    wb = openpyxl.load_workbook(paths["stats_xlsx"])
    sheet = {r[0]: r[1:] for r in wb["自建房排查"].iter_rows(values_only=True)}
    assert sheet["排查栋数"] == (3, 3) and sheet["其中严重隐患"] == (1, 1) and sheet["整改率"] == (None, 1.0)


def test_the_register_workbook_reads_back_in_the_configured_columns(registered, tmp_path, patrol):
    store, settings, numbers = registered
    census = settings.census
    inspect_house(store, census, numbers[0], {"structure": "框架", "judgement": "存在严重安全隐患", "business": "是",
                                              "use": "餐饮", "inspected_on": "2026-11-20"}, "o")
    set_house_status(store, census, numbers[0], "rectifying", "o", measures=["停用/封控", "加固"],
                     deadline="2027-01-31", assignee="王五")
    store.close()
    out = tmp_path / "register.xlsx"
    code, text_out, _ = patrol("--store", settings.store.url, "houses", "export", "--out", str(out))
    assert code == 0 and f"{len(numbers)} houses written" in text_out
    ws = openpyxl.load_workbook(out)["自建房台账"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[1][:6] == ("序号", "台账编号", "乡镇", "村", "产权人", "坐标(经度,纬度)")
    assert [h for h, _ in census.register_headers()] == [c for c in census.register_columns]
    body = {r[1]: dict(zip(rows[1], r)) for r in rows[2:]}
    assert len(body) == len(numbers)
    first = body[numbers[0]]
    assert (first["结构类型"], first["初判"], first["是否经营性"], first["排查状态"]) == ("框架", "存在严重安全隐患", "是", "整治中")
    assert (first["整治措施"], first["责任人"], first["整改期限"]) == ("停用/封控、加固", "王五", "2027-01-31")
    lon, lat = map(float, first["坐标(经度,纬度)"].split(","))
    assert 73 < lon < 135 and 18 < lat < 54                        # a point in China
    code, _, err = patrol("--store", settings.store.url, "houses", "export", "--out", str(tmp_path / "r.csv"))
    assert code == 2 and "must end in .xlsx" in err


def test_the_census_form_pdf_reads_back_with_the_inspection_and_its_history(registered, tmp_path, patrol):
    store, settings, numbers = registered
    census = settings.census
    inspect_house(store, census, numbers[1], {"owner": "张三", "structure": "砖木", "built_year": "1988",
                                              "judgement": "存在一般安全隐患", "appraisal_needed": "是",
                                              "appraisal_grade": "C", "inspected_on": "2026-11-20"}, "o")
    set_house_status(store, census, numbers[1], "rectifying", "o", measures=["限期整改"], deadline="2027-03-31",
                     assignee="王五")
    store.close()
    out = tmp_path / "form.pdf"
    code, said, _ = patrol("--store", settings.store.url, "houses", "form", numbers[1], "--out", str(out))
    assert code == 0 and numbers[1] in said
    got = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True, check=True).stdout
    for words in ("自建房安全排查表", numbers[1], "结构类型", "砖木", "1988", "存在一般安全隐患", "鉴定等级",
                  "限期整改", "2027-03-31", "王五", "整治中", "登记入台账", "产权人（签名）"):
        assert words in got, words
    assert "Traceback" not in got and "None" not in got
    code, _, err = patrol("--store", settings.store.url, "houses", "form", "ZJ1999-000009", "--out", str(out))
    assert code == 2 and "no house ZJ1999-000009" in err
