"""Speed of every engine: seconds per megapixel, scaling with pixel count, memory, network share.

Issue 23, deliverable 1. For every engine, field size and torch thread count this
measures, each in its own fresh process:

* **time** of one whole segmentation, ``run_to_end(engine.segment(image, engine.params(),
  model=model, device=device))``, twice in the same process: the *first call* (its model
  loaded just before, timed separately) and a *steady* second call. The steady call is
  the headline figure (the table, the budgets, the exponent): it is what every image
  after the first costs in napari or in a ``kaizen segment`` loop. The first call adds
  one-off costs (lazy imports inside the engine, allocator warm-up, oneDNN kernel
  selection) and is reported beside it.
* **seconds per megapixel** (steady time / (N² / 10⁶)) and the **exponent** of time
  against pixel count: the least-squares slope of log(time) on log(pixels) over the
  sizes run (1.0 is linear; the budget is ≤ 1.1).
* **peak memory**: the process's ``VmHWM`` (``/proc/self/status``) after the first and
  the steady call, absolute (it includes the interpreter, torch, the model and the
  input field), with the resident memory just before the first call for reference
  (see ``benchmarks/scale.py`` for why not ``ru_maxrss``).
* **network share**: in a third call of the same segmentation, the wall time spent
  inside the network divided by that call's whole time (see "How the network is timed").
* **network GFLOP/s**: the network's floating-point operations, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` in a fourth call (convolutions and
  matrix products only, 2 FLOPs per multiply-add; element-wise work is not counted),
  divided by the network seconds of the third call. Set against the **machine's fp32
  matmul rate**, measured in the same run in its own fresh processes (one per thread
  count; 2048³ float32 products on CPU, 8192³ on CUDA, best of 5; once before and once
  after the engines, the higher counts).
* **load average** (1 min) at the start and end of every process, the CPU model, core
  count and library versions: on a shared machine they say how far to trust a number.

Every cell is the median of ``--repeats`` fresh processes (default 3). The repeats are
the outer loop, so a burst of other work on the machine spoils one repeat of many cells
rather than all repeats of one.

The benchmark field is THE field of issue 23: ``synthesize(SynthParams(shape=(N, N),
density=0.3), seed=10_500)`` (about 1,200 nuclei at 1024²); engines whose default model
takes a label-free image (the U-Net: ``INPUT_KIND == 'label-free'``) get that field's
``label_free`` channel (phase contrast, float32), the others its ``nuclei`` channel
(uint16). Sizes above ``--direct-max`` (default 4096, i.e. all default sizes drawn
directly) are a 2 x 2, 3 x 3, ... mosaic of 2048² fields with seeds 10_500, 10_501, ...
The fields are drawn once per size by the parent and cached as ``.npy`` in ``--work``
(default ``$TMPDIR/kaizen_speed_fields``); a child loads its field before any timing.

How the network is timed
------------------------
The engines do not all call their network the same way: the FCN and the U-Net call
``net(batch)`` through the tiling helper (and an engine may call a copy of the network,
e.g. one with batch norm folded into the convolutions, made per call), Kaizen calls
``net.predict(patches)``, which calls the encoder, codebook and decoder modules. So the
meter works at the torch level: for the measuring call only, ``torch.nn.Module.__call__``
(and ``predict`` of the loaded network's class) is replaced by a wrapper that keeps a
per-thread nesting depth and adds the wall time of every *outermost* call, i.e. from
entering the first module to leaving it, whatever network object that is. Nested
module calls cost one Python function call and a counter each. That overhead is
estimated, not guessed: the child times the wrapper on a trivial module and multiplies
by the number of module calls of the run (``meter_overhead_est_s`` in the JSON). On
CUDA the meter synchronises the device on entering and leaving an outermost call so
that the time is the kernels', not the launches'. Work around the network that is not
a module call (softmax of the FCN's scores, flips of the test-time augmentation,
stitching of tiles, post-processing) counts as "not network".

Usage
-----
::

    python benchmarks/speed.py                                     # the whole matrix, CPU (long)
    python benchmarks/speed.py --engines classical fcn --sizes 256 512 --repeats 1   # a quick look
    python benchmarks/speed.py --device cuda --threads 2           # on a GPU machine
    python benchmarks/speed.py --device cuda --kaizen-live         # Kaizen's live view rate, 1024²

Results: ``benchmarks/results/speed_<device>.json`` (``--out``; the matrix and the
live-view measurement are kept under their own keys, a rerun replaces only its own) and
the table in ``docs/speed.md`` between ``<!-- speed-table:<device> -->`` and
``<!-- /speed-table:<device> -->`` (``--markdown``; ``--markdown ''`` writes none).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

ENGINES = ("classical", "kaizen", "unet", "fcn")
SIZES = (512, 1024, 2048, 4096)
THREADS = (1, 2)
#: Issue 23's budgets: steady seconds on the 1024² field with 2 threads (CPU).
BUDGETS_S = {"fcn": 1.5, "kaizen": 3.0, "unet": 2.3, "classical": 0.6}
BUDGET_SIZE, BUDGET_THREADS, EXPONENT_BUDGET = 1024, 2, 1.1
#: The Kaizen live view's GPU requirement: iterations drawn per second on a 1024² field.
LIVE_SIZE, LIVE_RATE = 1024, 10.0
FIELD_SEED, FIELD_DENSITY, BLOCK = 10_500, 0.3, 2048
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# =========================================================================== measuring helpers


def _proc_status_gib(field: str = "VmHWM:") -> float | None:
    """This process's peak (``VmHWM:``) or current (``VmRSS:``) resident memory, GiB.

    ``ru_maxrss`` is not used: Linux carries a parent's high-water mark into a child
    started by vfork + exec (see ``benchmarks/scale.py``).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024**2  # kB -> GiB
    except OSError:
        pass
    return None


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _sync_fn(device: str):
    """A function that waits for the device (CUDA kernels run asynchronously), or None."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    if str(device) == "mps":
        return torch.mps.synchronize
    return None


class NetworkMeter:
    """Wall time inside outermost network calls, summed (see the module docstring).

    Use as a context manager around one segmentation. ``predict_classes``: classes
    whose ``predict`` method is an entry point into the network besides ``__call__``
    (Kaizen's VQ-VAE). ``flops=True`` counts FLOPs instead of timing (each outermost
    call under its own ``FlopCounterMode``; a call whose module, method and tensor
    argument shapes were seen before reuses the count, because a network's FLOPs
    depend on those only, so the many equal Kaizen batches are counted once).
    """

    def __init__(self, predict_classes=(), sync=None, flops: bool = False) -> None:
        self.predict_classes = tuple(predict_classes)
        self.sync = sync
        self.flops_mode = flops
        self.seconds = 0.0
        self.flops = 0
        self.outer_calls = 0
        self.module_calls = 0
        self._local = threading.local()
        self._cache: dict[tuple, int] = {}
        self._saved: list[tuple[type, str, Any]] = []

    # The wrapper is as small as it can be: it runs for every module call of the run.
    def _wrap(self, fn):
        meter = self

        @functools.wraps(fn)
        def wrapper(mod, *args, **kwargs):
            local = meter._local
            depth = getattr(local, "depth", 0)
            meter.module_calls += 1
            local.depth = depth + 1
            try:
                if depth:
                    return fn(mod, *args, **kwargs)
                meter.outer_calls += 1
                if meter.flops_mode:
                    return meter._counted(fn, mod, args, kwargs)
                if meter.sync:
                    meter.sync()
                t0 = time.perf_counter()
                out = fn(mod, *args, **kwargs)
                if meter.sync:
                    meter.sync()
                meter.seconds += time.perf_counter() - t0
                return out
            finally:
                local.depth = depth

        return wrapper

    def _counted(self, fn, mod, args, kwargs):
        from torch.utils.flop_counter import FlopCounterMode

        key = (type(mod), id(mod), fn.__name__,
               tuple((tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") else type(a).__name__ for a in args))
        if key in self._cache:
            self.flops += self._cache[key]
            return fn(mod, *args, **kwargs)
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn(mod, *args, **kwargs)
        n = int(counter.get_total_flops())
        self._cache[key] = n
        self.flops += n
        return out

    def __enter__(self) -> NetworkMeter:
        import torch

        targets = [(torch.nn.Module, "__call__")]
        targets += [(cls, "predict") for cls in self.predict_classes if "predict" in vars(cls)]
        for cls, name in targets:
            original = vars(cls)[name]
            self._saved.append((cls, name, original))
            setattr(cls, name, self._wrap(original))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)
        self._saved.clear()


def _meter_overhead_per_call_s() -> float:
    """Extra seconds the meter adds to one nested module call (timed on ``nn.Identity``)."""
    import torch

    mod, x, n = torch.nn.Identity(), torch.zeros(1), 20_000

    def loop() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            mod(x)
        return time.perf_counter() - t0

    plain = min(loop() for _ in range(3))
    with NetworkMeter():
        # Inside an outer call, as nested calls are in a real run.
        class Outer(torch.nn.Module):
            def forward(self, _):
                return min(loop() for _ in range(3))

        metered = Outer()(x)
    return max(0.0, (metered - plain) / n)


# =========================================================================== fields


def _field_path(work: Path, n: int, channel: str) -> Path:
    return work / f"field_{n}_seed{FIELD_SEED}_d{FIELD_DENSITY}_{channel}.npy"


def make_fields(sizes, work: Path, direct_max: int = 4096) -> dict[int, dict]:
    """Draw (once) and cache the benchmark field of every size; return what was drawn."""
    from napari_kaizen.data import SynthParams, synthesize

    work.mkdir(parents=True, exist_ok=True)
    info: dict[int, dict] = {}
    for n in sizes:
        meta_path = work / f"field_{n}_seed{FIELD_SEED}_d{FIELD_DENSITY}.json"
        paths = {c: _field_path(work, n, c) for c in ("nuclei", "label_free")}
        if meta_path.exists() and all(p.exists() for p in paths.values()):
            info[n] = json.loads(meta_path.read_text())
            continue
        t0 = time.perf_counter()
        if n <= direct_max:
            f = synthesize(SynthParams(shape=(n, n), density=FIELD_DENSITY), seed=FIELD_SEED)
            chans = {"nuclei": f.nuclei, "label_free": f.label_free}
            n_nuclei, how = f.n_nuclei, "drawn directly"
        else:
            # Too big to draw in one piece in reasonable time: a mosaic of 2048² fields.
            chans = {"nuclei": np.zeros((n, n), np.uint16), "label_free": np.zeros((n, n), np.float32)}
            n_nuclei, k = 0, 0
            for y in range(0, n, BLOCK):
                for x in range(0, n, BLOCK):
                    f = synthesize(SynthParams(shape=(BLOCK, BLOCK), density=FIELD_DENSITY), seed=FIELD_SEED + k)
                    h, w = min(BLOCK, n - y), min(BLOCK, n - x)
                    for c in chans:
                        chans[c][y : y + h, x : x + w] = getattr(f, c)[:h, :w]
                    n_nuclei += f.n_nuclei
                    k += 1
            how = f"mosaic of {k} fields of {BLOCK}², seeds {FIELD_SEED}..{FIELD_SEED + k - 1}"
        for c, arr in chans.items():
            # Written under a temporary name and renamed: an interrupted run must not
            # leave a truncated field that a later run would reuse.
            tmp = paths[c].with_suffix(".partial.npy")
            np.save(tmp, arr)
            os.replace(tmp, paths[c])
        info[n] = {"size": n, "n_nuclei": int(n_nuclei), "how": how, "seed": FIELD_SEED, "density": FIELD_DENSITY,
                   "draw_s": round(time.perf_counter() - t0, 1)}
        meta_path.write_text(json.dumps(info[n]) + "\n")
    return info


# =========================================================================== child processes


def _child_engine(args: argparse.Namespace) -> dict:
    """One fresh process: first call, steady call, metered call, FLOP-counted call."""
    t_start = time.perf_counter()
    load_start = _loadavg()
    import torch

    from napari_kaizen import run_to_end
    from napari_kaizen.engines import get_engine

    _set_threads(torch, args.threads)
    engine = get_engine(args.engine)
    import_s = time.perf_counter() - t_start
    image = np.load(args.field)
    params = engine.params()
    sync = _sync_fn(args.device)
    rss_before = _proc_status_gib("VmRSS:")

    cpu: dict[str, float] = {}

    def run(model, name: str = "") -> tuple[float, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        last = run_to_end(engine.segment(image, params, model=model, device=args.device))
        if sync:
            sync()
        # Process CPU seconds (all threads) beside the wall time: less sensitive to
        # other work on a shared machine, though not the figure the budgets are about.
        cpu[name] = time.process_time() - c0
        return time.perf_counter() - t0, last

    t0 = time.perf_counter()
    model = engine.load_model(None, device=args.device) if engine.learned else None
    if sync:
        sync()
    load_model_s = time.perf_counter() - t0
    first_s, _ = run(model, "first")
    peak_first = _proc_status_gib()
    steady_s, last = run(model, "steady")
    peak_steady = _proc_status_gib()
    n_objects = int(np.asarray(last.labels).max()) if last.labels is not None else 0
    out = {
        "engine": args.engine, "size": args.size, "threads": args.threads, "device": args.device,
        "torch_threads": torch.get_num_threads(), "input": args.channel, "input_dtype": str(image.dtype),
        "import_s": round(import_s, 3), "load_model_s": round(load_model_s, 4) if engine.learned else None,
        "first_s": round(first_s, 4), "steady_s": round(steady_s, 4), "n_objects": n_objects,
        "first_cpu_s": round(cpu["first"], 4), "steady_cpu_s": round(cpu["steady"], 4),
        "rss_before_gib": _round(rss_before, 3), "peak_rss_after_first_gib": _round(peak_first, 3),
        "peak_rss_gib": _round(peak_steady, 3),
    }
    if str(args.device).startswith("cuda"):
        # The host's VmHWM does not see device memory: the allocator's own peak.
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 1024**3, 3)
    if engine.learned and not args.no_network and (not args.network_sizes or args.size in args.network_sizes):
        predict_classes = [type(getattr(model, "net", model))]
        with NetworkMeter(predict_classes, sync=sync) as meter:
            metered_s, _ = run(model)
        out.update({
            "metered_s": round(metered_s, 4), "network_s": round(meter.seconds, 4),
            "network_share": round(meter.seconds / metered_s, 4) if metered_s > 0 else None,
            "network_outer_calls": meter.outer_calls, "module_calls": meter.module_calls,
        })
        per_call = _meter_overhead_per_call_s()
        out["meter_overhead_per_call_us"] = round(per_call * 1e6, 3)
        out["meter_overhead_est_s"] = round(per_call * meter.module_calls, 4)
        with NetworkMeter(predict_classes, flops=True) as counter:
            run(model)
        out["network_gflop"] = round(counter.flops / 1e9, 3)
        out["network_gflops_per_s"] = round(counter.flops / 1e9 / meter.seconds, 2) if meter.seconds > 0 else None
    out["load_average_1min"] = {"start": load_start, "end": _loadavg()}
    out["child_wall_s"] = round(time.perf_counter() - t_start, 2)
    return out


def _child_matmul(args: argparse.Namespace) -> dict:
    """The machine's fp32 matrix-product rate with this many threads (best of 5)."""
    import torch

    _set_threads(torch, args.threads)
    cuda = args.device.startswith("cuda")
    n = args.matmul_n or (8192 if cuda else 2048)
    dev = torch.device(args.device)
    a = torch.randn(n, n, dtype=torch.float32, device=dev)
    b = torch.randn(n, n, dtype=torch.float32, device=dev)
    sync = _sync_fn(args.device)
    if cuda:
        # The fp32 rate, not TF32's: the engines run fp32 convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
    times = []
    for _ in range(6):  # the first is a warm-up
        t0 = time.perf_counter()
        torch.mm(a, b)
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return {"threads": args.threads, "device": args.device, "n": n, "best_s": round(best, 5),
            "gflops_per_s": round(2 * n**3 / best / 1e9, 1), "load_average_1min": _loadavg()}


