"""Accuracy of the bundled GoogLeNet FCN weights on held-out synthetic sets.

* ``fcn_nuclei`` (DAPI-like channel, ``nucleus_labels``) on the dense set of the
  edge-weighting experiment: 384 x 384, density 0.45, touching 0.9, clustering 0.8,
  evaluation seeds 10_000..10_005;
* ``fcn_cells`` (CellMask-like membrane channel, ``cell_labels``) on 384 x 384 fields
  with default density and two confluences, evaluation seeds 10_100..10_105.

Both use the engine's default parameters; the classical engine (which segments bright
blobs) is scored on the same images as a reference. AP = TP / (TP + FP + FN); mAP
averages AP over IoU 0.50:0.95; merged cells = predicted objects covering at least half
of two or more true objects.

Usage::

    python benchmarks/fcn_accuracy.py     # -> benchmarks/results/fcn_accuracy.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data import SynthParams, params_to_dict, synthesize  # noqa: E402
from napari_kaizen.engines import classical, fcn  # noqa: E402
from napari_kaizen.metrics import count_merges, evaluate  # noqa: E402

SETS = {
    "nuclei, dense": dict(model="bundled:fcn_nuclei", channel="nuclei", labels="nucleus_labels",
                          params=SynthParams(shape=(384, 384), density=0.45, touching=0.9, clustering=0.8),
                          seeds=list(range(10_000, 10_006))),
    "cells, confluence 0.5": dict(model="bundled:fcn_cells", channel="membrane", labels="cell_labels",
                                  params=SynthParams(shape=(384, 384), confluence=0.5),
                                  seeds=list(range(10_100, 10_106))),
    "cells, confluence 0.9, dense": dict(model="bundled:fcn_cells", channel="membrane", labels="cell_labels",
                                         params=SynthParams(shape=(384, 384), confluence=0.9, density=0.4,
                                                            touching=0.8, clustering=0.7),
                                         seeds=list(range(10_200, 10_206))),
}


def scores(gts, preds) -> dict:
    ev = evaluate(gts, preds)
    return {"ap50": round(ev.ap50, 4), "ap75": round(ev.ap75, 4), "map": round(ev.map, 4),
            "merged_cells": int(sum(count_merges(g, p) for g, p in zip(gts, preds))),
            "n_true": ev.n_true, "n_pred": ev.n_pred}


def main() -> int:
    import torch

    torch.set_num_threads(1)
    out = {}
    for name, s in SETS.items():
        fields = [synthesize(s["params"], seed=k) for k in s["seeds"]]
        images = [getattr(f, s["channel"]) for f in fields]
        gts = [getattr(f, s["labels"]) for f in fields]
        model = fcn.load_model(s["model"], device="cpu")
        ours = [run_to_end(fcn.segment(im, model=model, device="cpu")).labels for im in images]
        base = [run_to_end(classical.segment(im)).labels for im in images]
        out[name] = {"model": s["model"], "channel": s["channel"], "labels": s["labels"],
                     "params": params_to_dict(s["params"]), "seeds": s["seeds"],
                     "fcn": scores(gts, ours), "classical": scores(gts, base)}
        print(name, out[name]["fcn"], "classical", out[name]["classical"], flush=True)
    path = ROOT / "benchmarks" / "results" / "fcn_accuracy.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
