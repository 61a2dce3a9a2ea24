"""Count how `kaizen segment` meets bad inputs: clear errors, correct results, and anything else.

Every case is a real file and a real command line (the CLI's ``main`` in this process,
under a time limit): every engine on every dtype, NaN / inf, constant and tiny images,
RGB and stacks, bad parameters and bad weights files. A case is

* ``error``: exit status 1 with exactly one ``error: ...`` line and no output file;
* ``result``: exit status 0 and a label file of the input's shape (``empty`` when no
  object was found *and* the printed line says why);
* ``silent-empty``: exit 0, no object, no reason;
* ``traceback``: an exception escaped ``main``; ``hang``: over the time limit;
* ``multi-line``: an error that took more than one line; ``partial``: a failure that left
  an output file behind.

    python benchmarks/bad_input_audit.py [--engines classical kaizen unet fcn] [--families segment issue25]

The ``issue25`` family (outputs as one unit, files checked before being read whole,
``kaizen evaluate`` inputs, weights JSONs and names, the user model folder, unexpected
errors) runs other commands too; its resume / concurrent cases count ``result`` only
when every requested output is there afterwards (else ``missing-output``).

Writes ``benchmarks/results/bad_input_audit.json`` and prints the counts and every case
that is not ``error`` / ``result`` / ``empty``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _field(shape=(160, 160)):
    from napari_kaizen.data import synthesize

    return synthesize(seed=10_900, shape=shape, density=0.3)


def images() -> dict[str, np.ndarray]:
    """Name -> image array (the engine's own channel is chosen per engine below)."""
    f = _field()
    base = f.nuclei.astype(np.float64)
    u = (base - base.min()) / (base.max() - base.min())
    out: dict[str, np.ndarray] = {}
    for dt in ("uint8", "uint16", "int8", "int16", "int32", "int64", "uint32", "uint64"):
        info = np.iinfo(dt)
        span = min(4000, int(info.max) - int(info.min))
        out[dt] = (int(info.min) + np.round(u * span)).astype(dt)
    for dt in ("float16", "float32", "float64"):
        out[dt] = u.astype(dt)
    out["bool"] = u > 0.5
    out["int64 offset -1e12"] = (np.round(u * 4000) - 10**12).astype(np.int64)
    out["float32 +-3e38"] = ((u - 0.5) * 6e38).astype(np.float32)
    nan = u.copy()
    nan[::7, ::5] = np.nan
    out["some NaN"] = nan.astype(np.float32)
    out["all NaN"] = np.full((160, 160), np.nan, np.float32)
    inf = u.copy()
    inf[10, 10] = np.inf
    out["an inf"] = inf.astype(np.float32)
    out["constant"] = np.full((160, 160), 7, np.uint16)
    out["zeros"] = np.zeros((160, 160), np.uint8)
    out["tiny 5x5"] = (u[:5, :5] * 255).astype(np.uint8)
    out["1 x 160"] = (u[:1] * 255).astype(np.uint8)
    out["RGB"] = np.stack([(u * 255).astype(np.uint8)] * 3, -1)
    out["RGBA"] = np.stack([(u * 255).astype(np.uint8)] * 4, -1)
    out["z-stack"] = np.stack([(u * 255).astype(np.uint8)] * 4)
    out["t,z stack"] = np.stack([np.stack([(u * 255).astype(np.uint16)] * 2)] * 2)
    rng = np.random.default_rng(0)
    out["pure noise"] = rng.normal(1000, 30, (160, 160)).astype(np.float32)
    out["complex"] = u.astype(np.complex64)
    return out


def cases(engines: list[str], folder: Path) -> list[tuple[str, list[str], tuple[int, ...] | None]]:
    """(name, argv, expected labels shape or None) for every case."""
    import tifffile

    f = _field()
    out = []
    for name, arr in images().items():
        path = folder / f"img_{name.replace(' ', '_').replace(',', '')}.npy"
        np.save(path, arr)
        for engine in engines:
            expect = arr.shape[:2] if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)) else None
            out.append((f"{engine} / {name}", ["--engine", engine, str(path)], expect))
    # The U-Net's own channel, every dtype.
    lf = f.label_free
    for dt in ("uint8", "uint16", "float32"):
        arr = ((lf - lf.min()) / np.ptp(lf) * (255 if dt == "uint8" else 4000)).astype(dt)
        p = folder / f"lf_{dt}.tif"
        tifffile.imwrite(p, arr)
        if "unet" in engines:
            out.append((f"unet / label-free {dt}", ["--engine", "unet", str(p)], arr.shape))
    good = folder / "good.tif"
    tifffile.imwrite(good, f.nuclei)
    stack = folder / "stack.tif"
    tifffile.imwrite(stack, np.stack([f.nuclei] * 3))
    bad_params = {
        "classical": ["h=nan", "h=-1", "min_size=nan", "background_radius=1e6", "sigma=inf", "nope=1", "h=abc"],
        "kaizen": ["batch_points=5.0", "box_size=8", "patch_size=30", "max_iterations=-1", "mask_threshold=nan"],
        "unet": ["h=nan", "tile=7", "mask_threshold=2"],
        "fcn": ["threshold=nan", "tile=0", "overlap=-5", "threshold=1.5"],
    }
    for engine in engines:
        for item in bad_params.get(engine, []):
            out.append((f"{engine} / --param {item}", ["--engine", engine, str(good), "--param", item], f.nuclei.shape))
        for d in ("1e-3", "0", "-5", "nan", "100000", "abc"):
            out.append((f"{engine} / --diameter {d}", ["--engine", engine, str(good), "--diameter", d],
                        f.nuclei.shape))
        out.append((f"{engine} / --plane abc", ["--engine", engine, str(stack), "--plane", "abc"], None))
        out.append((f"{engine} / --plane 7 of 3", ["--engine", engine, str(stack), "--plane", "7"], None))
        out.append((f"{engine} / --plane 1", ["--engine", engine, str(stack), "--plane", "1"], f.nuclei.shape))
        out.append((f"{engine} / --all-planes", ["--engine", engine, str(stack), "--all-planes"], stack_shape(f)))
        out.append((f"{engine} / --channel 5 on 2-D", ["--engine", engine, str(good), "--channel", "5"], None))
        out.append((f"{engine} / --device cuda", ["--engine", engine, str(good), "--device", "cuda:7"], None))
    # Weights files.
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "empty.json").write_text("{}")
    (folder / "nojson.safetensors").write_bytes(b"\0" * 64)
    (folder / "junk.safetensors").write_bytes(b"\0" * 64)
    (folder / "junk.json").write_text("{not json")
    for engine in [e for e in engines if e != "classical"]:
        for w in ("missing.safetensors", "empty.safetensors", "nojson.safetensors", "junk.safetensors",
                  "bundled:nothing", "bundled:fcn_cells" if engine != "fcn" else "bundled:kaizen_nuclei"):
            spec = w if w.startswith("bundled:") else str(folder / w)
            out.append((f"{engine} / --model {w}", ["--engine", engine, str(good), "--model", spec], None))
    if "classical" in engines:
        out.append(("classical / --model on classical", ["--engine", "classical", str(good), "--model", "x"], None))
        # Colour fields tile by tile: a stained section is read as its luminance, two
        # stains on a dark field need --channel, a grey image stored as RGBA is grey.
        section = tifffile.imread(ROOT / "tests" / "data" / "dsb2018" / "stained_section_image.tif")
        tifffile.imwrite(folder / "section.tif", section)
        grey = np.uint8(255 * (f.nuclei - f.nuclei.min()) / np.ptp(f.nuclei))
        stains = np.zeros((*grey.shape, 3), np.uint8)
        stains[..., 2] = grey  # nuclei in blue on a dark field, another stain in red
        stains[40:80, 40:80, 0] = 150
        tifffile.imwrite(folder / "stains.tif", stains)
        grey_rgba = np.dstack([grey] * 3 + [np.full(grey.shape, 255, np.uint8)])
        tifffile.imwrite(folder / "grey_rgba.tif", grey_rgba)
        masked = grey_rgba.copy()
        masked[:20, :, 3] = 0  # transparency that varies: not read as grey
        tifffile.imwrite(folder / "masked_rgba.tif", masked)
        for name, path, shape in (("stained section", folder / "section.tif", section.shape[:2]),
                                  ("two stains on a dark field", folder / "stains.tif", None),
                                  ("grey image stored as RGBA", folder / "grey_rgba.tif", f.nuclei.shape)):
            out.append((f"classical / tiled colour: {name}",
                        ["--engine", "classical", str(path), "--tile", "128"], shape))
        # A plane index has no stack to pick from in a single or colour image, and a
        # channel is no plane of a stack (both were ignored without a word before 2026-12-07).
        for tile in ([], ["--tile", "128"]):
            how = "tiled " if tile else ""
            out.append((f"classical / {how}--plane 1 of a 2-D image", ["--engine", "classical", str(good), "--plane", "1",
                                                                     *tile], None))
            out.append((f"classical / {how}--plane 1 of a colour image", ["--engine", "classical", str(folder / "section.tif"),
                                                                        "--plane", "1", *tile], None))
            out.append((f"classical / {how}RGBA whose transparency varies", ["--engine", "classical",
                                                                           str(folder / "masked_rgba.tif"), *tile], None))
        out.append(("classical / --channel 1 of a stack", ["--engine", "classical", str(stack), "--channel", "1",
                                                           "--plane", "1"], None))
        # A colour picture plane by plane (an unexpected ValueError before 2026-12-07), and a
        # stack of colour images (read as planes of shape (W, 3) before).
        series = np.stack([section, section[::-1]])
        tifffile.imwrite(folder / "series.tif", series, photometric="rgb")
        out.append(("classical / --all-planes of a colour picture", ["--engine", "classical", str(folder / "section.tif"),
                                                                     "--all-planes"], section.shape[:2]))
        out.append(("classical / --all-planes of a colour stack", ["--engine", "classical", str(folder / "series.tif"),
                                                                   "--all-planes"], series.shape[:3]))
        out.append(("classical / --plane 1 of a colour stack", ["--engine", "classical", str(folder / "series.tif"),
                                                                "--plane", "1"], section.shape[:2]))
        out.append(("classical / a colour stack without a plane", ["--engine", "classical", str(folder / "series.tif")],
                    None))
        out.append(("classical / --all-planes --channel 5 of a colour stack",
                    ["--engine", "classical", str(folder / "series.tif"), "--all-planes", "--channel", "5"], None))
        # Tiled, a colour stack was refused whatever was given before 2026-12-07.
        for extra, expect in (([], None), (["--plane", "1"], section.shape[:2]), (["--plane", "2"], None),
                              (["--plane", "1", "--channel", "1"], section.shape[:2])):
            out.append((f"classical / tiled colour stack {' '.join(extra) or 'without a plane'}",
                        ["--engine", "classical", str(folder / "series.tif"), "--tile", "128", *extra], expect))
    if "classical" in engines:
        # An ImageJ hyperstack (TZCYX): its refusals name T, Z and C (by index before 2026-12-07).
        hyper = np.zeros((2, 3, 2, *f.nuclei.shape), np.float32)
        hyper[1, 2, 0] = f.nuclei
        tifffile.imwrite(folder / "hyper.tif", hyper, imagej=True, metadata={"axes": "TZCYX"})
        for how, tile in (("", []), ("tiled ", ["--tile", "128"])):
            for plane, expect in ((None, None), ("1,3,0", None), ("1,2,0", f.nuclei.shape)):
                pick = ["--plane", plane] if plane else []
                out.append((f"classical / {how}hyperstack TZCYX {'--plane ' + plane if plane else 'without a plane'}",
                            ["--engine", "classical", str(folder / "hyper.tif"), *pick, *tile], expect))
    out.append(("missing image", ["--engine", engines[0], str(folder / "nothing.tif")], None))
    (folder / "broken.tif").write_bytes(b"II*\0garbage")
    out.append(("broken TIFF", ["--engine", engines[0], str(folder / "broken.tif")], None))
    return out