def _child_live(args: argparse.Namespace) -> dict:
    """Kaizen's live view, engine side: iterations per second of the snapshot generator.

    Two runs in this process (the first after loading the model; the second steady);
    each once with the generator alone and once also reading every iteration's
    ``internal`` and ``error`` images, which the napari view rebuilds for each frame
    (``widgets/_kaizen_view.py``). Drawing in Qt is not included.
    """
    load_start = _loadavg()
    import torch

    from napari_kaizen.engines import get_engine

    _set_threads(torch, args.threads)
    engine = get_engine("kaizen")
    image = np.load(args.field)
    params = engine.params()
    sync = _sync_fn(args.device)
    model = engine.load_model(None, device=args.device)

    def one(read_maps: bool) -> dict:
        stamps, n_iter = [], 0
        t0 = time.perf_counter()
        first_snapshot = None
        for snap in engine.segment(image, params, model=model, device=args.device):
            if read_maps and getattr(snap, "trace", None) is not None:
                snap.internal, snap.error  # noqa: B018 - rebuilt on reading, as the view does
            if sync:
                sync()
            now = time.perf_counter() - t0
            if first_snapshot is None:
                first_snapshot = now
            if snap.stage == "iteration":
                stamps.append(now)
                n_iter += 1
        total = time.perf_counter() - t0
        gaps = np.diff([0.0, *stamps]) if stamps else np.zeros(0)
        return {
            "iterations": n_iter, "total_s": round(total, 3), "first_snapshot_s": _round(first_snapshot, 3),
            "last_iteration_s": round(stamps[-1], 3) if stamps else None,
            "iterations_per_s": round(n_iter / stamps[-1], 2) if stamps else None,
            # What a viewer waits between frames: the slowest gaps matter, not only the mean.
            "gap_median_s": round(float(np.median(gaps)), 4) if gaps.size else None,
            "gap_p90_s": round(float(np.percentile(gaps, 90)), 4) if gaps.size else None,
            "gap_max_s": round(float(gaps.max()), 4) if gaps.size else None,
            "share_of_gaps_over_0.1s": round(float((gaps > 1 / LIVE_RATE).mean()), 3) if gaps.size else None,
        }

    return {"size": args.size, "threads": args.threads, "device": args.device,
            "first": one(False), "steady": one(False), "steady_with_maps": one(True),
            "load_average_1min": {"start": load_start, "end": _loadavg()}}


