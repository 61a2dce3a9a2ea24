"""Wall time of the U-Net engine on one 1024 x 1024 label-free image (CPU by default).

Times the whole ``segment`` generator (normalisation, tiled prediction with overlapping
windows, h-maxima seeds, watershed) with the bundled fine-tuned model, after one warm-up
run, and writes ``benchmarks/results/unet_inference_time.json``.

Usage::

    python benchmarks/unet_inference_time.py [--threads 1] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    import torch

    from napari_kaizen import run_to_end
    from napari_kaizen.data import synthesize
    from napari_kaizen.engines.unet import UNetParams, load_model, segment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_inference_time.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    field = synthesize(seed=10_900, shape=(args.size, args.size), label_free="phase")
    model = load_model("bundled:unet_nuclei", device=args.device)
    params = UNetParams()
    run_to_end(segment(field.label_free[:256, :256], params, model=model))  # warm-up
    times, n = [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        last = run_to_end(segment(field.label_free, params, model=model))
        times.append(time.perf_counter() - t0)
        n = int(last.labels.max())
    result = {
        "image": f"{args.size}x{args.size} synthetic phase-contrast field (seed 10900)",
        "model": "bundled:unet_nuclei", "device": args.device, "torch_threads": torch.get_num_threads(),
        "window": params.window, "overlap": params.overlap,
        "seconds_median": float(np.median(times)), "seconds_all": [round(t, 3) for t in times],
        "objects": n, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
