"""Accuracy and speed of the classical engine on held-out synthetic sets.

    python benchmarks/bench_classical.py [--quick]

Two sets that no model was trained on (seeds >= 10_000):

* ``validation``: 16 fields of 256x256 with varied settings, drawn by
  ``random_params(np.random.default_rng(10_000), hard=0.5)``, seeds 10_000..10_015;
* ``dense``: 8 fields of 256x256, ``SynthParams(density=0.45, touching=0.9,
  clustering=0.8)``, seeds 20_000..20_007 (clustered, touching nuclei).

Writes ``benchmarks/results/classical.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from napari_kaizen import metrics, run_to_end
from napari_kaizen.data import SynthParams, random_params, synthesize
from napari_kaizen.engines.classical import ClassicalParams, segment

RESULTS = Path(__file__).resolve().parent / "results"


def validation_set(n: int = 16):
    rng = np.random.default_rng(10_000)
    return [synthesize(random_params(rng, shape=(256, 256), hard=0.5), seed=10_000 + i) for i in range(n)]


def dense_set(n: int = 8):
    p = SynthParams(shape=(256, 256), density=0.45, touching=0.9, clustering=0.8)
    return [synthesize(p, seed=20_000 + i) for i in range(n)]


def run(fields, params: ClassicalParams):
    preds, times = [], []
    for f in fields:
        t0 = time.perf_counter()
        preds.append(run_to_end(segment(f.nuclei, params)).labels)
        times.append(time.perf_counter() - t0)
    ev = metrics.evaluate([f.nucleus_labels for f in fields], preds)
    merges = sum(metrics.count_merges(f.nucleus_labels, p) for f, p in zip(fields, preds))
    return {
        "ap50": ev.ap50, "ap75": ev.ap75, "map": ev.map, "ap": {f"{k:.2f}": v for k, v in ev.ap.items()},
        "n_images": ev.n_images, "n_true": ev.n_true, "n_pred": ev.n_pred, "merged_cells": merges,
        "seconds_per_image": float(np.mean(times)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 images per set")
    args = parser.parse_args()
    n1, n2 = (4, 4) if args.quick else (16, 8)
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "params": ClassicalParams().__dict__,
        "diameter_auto": {},
        "diameter_given": {},
    }
    for name, fields in (("validation", validation_set(n1)), ("dense", dense_set(n2))):
        out["diameter_auto"][name] = run(fields, ClassicalParams())
        given = [run_to_end(segment(f.nuclei, ClassicalParams(diameter=f.params.nucleus_diameter))).labels
                 for f in fields]
        ev = metrics.evaluate([f.nucleus_labels for f in fields], given)
        out["diameter_given"][name] = {"ap50": ev.ap50, "ap75": ev.ap75, "map": ev.map}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "classical.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print("| set | diameter | AP50 | AP75 | mAP | merged cells | s / 256² image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("validation", "dense"):
        a = out["diameter_auto"][name]
        g = out["diameter_given"][name]
        print(f"| {name} ({a['n_images']} images, {a['n_true']} nuclei) | auto | {a['ap50']:.3f} | {a['ap75']:.3f} | "
              f"{a['map']:.3f} | {a['merged_cells']} | {a['seconds_per_image']:.2f} |")
        print(f"| {name} | true | {g['ap50']:.3f} | {g['ap75']:.3f} | {g['map']:.3f} | | |")


if __name__ == "__main__":
    main()
