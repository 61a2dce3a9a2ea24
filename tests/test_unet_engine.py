"""ISL U-Net engine: model, targets, lambda, tiling, post-processing, errors, weights, accuracy."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data import random_params  # noqa: E402
from napari_kaizen.engines import get_engine, unet  # noqa: E402
from napari_kaizen.engines._common.weights import bundled_dir  # noqa: E402
from napari_kaizen.engines.unet.model import build_model  # noqa: E402
from napari_kaizen.engines.unet.postprocess import instances  # noqa: E402
from napari_kaizen.engines.unet.targets import balance_lambda, distance_map, segmentation_targets  # noqa: E402
from napari_kaizen.engines.unet.training import initial_lambda, segmentation_batches, synthetic_pairs  # noqa: E402
from napari_kaizen.errors import InputError, OverwriteError, WeightsError  # noqa: E402
from napari_kaizen.metrics import evaluate, pcc  # noqa: E402

TINY = {"base_channels": 4, "depth": 3, "max_channels": 8, "head_channels": 4}


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny segmentation U-Net written as weights (random init: for plumbing, not accuracy)."""
    from napari_kaizen.engines._common.weights import save_weights

    torch.manual_seed(0)
    net = build_model({**TINY, "segmentation": True}).eval()
    path = tmp_path_factory.mktemp("w") / "tiny"
    meta = {"architecture": unet.ARCHITECTURE, "config": net.config, "object_diameter": 17.0,
            "normalization": {"percentiles": [1.0, 99.8]}, "target": "nuclei", "task": "segmentation",
            "training": {"reproduce": "test fixture"}}
    save_weights(path, net.state_dict(), meta)
    return path


# --------------------------------------------------------------------------- protocol


