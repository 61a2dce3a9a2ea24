"""Bad inputs from the hardening audit: each gives a correct result or one clear line.

Every row of ``CLI_REFUSALS`` is a command a person could type; it must exit non-zero
with a one-line message naming what was wrong, and write nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_kaizen import metrics, run_to_end
from napari_kaizen.cli import main
from napari_kaizen.data import synthesize
from napari_kaizen.engines import get_engine
from napari_kaizen.engines._common.normalize import prepare_image


@pytest.fixture(scope="module")
def field():
    return synthesize(seed=3, shape=(128, 128), density=0.3)


def _unit(field) -> np.ndarray:
    x = field.nuclei.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda u: (u * 6e38 - 3e38).astype(np.float32), id="float32 spanning +-3e38"),
        pytest.param(lambda u: (u * 1000).astype(np.int64) - 10**12, id="int64 with a -1e12 offset"),
        pytest.param(lambda u: (u * 1000).astype(np.int64) + 10**9, id="int64 with a +1e9 offset"),
        pytest.param(lambda u: (u * 1000).astype(np.uint64) + np.uint64(2**40), id="uint64 with a 2**40 offset"),
        pytest.param(lambda u: (u * 1000).astype(np.int32) - 2**30, id="int32 with a -2**30 offset"),
        # Physical units: called constant ("every pixel is 9.5e-19") before 2026-12-07.
        pytest.param(lambda u: (u * 3e-17).astype(np.float32), id="float32 of 1e-17"),
        pytest.param(lambda u: u * 1e-300, id="float64 of 1e-300 (below float32's range)"),
    ],
)
@pytest.mark.parametrize("engine", ["classical", "unet"])
def test_extreme_dtype_ranges_segment_like_the_plain_image(field, make, engine):
    """Offsets and huge finite ranges change nothing: same objects as the plain image."""
    eng = get_engine(engine)
    plain = run_to_end(eng.segment((_unit(field) * 1000).astype(np.uint16), eng.params())).labels
    odd = run_to_end(eng.segment(make(_unit(field)), eng.params())).labels
    assert plain.max() >= 10
    assert metrics.average_precision(plain, odd, thresholds=[0.5])[0.5] >= 0.95


def test_normalised_input_is_always_finite():
    huge = np.array([[-3.4e38, 3.4e38], [0.0, 1.0]], np.float32).repeat(8, 0).repeat(8, 1)
    out = prepare_image(huge)
    assert np.isfinite(out).all()


def _sample(tmp_path, field) -> str:
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, field.nuclei)
    return str(path)


CLI_REFUSALS = [
    (["--param", "h=nan"], "NaN and infinite"),
    (["--param", "min_size=nan"], "NaN and infinite"),
    (["--param", "h=inf"], "NaN and infinite"),
    (["--plane", "abc"], "--plane 'abc'"),
    (["--plane", "1"], "is a single 2-D plane, not a stack"),
    (["--model", "bundled:fcn_nuclei"], "uses no model"),
    (["--device", "cuda"], "CPU only"),
    (["--engine", "kaizen", "--param", "batch_points=5.5"], "cannot read '5.5'"),
    (["--param", "background_radius=1e6"], "background_radius must be"),
    (["--param", "h=-1"], "h must be"),
    (["--engine", "fcn", "--param", "min_contrast=1.5"], "min_contrast must be"),
    (["--engine", "kaizen", "--param", "min_contrast=-0.1"], "min_contrast must be"),
    *[(["--engine", e, "--diameter", d], "out of range")
      for e in ("classical", "kaizen", "unet", "fcn") for d in ("1e-3", "100000")],
]


@pytest.mark.parametrize(("extra", "says"), CLI_REFUSALS, ids=[" ".join(e) for e, _ in CLI_REFUSALS])
def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, field, extra, says):
    src = _sample(tmp_path, field)
    out = tmp_path / "out" / "lab.tif"
    assert main(["segment", src, "-o", str(out), "-q", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0, err
    assert not out.exists()


def test_cli_refuses_an_output_name_it_cannot_write(tmp_path, capsys, field):
    src = _sample(tmp_path, field)
    assert main(["segment", src, "-o", str(tmp_path / "lab.jpg"), "-q"]) == 1
    assert "lab.jpg" in capsys.readouterr().err
    assert not (tmp_path / "lab.jpg").exists()  # not silently made a folder


def test_cli_integral_float_text_is_an_integer(tmp_path, field):
    src = _sample(tmp_path, field)
    out = tmp_path / "lab.tif"
    assert main(["segment", src, "-o", str(out), "-q", "--engine", "kaizen", "--param", "batch_points=5"]) == 0
    assert out.exists()


def test_cli_skip_existing_resumes_a_folder(tmp_path, capsys, field):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"f{i}.tif", field.nuclei)
    out = tmp_path / "pred"
    out.mkdir()
    marker = np.full((4, 4), 7, np.int32)
    tifffile.imwrite(out / "f0.tif", marker)  # a result from an interrupted run
    assert main(["segment", str(folder), "-o", str(out), "-q", "--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert "skipping 1" in said
    assert tifffile.imread(out / "f0.tif").shape == (4, 4)  # kept, not recomputed
    assert {p.name for p in out.iterdir()} == {"f0.tif", "f1.tif", "f2.tif"}
    assert main(["segment", str(folder), "-o", str(out), "-q", "--skip-existing", "--overwrite"]) == 1


def test_folder_round_trip_synth_segment_evaluate(tmp_path, capsys):
    """`kaizen synth D; kaizen segment D -o P; kaizen evaluate D P` pairs the nuclei."""
    syn, pred = tmp_path / "syn", tmp_path / "pred"
    assert main(["synth", str(syn), "--n", "2", "--shape", "96", "96", "--channels", "nuclei"]) == 0
    assert main(["segment", str(syn), "-o", str(pred), "-q"]) == 0
    assert sorted(p.name for p in pred.iterdir()) == ["synth_00000_nuclei.tif", "synth_00001_nuclei.tif"]
    capsys.readouterr()
    assert main(["evaluate", str(syn), str(pred), "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2 and result["ap"]["0.50"] > 0.5


@pytest.mark.parametrize(
    ("engine", "name", "edit", "says"),
    [
        ("fcn", "fcn_nuclei", lambda m: m["config"].update(width=200.0), "does not fit its architecture"),
        ("kaizen", "kaizen_nuclei", lambda m: m.update(format_version="one"), "format_version must be"),
        ("fcn", "fcn_nuclei", lambda m: m.update(object_diameter=-3), "object_diameter must be"),
        ("unet", "unet_nuclei", lambda m: m.update(object_diameter=float("nan")), "object_diameter must be"),
    ],
    ids=["huge channel count", "format_version text", "negative object_diameter", "NaN object_diameter"],
)
def test_tampered_weights_json_is_refused_without_allocating(tmp_path, engine, name, edit, says):
    import json
    import resource
    import shutil

    from napari_kaizen.engines._common.weights import bundled_dir
    from napari_kaizen.errors import WeightsError

    shutil.copy(bundled_dir() / f"{name}.safetensors", tmp_path / "m.safetensors")
    meta = json.loads((bundled_dir() / f"{name}.json").read_text())
    edit(meta)
    (tmp_path / "m.json").write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match=says):
        get_engine(engine).module.load_model(str(tmp_path / "m.safetensors"), "cpu")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"peak memory grew {grown_mib:.0f} MiB while refusing"


def test_flat_3d_objects_have_undefined_not_infinite_solidity():
    from napari_kaizen.io.measurements import measurements_table

    lab = np.zeros((3, 20, 20), np.int32)
    lab[1, 5:10, 5:10] = 1  # one plane only: no volume
    lab[:, 12:18, 12:18] = 2
    sol = measurements_table(lab)["solidity"]
    assert np.isnan(sol[0]) and sol[1] == pytest.approx(1.0)


def test_cli_refuses_a_model_that_finds_no_objects(tmp_path, capsys):
    """A fluorescence-only (ISL) model cannot give labels: one line naming what to choose, nothing written."""
    src = tmp_path / "lf.tif"
    tifffile.imwrite(src, synthesize(seed=5, shape=(96, 96)).label_free)
    assert main(["segment", str(src), "-o", str(tmp_path / "o.tif"), "-q", "--engine", "unet",
                 "--model", "bundled:unet_isl_membrane"]) == 1
    err = capsys.readouterr().err.strip()
    assert "fluorescence image only" in err and "segmentation model" in err and err.count("\n") == 0
    assert not (tmp_path / "o.tif").exists()


def test_cli_says_why_it_found_nothing(tmp_path, capsys):
    """An empty field: 0 objects, exit 0, and the engine's reason on the result line."""
    src = tmp_path / "empty.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(src, (100 + rng.normal(0, 3, (96, 96))).astype(np.uint16))
    assert main(["segment", str(src), "-o", str(tmp_path / "o.tif"), "-q", "--engine", "fcn"]) == 0
    out = capsys.readouterr().out
    assert "0 objects" in out and "(" in out.split("->")[-1]


