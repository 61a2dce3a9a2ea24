"""Bad inputs from the hardening audit: each gives a correct result or one clear line.

Every row of ``CLI_REFUSALS`` is a command a person could type; it must exit non-zero
with a one-line message naming what was wrong, and write nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_kaizen import metrics
from napari_kaizen.cli import main
from napari_kaizen.data import synthesize
from napari_kaizen.engines import get_engine
from napari_kaizen import run_to_end
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
    (["--plane", "1"], "image is 2-D"),
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
