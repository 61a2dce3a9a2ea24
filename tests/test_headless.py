"""A headless core (issue 26, E3): the package, ``kaizen segment`` (plain and on dask) and
``kaizen evaluate`` run with napari, Qt, magicgui and matplotlib absent, and the packaging
keeps them out of the core dependencies."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_kaizen
from napari_kaizen.data._sample_data import NUCLEI_SAMPLE, NUCLEI_SAMPLE_LABELS

ROOT = Path(__file__).resolve().parents[1]
GUI = ("napari", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy",
       "matplotlib", "app_model")

# Runs in a fresh interpreter in which importing any GUI package fails as if it were not installed,
# then reports which GUI modules got imported anyway (none can: the report proves the code never asked).
SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    GUI = set({gui!r})
    asked = []

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in GUI:
                asked.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: headless test)", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import napari_kaizen
    from napari_kaizen.cli import main

    out = {out!r}
    codes = [
        main(["segment", {sample!r}, "-o", out + "/plain.tif", "-q", "--measurements", "--rois", "--geojson"]),
        main(["segment", {sample!r}, "-o", out + "/fcn.tif", "-q", "--engine", "fcn", "--device", "cpu"]),
        main(["segment", {sample!r}, "-o", out + "/dask", "-q", "--scheduler", "threads"]),
        main(["evaluate", {truth!r}, out + "/plain.tif"]),
    ]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in GUI)
    print("REPORT " + json.dumps({{"codes": codes, "asked": asked, "loaded": loaded, "package": napari_kaizen.__file__}}))
""")


@pytest.mark.slow
def test_cli_runs_without_napari_qt_magicgui_matplotlib(tmp_path):
    script = SCRIPT.format(gui=GUI, out=str(tmp_path), sample=str(NUCLEI_SAMPLE), truth=str(NUCLEI_SAMPLE_LABELS))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])
    assert report["package"] == napari_kaizen.__file__  # the code under test, not another install
    assert report["codes"] == [0, 0, 0, 0], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert report["asked"] == [] and report["loaded"] == [], report
    assert (tmp_path / "plain.geojson").exists() and (tmp_path / "fcn.tif").exists()
    assert list((tmp_path / "dask").glob("*.tif"))
    assert "mAP" in proc.stdout


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_core_dependencies_leave_the_gui_to_the_napari_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    gui = {g.lower() for g in GUI}
    assert not core & gui, core & gui
    extras = project["optional-dependencies"]
    assert {"napari", "npe2", "magicgui", "qtpy", "matplotlib"} <= _requirement_names(extras["napari"])
    # No Qt binding in the plugin's own extra (napari's advice: the user chooses one).
    assert not _requirement_names(extras["napari"]) & {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert any(r.startswith("napari-kaizen[") and "napari" in r for r in extras["testing"])
    # The plugin is still one distribution napari finds: its manifest entry point and classifier.
    assert project["entry-points"]["napari.manifest"] == {"napari-kaizen": "napari_kaizen:napari.yaml"}
    assert "Framework :: napari" in project["classifiers"]
