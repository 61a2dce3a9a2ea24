"""The classical engine (accuracy with a threshold) and the command line."""

import json

import numpy as np
import pytest

from napari_kaizen import metrics, run_to_end
from napari_kaizen.cli import main
from napari_kaizen.data import SynthParams, synthesize
from napari_kaizen.data._sample_data import NUCLEI_SAMPLE, NUCLEI_SAMPLE_LABELS
from napari_kaizen.engines import available_engines, get_engine
from napari_kaizen.engines._common import InputError, SegmentationSnapshot
from napari_kaizen.engines._common.planes import segment_planes
from napari_kaizen.engines.classical import ClassicalParams, segment
from napari_kaizen.errors import EngineNotAvailableError
from napari_kaizen.io import read_labels


def test_classical_accuracy_on_a_moderate_field():
    field = synthesize(SynthParams(shape=(256, 256), density=0.2, touching=0.3, clustering=0.3), seed=10_001)
    snaps = list(segment(field.nuclei))
    assert [s.stage for s in snaps] == ["foreground", "seeds", "labels"]
    assert all(isinstance(s, SegmentationSnapshot) for s in snaps)
    assert snaps[-1].done and snaps[-1].labels.dtype == np.int32
    ap = metrics.average_precision(field.nucleus_labels, snaps[-1].labels)
    assert ap[0.5] >= 0.75, ap


def test_classical_struggles_on_dense_touching_fields():
    """The baseline's weakness the learned engines exist for: merges in dense clumps."""
    field = synthesize(SynthParams(shape=(256, 256), density=0.45, touching=0.9, clustering=0.8), seed=10_002)
    labels = run_to_end(segment(field.nuclei)).labels
    assert metrics.average_precision(field.nucleus_labels, labels)[0.5] < 0.8
    assert metrics.count_merges(field.nucleus_labels, labels) >= 3


def test_classical_diameter_param_and_bad_input():
    field = synthesize(seed=4, shape=(128, 128))
    a = run_to_end(segment(field.nuclei, ClassicalParams(diameter=18.0))).labels
    assert a.max() > 5
    with pytest.raises(InputError, match="constant"):
        run_to_end(segment(np.ones((64, 64))))
    with pytest.raises(InputError, match="RGB"):
        run_to_end(segment(np.zeros((64, 64, 3), np.uint8) + np.arange(3, dtype=np.uint8)))


def test_empty_field_gives_no_objects_and_says_why():
    field = synthesize(SynthParams(shape=(128, 128), density=0.0), seed=10_003)
    last = run_to_end(segment(field.nuclei))
    assert last.done and last.labels.max() == 0 and "no objects" in last.message


def test_segment_planes_offsets_ids_and_skips_blank_planes():
    field = synthesize(seed=4, shape=(96, 96))
    stack = np.stack([field.nuclei, np.full_like(field.nuclei, 100), field.nuclei])
    last = run_to_end(segment_planes(segment, stack, ClassicalParams(diameter=18.0)))
    assert last.done and last.labels.shape == stack.shape
    assert last.labels[1].max() == 0
    ids0 = set(np.unique(last.labels[0])) - {0}
    ids2 = set(np.unique(last.labels[2])) - {0}
    assert ids0 and ids2 and not ids0 & ids2


def test_engine_registry():
    assert "classical" in available_engines()
    assert get_engine("classical").params().h == ClassicalParams().h
    with pytest.raises(EngineNotAvailableError, match="unknown engine"):
        get_engine("nope")


def test_cli_segment_the_bundled_sample(tmp_path, capsys):
    out = tmp_path / "out" / "labels.tif"
    rc = main(["segment", str(NUCLEI_SAMPLE), "--engine", "classical", "--output", str(out), "--quiet",
               "--measurements", "--rois"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("nuclei.tif:") and "objects" in line
    labels = read_labels(out)
    truth = read_labels(NUCLEI_SAMPLE_LABELS)
    assert metrics.average_precision(truth, labels)[0.5] > 0.7
    assert (out.parent / "labels_measurements.csv").exists() and (out.parent / "labels_rois.zip").exists()
    # A second run refuses to overwrite.
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(out), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_folder_in_folder_out_and_evaluate(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "syn"), "--n", "2", "--shape", "96", "96", "--channels", "nuclei"]) == 0
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for p in (tmp_path / "syn").glob("*_nuclei_labels.tif"):
        p.rename(gt_dir / p.name.replace("_nuclei_labels", "_nuclei"))
    for p in (tmp_path / "syn").glob("*_cells_labels.tif"):
        p.unlink()
    assert main(["segment", str(tmp_path / "syn"), "-o", str(tmp_path / "pred"), "-q", "--param", "h=0.1"]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(p.name for p in gt_dir.iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(gt_dir), str(tmp_path / "pred"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2 and 0.3 < result["ap"]["0.50"] <= 1.0 and "map" in result


def test_cli_reads_a_grey_png_stored_as_rgba(tmp_path):
    """A grey micrograph saved as RGBA (as DSB2018's PNGs are) is segmented, not refused."""
    import tifffile
    from skimage.io import imsave

    field = synthesize(seed=4, shape=(128, 128))
    grey = (255 * field.nuclei / field.nuclei.max()).astype(np.uint8)
    imsave(tmp_path / "dapi.png", np.dstack([grey] * 3 + [np.full_like(grey, 255)]), check_contrast=False)
    tifffile.imwrite(tmp_path / "dapi_grey.tif", grey)
    for name in ("dapi.png", "dapi_grey.tif"):
        assert main(["segment", str(tmp_path / name), "--engine", "classical", "-o",
                     str(tmp_path / f"{name}_labels.tif"), "-q"]) == 0
    from_png = read_labels(tmp_path / "dapi.png_labels.tif")
    assert from_png.shape == grey.shape and from_png.max() > 5
    np.testing.assert_array_equal(from_png, read_labels(tmp_path / "dapi_grey.tif_labels.tif"))


def test_cli_one_line_errors(tmp_path, capsys):
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.zeros((32, 32, 3), np.uint8) + np.arange(3, dtype=np.uint8))  # two stains
    assert main(["segment", str(rgb), "-o", str(tmp_path / "o.tif"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RGB" in err and "--channel" in err
    assert main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(tmp_path / "o.tif"), "--param", "nope=1"]) == 1
    assert "not a parameter" in capsys.readouterr().err


def test_cli_stack_planes(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "z"), "--n", "1", "--shape", "96", "96", "--stack", "z", "--planes", "3",
                 "--channels", "nuclei"]) == 0
    img = next((tmp_path / "z").glob("*_nuclei.tif"))
    assert main(["segment", str(img), "-o", str(tmp_path / "a.tif"), "-q"]) == 1
    assert "--all-planes" in capsys.readouterr().err
    assert main(["segment", str(img), "-o", str(tmp_path / "b.tif"), "-q", "--plane", "1"]) == 0
    assert read_labels(tmp_path / "b.tif").ndim == 2
    assert main(["segment", str(img), "-o", str(tmp_path / "c.tif"), "-q", "--all-planes"]) == 0
    assert read_labels(tmp_path / "c.tif").shape == (3, 96, 96)