def test_sigterm_mid_write_leaves_no_partial_or_hidden_file(tmp_path, capsys, field, monkeypatch):
    import os
    import signal

    real_imwrite = tifffile.imwrite

    def killed_while_writing(path, *args, **kwargs):
        real_imwrite(path, *args, **kwargs)  # the temporary file exists now
        os.kill(os.getpid(), signal.SIGTERM)

    src = _sample(tmp_path, field)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tifffile, "imwrite", killed_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["segment", src, "-o", str(out / "lab.tif"), "-q"]) == 143
    assert "--skip-existing" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # neither lab.tif nor a hidden .lab.tif.*.tmp.tif
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI's handler does not outlive it


def test_unwritable_output_folder_is_refused_before_segmenting(tmp_path, capsys, field, monkeypatch):
    import os

    import napari_kaizen.engines.classical as classical

    src = _sample(tmp_path, field)
    calls = []
    monkeypatch.setattr(classical, "segment", lambda *a, **k: calls.append(1))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("ro") else real_access(p, mode))
    assert main(["segment", src, "-o", str(tmp_path / "ro"), "-q"]) == 1
    assert "not writable" in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "float16",
                                   "float32", "float64"])
def test_every_real_dtype_segments(field, dtype):
    u = _unit(field)
    if dtype == "bool":
        img = u > 0.3
    elif np.dtype(dtype).kind == "f":
        img = u.astype(dtype)
    else:
        info = np.iinfo(dtype)
        img = (info.min + u * min(4000, info.max - info.min)).astype(dtype)
    labels = run_to_end(get_engine("classical").segment(img)).labels
    assert labels.shape == img.shape and labels.max() >= 5


