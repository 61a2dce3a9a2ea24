"""Accuracy of the bundled U-Net models on held-out synthetic label-free fields.

Scores, per field and overall (AP50, AP75, mAP; AP = TP / (TP + FP + FN)):

* ``unet_nuclei`` (bundled fine-tuned model, the engine's default);
* ``unet_isl_nuclei`` alone, i.e. no annotation at all: the classical Otsu + watershed
  pipeline run on the U-Net's *predicted* DAPI-like image.

Fields: seeds 10 500 .. 10 511, 256 x 256, random_params(hard=0.5) (all three label-free
modalities); no model saw them. Writes ``benchmarks/results/unet_accuracy.json``.

Usage::

    python benchmarks/unet_accuracy.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    import torch

    from napari_kaizen import run_to_end
    from napari_kaizen.data import random_params
    from napari_kaizen.engines.unet import load_model, segment
    from napari_kaizen.engines.unet.training import synthetic_pairs
    from napari_kaizen.metrics import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(10_500, 10_500 + args.fields))
    pairs = synthetic_pairs(seeds, "nuclei")
    modality = [random_params(np.random.default_rng(s), shape=(256, 256), real_world=False).label_free for s in seeds]
    models = {"unet_nuclei (fine-tuned)": "bundled:unet_nuclei",
              "unet_isl_nuclei + classical (no annotation)": "bundled:unet_isl_nuclei"}
    result = {"fields": f"seeds {seeds[0]}..{seeds[-1]}, 256x256, random_params(hard=0.5)", "models": {}}
    for name, spec in models.items():
        model = load_model(spec, device="cpu")
        preds = [run_to_end(segment(x, model=model)).labels for x, _, _ in pairs]
        truth = [lab for _, _, lab in pairs]
        ev = evaluate(truth, preds)
        per_mod = {}
        for m in ("phase", "brightfield", "dic"):
            idx = [i for i, mm in enumerate(modality) if mm == m]
            if idx:
                e = evaluate([truth[i] for i in idx], [preds[i] for i in idx])
                per_mod[m] = {"fields": len(idx), "ap50": e.ap50, "map": e.map}
        per_field = []
        for s, m, t, p in zip(seeds, modality, truth, preds):
            e = evaluate([t], [p])
            per_field.append({"seed": s, "label_free": m, "ap50": e.ap50, "map": e.map,
                              "n_true": int(t.max()), "n_pred": int(p.max())})
        result["models"][name] = {"weights": spec, "ap50": ev.ap50, "ap75": ev.ap75, "map": ev.map,
                                  "by_modality": per_mod, "per_field": per_field}
        print(f"{name}: AP50 {ev.ap50:.3f}  AP75 {ev.ap75:.3f}  mAP {ev.map:.3f}  "
              + "  ".join(f"{m} mAP {v['map']:.3f}" for m, v in per_mod.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
