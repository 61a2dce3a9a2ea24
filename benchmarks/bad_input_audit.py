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

    python benchmarks/bad_input_audit.py [--engines classical kaizen unet fcn]

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
    out.append(("missing image", ["--engine", engines[0], str(folder / "nothing.tif")], None))
    (folder / "broken.tif").write_bytes(b"II*\0garbage")
    out.append(("broken TIFF", ["--engine", engines[0], str(folder / "broken.tif")], None))
    return out


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
    parser.add_argument("--limit", type=int, default=300, help="seconds per case before it counts as a hang")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_input_audit.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, (name, argv, expect) in enumerate(cases(args.engines, folder)):
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