def _set_threads(torch, threads: int) -> None:
    torch.set_num_threads(int(threads))
    try:
        # Must come before any inter-op parallel work; a fresh process has done none.
        torch.set_num_interop_threads(int(threads))
    except RuntimeError:
        pass


def _round(x, nd):
    return None if x is None else round(x, nd)


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(kind: str, argv: list[str], threads: int, timeout: float) -> dict:
    """Run this script as a fresh ``--child KIND`` process; its last stdout line is JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--threads", str(threads), *argv]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(threads),
                              check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        return {"error": f"exit {proc.returncode}: {tail}"}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": "no JSON line from the child"}
    out["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


# =========================================================================== the parent


def machine_info(device: str) -> dict:
    import scipy
    import skimage
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu, "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "skimage": skimage.__version__, "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def exponent(sizes_and_times) -> float | None:
    """Least-squares slope of log(time) on log(pixels); None with fewer than 2 sizes."""
    pts = [(n * n, t) for n, t in sizes_and_times if t is not None and t > 0]
    if len(pts) < 2 or len({p for p, _ in pts}) < 2:
        return None
    x = np.log([p for p, _ in pts])
    y = np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])


def summarise(runs: list[dict], engines, sizes, threads) -> dict:
    """Medians per (engine, threads, size) cell and per-row exponents."""
    keys = ("steady_s", "first_s", "steady_cpu_s", "first_cpu_s", "load_model_s", "import_s", "peak_rss_gib",
            "peak_rss_after_first_gib", "rss_before_gib", "peak_gpu_allocated_gib", "network_s", "network_share",
            "network_gflop", "network_gflops_per_s",
            "meter_overhead_est_s", "metered_s", "n_objects")
    rows = []
    for e in engines:
        for t in threads:
            cells = {}
            for n in sizes:
                got = [r for r in runs if r.get("engine") == e and r.get("threads") == t and r.get("size") == n]
                ok = [r for r in got if "error" not in r]
                cell = {"n_ok": len(ok), "n_runs": len(got), "errors": [r["error"] for r in got if "error" in r]}
                for k in keys:
                    m = _median([r.get(k) for r in ok])
                    cell[k] = None if m is None else round(m, 4)
                cell["steady_s_all"] = [r["steady_s"] for r in ok]
                if cell["steady_s"]:
                    cell["s_per_mpx"] = round(cell["steady_s"] / (n * n / 1e6), 4)
                cell["load_average_1min"] = [r.get("load_average_1min") for r in ok]
                cells[str(n)] = cell
            series = [(n, cells[str(n)]["steady_s"]) for n in sizes]
            local = {}
            for (n0, t0), (n1, t1) in zip(series, series[1:]):
                if t0 and t1:
                    local[f"{n0}->{n1}"] = round(exponent([(n0, t0), (n1, t1)]), 3)
            exp = exponent(series)
            exp_first = exponent([(n, cells[str(n)]["first_s"]) for n in sizes])
            row = {"engine": e, "threads": t, "cells": cells,
                   "exponent": None if exp is None else round(exp, 3),
                   "exponent_first_call": None if exp_first is None else round(exp_first, 3),
                   "exponent_between_sizes": local}
            if t == BUDGET_THREADS and e in BUDGETS_S and str(BUDGET_SIZE) in cells:
                s = cells[str(BUDGET_SIZE)]["steady_s"]
                row["budget"] = {"size": BUDGET_SIZE, "threads": BUDGET_THREADS, "budget_s": BUDGETS_S[e],
                                 "steady_s": s, "met": None if s is None else bool(s <= BUDGETS_S[e]),
                                 "exponent_budget": EXPONENT_BUDGET,
                                 "exponent_met": None if exp is None else bool(exp <= EXPONENT_BUDGET)}
            rows.append(row)
    return {"rows": rows}


def _fmt(x, nd=2, unit="") -> str:
    if x is None:
        return "–"
    return f"{x:.{nd}f}{unit}"


def render_markdown(result: dict) -> str:
    """The table (and notes) that go between the markers of docs/speed.md."""
    lines = []
    matrix = result.get("matrix")
    if matrix:
        sizes = matrix["sizes"]
        ref = BUDGET_SIZE if BUDGET_SIZE in sizes else sizes[-1]
        mm = matrix.get("matmul_gflops_per_s", {})
        m = matrix["machine"]
        lines.append(f"Measured {matrix['finished'] or matrix['started']} (UTC) on {m['cpu_model']}, "
                     f"{m['cpu_count']} logical CPUs, device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; "
                     f"torch {m['torch']}, numpy {m['numpy']}, scipy {m['scipy']}, scikit-image {m['skimage']}. "
                     f"Steady call (the second in a fresh process), median of {matrix['repeats']} processes; "
                     f"1-min load average {matrix['load_average_1min']['start']} at the start, "
                     f"{matrix['load_average_1min']['end']} at the end, "
                     f"children {_fmt(matrix['load_average_1min'].get('children_min'), 1)}–"
                     f"{_fmt(matrix['load_average_1min'].get('children_max'), 1)}.")
        lines.append("")
        head = (["engine", "threads"] + [f"{n}² s" for n in sizes]
                + [f"s/Mpx ({ref}²)", "exponent", f"peak RSS (GiB, {sizes[-1]}²)", f"network share ({ref}²)",
                   f"network GFLOP/s ({ref}²)", "matmul GFLOP/s", f"budget ({BUDGET_SIZE}², {BUDGET_THREADS} thr)"])
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        for row in matrix["summary"]["rows"]:
            c = row["cells"]
            times = []
            for n in sizes:
                cell = c[str(n)]
                times.append(_fmt(cell["steady_s"], 3) if cell["n_ok"] else ("error" if cell["errors"] else "–"))
            r = c[str(ref)]
            big = c[str(sizes[-1])]
            budget = "–"
            if "budget" in row:
                b = row["budget"]
                if b["steady_s"] is not None:
                    budget = (f"{b['steady_s']:.2f} ≤ {b['budget_s']} s: {'met' if b['met'] else 'NOT met'}")
                if b["exponent_met"] is not None:
                    budget += f"; exponent ≤ {EXPONENT_BUDGET}: {'met' if b['exponent_met'] else 'NOT met'}"
            lines.append("| " + " | ".join([
                row["engine"], str(row["threads"]), *times, _fmt(r.get("s_per_mpx"), 3),
                _fmt(row["exponent"], 2), _fmt(big.get("peak_rss_gib"), 2) + (
                    "" if big.get("peak_gpu_allocated_gib") is None else f" (GPU {big['peak_gpu_allocated_gib']:.2f})"),
                "–" if r.get("network_share") is None else f"{100 * r['network_share']:.0f} %",
                _fmt(r.get("network_gflops_per_s"), 1), _fmt(mm.get(str(row["threads"])), 1), budget]) + " |")
        lines.append("")
        lines.append(f"First call in a fresh process at {ref}² (model load, then the first segmentation) "
                     "against the steady second call, seconds (medians):")
        lines.append("")
        lines.append("| engine | threads | load model | first call | steady call | steady call, process CPU s "
                     "| exponent of first calls |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for row in matrix["summary"]["rows"]:
            r = row["cells"][str(ref)]
            lines.append(f"| {row['engine']} | {row['threads']} | {_fmt(r.get('load_model_s'), 3)} "
                         f"| {_fmt(r.get('first_s'), 3)} | {_fmt(r.get('steady_s'), 3)} "
                         f"| {_fmt(r.get('steady_cpu_s'), 3)} | {_fmt(row.get('exponent_first_call'), 2)} |")
    live = result.get("kaizen_live")
    if live:
        s = live.get("steady", {})
        w = live.get("steady_with_maps", {})
        lines.append("")
        lines.append(f"Kaizen live view (engine side, no Qt drawing), {live['size']}² on {live['device']} "
                     f"({live['threads']} threads), measured {live.get('measured', '?')}: "
                     f"{_fmt(s.get('iterations_per_s'), 1)} iterations/s over {s.get('iterations', '–')} iterations "
                     f"(slowest gap {_fmt(s.get('gap_max_s'), 3)} s); reading each iteration's internal and error "
                     f"images too: {_fmt(w.get('iterations_per_s'), 1)} iterations/s. "
                     f"Requirement on the GPU: ≥ {LIVE_RATE:.0f} iterations/s.")
    if not lines:
        lines.append("(run `python benchmarks/speed.py` to fill)")
    return "\n".join(lines)


def write_markdown(path: Path, tag: str, body: str) -> None:
    """Replace what lies between ``<!-- speed-table:TAG -->`` and its end marker (or append)."""
    start, end = f"<!-- speed-table:{tag} -->", f"<!-- /speed-table:{tag} -->"
    text = path.read_text() if path.exists() else "# Speed\n"
    block = f"{start}\n{body}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## Results ({tag})\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def run_matrix(engines, sizes, threads, repeats: int = 3, device: str = "cpu", work: Path | None = None,
               out: Path | None = None, timeout: float = 3600, no_network: bool = False, direct_max: int = 4096,
               network_sizes=None, matmul_n: int | None = None, verbose: bool = True) -> dict:
    """The parent: draw the fields, measure matmul rates, run every child; return the result.

    ``out``: where the JSON goes (written after every child, so an interrupted run keeps
    what it measured); None writes nothing.
    """
    from napari_kaizen.engines import get_engine

    sizes, threads, engines = [int(n) for n in sizes], [int(t) for t in threads], list(engines)
    work = Path(work) if work else Path(tempfile.gettempdir()) / "kaizen_speed_fields"
    say = print if verbose else (lambda *a, **k: None)
    load_start = _loadavg()
    matrix: dict[str, Any] = {
        "what": "steady (second) call of run_to_end(engine.segment(field, engine.params())) in a fresh process; "
                "first call, model load, peak RSS, network share and FLOP rate beside it",
        "started": _now(), "finished": None, "engines": engines, "sizes": sizes, "threads": threads,
        "repeats": repeats, "device": device, "machine": machine_info(device),
        "budgets_s": {"size": BUDGET_SIZE, "threads": BUDGET_THREADS, **BUDGETS_S, "exponent": EXPONENT_BUDGET},
        "load_average_1min": {"start": load_start}, "matmul": [], "runs": [],
    }
    result = _load_json(out) if out else {}

    def save():
        if out:
            result["matrix"] = matrix
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")

    say(f"drawing / loading fields {sizes} in {work}", flush=True)
    matrix["fields"] = {str(k): v for k, v in make_fields(sizes, work, direct_max).items()}

    def matmul(when: str):
        for t in threads:
            r = run_child("matmul", ["--device", device] + (["--matmul-n", str(matmul_n)] if matmul_n else []),
                          t, timeout)
            r["when"] = when
            matrix["matmul"].append(r)
            say(f"matmul fp32 {t} thr ({when}): {r.get('gflops_per_s', r.get('error'))} GFLOP/s", flush=True)

    matmul("before")
    save()
    for rep in range(repeats):
        for e in engines:
            channel = "label_free" if get_engine(e).input_kind == "label-free" else "nuclei"
            for t in threads:
                for n in sizes:
                    argv = ["--engine", e, "--size", str(n), "--device", device, "--channel", channel,
                            "--field", str(_field_path(work, n, channel))]
                    if no_network:
                        argv.append("--no-network")
                    if network_sizes:
                        argv += ["--network-sizes", *map(str, network_sizes)]
                    r = run_child("engine", argv, t, timeout)
                    r.update({"engine": e, "size": n, "threads": t, "repeat": rep})
                    matrix["runs"].append(r)
                    if "error" in r:
                        say(f"[{rep + 1}/{repeats}] {e} {n}² {t} thr: ERROR {r['error']}", flush=True)
                    else:
                        share = r.get("network_share")
                        say(f"[{rep + 1}/{repeats}] {e} {n}² {t} thr: steady {r['steady_s']:.3f} s, first "
                            f"{r['first_s']:.3f} s" + ("" if r["load_model_s"] is None else f" (+ load {r['load_model_s']:.2f} s)")
                            + f", peak {r['peak_rss_gib']:.2f} GiB"
                            + ("" if share is None else f", network {100 * share:.0f} % at "
                               f"{r.get('network_gflops_per_s')} GFLOP/s")
                            + f", load avg {r['load_average_1min']['start']}->{r['load_average_1min']['end']}",
                            flush=True)
                    matrix["summary"] = summarise(matrix["runs"], engines, sizes, threads)
                    save()
    matmul("after")
    rates: dict[str, float] = {}
    for r in matrix["matmul"]:
        if "gflops_per_s" in r:
            rates[str(r["threads"])] = max(rates.get(str(r["threads"]), 0.0), r["gflops_per_s"])
    matrix["matmul_gflops_per_s"] = rates
    matrix["summary"] = summarise(matrix["runs"], engines, sizes, threads)
    for row in matrix["summary"]["rows"]:
        rate = rates.get(str(row["threads"]))
        for cell in row["cells"].values():
            g = cell.get("network_gflops_per_s")
            cell["network_share_of_matmul_rate"] = round(g / rate, 3) if g and rate else None
    child_loads = [v for r in matrix["runs"] if "load_average_1min" in r
                   for v in r["load_average_1min"].values() if v is not None]
    matrix["load_average_1min"].update({"end": _loadavg(), "children_min": min(child_loads, default=None),
                                        "children_max": max(child_loads, default=None)})
    matrix["finished"] = _now()
    save()
    result["matrix"] = matrix
    return result


def run_live(device: str, threads: int, work: Path | None, out: Path | None, timeout: float,
             size: int = LIVE_SIZE, verbose: bool = True) -> dict:
    """Kaizen's live-view rate in one fresh process; merged into ``out`` under ``kaizen_live``."""
    work = Path(work) if work else Path(tempfile.gettempdir()) / "kaizen_speed_fields"
    make_fields([size], work)
    r = run_child("live", ["--size", str(size), "--device", device, "--field",
                           str(_field_path(work, size, "nuclei"))], threads, timeout)
    r["measured"] = _now()
    r["machine"] = machine_info(device)
    result = _load_json(out) if out else {}
    result["kaizen_live"] = r
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if verbose:
        print(json.dumps(r, indent=2))
    return result


