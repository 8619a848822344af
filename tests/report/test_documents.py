"""Enforcement documents as PDF: rendered by WeasyPrint, read back with poppler (pdftotext,
pdfinfo, pdftoppm), numbered without gaps under concurrency, recorded on the case."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import load_settings
from pipeline.core.rules import load_rules
from pipeline.store import open_store

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils missing (make system-deps)")
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("sheet", "inspection", "stop_notice", "demolition_notice", "recheck")


def _pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout


def _pages(path: Path) -> int:
    out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))


@pytest.fixture()
def doc_store(small_district_store, tmp_path):
    src, _, _ = small_district_store
    shutil.copy(src, tmp_path / "patrol.gpkg")
    s = load_settings(overrides={"store.url": str(tmp_path / "patrol.gpkg")})
    store = open_store(s.store.url, s.store.crs)
    cases = store.cases()
    no = cases["case_no"].iloc[0]
    store.save_cases(cases.loc[cases["case_no"] == no, ["case_no"]].assign(
        party="王建国", phone="13800001111", floors=2, unit="第一执法中队"))
    yield store, s, no
    store.close()


def test_every_document_renders_and_is_recorded(doc_store, tmp_path):
    from pipeline.report.documents import issue_document, kind_label, reprint_document
    store, s, no = doc_store
    rules = load_rules(s.rules_path)
    case = store.cases().set_index("case_no").loc[no]
    for kind in KINDS:
        row, pdf = issue_document(store, s, rules, kind, no, "officer1")
        path = tmp_path / f"{kind}.pdf"
        path.write_bytes(pdf)
        txt = _pdf_text(path)
        flat = re.sub(r"\s+", "", txt)
        assert re.fullmatch(r".+〔20\d\d〕第001号", row["doc_no"]), row["doc_no"]
        for want in (kind_label(kind), row["doc_no"], no, s.documents.authority if kind != "sheet" else "巡查人"):
            assert re.sub(r"\s+", "", want) in flat, (kind, want)
        if kind != "sheet":
            assert "王建国" in flat
        assert f"{float(case['area_m2']):.1f}" in flat
        if kind == "sheet":
            assert _pages(path) == 1                       # one A4 page
            assert "前时相" in flat and "后时相" in flat and "核查人" in flat and "当事人" in flat
            assert "比例尺" in flat and "上北" in flat and "第一执法中队" in flat
        # recorded: the document row with the PDF's hash, and a case event naming it
        docs = store.documents(case_no=no, kind=kind)
        assert list(docs["doc_no"]) == [row["doc_no"]]
        assert docs["file_hash"].iloc[0] == hashlib.sha256(pdf).hexdigest()
        notes = store.events(no)["note"].tolist()
        assert any(row["doc_no"] in n and docs["file_hash"].iloc[0][:16] in n for n in notes)
        # re-printable identically
        _, again, same = reprint_document(store, s, row["doc_no"])
        assert same and again == pdf
    # an on-site photo joins the sheet, which stays one page
    from makers import jpeg

    from pipeline.cases.media import add_media
    c = store.cases().set_index("case_no").loc[[no]].to_crs("EPSG:4326").geometry.iloc[0].centroid
    s_media = load_settings(overrides={"store.url": s.store.url, "media.dir": str(tmp_path / "media")})
    add_media(store, s_media, no, jpeg(c.x, c.y), "IMG_5.jpg", "officer1")
    row, pdf = issue_document(store, s_media, rules, "sheet", no, "officer1")
    (tmp_path / "sheet_photo.pdf").write_bytes(pdf)
    assert _pages(tmp_path / "sheet_photo.pdf") == 1 and "现场照片" in _pdf_text(tmp_path / "sheet_photo.pdf")
    assert row["fields"]["site_photo"]["distance"] == "0"
    # page 1 renders to an image (what a printer gets)
    png = tmp_path / "p1"
    subprocess.run(["pdftoppm", "-r", "50", "-png", "-f", "1", "-l", "1", str(tmp_path / "sheet.pdf"), str(png)],
                   check=True)
    assert next(tmp_path.glob("p1*.png")).stat().st_size > 20_000
    # document events never count as lifecycle steps in the statistics
    from pipeline.report.stats import campaign_stats
    assert campaign_stats(store, rules)["period"]["verified"] == 0


def test_a_dismissed_case_gets_no_notice(doc_store):
    from pipeline.cases.casework import change_status
    from pipeline.core.errors import InputError
    from pipeline.report.documents import issue_document
    store, s, no = doc_store
    rules = load_rules(s.rules_path)
    change_status(store, no, "false_positive", "t", "a shadow", rules.lifecycle)
    with pytest.raises(InputError, match="dismissed case"):
        issue_document(store, s, rules, "stop_notice", no, "t")
    assert len(store.documents()) == 0


def test_numbers_have_no_gap_under_concurrent_requests(doc_store, tmp_path):
    store, s, no = doc_store
    cases = list(store.cases()["case_no"])[:2]
    store.close()
    cmd = [sys.executable, "-m", "pipeline.cli", "--store", s.store.url, "docs", "stop_notice"]
    procs = [subprocess.Popen(["bash", "-c", " && ".join(
        " ".join(cmd + [c, "--new", "--out", str(tmp_path / f"{c}_{i}.pdf")]) for i in range(3))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for c in cases]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    again = open_store(s.store.url, s.store.crs)
    docs = again.documents(kind="stop_notice")
    again.close()
    assert sorted(docs["seq"]) == list(range(1, 7))      # six numbers, no gap, none twice
    assert docs["doc_no"].is_unique


def _broken_config(tmp_path, store_url, edit) -> Path:
    tpl = tmp_path / "templates"
    shutil.copytree(ROOT / "config" / "documents", tpl)
    edit(tpl)
    shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
    cfg = tmp_path / "bureau.yaml"
    cfg.write_text(f"store: {{url: '{store_url}'}}\ndocuments: {{template_dir: templates}}\n", encoding="utf-8")
    return cfg


@pytest.mark.parametrize("edit, want", [
    (lambda t: (t / "stop_notice.html").write_text(
        (t / "stop_notice.html").read_text(encoding="utf-8").replace("{{ party", "{{ partty"), encoding="utf-8"),
     "stop_notice.html uses field 'partty'"),
    (lambda t: (t / "recheck.html").write_text("{% extends 'base.html' %}{% block body %}{% if x %}{% endblock %}",
                                               encoding="utf-8"), "recheck.html line 1:"),
    (lambda t: (t / "base.html").write_text(
        (t / "base.html").read_text(encoding="utf-8").replace("{{ doc_no }}", ""), encoding="utf-8"),
     "does not show the field 'doc_no'"),
    (lambda t: (t / "inspection.html").unlink(), "inspection.html is missing"),
])
def test_a_bad_template_is_refused_at_start(doc_store, tmp_path, edit, want):
    store, s, no = doc_store
    cfg = _broken_config(tmp_path, s.store.url, edit)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--config", str(cfg), "docs", "sheet", no,
                        "--out", str(tmp_path / "x.pdf")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and want in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x.pdf").exists() and len(store.documents()) == 0
    # the web service refuses to start with it too
    from pipeline.core.errors import ConfigError
    from pipeline.service.context import Service
    with pytest.raises(ConfigError, match=re.escape(want)):
        Service.start(load_settings(cfg), store=store)


def test_cli_docs_batch_and_reprint(doc_store, tmp_path):
    from pipeline.cli import main
    store, s, no = doc_store
    village = store.cases().set_index("case_no").loc[no, "village"]
    n = int((store.cases()["village"] == village).sum())
    url = s.store.url
    assert main(["--store", url, "docs", "sheet", "--village", village, "--out", str(tmp_path / "b")]) == 0
    assert len(list((tmp_path / "b").glob("*_sheet.pdf"))) == n
    first = (tmp_path / "b" / f"{no}_sheet.pdf").read_bytes()
    # printing the case's sheet again gives the same number and the same bytes
    assert main(["--store", url, "docs", "sheet", no, "--out", str(tmp_path / "again.pdf")]) == 0
    assert (tmp_path / "again.pdf").read_bytes() == first
    assert len(store.documents(kind="sheet")) == n
    assert main(["--store", url, "docs", "sheet", no, "--village", village, "--out", str(tmp_path / "c")]) == 2
    assert main(["--store", url, "docs", "sheet", "NO-SUCH", "--out", str(tmp_path / "d.pdf")]) == 2


def test_the_ledger_has_the_configured_columns_progress_and_documents(doc_store, tmp_path):
    from openpyxl import load_workbook

    from pipeline.cases.casework import change_status
    from pipeline.cli import main
    from pipeline.report.documents import issue_document
    store, s, no = doc_store
    rules = load_rules(s.rules_path)
    change_status(store, no, "verified", "t", "现场确认", rules.lifecycle)
    change_status(store, no, "ordered", "t", "限期拆除", rules.lifecycle, deadline="2020-01-01")
    row, _ = issue_document(store, s, rules, "demolition_notice", no, "t")
    cfg = tmp_path / "bureau.yaml"
    shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(ROOT / "config" / "documents", tmp_path / "documents")
    cfg.write_text("ledger:\n  columns: [case_no, {party: 当事人姓名}, progress, doc_nos, overdue_days, land_class, "
                   "area_mu]\n", encoding="utf-8")
    out = tmp_path / "ledger.xlsx"
    assert main(["--config", str(cfg), "--store", s.store.url, "cases", "export", "--out", str(out)]) == 0
    ws = load_workbook(out).active
    head = [c.value for c in ws[1]]
    assert head == ["图斑编号/案件编号", "当事人姓名", "处置进度", "文书编号", "逾期天数", "地类", "占地面积(亩)"]
    rows = {r[0].value: [c.value for c in r] for r in ws.iter_rows(min_row=2)}
    mine = rows[no]
    assert mine[1] == "王建国" and mine[2].startswith("限期整改/拆除 ") and "限期拆除" in mine[2]
    assert row["doc_no"] in mine[3]
    assert mine[4] > 300                                   # days past a 2020 deadline
    assert ws.page_setup.orientation == "landscape" and ws.print_title_rows == "$1:$1"
    # an unknown column is refused with one line naming it
    cfg.write_text("ledger:\n  columns: [case_no, 违法面积]\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--config", str(cfg), "--store", s.store.url, "cases",
                        "export", "--out", str(tmp_path / "bad.xlsx")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "'违法面积' is not a ledger field" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_template_cannot_make_the_renderer_fetch_anything(doc_store, tmp_path):
    """Nothing downloads at run time: a template naming a web address or a file outside its
    folder renders without them."""
    import http.server
    import threading

    from pipeline.report.documents import issue_document
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    store, s, no = doc_store
    tpl = tmp_path / "documents"
    shutil.copytree(ROOT / "config" / "documents", tpl)
    secret = tmp_path / "secret.png"
    shutil.copy(ROOT / "docs" / "img" / "document_sheet.png", secret)
    base = tpl / "base.html"
    base.write_text(base.read_text(encoding="utf-8").replace(
        "<body>", f'<body><img src="http://127.0.0.1:{srv.server_port}/leak.png"><img src="{secret.as_uri()}">'
                  f'<link rel="stylesheet" href="http://127.0.0.1:{srv.server_port}/x.css">'), encoding="utf-8")
    try:
        settings = load_settings(overrides={"store.url": s.store.url, "documents.template_dir": str(tpl)})
        _, pdf = issue_document(store, settings, load_rules(settings.rules_path), "stop_notice", no, "t")
    finally:
        srv.shutdown()
        srv.server_close()
    assert pdf[:5] == b"%PDF-" and hits == []
    plain = issue_document(store, s, load_rules(s.rules_path), "stop_notice", no, "t", fields=None)[1]
    assert abs(len(pdf) - len(plain)) < 20_000               # the outside picture was not embedded


@pytest.mark.parametrize("payload", [
    "{{ party.__class__.__mro__[1].__subclasses__() }}",              # to Popen through object
    "{{ (party|attr('__class__')).__base__.__subclasses__() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",             # a global's module globals
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_a_template_cannot_reach_python(doc_store, tmp_path, payload):
    """Document templates run sandboxed: one that reaches for Python's internals (and from there a
    process or a file) is refused in one line when it prints, and no number is spent."""
    from pipeline.core.errors import PatrolError
    from pipeline.report.documents import issue_document
    store, s, no = doc_store
    tpl = tmp_path / "documents"
    shutil.copytree(ROOT / "config" / "documents", tpl)
    stop = tpl / "stop_notice.html"
    text = stop.read_text(encoding="utf-8")
    assert "{% block body %}" in text
    stop.write_text(text.replace("{% block body %}", "{% block body %}" + payload, 1),
                    encoding="utf-8")
    settings = load_settings(overrides={"store.url": s.store.url, "documents.template_dir": str(tpl)})
    before = len(store.documents())
    with pytest.raises(PatrolError) as e:
        issue_document(store, settings, load_rules(settings.rules_path), "stop_notice", no, "t")
    line = str(e.value)
    assert len(line.splitlines()) == 1 and "stop_notice.html" in line, line
    assert "uid=" not in line and "subprocess" not in line.lower() and "Popen" not in line
    assert len(store.documents()) == before


def test_a_document_issued_before_a_field_existed_prints_again(doc_store):
    """An upgrade adds fields to the templates; a document recorded without them still prints
    (the new fields empty) and is reported as differing from the issued file."""
    from pipeline.report.documents import issue_document, reprint_document
    store, s, no = doc_store
    rules = load_rules(s.rules_path)
    row, pdf = issue_document(store, s, rules, "stop_notice", no, "t")
    old = {k: v for k, v in row["fields"].items() if k not in ("id_number", "address", "site_photo")}
    issue = issue_document(store, s, rules, "stop_notice", no, "t", fields=old)[0]
    _, again, same = reprint_document(store, s, issue["doc_no"])
    assert again[:5] == b"%PDF-" and same                   # stored without them: re-printed the same way


@pytest.mark.skipif(shutil.which("fc-list") is None, reason="fontconfig's fc-list is not installed")
def test_no_chinese_font_is_one_line_and_nothing_is_numbered(doc_store, tmp_path, monkeypatch, capsys):
    """Where fontconfig knows no Chinese font (here: a fontconfig file with no font folder) a
    document would print as empty boxes: `patrol docs` refuses with one line naming the package,
    and no number is used up."""
    from pipeline.cli import main
    from pipeline.report.documents import check_chinese_font
    store, s, no = doc_store
    before = len(store.documents())
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    f'<cachedir>{tmp_path / "cache"}</cachedir></fontconfig>')
    monkeypatch.setenv("FONTCONFIG_FILE", str(conf))
    check_chinese_font.cache_clear()
    try:
        assert main(["--store", s.store.url, "docs", "stop_notice", no, "--out", str(tmp_path / "n.pdf")]) == 2
    finally:
        monkeypatch.delenv("FONTCONFIG_FILE")
        check_chinese_font.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fonts-noto-cjk" in err[0] and "Traceback" not in err[0], err
    assert len(store.documents()) == before and not (tmp_path / "n.pdf").exists()
    assert main(["--store", s.store.url, "docs", "stop_notice", no, "--out", str(tmp_path / "n.pdf")]) == 0
