"""One model metadata schema: every spelling of a model's JSON reads into one ModelMetadata."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from napari_kaizen.engines import ENGINE_MODULES, get_engine
from napari_kaizen.engines._common.metadata import (
    INPUT_KINDS,
    OUTPUT_KINDS,
    ModelMetadata,
    kind_keys,
    read_model_metadata,
    with_kind_keys,
)
from napari_kaizen.engines._common.weights import bundled_dir
from napari_kaizen.engines.registry import list_models
from napari_kaizen.errors import WeightsError

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_kaizen"


@pytest.mark.parametrize("path", sorted(bundled_dir().glob("*.json")), ids=lambda p: p.stem)
def test_every_bundled_json_reads_into_the_schema(path):
    meta = json.loads(path.read_text())
    info = read_model_metadata(meta)
    assert isinstance(info, ModelMetadata)
    assert info.architecture == meta["architecture"]
    assert info.output_kind in OUTPUT_KINDS
    assert info.object_diameter == pytest.approx(float(meta["object_diameter"]))
    assert info.percentiles == tuple(float(p) for p in meta["normalization"]["percentiles"])
    # What the older keys say is what the schema says.
    if "channel" in meta:
        assert info.input_kind == meta["channel"]
    if "input" in meta:
        assert meta["input"].startswith(info.input_kind)
    if meta.get("task") == "fluorescence":
        assert not info.segments


@pytest.mark.parametrize(("meta", "input_kind", "output_kind"), [
    ({"input_kind": "membrane", "output_kind": "cells"}, "membrane", "cells"),
    ({"channel": "membrane"}, "membrane", "cells"),
    ({"channel": "nuclei"}, "nuclei", "nuclei"),
    ({"input": "label-free (phase contrast, bright field or DIC), one channel", "target": "membrane",
      "task": "segmentation"}, "label-free", "cells"),
    ({"input": "label-free, one channel", "target": "nuclei", "task": "fluorescence"}, "label-free", "fluorescence"),
    # The current keys win over older ones.
    ({"input_kind": "nuclei", "channel": "membrane", "output_kind": "nuclei"}, "nuclei", "nuclei"),
    ({}, None, "nuclei"),
])
def test_every_spelling_is_read(meta, input_kind, output_kind):
    info = read_model_metadata(meta)
    assert (info.input_kind, info.output_kind) == (input_kind, output_kind)
    assert read_model_metadata(meta, default_input="label-free").input_kind == (input_kind or "label-free")


def test_bad_metadata_and_kinds_are_one_line():
    with pytest.raises(WeightsError, match="JSON object"):
        read_model_metadata(["not", "a", "mapping"])
    with pytest.raises(WeightsError, match="input kind 'dapi'"):
        kind_keys("dapi", "nuclei")
    assert with_kind_keys({"task": "fluorescence", "input": "label-free"}, default_input="nuclei") == {
        "task": "fluorescence", "input": "label-free", "input_kind": "label-free", "output_kind": "fluorescence"}


def test_a_loaded_model_knows_its_input_kind():
    """The U-Net's JSON says it in prose under ``input``; LoadedModel.input_kind used to be None."""
    model = get_engine("unet").load_model("bundled:unet_nuclei", device="cpu")
    assert model.input_kind == "label-free"
    assert get_engine("fcn").load_model("bundled:fcn_cells", device="cpu").input_kind == "membrane"


def test_the_registry_reads_the_schema():
    entries = [e for e in list_models() if e.source == "bundled"]
    assert entries
    for entry in entries:
        meta = json.loads((bundled_dir() / f"{entry.name}.json").read_text())
        info = read_model_metadata(meta, default_input=get_engine(entry.engine).input_kind)
        assert (entry.input_kind, entry.output_kind) == (info.input_kind, info.output_kind)
        assert entry.input_kind in INPUT_KINDS


def _name_branches(source: str) -> list[str]:
    """Comparisons of anything with an engine's name (``x == 'unet'``, ``x in ('fcn', ...)``)."""
    names = set(ENGINE_MODULES)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            consts = [c for c in sides if isinstance(c, ast.Constant)]
            consts += [e for s in sides if isinstance(s, (ast.Set, ast.Tuple, ast.List)) for e in s.elts
                       if isinstance(e, ast.Constant)]
            found += [f"line {node.lineno}: {c.value!r}" for c in consts if c.value in names]
    return found


@pytest.mark.parametrize("module", ["engines/registry.py", "tiled.py", "jobs.py", "widgets/_engine_widget.py",
                                    "widgets/_models.py"])
def test_no_branching_on_engine_names(module):
    """Which models read what, and which engines calibrate on crops, come from metadata and
    the engine packages, not from comparing an engine's name."""
    assert not _name_branches((SRC / module).read_text())


def test_the_check_sees_a_name_branch():
    assert _name_branches("if engine == 'unet':\n    pass\nok = name in {'fcn', 'x'}\n") == [
        "line 1: 'unet'", "line 3: 'fcn'"]


def test_a_finetuned_model_writes_the_current_keys(tmp_path):
    from napari_kaizen import run_to_end
    from napari_kaizen.data import synthesize

    field = synthesize(seed=4, shape=(96, 96), density=0.4)
    last = run_to_end(get_engine("fcn").finetune([field.nuclei], [field.nucleus_labels], model="bundled:fcn_nuclei",
                                                 steps=1, output=tmp_path / "tuned.safetensors", device="cpu"))
    meta = json.loads(Path(last.weights_path).with_suffix(".json").read_text())
    assert (meta["input_kind"], meta["output_kind"]) == ("nuclei", "nuclei")
    assert np.isfinite(last.loss)
