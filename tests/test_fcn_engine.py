"""GoogLeNet FCN engine: model shapes, targets, instances, tiling, errors, weights,
training / fine-tuning generators, and accuracy of the bundled weights."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data import SynthParams, synthesize  # noqa: E402
from napari_kaizen.engines import classical, fcn, get_engine  # noqa: E402
from napari_kaizen.engines._common.snapshots import SegmentationSnapshot, TrainingSnapshot  # noqa: E402
from napari_kaizen.engines._common.weights import save_weights, weights_paths  # noqa: E402
from napari_kaizen.engines.fcn.model import GoogLeNetFCN  # noqa: E402
from napari_kaizen.engines.fcn.segment import instances_from_distance, instances_from_probabilities  # noqa: E402
from napari_kaizen.engines.fcn.targets import BACKGROUND, EDGE, INTERIOR, fcn_targets, pixel_weights  # noqa: E402
from napari_kaizen.errors import (  # noqa: E402
    DeviceError,
    InputError,
    OverwriteError,
    WeightsError,
)
from napari_kaizen.metrics import evaluate  # noqa: E402

#: Held-out dense field for the accuracy checks: an evaluation seed (>= 10_000) and
#: explicit crowded settings that training (random_params, seeds 0..6) never used.
DENSE = SynthParams(shape=(256, 256), density=0.45, touching=0.9, clustering=0.8)
DENSE_SEED = 20_000


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return fcn.FCNModel(GoogLeNetFCN(width=0.25).eval())


@pytest.fixture(scope="module")
def nuclei_model():
    return fcn.load_model("bundled:fcn_nuclei", device="cpu")


@pytest.fixture(scope="module")
def dense_field():
    return synthesize(DENSE, seed=DENSE_SEED)


@pytest.fixture(scope="module")
def labelled_pair():
    f = synthesize(seed=20_010, shape=(96, 96), density=0.35)
    return f.nuclei, f.nucleus_labels


# --------------------------------------------------------------------------- protocol


def test_engine_protocol():
    eng = get_engine("fcn")
    assert eng.title == "GoogLeNet FCN" == fcn.TITLE
    assert eng.default_model == "bundled:fcn_nuclei"
    p = eng.params(threshold=0.4)
    # Object size estimated by default; post-processing from the model's calibration.
    assert p.threshold == 0.4 and p.diameter == "auto" and p.foreground is None and p.min_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.threshold = 0.3  # frozen
    for name in ("segment", "load_model", "train", "finetune", "Params", "DEFAULT_MODEL"):
        assert hasattr(fcn, name)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize("shape", [(64, 64), (67, 93), (9, 8), (130, 17), (16, 200)])
def test_model_output_matches_input_size(stride, shape):
    net = GoogLeNetFCN(width=0.25, stride=stride).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


def test_model_is_googlenet_like():
    net = GoogLeNetFCN()
    from napari_kaizen.engines.fcn.model import Inception, count_parameters

    inceptions = [m for m in net.modules() if isinstance(m, Inception)]
    assert len(inceptions) >= 3
    # One transposed convolution is the whole head, upsampling by the total stride.
    transposed = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert transposed == [net.head] and net.head.stride == (8, 8)
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    assert count_parameters(net) < 1_000_000  # a few MB at most
    fine = GoogLeNetFCN(stride=4, width=0.25)  # the bundled nucleus model's stride
    assert fine.head.stride == (4, 4) and fine(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        GoogLeNetFCN(stride=2)


# --------------------------------------------------------------------------- targets


def test_targets_edge_band_between_touching_cells():
    lab = np.zeros((20, 30), np.int32)
    lab[3:17, 3:15] = 1
    lab[3:17, 15:27] = 2  # touching along column 14|15
    t = fcn_targets(lab, edge_width=2)
    assert set(np.unique(t)) == {BACKGROUND, INTERIOR, EDGE}
    # A band of edge pixels on both sides of the contact, 2 px each.
    assert (t[5:15, 13:17] == EDGE).all()
    assert (t[5:15, 12] == INTERIOR).all() and (t[5:15, 17] == INTERIOR).all()
    # The band also runs along the background, and never leaves the objects.
    assert (t[3, 3:27] == EDGE).all() and (t[lab == 0] == BACKGROUND).all()
    # Interior components: exactly one per cell, so thresholding separates them.
    from scipy import ndimage as ndi

    assert ndi.label(t == INTERIOR)[1] == 2


def test_targets_keep_an_interior_for_tiny_objects_and_weights():
    lab = np.zeros((12, 12), np.int32)
    lab[2:4, 2:4] = 5  # 2x2: all of it would be edge
    lab[6:11, 6:11] = 7
    t = fcn_targets(lab, edge_width=3)
    assert (t[lab == 5] == INTERIOR).any() and (t[lab == 7] == INTERIOR).any()
    w = pixel_weights(t, edge_weight=7.5)
    assert np.all(w[t == EDGE] == 7.5) and np.all(w[t != EDGE] == 1.0)
    assert np.all(pixel_weights(t, 1.0) == 1.0)
    with pytest.raises(InputError):
        pixel_weights(t, 0.0)


def test_targets_reject_bad_labels():
    with pytest.raises(InputError) as e:
        fcn_targets(np.zeros((4, 4), bool))
    one_line(e)
    with pytest.raises(InputError):
        fcn_targets(np.full((4, 4), 0.5))
    with pytest.raises(InputError):
        fcn_targets(np.zeros((2, 4, 4), int))


# --------------------------------------------------------------------------- instances


def _maps_from_labels(lab, edge_width=2.0, blur=1.0):
    from scipy import ndimage as ndi

    t = fcn_targets(lab, edge_width)
    p_int = ndi.gaussian_filter((t == INTERIOR).astype(np.float32), blur)
    p_edge = ndi.gaussian_filter((t == EDGE).astype(np.float32), blur)
    return p_int, p_edge


def test_instances_from_probability_maps_recover_touching_cells():
    f = synthesize(SynthParams(shape=(128, 128), density=0.45, touching=0.9, clustering=0.8), seed=20_002)
    gt = f.nucleus_labels
    p_int, p_edge = _maps_from_labels(gt)
    lab = instances_from_probabilities(p_int, p_edge, threshold=0.5, min_area=10)
    ev = evaluate([gt], [lab])
    assert ev.ap50 > 0.9
    # Grown back over the band: the cells are not shrunk.
    assert abs(int((lab > 0).sum()) - int((gt > 0).sum())) < 0.05 * (gt > 0).sum()
    # Without growing back (interior only) the same seeds would cover far less.
    assert (p_int > 0.5).sum() < 0.8 * (gt > 0).sum()
    assert lab.dtype == np.int32 and lab.max() == len(np.unique(lab)) - 1


def test_instances_min_size_and_edge_only_objects():
    p_int = np.zeros((40, 40), np.float32)
    p_edge = np.zeros_like(p_int)
    p_int[5:15, 5:15] = 0.9  # a cell
    p_int[30, 30] = 0.9  # a crumb
    p_edge[20:30, 5:15] = 0.9  # a cell seen only as edge
    lab = instances_from_probabilities(p_int, p_edge, min_area=20)
    assert lab.max() == 2
    assert lab[30, 30] == 0 and lab[10, 10] > 0 and lab[25, 10] > 0
    assert instances_from_probabilities(np.zeros((8, 8)), np.zeros((8, 8))).max() == 0


def test_a_cell_cut_by_the_image_edge_is_held_to_the_lower_border_bar():
    from napari_kaizen.engines.fcn.segment import area_bars

    p_int = np.zeros((60, 60), np.float32)
    p_edge = np.zeros_like(p_int)
    p_int[20:36, 20:36] = 0.9  # a whole cell, 256 px
    p_int[40:52, 0:4] = 0.9  # a cell mostly outside the image: 48 px show
    p_int[5:11, 45:53] = 0.9  # a crumb of the same size inside the image
    bars = area_bars(0.25, 18.0)  # min_size 0.25 of a typical 18 px object
    assert bars == {"min_area": 64, "border_min_area": 25}
    lab = instances_from_probabilities(p_int, p_edge, **bars)
    assert lab.max() == 2 and lab[45, 1] > 0 and lab[8, 48] == 0
    # One bar for all (the rule before): the cut cell goes with the crumb.
    assert instances_from_probabilities(p_int, p_edge, min_area=64).max() == 1


# --------------------------------------------------------------------------- segment


def test_segment_snapshots(tiny_model, small_field):
    snaps = list(fcn.segment(small_field.nuclei, model=tiny_model, device="cpu"))
    assert all(0.0 <= s.progress <= 1.0 for s in snaps)
    prob = [s for s in snaps if isinstance(s, SegmentationSnapshot) and s.stage == "probability"]
    assert prob and set(prob[0].maps) == {"probability", "edge"}
    assert prob[0].maps["probability"].shape == small_field.nuclei.shape
    last = snaps[-1]
    assert last.done and last.labels.dtype == np.int32 and last.labels.shape == small_field.nuclei.shape
    assert sum(getattr(s, "done", False) for s in snaps) == 1


def test_segment_rescales_to_the_model_and_back(nuclei_model, small_field):
    last = run_to_end(fcn.segment(small_field.nuclei, fcn.Params(diameter=36.0), model=nuclei_model, device="cpu"))
    assert last.labels.shape == small_field.nuclei.shape
    assert last.maps["probability"].shape == small_field.nuclei.shape


def test_tiled_matches_untiled(nuclei_model, dense_field):
    whole = run_to_end(fcn.segment(dense_field.nuclei, model=nuclei_model, device="cpu"))
    tiled = run_to_end(
        fcn.segment(dense_field.nuclei, fcn.Params(window=96, overlap=32, batch_size=4), model=nuclei_model,
                    device="cpu")
    )
    diff = np.abs(whole.maps["probability"] - tiled.maps["probability"])
    assert diff.mean() < 0.02
    assert evaluate([whole.labels], [tiled.labels]).ap50 > 0.9


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((32, 32, 3), np.uint8) + np.arange(3, dtype=np.uint8), "RGB"),
        (np.random.default_rng(0).random((3, 32, 32)), "stack"),
        (np.full((32, 32), 7, np.uint16), "constant"),
        (np.full((32, 32), np.nan, np.float32), "finite"),
        (np.ones((4, 4)), "too small"),
        (np.array([["a"] * 16] * 16), "dtype"),
        (None, "no image"),
    ],
)
def test_bad_images_give_one_line_errors(tiny_model, image, words):
    with pytest.raises(InputError) as e:
        run_to_end(fcn.segment(image, model=tiny_model, device="cpu"))
    assert words in one_line(e)


@pytest.mark.parametrize(
    "params",
    [dict(threshold=1.5), dict(threshold=0.0), dict(foreground=-1.0), dict(min_size=-1), dict(window=8),
     dict(overlap=-3), dict(batch_size=0), dict(edge_weight=0)],
)
def test_bad_params_give_one_line_errors(tiny_model, small_field, params):
    with pytest.raises(InputError) as e:
        run_to_end(fcn.segment(small_field.nuclei, fcn.Params(**params), model=tiny_model, device="cpu"))
    one_line(e)


def test_bad_device(tiny_model, small_field):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as e:
        run_to_end(fcn.segment(small_field.nuclei, model=tiny_model, device="cuda"))
    one_line(e)
    with pytest.raises(DeviceError):
        fcn.load_model(tiny_model, device="tpu")


# --------------------------------------------------------------------------- weights


def _save_tiny(path, *, width=0.25, config=None, architecture="googlenet-fcn"):
    net = GoogLeNetFCN(width=width)
    save_weights(path, net.state_dict(), {"architecture": architecture, "config": config or dict(net.config),
                                          "object_diameter": 18.0})
    return path


def test_weights_round_trip(tmp_path, small_field):
    path = _save_tiny(tmp_path / "tiny")
    m = fcn.load_model(str(path) + ".safetensors", device="cpu")
    assert isinstance(m, fcn.FCNModel) and m.object_diameter == 18.0
    assert run_to_end(fcn.segment(small_field.nuclei, model=str(path), device="cpu")).done


def test_missing_and_mismatched_weights(tmp_path, small_field):
    with pytest.raises(WeightsError) as e:
        fcn.load_model(tmp_path / "nothing.safetensors")
    assert "not found" in one_line(e)
    with pytest.raises(WeightsError) as e:
        run_to_end(fcn.segment(small_field.nuclei, model="bundled:no_such_model"))
    assert "fcn_nuclei" in one_line(e)
    # A JSON paired with another tensor file.
    a, b = _save_tiny(tmp_path / "a"), _save_tiny(tmp_path / "b", width=0.5)
    weights_paths(a)[1].write_text(weights_paths(b)[1].read_text())
    with pytest.raises(WeightsError) as e:
        fcn.load_model(a)
    assert "checksum" in one_line(e)
    # Another architecture.
    with pytest.raises(WeightsError) as e:
        fcn.load_model(_save_tiny(tmp_path / "c", architecture="unet"))
    assert "googlenet-fcn" in one_line(e)
    # Tensors that do not fit the config.
    with pytest.raises(WeightsError) as e:
        fcn.load_model(_save_tiny(tmp_path / "d", config={"width": 0.5, "stride": 8, "in_channels": 1,
                                                         "n_classes": 3}))
    assert "does not fit" in one_line(e)
    # A config that cannot build.
    with pytest.raises(WeightsError):
        fcn.load_model(_save_tiny(tmp_path / "e", config={"width": 0.25, "colour": "red"}))
    # A 2-class model.
    net = GoogLeNetFCN(width=0.25, n_classes=2)
    save_weights(tmp_path / "f", net.state_dict(), {"architecture": "googlenet-fcn", "config": net.config})
    with pytest.raises(WeightsError) as e:
        fcn.load_model(tmp_path / "f")
    assert "3-class" in one_line(e)
    with pytest.raises(WeightsError):
        fcn.load_model(42)
    # The metadata file missing.
    path = _save_tiny(tmp_path / "g")
    weights_paths(path)[1].unlink()
    with pytest.raises(WeightsError):
        fcn.load_model(path)


@pytest.mark.parametrize("name, channel", [("fcn_nuclei", "nuclei"), ("fcn_cells", "membrane")])
def test_bundled_metadata(name, channel):
    m = fcn.load_model(f"bundled:{name}", device="cpu")
    meta = m.metadata
    assert meta["architecture"] == "googlenet-fcn" and meta["channel"] == channel
    assert meta["normalization"] == {"percentiles": [1.0, 99.8]}
    assert 5 < meta["object_diameter"] < 80
    assert "scripts/train_fcn.py" in meta["training"]["reproduce"]
    # fcn_nuclei: the 566 real annotated images of the seven sources + 24 synthetic
    # fields, with a distance output; fcn_cells: 7 synthetic, classes only.
    assert meta["training"]["n_images"] == (590 if name == "fcn_nuclei" else 7)
    assert m.has_distance == (name == "fcn_nuclei")
    if name == "fcn_nuclei":
        real = meta["training"]["data"]["real"]
        assert len(real["images_per_source"]) == 7 and real["excluded_sources"] == []
        assert set(real["licenses"].values()) == {"MIT", "CC0-1.0"}
    assert weights_paths(f"bundled:{name}")[0].stat().st_size < 3_000_000


# --------------------------------------------------------------------------- training


def test_train_writes_weights_and_is_reproducible(tmp_path, labelled_pair):
    img, lab = labelled_pair
    kw = dict(steps=3, batch_size=2, crop=48, width=0.25, seed=3, device="cpu", report_every=1)
    snaps = list(fcn.train(img, lab, output=tmp_path / "m1", **kw))
    assert all(isinstance(s, TrainingSnapshot) for s in snaps)
    assert snaps[-1].done and snaps[-1].weights_path.exists() and sum(s.done for s in snaps) == 1
    assert [s.step for s in snaps[:3]] == [1, 2, 3]
    meta = json.loads((tmp_path / "m1.json").read_text())
    assert meta["architecture"] == "googlenet-fcn" and meta["config"]["width"] == 0.25
    assert meta["targets"]["edge_weight"] == 5.0 and meta["training"]["steps"] == 3
    assert meta["object_diameter"] > 5
    run_to_end(fcn.train(img, lab, output=tmp_path / "m2", **kw))
    a, b = (fcn.load_model(tmp_path / n, "cpu").net.state_dict() for n in ("m1", "m2"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Never over an existing file, and that is known before any training step.
    gen = fcn.train(img, lab, output=tmp_path / "m1", **kw)
    with pytest.raises(OverwriteError):
        next(gen)


def test_train_rejects_bad_data(tmp_path, labelled_pair):
    img, lab = labelled_pair
    cases = [
        ([img, img], [lab]),  # count
        (img, lab[:50]),  # shape
        (img, np.zeros_like(lab)),  # no objects
        (img, lab.astype(np.float32) + 0.5),  # not integer
    ]
    for images, labels in cases:
        with pytest.raises(InputError) as e:
            next(fcn.train(images, labels, output=tmp_path / "x", steps=1, device="cpu"))
        one_line(e)
    with pytest.raises(InputError):
        next(fcn.train(img, lab, output=tmp_path / "missing_dir" / "x", steps=1))
    with pytest.raises(InputError):
        next(fcn.train(img, lab, output=tmp_path / "x", steps=0))


def test_finetune_from_bundled(tmp_path, nuclei_model, labelled_pair):
    img, lab = labelled_pair
    before = {k: v.clone() for k, v in nuclei_model.net.state_dict().items()}
    # Exactly the call shape of the shared fine-tune panel (widgets/_finetune.py).
    snaps = list(fcn.finetune(img, lab, model=nuclei_model, steps=2, learning_rate=1e-4, output=tmp_path / "ft",
                              device="cpu", description="image layer 'nuclei', labels layer 'corrected'"))
    assert snaps[-1].done and snaps[-1].weights_path == tmp_path / "ft.safetensors"
    after = nuclei_model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "finetune changed the model it was given"
    meta = fcn.load_model(tmp_path / "ft", "cpu").metadata
    assert meta["training"]["finetuned_from"] == "bundled:fcn_nuclei"
    assert meta["object_diameter"] == nuclei_model.object_diameter
    assert meta["training"]["base_training"]["n_images"] == 590
    assert meta["training"]["data"].startswith("image layer") and meta["training"]["lr"] == 1e-4
    # It continued with the zoom and photometric augmentation the bundled model was trained
    # with, not the synthetic recipe's flips and rolls (which undid that robustness).
    trained = nuclei_model.metadata["training"]["augment"]
    assert trained["scale_range"] == [0.5, 2.0]
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in meta["training"]["augment"].items()} == trained
    # Half of the crops rehearsed synthetic nuclei at the model's scale; the record says so
    # and still describes the person's image alone.
    rehearsal = meta["training"]["rehearsal"]
    assert rehearsal["share"] == fcn.training.REHEARSAL_SHARE == 0.5
    assert rehearsal["channel"] == "nuclei" and rehearsal["seeds"] == [0, 1, 2, 3]
    assert f"nucleus_diameter={nuclei_model.object_diameter}" in rehearsal["params"]
    assert meta["training"]["n_images"] == len(meta["training"]["image_shapes"]) == 1
    run_to_end(fcn.finetune(img, lab, model=nuclei_model, steps=1, output=tmp_path / "alone", rehearsal=0))
    assert fcn.load_model(tmp_path / "alone", "cpu").metadata["training"]["rehearsal"] is None
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(InputError, match="rehearsal"):
            next(fcn.finetune(img, lab, model=nuclei_model, output=tmp_path / "bad", steps=1, rehearsal=bad))
    # The saved weights are the fine-tuned ones averaged half-way back to the start.
    assert meta["training"]["start_share"] == fcn.training.FINETUNE_START_SHARE == 0.5
    run_to_end(fcn.finetune(img, lab, model=nuclei_model, steps=3, output=tmp_path / "raw", start_share=0))
    run_to_end(fcn.finetune(img, lab, model=nuclei_model, steps=3, output=tmp_path / "half"))
    raw = fcn.load_model(tmp_path / "raw", "cpu").net.state_dict()
    half = fcn.load_model(tmp_path / "half", "cpu").net.state_dict()
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(raw[k], before[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(half[k], 0.5 * raw[k] + 0.5 * before[k], rtol=1e-5, atol=1e-6)
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(InputError, match="start_share"):
            next(fcn.finetune(img, lab, model=nuclei_model, output=tmp_path / "bad", steps=1, start_share=bad))
    # Objects twice the model's size: images and labels are brought to its scale.
    big = np.kron(img, np.ones((2, 2), img.dtype)), np.kron(lab, np.ones((2, 2), lab.dtype))
    run_to_end(fcn.finetune(*big, model=nuclei_model, steps=1, batch_size=2, output=tmp_path / "ft_big",
                            device="cpu", diameter="auto"))
    assert fcn.load_model(tmp_path / "ft_big", "cpu").metadata["training"]["image_shapes"][0][0] < 140
    with pytest.raises(OverwriteError):
        next(fcn.finetune(img, lab, model=nuclei_model, output=tmp_path / "ft", steps=1))
    with pytest.raises(InputError):
        next(fcn.finetune(img, lab[:10], model=nuclei_model, output=tmp_path / "ft2", steps=1))


def test_cli_run_train(tmp_path, capsys):
    parser = fcn.add_train_arguments(argparse.ArgumentParser())
    argv = ["--synthetic", "1", "--steps", "2", "--batch-size", "2", "--crop", "64", "--device", "cpu",
            "--output", str(tmp_path / "cli")]
    assert fcn.run_train(parser.parse_args(argv)) == 0
    meta = json.loads((tmp_path / "cli.json").read_text())
    assert meta["training"]["reproduce"].startswith("kaizen train fcn --synthetic 1")
    assert meta["training"]["data"]["seeds"] == [0]
    assert fcn.run_train(parser.parse_args(argv)) == 2
    assert "error:" in capsys.readouterr().err
    assert fcn.run_train(parser.parse_args(["--output", str(tmp_path / "y")])) == 2
    # --rehearsal belongs to fine-tuning: refused in one line without --init, passed on with it.
    assert fcn.run_train(parser.parse_args(argv[:-1] + [str(tmp_path / "r"), "--rehearsal", "0.2"])) == 2
    assert "--rehearsal applies to fine-tuning" in capsys.readouterr().err
    assert fcn.run_train(parser.parse_args(argv[:-1] + [str(tmp_path / "s"), "--start-share", "0"])) == 2
    assert "--start-share applies to fine-tuning" in capsys.readouterr().err
    import tifffile

    field = synthesize(seed=3, shape=(96, 96))
    tifffile.imwrite(tmp_path / "img.tif", field.nuclei)
    tifffile.imwrite(tmp_path / "lab.tif", field.nucleus_labels.astype(np.int32))
    tuned = ["--init", "bundled:fcn_nuclei", "--images", str(tmp_path / "img.tif"), "--labels",
             str(tmp_path / "lab.tif"), "--steps", "1", "--device", "cpu", "--rehearsal", "0.2",
             "--start-share", "0.25", "--output", str(tmp_path / "tuned")]
    assert fcn.run_train(parser.parse_args(tuned)) == 0
    record = json.loads((tmp_path / "tuned.json").read_text())["training"]
    assert record["rehearsal"]["share"] == 0.2 and record["start_share"] == 0.25
    # The record's command line repeats the fine-tune: from what, with which settings.
    assert "--init bundled:fcn_nuclei" in record["reproduce"]
    assert "--rehearsal 0.2" in record["reproduce"] and "--start-share 0.25" in record["reproduce"]


# --------------------------------------------------------------------------- accuracy


def test_bundled_nuclei_model_beats_classical_on_dense_held_out(nuclei_model, dense_field):
    gt = dense_field.nucleus_labels
    ours = run_to_end(fcn.segment(dense_field.nuclei, model=nuclei_model, device="cpu")).labels
    base = run_to_end(classical.segment(dense_field.nuclei)).labels
    e_ours, e_base = evaluate([gt], [ours]), evaluate([gt], [base])
    print(f"FCN AP50 {e_ours.ap50:.3f} mAP {e_ours.map:.3f}; classical AP50 {e_base.ap50:.3f} mAP {e_base.map:.3f}")
    assert e_ours.ap50 > e_base.ap50
    # 0.940 when last run; 0.776 with the constants calibrated on real images alone,
    # whose dim-object filter dropped the field's dim nuclei (docs/fcn.md).
    assert e_ours.ap50 > 0.9


def test_bundled_cells_model_sanity():
    f = synthesize(SynthParams(shape=(256, 256)), seed=20_020)
    gt = f.cell_labels
    pred = run_to_end(fcn.segment(f.membrane, model="bundled:fcn_cells", device="cpu")).labels
    ev = evaluate([gt], [pred])
    print(f"cells AP50 {ev.ap50:.3f} mAP {ev.map:.3f} ({ev.n_pred} predicted, {ev.n_true} true)")
    assert ev.ap50 > 0.5
    assert 0.7 * ev.n_true <= ev.n_pred <= 1.3 * ev.n_true


# --------------------------------------------------------------------------- distance output


def test_distance_model_yields_its_map_and_trains_with_its_own_calibration(tmp_path, labelled_pair, small_field):
    img, lab = labelled_pair
    run_to_end(fcn.train(img, lab, output=tmp_path / "d", steps=3, batch_size=2, crop=48, width=0.25, seed=1,
                         device="cpu", distance=True, calibrate=1))
    meta = json.loads((tmp_path / "d.json").read_text())
    assert meta["config"]["distance"] is True and "logistic loss of the distance map" in meta["training"]["loss"]
    # A distance model is calibrated on its seed contrast h, not on the interior threshold.
    assert "h" in meta["thresholds"] and "threshold" not in meta["thresholds"]
    model = fcn.load_model(tmp_path / "d", "cpu")
    assert model.has_distance and model.net.head.out_channels == 4
    last = run_to_end(fcn.segment(small_field.nuclei, model=model, device="cpu"))
    assert sorted(last.maps) == ["distance", "edge", "probability"]
    assert last.maps["distance"].shape == small_field.nuclei.shape
    # A class-only model keeps its three outputs and its config as it was.
    assert "distance" not in GoogLeNetFCN(width=0.25).config


def test_recalibrate_searches_the_grid_given_and_leaves_the_tensors(tmp_path, labelled_pair):
    from napari_kaizen.engines._common.weights import sha256
    from napari_kaizen.engines.fcn.training import recalibrate

    img, lab = labelled_pair
    run_to_end(fcn.train(img, lab, output=tmp_path / "d", steps=2, batch_size=2, crop=48, width=0.25, seed=1,
                         device="cpu", distance=True, calibrate=1))
    before = sha256(tmp_path / "d.safetensors")
    grid = {"h": (0.35,), "foreground": (0.55,), "min_size": (0.2,)}
    chosen = recalibrate(tmp_path / "d", [img], [lab], object_diameter=None, calibrate=1, grid=grid)
    meta = json.loads((tmp_path / "d.json").read_text())
    # A one-point grid leaves the search no choice: the file records exactly that point.
    assert (chosen["h"], chosen["foreground"], chosen["min_size"]) == (0.35, 0.55, 0.2)
    assert {k: meta["thresholds"][k] for k in ("h", "foreground", "min_size")} == {"h": 0.35, "foreground": 0.55,
                                                                                  "min_size": 0.2}
    assert sha256(tmp_path / "d.safetensors") == before and meta["sha256"] == before


def test_calibration_images_by_count_or_index_and_a_bad_index_refused_before_training(tmp_path, labelled_pair):
    from napari_kaizen.engines.fcn.training import calibration_pairs

    pairs = ["a", "b", "c", "d"]
    assert calibration_pairs(pairs, 2) == ["a", "b"] and calibration_pairs(pairs, [0, 3]) == ["a", "d"]
    assert calibration_pairs(pairs, 0) == []
    img, lab = labelled_pair
    with pytest.raises(InputError) as exc:
        # Refused at once, not after the 10**6 steps.
        run_to_end(fcn.train([img, img], [lab, lab], output=tmp_path / "x", steps=10**6, device="cpu", calibrate=[0, 2]))
    assert one_line(exc) == "calibrate: image index 2 is outside the 2 training images"
    assert not (tmp_path / "x.safetensors").exists()


def test_distance_instances_split_touching_nuclei_that_the_edge_band_merges():
    # Two touching disks with no edge band between them (as the network sees nuclei
    # pressed together): the interior threshold gives one object, the distance map two.
    yy, xx = np.mgrid[:40, :60]
    a, b = np.hypot(yy - 20, xx - 20), np.hypot(yy - 20, xx - 37)
    dist = np.maximum(np.clip(1 - a / 10, 0, 1), np.clip(1 - b / 10, 0, 1))
    cell = ((a < 10) | (b < 10)).astype(np.float32)
    interior = cell * 0.9
    edge = np.zeros_like(cell)
    merged = instances_from_probabilities(interior, edge)
    split = instances_from_distance(interior, edge, dist, h=0.1)
    assert merged.max() == 1 and split.max() == 2
    assert split[20, 20] != split[20, 37]


def test_segment_brings_nuclei_to_the_models_own_size_in_one_pass(monkeypatch):
    """Objects are rescaled to the model's ``object_diameter`` (where its constants were
    calibrated), not just into its +-20 % band, and the network runs once by default."""
    import importlib

    seg = importlib.import_module("napari_kaizen.engines.fcn.segment")
    field = synthesize(seed=10_001, shape=(96, 96))
    passes = []
    real_predictor = seg.predictor

    def counting_predictor(net, flip_average):
        passes.append(flip_average)
        return real_predictor(net, flip_average)

    monkeypatch.setattr(seg, "predictor", counting_predictor)
    snaps = list(fcn.segment(field.nuclei, fcn.FCNParams(diameter=18.0), device="cpu"))
    # The bundled model's nuclei are 24 px: 18 px ones are enlarged 24 / 18, not 1.11x.
    assert any("rescaled x1.33" in s.message for s in snaps if s.stage == "tiles")
    assert passes == [False]
    list(fcn.segment(field.nuclei, fcn.FCNParams(diameter=18.0, flip_average=True), device="cpu"))
    assert passes == [False, True]