def test_engine_protocol_exports():
    eng = get_engine("unet")
    assert eng.title == "U-Net (ISL)" == unet.TITLE
    assert eng.default_model == "bundled:unet_nuclei" == unet.DEFAULT_MODEL
    assert eng.params_class is unet.UNetParams
    p = unet.Params()
    assert p.diameter is None and 0 < p.h < 1
    for name in ("segment", "load_model", "finetune", "pretrain"):
        assert callable(getattr(unet, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.h = 0.3  # frozen


# --------------------------------------------------------------------------- model


def test_model_shapes_and_head():
    torch.manual_seed(0)
    fluo = build_model({"segmentation": False}).eval()
    x = torch.randn(2, 1, 64, 80)
    assert fluo(x).shape == (2, 1, 64, 80)
    assert fluo.stride == 16
    seg = fluo.with_head()
    assert seg.segmentation and seg.eval()(x).shape == (2, 3, 64, 80)
    # The trunk is carried over exactly: channel 0 of the segmentation model is the ISL output.
    with torch.no_grad():
        assert torch.allclose(seg(x)[:, :1], fluo(x), atol=1e-6)
    # Encoder deep enough for 512 px crops: 5 levels, a few MB of float32 weights.
    n = sum(p.numel() for p in seg.parameters())
    assert len(seg.trunk.widths) == 5 and n * 4 < 5e6
    # Odd sizes still come back at input size.
    assert build_model(TINY).eval()(torch.randn(1, 1, 37, 50)).shape == (1, 1, 37, 50)
    with pytest.raises(ValueError, match="unknown U-Net config"):
        build_model({"channels": 3})


# --------------------------------------------------------------------------- targets / loss


def test_distance_map_is_normalised_per_object():
    lab = np.zeros((60, 90), np.int32)
    lab[_disc(lab.shape, 30, 20, 12)] = 1  # big
    lab[_disc(lab.shape, 30, 60, 5)] = 2  # small
    lab[5:15, 75:85] = 3
    lab[15:25, 75:85] = 4  # touches 3 along a line
    d = distance_map(lab)
    assert d.dtype == np.float32 and d.shape == lab.shape
    assert (d[lab == 0] == 0).all()
    for i in range(1, 5):
        assert d[lab == i].max() == pytest.approx(1.0)  # every object peaks at 1, whatever its size
        assert d[lab == i].min() > 0
    # The contact line between 3 and 4 is a valley, not a plateau.
    assert d[14, 80] < 0.3 and d[15, 80] < 0.3 and d[10, 80] > 0.8
    # Distance grows toward the centre.
    assert d[30, 20] > d[30, 28] > d[30, 31]
    t = segmentation_targets(lab)
    assert t.shape == (2, 60, 90) and set(np.unique(t[1])) == {0.0, 1.0}


def test_lambda_is_the_initial_ratio_and_measuring_changes_nothing(small_field):
    assert balance_lambda(0.2, 0.8) == pytest.approx(0.25)
    assert balance_lambda(2000.0, 1.0) == pytest.approx(2000.0)  # the paper's 8-bit case
    assert balance_lambda(float("nan"), 1.0) == 1.0
    torch.manual_seed(0)
    net = build_model({**TINY, "segmentation": True})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.asarray(small_field.label_free, np.float32)
    x = (x - x.mean()) / x.std()
    batches = segmentation_batches([x], [small_field.nucleus_labels], rng=np.random.default_rng(0),
                                   batch_size=2, crop=64)
    lam, mse0, bce0 = initial_lambda(net, batches, torch.device("cpu"), n_batches=2)
    assert lam == pytest.approx(mse0 / bce0) and mse0 > 0 and bce0 > 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_augmented_batches_keep_targets_consistent(small_field):
    batches = segmentation_batches([np.asarray(small_field.label_free, np.float32)], [small_field.nucleus_labels],
                                   rng=np.random.default_rng(1), batch_size=3, crop=64)
    x, t = next(batches)
    assert x.shape == (3, 1, 64, 64) and t.shape == (3, 2, 64, 64)
    assert np.all((t[:, 0] > 0) <= (t[:, 1] > 0))  # distance only inside the mask
    assert t[:, 0].max() <= 1.0 + 1e-6


# --------------------------------------------------------------------------- post-processing


def test_hmaxima_watershed_splits_touching_objects_and_ignores_bumps():
    lab = np.zeros((64, 96), np.int32)
    lab[_disc(lab.shape, 32, 30, 14)] = 1
    lab[_disc(lab.shape, 32, 54, 12) & (lab == 0)] = 2  # touching the first
    lab[_disc(lab.shape, 12, 82, 7)] = 3
    d = distance_map(lab)
    bumpy = d + 0.06 * _disc(lab.shape, 26, 24, 2)  # a shallow second peak inside object 1
    seeds, out = instances(bumpy, (lab > 0).astype(np.float32), h=0.12, min_area=10)
    assert seeds.max() == 3 and out.max() == 3
    assert evaluate([lab], [out]).ap50 == 1.0
    # A predicted map does not peak at exactly 1 everywhere: lower object 2's peak. An h
    # above its dynamic (0.85 minus the saddle) merges it into object 1; a small h splits.
    uneven = np.where(lab == 2, 0.85 * d, d)
    _, merged = instances(uneven, (lab > 0).astype(np.float32), h=0.9, min_area=10)
    assert merged.max() == 2
    _, split = instances(uneven, (lab > 0).astype(np.float32), h=0.12, min_area=10)
    assert split.max() == 3
    # Small objects are removed.
    _, big_only = instances(d, (lab > 0).astype(np.float32), h=0.12, min_area=200)
    assert big_only.max() == 2
    # Empty mask: empty labels.
    _, none = instances(d, np.zeros_like(d), h=0.12, min_area=10)
    assert none.max() == 0 and none.dtype == np.int32


# --------------------------------------------------------------------------- segment


def test_segment_yields_tiles_maps_seeds_labels(small_field, tiny_weights):
    snaps = list(unet.segment(small_field.label_free, model=str(tiny_weights), device="cpu"))
    stages = [s.stage for s in snaps]
    assert stages[0] == "tiles" and "maps" in stages and "seeds" in stages and stages[-1] == "labels"
    assert stages.index("maps") < stages.index("seeds") < len(stages) - 1
    progress = [s.progress for s in snaps]
    assert progress == sorted(progress) and progress[-1] == 1.0
    maps = next(s for s in snaps if s.stage == "maps").maps
    assert set(maps) == {"fluorescence", "distance", "mask"}
    assert all(m.shape == small_field.label_free.shape for m in maps.values())
    last = snaps[-1]
    assert last.done and last.labels.dtype == np.int32 and last.labels.shape == (128, 128)


def test_tiled_equals_untiled(tiny_weights):
    from napari_kaizen.data import synthesize

    img = synthesize(seed=10_400, shape=(300, 260)).label_free
    model = unet.load_model(str(tiny_weights), device="cpu")
    whole = run_to_end(unet.segment(img, unet.Params(window=512), model=model))
    tiled_snaps = list(unet.segment(img, unet.Params(window=96, overlap=48), model=model))
    n_tiles = sum(1 for s in tiled_snaps if s.stage == "tiles" and "tile" in s.message)
    assert n_tiles >= 9  # the image really needed several tiles
    a = next(s for s in tiled_snaps if s.stage == "maps").maps
    b = whole.maps
    for key in ("fluorescence", "distance", "mask"):
        diff = np.abs(a[key] - b[key])
        scale = float(np.ptp(b[key])) or 1.0
        # Differences come only from zero padding near tile borders, damped by the blending ramp.
        assert diff.mean() / scale < 0.01, key
        assert np.percentile(diff, 99) / scale < 0.06, key


def test_rescaling_by_diameter_returns_input_grid(small_field, tiny_weights):
    last = run_to_end(unet.segment(small_field.label_free, unet.Params(diameter=30.0), model=str(tiny_weights),
                                   device="cpu"))
    assert last.labels.shape == small_field.label_free.shape
    assert "rescaled" in last.message


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((64, 64, 3), np.uint8) + np.arange(3, dtype=np.uint8), "RGB"),
        (np.random.default_rng(0).random((3, 64, 64)), "stack"),
        (np.full((64, 64), 7.0), "constant"),
        (np.full((64, 64), np.nan), "no finite pixels"),
        (np.random.default_rng(0).random((5, 40)), "too small"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_images_give_one_line_errors(image, match, tiny_weights):
    with pytest.raises(InputError, match=match) as info:
        run_to_end(unet.segment(image, model=str(tiny_weights), device="cpu"))
    assert "\n" not in str(info.value)


def test_bad_params_and_devices():
    with pytest.raises(InputError, match="h must be"):
        unet.Params(h=1.5)
    with pytest.raises(InputError, match="overlap"):
        unet.Params(window=64, overlap=64)
    with pytest.raises(InputError, match="params must be UNetParams"):
        run_to_end(unet.segment(np.random.default_rng(0).random((32, 32)), {"h": 0.1}))
    from napari_kaizen.errors import DeviceError

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            unet.load_model("bundled:unet_isl_nuclei", device="cuda")


def test_missing_and_mismatched_weights(tmp_path, tiny_weights):
    with pytest.raises(WeightsError, match="not found"):
        unet.load_model(tmp_path / "nothing.safetensors", device="cpu")
    with pytest.raises(WeightsError, match="no bundled model"):
        unet.load_model("bundled:no_such_model", device="cpu")
    with pytest.raises(WeightsError, match="model must be"):
        unet.load_model(42, device="cpu")
    # JSON missing beside the tensors.
    lone = tmp_path / "lone.safetensors"
    shutil.copy(tiny_weights.with_suffix(".safetensors"), lone)
    with pytest.raises(WeightsError, match="metadata file"):
        unet.load_model(lone, device="cpu")
    # A JSON for another architecture.
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_weights.with_suffix(suffix), (tmp_path / "other").with_suffix(suffix))
    meta = json.loads((tmp_path / "other.json").read_text())
    meta["architecture"] = "googlenet_fcn"
    (tmp_path / "other.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="needs 'unet_isl'"):
        unet.load_model(tmp_path / "other", device="cpu")
    # A config that does not fit the tensors.
    meta["architecture"] = "unet_isl"
    meta["config"]["base_channels"] = 8
    (tmp_path / "other.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not fit"):
        unet.load_model(tmp_path / "other", device="cpu")
    # Tensors swapped under a JSON (checksum).
    shutil.copy(bundled_dir() / "unet_isl_nuclei.safetensors", tmp_path / "swapped.safetensors")
    shutil.copy(tiny_weights.with_suffix(".json"), tmp_path / "swapped.json")
    with pytest.raises(WeightsError, match="checksum"):
        unet.load_model(tmp_path / "swapped", device="cpu")


def test_finetune_bad_inputs(small_field, tmp_path, tiny_weights):
    img, lab = small_field.label_free, small_field.nucleus_labels
    cases = [
        (dict(images=img, labels=lab[:100]), "shape"),
        (dict(images=img, labels=np.zeros_like(lab)), "no objects"),
        (dict(images=img, labels=lab > 0), "boolean"),
        (dict(images=[img, img], labels=[lab]), "one label image per image"),
        (dict(images=[], labels=[]), "at least one"),
        (dict(images=img, labels=lab, crop=100), "multiple of 16"),
        (dict(images=img, labels=lab, learning_rate=5), "learning_rate"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InputError, match=match) as info:
            run_to_end(unet.finetune(model=str(tiny_weights), steps=1, device="cpu", **kwargs))
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- training


def test_finetune_writes_weights_refuses_overwrite_and_cancel_writes_nothing(small_field, tmp_path, tiny_weights):
    img, lab = small_field.label_free, small_field.nucleus_labels
    out = tmp_path / "ft"
    snaps = list(unet.finetune(img, lab, model=str(tiny_weights), steps=3, batch_size=2, crop=64, device="cpu",
                               output=out, description="test"))
    assert snaps[0].stage == "start" and "lambda" in snaps[0].components
    last = snaps[-1]
    assert last.done and last.weights_path == out.with_suffix(".safetensors") and last.weights_path.exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["architecture"] == "unet_isl" and meta["config"]["segmentation"] is True
    for key in ("object_diameter", "normalization", "training"):
        assert key in meta
    assert meta["training"]["reproduce"] and meta["training"]["init"]["kind"] == "segmentation"
    assert meta["training"]["lambda"] == pytest.approx(snaps[0].components["lambda"])
    # The fine-tuned weights load and segment.
    assert run_to_end(unet.segment(img, model=out, device="cpu")).done
    # An existing output is refused before any training.
    mtime = out.with_suffix(".safetensors").stat().st_mtime_ns
    gen = unet.finetune(img, lab, model=str(tiny_weights), steps=3, device="cpu", output=out)
    with pytest.raises(OverwriteError):
        next(gen)
    assert out.with_suffix(".safetensors").stat().st_mtime_ns == mtime
    # Cancelling (closing the generator) mid-training writes nothing.
    gen = unet.finetune(img, lab, model=str(tiny_weights), steps=50, batch_size=2, crop=64, device="cpu",
                        output=tmp_path / "cancelled")
    for snap in gen:
        if snap.stage == "training":
            break
    gen.close()
    assert not (tmp_path / "cancelled.safetensors").exists() and not (tmp_path / "cancelled.json").exists()


def test_finetune_from_scratch_and_from_isl(small_field):
    img, lab = small_field.label_free, small_field.nucleus_labels
    model = run_to_end_value(unet.finetune(img, lab, model="scratch", config=TINY, steps=2, batch_size=2, crop=64,
                                           device="cpu"))
    assert model.segmentation and model.metadata["training"]["init"]["kind"] == "random"
    model = run_to_end_value(unet.finetune(img, lab, model="bundled:unet_isl_nuclei", steps=1, batch_size=1,
                                           crop=64, device="cpu"))
    assert model.segmentation and model.metadata["training"]["init"]["kind"] == "isl"
    # Fine-tuning starts from the ISL trunk, not from random weights.
    isl = unet.load_model("bundled:unet_isl_nuclei", device="cpu")
    assert model.metadata["training"]["init"]["sha256"] == isl.metadata["sha256"]


def run_to_end_value(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_pretrain_tiny_run_reports_pcc(tmp_path):
    snaps = list(unet.pretrain(n_fields=2, field_shape=(64, 64), steps=2, batch_size=2, crop=32, val_fields=1,
                               config=TINY, device="cpu", output=tmp_path / "isl"))
    assert snaps[-1].done and "pcc" in snaps[-1].validation
    meta = json.loads((tmp_path / "isl.json").read_text())
    assert meta["task"] == "fluorescence" and meta["target"] == "nuclei"
    assert meta["training"]["loss"] == "L1"
    with pytest.raises(InputError, match="unknown ISL target"):
        next(unet.pretrain(target="actin"))


# --------------------------------------------------------------------------- bundled weights / accuracy


#: Held-out fields for the accuracy checks (256 x 256, random_params, all modalities):
#: seeds no training, pretraining validation or experiment ever used (training
#: 0..2005, pretraining validation 10 000..10 007, experiment 10 100..10 155).
AP_SEEDS = tuple(range(10_500, 10_504))


def test_bundled_weights_are_small_and_documented():
    for name in ("unet_isl_nuclei", "unet_isl_membrane", "unet_nuclei"):
        tensors = bundled_dir() / f"{name}.safetensors"
        assert tensors.exists() and tensors.stat().st_size < 5e6, name
        meta = json.loads((bundled_dir() / f"{name}.json").read_text())
        assert meta["architecture"] == "unet_isl"
        assert "reproduce" in meta["training"] and meta["object_diameter"] > 5


def test_bundled_pretrained_predicts_fluorescence():
    """ISL: PCC of the predicted vs the measured DAPI-like channel on 16 held-out pairs.

    Issue 6 asks for PCC >= 0.9 (the paper: 0.95 +- 0.08 on real DAPI). Measured on these
    fields (benchmarks/isl_pcc.py, 3000 pretraining steps): 0.913 +- 0.040 overall;
    phase contrast 0.921, bright field 0.932, DIC 0.898 (eight fields). The 1500-step
    model (0.896 overall, DIC 0.873) fails the first assertion.
    """
    seeds = tuple(range(10_500, 10_516))
    pairs = synthetic_pairs(seeds, "nuclei")
    modality = [random_params(np.random.default_rng(s), shape=(256, 256), real_world=False).label_free for s in seeds]
    model = unet.load_model("bundled:unet_isl_nuclei", device="cpu")
    values = np.array([pcc(run_to_end(unet.segment(x, model=model)).maps["fluorescence"], y) for x, y, _ in pairs])
    dic = np.array([m == "dic" for m in modality])
    assert values.mean() >= 0.9, values
    assert values[dic].mean() >= 0.88, values


def test_bundled_finetuned_model_accuracy():
    """AP50 of the bundled fine-tuned model on held-out label-free fields.

    Measured 0.684 on these four fields (0.644 on twelve held-out fields,
    benchmarks/unet_accuracy.py; the first bundled model, from 1500 pretraining steps,
    scored 0.649). The threshold 0.6 fails the same recipe fine-tuned without any DIC
    image (0.519 here: its DIC field scored 0.04), so it catches a model that does not
    generalise across the label-free modalities. (The ISL model alone, with a classical
    watershed of its predicted DAPI, scores 0.676 here: see docs/unet.md.)
    """
    pairs = synthetic_pairs(AP_SEEDS, "nuclei")
    model = unet.load_model(unet.DEFAULT_MODEL, device="cpu")
    preds = [run_to_end(unet.segment(x, model=model)).labels for x, _, _ in pairs]
    ev = evaluate([lab for _, _, lab in pairs], preds)
    assert ev.ap50 >= 0.6, ev.table()
