"""Inference time of the GoogLeNet FCN on a 1024 x 1024 image (CPU, and CUDA if present).

Two figures per device: the network alone (``forward``: normalised image in, class
probabilities out) and the whole engine (``segment``: normalisation, network, instances
by threshold + components + grow-back, labels out). Each is the median of ``--repeat``
runs after one warm-up. Wall-clock and process CPU seconds are both recorded: on a
shared machine the wall time depends on what else runs.

Usage::

    python benchmarks/bench_fcn.py                 # CPU with torch's default threads, and 1 thread
    python benchmarks/bench_fcn.py --device cuda   # on a GPU machine

Writes ``benchmarks/results/fcn_cpu.json`` (and ``fcn_cuda.json`` for CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data import SynthParams, synthesize  # noqa: E402
from napari_kaizen.engines import fcn  # noqa: E402
from napari_kaizen.engines._common import prepare_image  # noqa: E402


def _timed(fn, repeat: int, sync=None) -> dict:
    fn()
    if sync:
        sync()
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s_median": round(statistics.median(walls), 4), "wall_s_all": [round(w, 4) for w in walls],
            "process_cpu_s_median": round(statistics.median(cpus), 4)}


def bench(device: str, threads: int | None, repeat: int, model: str) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    field = synthesize(SynthParams(shape=(1024, 1024), density=0.3), seed=10_500)
    m = fcn.load_model(model, device=device)
    dev = m.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    x = torch.from_numpy(prepare_image(field.nuclei))[None, None].to(dev)

    def forward():
        with torch.inference_mode():
            torch.softmax(m.net(x), 1).cpu()

    def segment():
        run_to_end(fcn.segment(field.nuclei, model=m, device=dev))

    labels = run_to_end(fcn.segment(field.nuclei, model=m, device=dev)).labels
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "image": [1024, 1024],
        "forward": _timed(forward, repeat, sync),
        "segment": _timed(segment, repeat, sync),
        "objects_found": int(labels.max()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default=fcn.DEFAULT_MODEL)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs = []
    if args.device == "cpu":
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            runs.append(bench("cpu", threads, args.repeat, args.model))
    else:
        runs.append(bench(args.device, None, args.repeat, args.model))
    result = {
        "what": "GoogLeNet FCN inference of a 1024 x 1024 image (median of repeats after a warm-up)",
        "model": args.model,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    # Other work on a shared machine slows the multi-thread run most.
                    "load_average_1min_start": load_start,
                    "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "runs": runs,
    }
    kind = "cpu" if args.device == "cpu" else "cuda"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"fcn_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['device']} threads={r['torch_threads']}: forward {r['forward']['wall_s_median']:.3f} s wall "
              f"({r['forward']['process_cpu_s_median']:.3f} s CPU), segment {r['segment']['wall_s_median']:.3f} s wall "
              f"({r['segment']['process_cpu_s_median']:.3f} s CPU), {r['objects_found']} objects")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
