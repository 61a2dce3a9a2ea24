"""The engine contract, checked the same way for every engine in the registry.

Adding an engine is one folder plus one line in ``ENGINE_MODULES``; this file is what
tells its author whether the folder keeps the contract (see docs/developers.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_kaizen import run_to_end
from napari_kaizen.engines import ENGINE_MODULES, Engine, get_engine, learned_engines
from napari_kaizen.engines._common.snapshots import SegmentationSnapshot, Snapshot, TrainingSnapshot
from napari_kaizen.errors import EngineNotAvailableError, OverwriteError

ENGINES = list(ENGINE_MODULES)
#: The keywords every learned engine's ``finetune`` takes (the panel and the CLI use only these).
FINETUNE_KEYWORDS = ("model", "regions", "steps", "learning_rate", "device", "output", "overwrite", "description")


@pytest.fixture(scope="module")
def field():
    from napari_kaizen.data import synthesize

    return synthesize(seed=10_321, shape=(96, 96), density=0.3)


def _input(engine, field):
    return field.label_free if engine.input_kind == "label-free" else field.nuclei


@pytest.mark.parametrize("name", ENGINES)
def test_declared_names(name):
    engine = get_engine(name)
    assert isinstance(engine, Engine)
    assert engine.name == name and engine.title
    params = engine.Params()
    assert dataclasses.is_dataclass(params) and "diameter" in {f.name for f in dataclasses.fields(params)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.diameter = 3  # type: ignore[misc]
    from napari_kaizen.engines._common.loaded import INPUT_KINDS

    assert engine.input_kind in INPUT_KINDS


@pytest.mark.parametrize("name", ENGINES)
def test_segment_yields_snapshots_ending_in_labels_on_the_input_grid(name, field):
    engine = get_engine(name)
    image = _input(engine, field)
    snaps = list(engine.segment(image, engine.Params(), device="cpu"))
    assert snaps and all(isinstance(s, Snapshot) for s in snaps)
    progress = [float(s.progress) for s in snaps]
    assert progress == sorted(progress) and progress[-1] == 1.0
    last = snaps[-1]
    assert isinstance(last, SegmentationSnapshot) and last.done
    assert last.labels.shape == image.shape and last.labels.dtype.kind in "iu"
    from napari_kaizen import metrics

    # Not only "it ran": the default model finds the nuclei of a plain synthetic field.
    assert metrics.average_precision(field.nucleus_labels, last.labels)[0.5] > 0.5


@pytest.mark.parametrize("name", ENGINES)
def test_models_one_type_one_device_rule(name):
    from napari_kaizen.engines._common.loaded import LoadedModel
    from napari_kaizen.engines.registry import list_models

    engine = get_engine(name)
    if not engine.learned:
        with pytest.raises(EngineNotAvailableError):
            engine.load_model()
        with pytest.raises(EngineNotAvailableError):
            engine.finetune(np.zeros((8, 8)), np.zeros((8, 8), int))
        with pytest.raises(EngineNotAvailableError):
            engine.segment(np.zeros((8, 8)), model="bundled:x")
        return
    model = engine.load_model(engine.default_model, "cpu")
    assert isinstance(model, LoadedModel) and str(model.device) == "cpu"
    assert model.to("cpu") is model  # moves in place, returns itself
    assert engine.load_model(model, "auto") is model  # 'auto' leaves a loaded model where it is
    assert engine.load_model(model, "cpu") is model
    assert model.object_diameter and model.object_diameter > 0
    entries = {m.spec: m for m in list_models(name)}
    assert engine.default_model in entries
    assert entries[engine.default_model].input_kind == engine.input_kind
    assert model.metadata["architecture"] == engine.architecture


@pytest.mark.parametrize("name", learned_engines())
def test_finetune_same_call_writes_a_model_the_engine_segments_with(name, field, tmp_path):
    engine = get_engine(name)
    params = inspect.signature(engine.module.finetune).parameters
    assert list(params)[:2] == ["images", "labels"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in FINETUNE_KEYWORDS)
    image = _input(engine, field)
    region = np.zeros(image.shape, bool)
    region[:, :48] = True
    out = tmp_path / f"{name}_tuned.safetensors"
    snaps = list(engine.finetune(image, field.nucleus_labels, model=engine.default_model, regions=region, steps=2,
                                 learning_rate=1e-4, device="cpu", output=out, overwrite=False,
                                 description="contract test"))
    assert all(isinstance(s, TrainingSnapshot) for s in snaps) and snaps[-1].done
    assert snaps[-1].weights_path is not None and out.exists() and out.with_suffix(".json").exists()
    labels = run_to_end(engine.segment(image, model=str(out), device="cpu")).labels
    assert labels.shape == image.shape
    # Never over a file that exists.
    with pytest.raises(OverwriteError):
        list(engine.finetune(image, field.nucleus_labels, model=engine.default_model, steps=1, learning_rate=1e-4,
                             device="cpu", output=out))


@pytest.mark.parametrize("name", learned_engines())
def test_cli_hooks(name):
    from napari_kaizen.cli import build_parser

    parser = build_parser(train=True)
    args = parser.parse_args(["train", name, "--init", "bundled:x", "--images", "a.tif", "--labels", "b.tif",
                              "--regions", "c.tif", "--output", "m.safetensors"])
    assert args.init == "bundled:x" and args.regions == ["c.tif"] and callable(args.func)


def test_registry_and_engines_command(capsys):
    from napari_kaizen.cli import main

    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    for name in ENGINES:
        assert name in out
    assert "expects label-free" in out and "expects fluorescent nuclei" in out


def test_label_free_model_on_a_fluorescence_image_warns(tmp_path, field, capsys):
    import tifffile

    from napari_kaizen.cli import main

    src = tmp_path / "dapi.tif"
    tifffile.imwrite(src, field.nuclei)
    assert main(["segment", str(src), "--engine", "unet", "-o", str(tmp_path / "o.tif"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "looks like a fluorescence image" in err and "label-free" in err
    assert main(["segment", str(src), "--engine", "fcn", "-o", str(tmp_path / "p.tif"), "-q"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_model_of_another_engine_is_refused_in_one_line(tmp_path, field, capsys):
    import tifffile

    from napari_kaizen.cli import main

    src = tmp_path / "dapi.tif"
    tifffile.imwrite(src, field.nuclei)
    assert main(["segment", str(src), "--engine", "kaizen", "--model", "bundled:fcn_nuclei", "-o",
                 str(tmp_path / "o.tif"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "is a fcn model" in err and err.count("\n") == 0


def test_headless_import_loads_no_torch_and_no_qt():
    """Engines, the registry and the CLI's parser import neither torch nor Qt until a model is used."""
    code = (
        "import sys\n"
        "from napari_kaizen.engines import ENGINE_MODULES, get_engine\n"
        "from napari_kaizen.engines.registry import list_models\n"
        "from napari_kaizen.cli import build_parser\n"
        "for n in ENGINE_MODULES:\n"
        "    e = get_engine(n); e.Params(); e.title; e.input_kind\n"
        "assert list_models()\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_docstring_example_is_collected_by_pytest():
    """Doctests run through pytest's own collection of src/ (pyproject), not a hand-kept list."""
    root = Path(__file__).resolve().parents[1]
    config = (root / "pyproject.toml").read_text().split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    addopts = next(line for line in config.splitlines() if line.startswith("addopts"))
    testpaths = next(line for line in config.splitlines() if line.startswith("testpaths"))
    assert "--doctest-modules" in addopts and '"src"' in testpaths, config
    # Examples exist where the issue found them never run.
    for module in ("tiled.py", "engines/_common/instances.py", "api.py"):
        assert ">>> " in (root / "src" / "napari_kaizen" / module).read_text(), module