def print_summary(result: dict) -> None:
    matrix = result.get("matrix")
    if not matrix:
        return
    print()
    print(render_markdown({"matrix": matrix}))
    for row in matrix["summary"]["rows"]:
        if "budget" in row:
            b = row["budget"]
            print(f"budget {row['engine']}: {b['steady_s']} s at {b['size']}², {b['threads']} threads "
                  f"(≤ {b['budget_s']} s: {'met' if b['met'] else 'NOT met'}); exponent {row['exponent']} "
                  f"(≤ {EXPONENT_BUDGET}: {'met' if b['exponent_met'] else 'NOT met'})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cell (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/speed_<device>.json)")
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "speed.md"),
                        help="markdown file with the speed-table markers ('' for none)")
    parser.add_argument("--work", default=None, help="where the fields are cached")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--direct-max", type=int, default=4096, help="largest field drawn in one piece")
    parser.add_argument("--no-network", action="store_true", help="skip the network share and FLOP calls")
    parser.add_argument("--network-sizes", nargs="+", type=int, default=None,
                        help="sizes at which the network share and FLOPs are measured (default: all)")
    parser.add_argument("--matmul-n", type=int, default=None,
                        help="side of the matmul rate's matrices (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--live-size", type=int, default=LIVE_SIZE, help="field side of --kaizen-live")
    parser.add_argument("--kaizen-live", action="store_true",
                        help=f"only measure Kaizen's live-view iterations per second at {LIVE_SIZE}² "
                             f"(engine side, first of --threads)")
    # Child mode (internal): one measurement in this fresh process.
    parser.add_argument("--child", choices=("engine", "matmul", "live"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--field", help=argparse.SUPPRESS)
    parser.add_argument("--channel", default="nuclei", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.threads = args.threads[0]
        fn = {"engine": _child_engine, "matmul": _child_matmul, "live": _child_live}[args.child]
        print(json.dumps(fn(args)), flush=True)
        return 0

    kind = "cpu" if args.device == "cpu" else args.device.split(":")[0]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"speed_{kind}.json"
    if args.kaizen_live:
        result = run_live(args.device, args.threads[0], args.work, out, args.timeout, size=args.live_size)
    else:
        result = run_matrix(args.engines, args.sizes, args.threads, args.repeats, args.device, args.work, out,
                            args.timeout, args.no_network, args.direct_max, args.network_sizes, args.matmul_n)
        print_summary(result)
    if args.markdown:
        write_markdown(Path(args.markdown), kind, render_markdown(result))
        print(f"wrote {out} and the {kind} table of {args.markdown}")
    else:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
