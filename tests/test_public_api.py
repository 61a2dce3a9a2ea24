"""The public API (``napari_kaizen.segment`` / ``iter_segment`` / ``finetune``) and who uses it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_kaizen
from napari_kaizen.engines import get_engine
from napari_kaizen.errors import EngineNotAvailableError, KaizenError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "napari_kaizen" / "data" / "samples" / "nuclei.tif"


@pytest.fixture(scope="module")
def image():
    return tifffile.imread(SAMPLE)


def test_the_package_exports_the_api_and_stays_light():
    assert {"segment", "iter_segment", "finetune"} <= set(napari_kaizen.__all__)
    code = ("import sys, napari_kaizen\n"
            "heavy = [m for m in ('torch', 'napari', 'qtpy', 'dask', 'zarr') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert done.returncode == 0, done.stderr


def test_segment_is_the_engine_run_to_its_end(image):
    engine = get_engine("classical")
    direct = napari_kaizen.run_to_end(engine.segment(image, engine.Params(diameter=12.0))).labels
    labels = napari_kaizen.segment(image, engine="classical", diameter="12")
    assert isinstance(labels, np.ndarray) and labels.shape == image.shape and labels.max() > 10
    np.testing.assert_array_equal(labels, direct)
    snaps = list(napari_kaizen.iter_segment(image, engine="classical", params=engine.Params(), diameter=12))
    assert len(snaps) > 1 and snaps[-1].done and 0 < snaps[0].progress <= snaps[-1].progress == 1.0
    np.testing.assert_array_equal(snaps[-1].labels, direct)


def test_the_api_says_what_is_wrong_in_one_line(image):
    with pytest.raises(KaizenError, match="invalid parameters for the classical engine") as exc:
        napari_kaizen.segment(image, engine="classical", no_such_param=1)
    assert "\n" not in str(exc.value)
    with pytest.raises(KaizenError, match="--diameter|diameter 'big'"):
        napari_kaizen.segment(image, engine="classical", diameter="big")
    with pytest.raises(EngineNotAvailableError, match="unknown engine 'nope'"):
        napari_kaizen.segment(image, engine="nope")
    with pytest.raises(EngineNotAvailableError, match="uses no model"):
        napari_kaizen.segment(image, engine="classical", model="bundled:fcn_nuclei")
    with pytest.raises(EngineNotAvailableError, match="no model to fine-tune"):
        napari_kaizen.finetune([image], [np.zeros(image.shape, np.int32)], engine="classical")


def test_finetune_is_the_engines_generator(image):
    gen = napari_kaizen.finetune([image], [np.zeros(image.shape, np.int32)], engine="fcn", steps=1)
    assert hasattr(gen, "send") and hasattr(gen, "close")
    gen.close()  # nothing ran: generators start on the first next()


def _python_files() -> list[Path]:
    return [p for folder in ("tests", "benchmarks", "scripts") for p in sorted((ROOT / folder).rglob("*.py"))]


def _private_run_to_end(path: Path) -> list[int]:
    """Lines of ``path`` that import run_to_end from the engines' private ``_common``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and "_common" in (node.module or ""):
            if any(alias.name == "run_to_end" for alias in node.names):
                lines.append(node.lineno)
    return lines


def test_nothing_outside_the_engines_drives_them_through_the_private_common_module():
    files = _python_files()
    assert len(files) > 30
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files for n in _private_run_to_end(p)]
    assert not found, "import run_to_end from napari_kaizen (the public API) instead: " + ", ".join(found)
    # Documentation examples show the public API only.
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    private = [f"{p.relative_to(ROOT)}:{i}" for p in docs for i, line in enumerate(p.read_text().splitlines(), 1)
               if re.match(r"\s*(from|import) napari_kaizen\.engines\._common", line)]
    assert not private, private


def test_the_check_sees_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from napari_kaizen.engines._common.snapshots import relay, run_to_end\n")
    assert _private_run_to_end(bad) == [2]


def test_the_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "napari_kaizen.segment(" in b)
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "mAP" in out or "AP" in out