def issue25_cases(folder: Path) -> list[tuple[str, object]]:
    """(name, callable giving the ``run_case`` result dict plus ``expect_files``) for the issue 25 families."""
    import json
    import os
    import shutil
    import subprocess

    import tifffile

    from napari_kaizen.engines._common.weights import bundled_dir

    f = _field()
    root = folder / "i25"
    root.mkdir()
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(2):
        tifffile.imwrite(imgs / f"f{i}.tif", f.nuclei)
    out: list[tuple[str, object]] = []

    def cli(argv, files=(), refuse=True):
        return lambda: {**run_argv(argv), "expect_files": [str(x) for x in files], "refuse": refuse}

    # F1: a resume after a run killed between the labels and the table / ROIs.
    res_out = root / "resume"

    def resume():
        run_argv(["segment", str(imgs), "-o", str(res_out), "-q", "--measurements", "--rois"])
        (res_out / "f0_measurements.csv").unlink(missing_ok=True)
        (res_out / "f1_rois.zip").unlink(missing_ok=True)
        r = run_argv(["segment", str(imgs), "-o", str(res_out), "-q", "--measurements", "--rois", "--skip-existing"])
        return {**r, "expect_files": [str(res_out / n) for n in ("f0_measurements.csv", "f1_rois.zip")]}

    out.append(("issue25 / resume writes the missing outputs", resume))
    # F1: another run's output lands while this one writes.
    conc = root / "concurrent"

    def concurrent():
        conc.mkdir()
        real = tifffile.imwrite

        def other_run_wins(path, *a, **k):
            real(path, *a, **k)
            if ".kaizen-tmp-" in str(path) and "f0.tif" in str(path) and not (conc / "f0.tif").exists():
                real(conc / "f0.tif", np.ones((8, 8), np.uint8))
            elif ".f0.tif." in str(path) and not (conc / "f0.tif").exists():  # older temporary names
                real(conc / "f0.tif", np.ones((8, 8), np.uint8))

        tifffile.imwrite = other_run_wins
        try:
            r = run_argv(["segment", str(imgs), "-o", str(conc), "-q", "--skip-existing"])
        finally:
            tifffile.imwrite = real
        return {**r, "expect_files": [str(conc / "f0.tif"), str(conc / "f1.tif")]}

    out.append(("issue25 / concurrent --skip-existing", concurrent))
    # F1: stale temporaries of a killed run.
    stale = root / "stale"

    def stale_run():
        stale.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        (stale / f".kaizen-tmp-{dead}-f0.tif.abcd1234.tmp.tif").write_bytes(b"half")
        old = stale / ".f0.zarr.k2j4h5g6.tmp.zarr"
        old.mkdir()
        os.utime(old, (0, 0))
        r = run_argv(["segment", str(imgs), "-o", str(stale), "-q", "--skip-existing"])
        left = [p.name for p in stale.iterdir() if p.name.startswith(".")]
        if left and r["kind"] is None:
            r["kind"] = f"left temporaries ({', '.join(left)})"
        return {**r, "expect_files": [str(stale / "f0.tif")]}

    out.append(("issue25 / stale temporaries removed", stale_run))
    # F2: headers that claim enormous sizes; one plane of a stack.
    big_tif = root / "claims.tif"
    tifffile.imwrite(big_tif, shape=(4000, 2000, 2000), dtype="uint16", photometric="minisblack")
    big_npy = root / "claims.npy"
    with open(big_npy, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (100000, 2000, 2000)})
    os.environ.setdefault("NAPARI_KAIZEN_MAX_READ_BYTES", str(8 << 30))
    for p in (big_tif, big_npy):
        out.append((f"issue25 / {p.suffix} claiming {p.stat().st_size} bytes as a huge stack",
                    cli(["segment", str(p), "-o", str(root / f"o{p.suffix}.tif"), "-q", "--all-planes"])))
    out.append(("issue25 / --plane 3 of a huge sparse stack",
                cli(["segment", str(big_tif), "-o", str(root / "plane.tif"), "-q", "--plane", "3"],
                    [root / "plane.tif"], refuse=False)))
    import zarr

    store = root / "damaged.zarr"
    arr = zarr.open(str(store), mode="w", shape=(320, 320), chunks=(160, 160), dtype="uint16")
    arr[:] = np.tile(f.nuclei.astype(np.uint16), (2, 2))
    chunk = sorted(p for p in store.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr.json")))[0]
    chunk.write_bytes(b"\x02\x01garbage")
    out.append(("issue25 / damaged zarr chunk", cli(["segment", str(store), "-o", str(root / "z.tif"), "-q"])))
    # F3: evaluate.
    gt = root / "gt.tif"
    tifffile.imwrite(gt, f.nucleus_labels)
    for name, arr in (("negative", f.nucleus_labels.astype(np.int32) - 1),
                      ("float 0.5", f.nucleus_labels.astype(np.float32) + 0.5)):
        p = root / f"pred_{name.split()[0]}.tif"
        tifffile.imwrite(p, arr)
        out.append((f"issue25 / evaluate {name} labels", cli(["evaluate", str(gt), str(p)])))
    out.append(("issue25 / evaluate a missing file", cli(["evaluate", str(gt), str(root / "nope.tif")])))
    # F4: weights.
    tampered = root / "weights"
    tampered.mkdir()
    meta = json.loads((bundled_dir() / "fcn_nuclei.json").read_text())
    edits = {"over 1 MiB": dict(meta, notes="x" * (2 << 20)), "architecture a number": dict(meta, architecture=5),
             "no sha256": {k: v for k, v in meta.items() if k != "sha256"}}
    good = root / "good.tif"
    tifffile.imwrite(good, f.nuclei)
    for name, m in edits.items():
        stem = tampered / name.replace(" ", "_")
        shutil.copy(bundled_dir() / "fcn_nuclei.safetensors", stem.with_suffix(".safetensors"))
        stem.with_suffix(".json").write_text(json.dumps(m))
        out.append((f"issue25 / weights JSON {name}",
                    cli(["segment", str(good), "-o", str(stem.with_suffix(".out.tif")), "-q", "--engine", "fcn", "--model",
                         str(stem.with_suffix(".safetensors"))])))
    out.append(("issue25 / --model bundled:../weights/fcn_nuclei",
                cli(["segment", str(good), "-o", str(root / "b.tif"), "-q", "--engine", "fcn", "--model",
                     "bundled:../weights/fcn_nuclei"])))
    users = root / "user_models"
    users.mkdir()
    (users / "bad.safetensors").write_bytes(b"\0" * 64)
    (users / "bad.json").write_text("{not json")
    (users / "gone.safetensors").symlink_to(root / "deleted.safetensors")

    def engines_listing():
        before = os.environ.get("NAPARI_KAIZEN_MODELS")
        os.environ["NAPARI_KAIZEN_MODELS"] = str(users)
        try:
            r = run_argv(["engines"])
        finally:
            if before is None:
                os.environ.pop("NAPARI_KAIZEN_MODELS")
            else:
                os.environ["NAPARI_KAIZEN_MODELS"] = before
        warned = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        if r["rc"] == 0 and (len(warned) != 1 or "gone.safetensors" not in warned[0]):
            r["kind"] = "unreadable files not named once"
        return {**r, "expect_files": []}

    out.append(("issue25 / kaizen engines with unreadable user models", engines_listing))
    return out


def run_argv(argv: list[str], limit: int = 300) -> dict:
    """``kaizen ARGV`` in this process under a time limit; rc, kind (traceback / hang), stderr, stdout."""
    from napari_kaizen.cli import main

    err, std = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            rc = main(argv)
        kind = None
    except _Timeout:
        rc, kind = None, "hang"
    except SystemExit as exc:
        rc, kind = int(exc.code or 0), None
    except BaseException as exc:  # noqa: BLE001 - the point is to count these
        rc, kind = None, f"traceback ({type(exc).__name__}: {str(exc)[:80]})"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return {"rc": rc, "kind": kind, "stderr": err.getvalue().strip(), "stdout": std.getvalue().strip()}


def classify_issue25(res: dict) -> str:
    if res["kind"]:
        return res["kind"]
    lines = [ln for ln in res["stderr"].splitlines() if ln.strip() and not ln.startswith("warning:")]
    if res["rc"] == 0 and res.get("refuse"):
        return "accepted (should refuse)"
    if res["rc"] == 0:
        missing = [Path(p).name for p in res["expect_files"] if not Path(p).exists()]
        return f"missing-output ({', '.join(missing)})" if missing else "result"
    if len(lines) == 1 and lines[0].startswith("error:"):
        return "error"
    return "multi-line" if lines else "no message"


def stack_shape(f) -> tuple[int, ...]:
    return (3, *f.nuclei.shape)


class _Timeout(BaseException):
    pass


def run_case(argv: list[str], out: Path, limit: int) -> dict:
    from napari_kaizen.cli import main

    err, std = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            rc = main(["segment", *argv[2:], "--engine", argv[1], "-o", str(out), "-q"])
        kind = None
    except _Timeout:
        rc, kind = None, "hang"
    except SystemExit as exc:  # argparse refusals: a usage line and a one-line message
        rc, kind = int(exc.code or 0), None
    except BaseException as exc:  # noqa: BLE001 - the point is to count these
        rc, kind = None, f"traceback ({type(exc).__name__}: {str(exc)[:80]})"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return {"rc": rc, "kind": kind, "stderr": err.getvalue().strip(), "stdout": std.getvalue().strip()}


def classify(res: dict, out: Path, expect) -> str:
    from napari_kaizen.io import read_labels

    if res["kind"]:
        return res["kind"]
    lines = [ln for ln in res["stderr"].splitlines() if ln.strip() and not ln.startswith("warning:")]
    if res["rc"] == 0:
        if not out.exists():
            return "no output"
        labels = read_labels(out)
        if expect is not None and labels.shape != tuple(expect):
            return f"wrong shape {labels.shape}"
        if labels.max() == 0:
            return "empty" if "(" in res["stdout"].split("->")[-1] else "silent-empty"
        return "result"
    if out.exists():
        return "partial"
    if res["rc"] == 2:  # argparse: usage + one error line
        return "error" if sum(ln.startswith("kaizen") or ": error:" in ln for ln in lines) >= 1 else "multi-line"
    if len(lines) == 1 and lines[0].startswith("error:"):
        return "error"
    return "multi-line" if lines else "no message"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["classical", "kaizen", "unet", "fcn"])
    parser.add_argument("--families", nargs="+", default=["segment", "issue25"], choices=["segment", "issue25"])
    parser.add_argument("--limit", type=int, default=300, help="seconds per case before it counts as a hang")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_input_audit.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, run in (issue25_cases(folder) if "issue25" in args.families else []):
            res = run()
            kind = classify_issue25(res)
            rows.append({"case": name, "outcome": kind, "rc": res["rc"],
                         "said": (res["stderr"] or res["stdout"]).splitlines()[-1][:160] if (res["stderr"] or res["stdout"]) else ""})
            print(f"{kind:14s} {name}: {rows[-1]['said'][:110]}", flush=True)
        for k, (name, argv, expect) in enumerate(cases(args.engines, folder) if "segment" in args.families else []):
            engine, src = argv[1], argv[2]
            out = folder / f"out_{k}.tif"
            res = run_case(["", engine, src, *argv[3:]], out, args.limit)
            kind = classify(res, out, expect)
            rows.append({"case": name, "outcome": kind, "rc": res["rc"],
                         "said": (res["stderr"] or res["stdout"]).splitlines()[-1][:160] if (res["stderr"] or res["stdout"]) else ""})
            print(f"{kind:14s} {name}: {rows[-1]['said'][:110]}", flush=True)
    counts: dict[str, int] = {}
    for r in rows:
        key = r["outcome"].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"counts": counts, "cases": rows}, indent=2) + "\n")
    print(json.dumps(counts))
    bad = [r for r in rows if r["outcome"] not in ("error", "result", "empty")]
    for r in bad:
        print(f"NOT OK: {r['outcome']}: {r['case']}: {r['said']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