def test_headless_boundary_no_qt_anywhere_and_no_torch_for_evaluate(tmp_path):
    """Engines, io and the CLI import no Qt / napari; `kaizen evaluate` does not load torch."""
    import subprocess
    import sys

    lab = tmp_path / "a.tif"
    tifffile.imwrite(lab, np.arange(16, dtype=np.uint16).reshape(4, 4) // 5)
    code = (
        "import sys\n"
        "from napari_kaizen.cli import main\n"
        f"assert main(['evaluate', {str(lab)!r}, {str(lab)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'evaluate loaded torch'\n"
        "import napari_kaizen.engines.classical, napari_kaizen.engines.kaizen, napari_kaizen.engines.unet\n"
        "import napari_kaizen.engines.fcn, napari_kaizen.io, napari_kaizen.data, napari_kaizen.metrics\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("engine", ["classical", "kaizen", "unet", "fcn"])
@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_pure_noise_gives_no_objects_and_says_why(engine, noise):
    """Pure noise (label-free or fluorescence) is not a field of cells (the U-Net found 10-413)."""
    rng = np.random.default_rng(7)
    img = rng.normal(1000, 40, (192, 192)) if noise == "gaussian" else rng.poisson(30, (192, 192)).astype(np.uint16)
    last = run_to_end(get_engine(engine).segment(img, device="cpu"))
    assert last.labels.max() == 0 and "noise without structure" in last.message


def test_a_damaged_tiff_is_one_line_in_a_real_process(tmp_path):
    # In a real process (not under pytest's log capture) tifffile's own log lines would
    # reach stderr before our message: the lazy reader must silence them too.
    import subprocess
    import sys

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\0garbage")
    code = "import sys; from napari_kaizen.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "segment", str(bad), "-o", str(tmp_path / "out.tif")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "broken.tif" in done.stderr, done.stderr
    assert not (tmp_path / "out.tif").exists()


# --------------------------------------------------------------------------- issue 25


def _folder_of_images(tmp_path, field, n=2):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        tifffile.imwrite(folder / f"f{i}.tif", field.nuclei)
    return folder


def test_resume_writes_the_missing_measurements_and_rois(tmp_path, capsys, field):
    """An image is done only when all its outputs exist: a resume writes the missing ones."""
    folder = _folder_of_images(tmp_path, field)
    out = tmp_path / "out"
    args = ["segment", str(folder), "-o", str(out), "-q", "--measurements", "--rois"]
    assert main(args) == 0
    labels_before = tifffile.imread(out / "f0.tif")
    (out / "f0_measurements.csv").unlink()  # a run killed between the labels and the table
    (out / "f1_rois.zip").unlink()
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert (out / "f0_measurements.csv").exists() and (out / "f1_rois.zip").exists(), said
    np.testing.assert_array_equal(tifffile.imread(out / "f0.tif"), labels_before)  # kept, not redone
    from napari_kaizen.io import read_measurements_csv

    table = read_measurements_csv(out / "f0_measurements.csv")
    assert sorted(table["label"].tolist()) == sorted(set(np.unique(labels_before).tolist()) - {0})
    # Now everything is there: the next resume skips both images.
    assert main([*args, "--skip-existing"]) == 0
    assert "skipping 2" in capsys.readouterr().out


def test_resume_redoes_a_truncated_output(tmp_path, capsys, field):
    folder = _folder_of_images(tmp_path, field, n=1)
    out = tmp_path / "out"
    args = ["segment", str(folder), "-o", str(out), "-q", "--measurements"]
    assert main(args) == 0
    csv = out / "f0_measurements.csv"
    csv.write_bytes(csv.read_bytes()[:-7])  # cut off mid-line (an older, non-atomic writer)
    assert main([*args, "--skip-existing"]) == 0
    assert csv.read_text().endswith("\n") and csv.read_text().count("\n") > 2


def test_atomic_writes_use_one_recognisable_temporary_name(tmp_path, monkeypatch):
    from napari_kaizen._files import TMP_PREFIX, atomic_write

    seen = []

    def write(tmp):
        seen.append(tmp.name)
        tmp.write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.csv", write)
    assert seen and seen[0].startswith(TMP_PREFIX) and seen[0].endswith(".csv")
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_stale_temporaries_are_removed_at_the_next_run(tmp_path, capsys, field):
    import os
    import subprocess
    import sys
    import time

    folder = _folder_of_images(tmp_path, field, n=1)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_file = out / f".kaizen-tmp-{dead}-f0.tif.abcd1234.tmp.tif"
    stale_file.write_bytes(b"half")
    stale_zarr = out / f".kaizen-tmp-{dead}-big.tif.abcd1234.tmp.zarr"
    (stale_zarr / "0").mkdir(parents=True)
    legacy_zarr = out / ".big.zarr.k2j4h5g6.tmp.zarr"  # an older version's name
    legacy_zarr.mkdir()
    old = time.time() - 2 * 86400
    os.utime(legacy_zarr, (old, old))
    from napari_kaizen._files import temp_prefix

    live = out / f"{temp_prefix('other.tif')}abcd1234.tmp.tif"  # a run writing now
    live.write_bytes(b"busy")
    remote = out / ".kaizen-tmp-otherhost-1-x.tif.abcd1234.tmp.tif"  # a cluster worker elsewhere, writing now
    remote.write_bytes(b"busy")
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    assert main(["segment", str(folder), "-o", str(out), "-q", "--skip-existing"]) == 0
    left = {p.name for p in out.iterdir()}
    assert left == {"f0.tif", live.name, remote.name, mine.name}, left


def test_concurrent_skip_existing_runs_do_not_fail_on_an_output_written_meanwhile(tmp_path, capsys, field,
                                                                                   monkeypatch):
    """Another run writes f0.tif while this one segments it: taken as done, not an 'already exists' error."""
    folder = _folder_of_images(tmp_path, field, n=2)
    out = tmp_path / "out"
    out.mkdir()
    real_imwrite = tifffile.imwrite
    theirs = np.full(field.nuclei.shape, 3, np.uint8)

    def other_run_wins(path, *args, **kwargs):
        real_imwrite(path, *args, **kwargs)
        if ".kaizen-tmp-" in str(path) and "f0.tif" in str(path) and not (out / "f0.tif").exists():
            real_imwrite(out / "f0.tif", theirs)  # the other run's labels land first

    monkeypatch.setattr(tifffile, "imwrite", other_run_wins)
    assert main(["segment", str(folder), "-o", str(out), "-q", "--skip-existing", "--measurements"]) == 0
    captured = capsys.readouterr()
    assert "already exists" not in captured.err and "appeared" not in captured.err, captured.err
    np.testing.assert_array_equal(tifffile.imread(out / "f0.tif"), theirs)  # theirs kept
    from napari_kaizen.io import read_measurements_csv

    assert read_measurements_csv(out / "f0_measurements.csv")["label"].tolist() == [3]  # describes theirs
    assert (out / "f1.tif").exists()


def test_a_tiff_claiming_an_enormous_size_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_KAIZEN_MAX_READ_BYTES", str(8 << 30))
    big = tmp_path / "claims.tif"
    tifffile.imwrite(big, shape=(4000, 2000, 2000), dtype="uint16", photometric="minisblack")  # sparse: no pixels
    assert main(["segment", str(big), "-o", str(tmp_path / "o.tif"), "-q", "--all-planes"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "claims.tif" in err and "4000x2000x2000" in err and "--tile" in err, err


def test_an_npy_claiming_an_enormous_size_is_one_line(tmp_path, capsys):
    big = tmp_path / "claims.npy"
    with open(big, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (100000, 2000, 2000)})
        fh.write(b"\0" * 64)
    assert main(["segment", str(big), "-o", str(tmp_path / "o.tif"), "-q", "--all-planes"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "claims.npy" in err and "100000x2000x2000" in err, err


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_plane_reads_only_that_plane_of_a_stack(tmp_path, capsys, monkeypatch, field, suffix):
    stack = np.zeros((60, 128, 128), np.uint16)  # 1.9 MiB
    stack[17] = (_unit(field) * 1000).astype(np.uint16)
    src = tmp_path / f"stack{suffix}"
    monkeypatch.setenv("NAPARI_KAIZEN_MAX_READ_BYTES", str(1 << 20))  # the whole stack would not fit
    if suffix == ".tif":
        tifffile.imwrite(src, stack, photometric="minisblack")
    else:
        np.save(src, stack)
    whole = []  # reads of the whole stack
    real_imread, real_load = tifffile.imread, np.load

    def imread(*a, **k):
        if not (k.get("aszarr") or "key" in k):
            whole.append(a)
        return real_imread(*a, **k)

    def load(*a, **k):
        if not k.get("mmap_mode"):
            whole.append(a)
        return real_load(*a, **k)

    monkeypatch.setattr(tifffile, "imread", imread)
    monkeypatch.setattr(np, "load", load)
    assert main(["segment", str(src), "-o", str(tmp_path / "o.tif"), "-q", "--plane", "17"]) == 0, \
        capsys.readouterr().err
    assert whole == []
    labels = tifffile.imread(tmp_path / "o.tif")
    assert labels.shape == (128, 128) and labels.max() >= 5
    assert main(["segment", str(src), "-o", str(tmp_path / "p.tif"), "-q", "--plane", "60"]) == 1
    assert "outside" in capsys.readouterr().err


def test_a_damaged_zarr_chunk_is_one_line_naming_the_store(tmp_path, capsys, field):
    import zarr

    store = tmp_path / "img.zarr"
    arr = zarr.open(str(store), mode="w", shape=(256, 256), chunks=(128, 128), dtype="uint16")
    arr[:] = np.tile((_unit(field) * 1000).astype(np.uint16), (2, 2))
    chunks = sorted(p for p in store.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr.json")))
    chunks[0].write_bytes(b"\x02\x01garbage-not-a-blosc-frame")
    assert main(["segment", str(store), "-o", str(tmp_path / "o.tif"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "img.zarr" in err, err
    assert not (tmp_path / "o.tif").exists()


def _grid_labels(n_side: int, block: int, shift: int = 0) -> np.ndarray:
    ids = np.arange(1, n_side * n_side + 1, dtype=np.int32).reshape(n_side, n_side)
    lab = np.kron(ids, np.ones((block, block), np.int32))
    return np.roll(lab, shift, axis=1)


def test_matching_memory_grows_with_the_objects_not_their_product():
    """6400 x 6400 objects: a dense IoU table alone would be 330 MB; the sparse one is a few MB."""
    import tracemalloc

    gt = _grid_labels(80, 6)
    pred = _grid_labels(80, 6, shift=1)  # each prediction overlaps two true objects
    tracemalloc.start()
    try:
        ap = metrics.average_precision(gt, pred, thresholds=[0.3, 0.5, 0.9])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    # IoU of a block shifted by 1 of 6 columns: 5/7 > 0.5, so every object matches at 0.3 and 0.5, none at 0.9
    # (the 80 wrapped-around columns differ, so count from the matching itself).
    m = metrics.match(gt, pred, 0.5)
    assert ap[0.5] == pytest.approx(m.tp / (m.tp + m.fp + m.fn)) and m.tp >= 6000
    assert ap[0.3] == pytest.approx(ap[0.5]) and ap[0.9] == 0.0


def test_sparse_matching_agrees_with_a_brute_force_assignment():
    """Below IoU 0.5 the matching is an assignment: the sparse solver gives the dense optimum."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(1)
    for seed in range(5):
        gt = synthesize(seed=seed, shape=(96, 96), density=0.5).nucleus_labels
        pred = np.roll(gt, int(rng.integers(2, 6)), axis=int(rng.integers(0, 2)))
        g_ids = np.unique(gt)[1:]
        p_ids = np.unique(pred)[1:]
        dense = np.array([[((gt == a) & (pred == b)).sum() / ((gt == a) | (pred == b)).sum() for b in p_ids]
                          for a in g_ids])
        for t in (0.1, 0.3):
            cost = np.where(dense > t, -dense, 0.0)
            r, c = linear_sum_assignment(cost)
            expected_tp = int((dense[r, c] > t).sum())
            assert metrics.match(gt, pred, t).tp == expected_tp


@pytest.mark.parametrize(
    ("pred", "says"),
    [
        pytest.param(lambda g: g.astype(np.int32) - 1, "negative", id="negative labels"),
        pytest.param(lambda g: g.astype(np.float32) + 0.5, "not whole numbers", id="float non-integer labels"),
    ],
)
def test_evaluate_refuses_what_is_not_labels_in_one_line(tmp_path, capsys, pred, says):
    gt = synthesize(seed=2, shape=(64, 64)).nucleus_labels
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred(gt))
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err and "pred.tif" in err, err


def test_evaluate_warns_when_the_prediction_is_an_intensity_image(tmp_path, capsys):
    f = synthesize(seed=2, shape=(64, 64))
    tifffile.imwrite(tmp_path / "gt.tif", f.nucleus_labels)
    tifffile.imwrite(tmp_path / "pred.tif", (_unit(f) * 4000 + 100).astype(np.uint16))
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif")]) == 0
    err = capsys.readouterr().err
    assert "pred.tif looks like an intensity image" in err
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif")]) == 0
    assert "intensity" not in capsys.readouterr().err  # real labels: no warning


@pytest.mark.parametrize("missing", ["gt", "pred"])
def test_evaluate_names_the_missing_file(tmp_path, capsys, missing):
    gt = synthesize(seed=2, shape=(64, 64)).nucleus_labels
    paths = {"gt": tmp_path / "gt.tif", "pred": tmp_path / "pred.tif"}
    tifffile.imwrite(paths["gt" if missing == "pred" else "pred"], gt)
    assert main(["evaluate", str(paths["gt"]), str(paths["pred"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{missing}.tif does not exist" in err, err


@pytest.mark.parametrize("name", ["../weights/fcn_nuclei", "ABSOLUTE", "fcn_nuclei/../fcn_nuclei"])
def test_bundled_names_are_only_the_packages_own(tmp_path, capsys, name):
    import shutil

    from napari_kaizen.engines._common.weights import bundled_dir, list_bundled, weights_paths
    from napari_kaizen.errors import WeightsError

    if name == "ABSOLUTE":
        for suffix in (".safetensors", ".json"):
            shutil.copy(bundled_dir() / f"fcn_nuclei{suffix}", tmp_path / f"m{suffix}")
        name = str(tmp_path / "m")
    with pytest.raises(WeightsError, match="bundled models are"):
        weights_paths(f"bundled:{name}")
    src = _sample(tmp_path, synthesize(seed=3, shape=(64, 64)))
    assert main(["segment", src, "-o", str(tmp_path / "o.tif"), "-q", "--engine", "fcn",
                 "--model", f"bundled:{name}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(b in err for b in list_bundled()), err
    assert not (tmp_path / "o.tif").exists()


def _tampered_copy(tmp_path, edit=None, text=None, name="fcn_nuclei"):
    import json
    import shutil

    from napari_kaizen.engines._common.weights import bundled_dir

    shutil.copy(bundled_dir() / f"{name}.safetensors", tmp_path / "m.safetensors")
    meta = json.loads((bundled_dir() / f"{name}.json").read_text())
    if edit is not None:
        edit(meta)
    (tmp_path / "m.json").write_text(text if text is not None else json.dumps(meta))
    return tmp_path / "m.safetensors"


def _deep(levels):
    out = {}
    for _ in range(levels):
        out = {"a": out}
    return out


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: m.update(notes="x" * (2 << 20)), "MiB"),
        (lambda m: m.update(architecture=5), "architecture must be text"),
        (lambda m: m.update(config=[1, 2]), "config must be an object"),
        (lambda m: m["config"].update(width={"nested": [1]}), "config.width must be"),
        (lambda m: m.update(training=_deep(40)), "nests"),
        (lambda m: m.update(sha256=12), "sha256 must be"),
        (lambda m: m.pop("sha256"), "no sha256"),
    ],
    ids=["over 1 MiB", "architecture a number", "config a list", "config value nested", "40 levels deep",
         "sha256 a number", "no sha256"],
)
def test_a_weights_json_of_the_wrong_size_types_or_without_sha256_is_refused(tmp_path, edit, says):
    from napari_kaizen.errors import WeightsError

    path = _tampered_copy(tmp_path, edit)
    with pytest.raises(WeightsError, match=says) as info:
        get_engine("fcn").module.load_model(str(path), "cpu")
    assert "\n" not in str(info.value)


def test_a_json_nested_beyond_the_parser_is_one_line(tmp_path):
    from napari_kaizen.errors import WeightsError

    path = _tampered_copy(tmp_path, text='{"architecture": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(WeightsError, match="m.json"):
        get_engine("fcn").module.load_model(str(path), "cpu")


def test_every_bundled_weights_json_has_its_sha256():
    import json

    from napari_kaizen.engines._common.weights import bundled_dir, list_bundled, sha256

    names = list_bundled()
    assert len(names) >= 6
    for name in names:
        meta = json.loads((bundled_dir() / f"{name}.json").read_text())
        assert meta["sha256"] == sha256(bundled_dir() / f"{name}.safetensors"), name


def _messy_user_folder(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    good = _tampered_copy(folder)  # a readable copy: m.safetensors
    (folder / "bad.safetensors").write_bytes(good.read_bytes())
    (folder / "bad.json").write_text("{not json")
    (folder / "gone.safetensors").symlink_to(tmp_path / "deleted.safetensors")
    monkeypatch.setenv("NAPARI_KAIZEN_MODELS", str(folder))
    return folder


def test_engines_lists_the_user_folder_skipping_unreadable_files_once(tmp_path, capsys, monkeypatch):
    folder = _messy_user_folder(tmp_path, monkeypatch)
    assert main(["engines"]) == 0
    out, err = capsys.readouterr()
    assert str((folder / "m.safetensors").resolve()) in out  # the good one is listed
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.safetensors" in lines[0] and "gone.safetensors" in lines[0], err


def test_widget_model_list_skips_unreadable_user_files_and_names_them_once(tmp_path, monkeypatch, qtbot):
    import warnings

    from napari_kaizen.widgets import _models

    _messy_user_folder(tmp_path, monkeypatch)
    monkeypatch.setattr(_models, "_REPORTED", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        picker = _models.ModelPicker("fcn")
        picker.refresh()
        _models.ModelPicker("fcn")
    said = [str(w.message) for w in seen if "cannot be read" in str(w.message)]
    assert len(said) == 1 and "bad.safetensors" in said[0] and "gone.safetensors" in said[0], said
    assert any(str(v).endswith("m.safetensors") for v in picker.specs)


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, capsys, monkeypatch, field):
    import napari_kaizen.engines.classical as classical

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("an engine bug")

    monkeypatch.setattr(classical, "segment", broken)
    src = _sample(tmp_path, field)
    assert main(["segment", src, "-o", str(tmp_path / "o.tif"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unexpected ZeroDivisionError: an engine bug" in err, err
    logs = list((tmp_path / "state" / "napari-kaizen" / "logs").glob("kaizen-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "def broken" not in text and "in broken" in text and "segment" in text
    # A KaizenError stays one line with no log.
    assert main(["segment", src, "-o", str(tmp_path / "o.tif"), "-q", "--plane", "abc"]) == 1
    assert ".log" not in capsys.readouterr().err
    assert len(list((tmp_path / "state" / "napari-kaizen" / "logs").glob("*.log"))) == 1


def test_the_schedulers_death_is_one_line_naming_it(tmp_path, capsys, monkeypatch, field):
    """What dask.distributed raises when the scheduler goes away mid-run (its futures cancelled with
    'scheduler-connection-lost', after its own log lines) becomes one line naming the scheduler."""
    import contextlib
    import logging

    import distributed
    from distributed.client import FutureCancelledError

    import napari_kaizen.distributed as kd

    class LostFuture:
        key = "kaizen-field-0"

        def done(self):
            return True

        def result(self):
            logging.getLogger("distributed.client").error("Failed to reconnect to scheduler after 30.00 seconds")
            raise FutureCancelledError(key=self.key, reason="scheduler-connection-lost")

    class Client:
        def submit(self, fn, *args, **kwargs):
            return LostFuture()

        def cancel(self, futures, force=False):
            pass

    monkeypatch.setattr(kd, "dask_client", lambda scheduler: contextlib.nullcontext(Client()))
    monkeypatch.setattr(distributed, "as_completed", lambda futures: iter(futures))
    folder = _folder_of_images(tmp_path, field, n=2)
    assert main(["segment", str(folder), "-o", str(tmp_path / "out"), "-q", "--scheduler",
                 "tcp://127.0.0.1:8786"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "tcp://127.0.0.1:8786" in err and "stopped" in err and "--skip-existing" in err, err
