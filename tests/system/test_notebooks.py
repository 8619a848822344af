"""Each notebook in notebooks/ runs top to bottom (nbclient, this venv's ipykernel) in a temp
folder, under a minute, with no error cell; the committed notebooks carry no outputs."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 60
MODEL_NOTEBOOKS = {"03_model_evaluation.ipynb"}


def _model_path() -> Path:
    from pipeline.core.config import load_settings
    return load_settings().model_path


def _run(path: Path, work: Path, monkeypatch) -> tuple[nbformat.NotebookNode, float]:
    monkeypatch.setenv("PATROL_NB_WORK", str(work))       # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # this venv's kernelspec first (its "python" runs as sys.executable), whatever a user registered
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}}, allow_errors=False)
    t0 = time.monotonic()
    client.execute()
    return nb, time.monotonic() - t0


def test_notebooks_are_committed_stripped():
    assert [p.name for p in NOTEBOOKS] == ["01_walkthrough.ipynb", "02_review.ipynb",
                                          "03_model_evaluation.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        for c in code:
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: cell {c.id} has outputs"
        assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    if path.name in MODEL_NOTEBOOKS and not _model_path().is_file():
        pytest.skip(f"{path.name} evaluates the detector and its weights {_model_path()} are absent "
                    f"(train and ship them: patrol train --ship, or set PATROL__DETECTOR__MODEL)")
    nb, seconds = _run(path, tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    assert seconds < TIMEOUT_S, f"{path.name} took {seconds:.0f} s"
    # real results came out: figures, and (walkthrough) the inline offline map
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    if path.name == "01_walkthrough.ipynb":
        pages = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})
                 and "<iframe srcdoc=" in o["data"]["text/html"]]
        assert pages, "the walkthrough shows no inline map"
        assert "L.map(" in pages[0] or "L.map(" in pages[0].replace("&quot;", '"')
        assert "https://unpkg.com" not in pages[0] and "cdn.jsdelivr" not in pages[0]
        assert "data:image/png;base64," in pages[0]                  # the orthophoto travels inline
        assert (tmp_path / "01_walkthrough" / "map" / "map_district.html").is_file()
    if path.name == "02_review.ipynb":
        assert (tmp_path / "02_review" / "export" / "cases_all.xlsx").is_file()
