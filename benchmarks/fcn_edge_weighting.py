"""Edge weighting, measured: the GoogLeNet FCN trained with and without edge over-weighting.

Both arms train on the *same seven* synthetic nucleus images (training seeds 0..6,
``random_params(..., hard=1.0)``, 512 x 512), with the same recipe, steps and seed; the
only difference is the loss weight of edge pixels (``--edge-weight``, default 5, vs 1).
Each training seed is one pair of runs. The models are scored on a held-out dense set
(evaluation seeds 10_000.., explicit dense settings that training never saw) with the
engine's default parameters: AP50, mAP (AP averaged over IoU 0.50:0.95, AP = TP / (TP +
FP + FN)) and the number of merged cells (a predicted object covering at least half of
two or more true nuclei). The classical engine is scored on the same set for reference.

Usage::

    python benchmarks/fcn_edge_weighting.py                       # seeds 0 1 2
    python benchmarks/fcn_edge_weighting.py --seeds 0 --steps 300  # quick look

Writes ``benchmarks/results/fcn_edge_weighting.json`` and ``.md`` (after every run, so
a stopped run keeps what it finished). ``--threshold-sweep`` adds, for every model, the
scores at other interior-probability thresholds: an analysis of whether over-weighting
edges is more than a shift of the best threshold. It looks at the evaluation set, so it
is reported as analysis only and chooses nothing (the engine's default stays 0.5). Trained weights go to ``runs/fcn_edge_weighting/``
and are reused when present (delete them to retrain).
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

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data import SynthParams, params_to_dict, synthesize  # noqa: E402
from napari_kaizen.engines import classical, fcn  # noqa: E402
from napari_kaizen.engines.fcn.segment import instances_from_probabilities, min_area_pixels  # noqa: E402
from napari_kaizen.engines.fcn.training import RECIPES, synthetic_training_set, train  # noqa: E402

SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
from napari_kaizen.metrics import count_merges, evaluate  # noqa: E402

#: The held-out dense set: crowded, touching, clustered nuclei.
EVAL_PARAMS = SynthParams(shape=(384, 384), density=0.45, touching=0.9, clustering=0.8)
EVAL_SEEDS = tuple(range(10_000, 10_006))


def _sd(x) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def score(fields, preds) -> dict:
    gts = [f.nucleus_labels for f in fields]
    ev = evaluate(gts, preds)
    return {
        "ap50": round(ev.ap50, 4),
        "ap75": round(ev.ap75, 4),
        "map": round(ev.map, 4),
        "merged_cells": int(sum(count_merges(g, p) for g, p in zip(gts, preds))),
        "n_true": ev.n_true,
        "n_pred": ev.n_pred,
    }


def markdown(results: dict) -> str:
    lines = [
        "| arm | edge weight | training seed | AP50 | mAP | merged cells | predicted / true |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results["runs"]:
        s = run["scores"]
        lines.append(
            f"| {run['arm']} | {run['edge_weight']:g} | {run['seed']} | {s['ap50']:.3f} | {s['map']:.3f} | "
            f"{s['merged_cells']} | {s['n_pred']} / {s['n_true']} |"
        )
    for arm, summ in results.get("summary", {}).items():
        lines.append(
            f"| **{arm}, mean ± sd over {summ['n_seeds']} seed(s)** | {summ['edge_weight']:g} | | "
            f"**{summ['ap50_mean']:.3f} ± {summ['ap50_sd']:.3f}** | **{summ['map_mean']:.3f} ± {summ['map_sd']:.3f}** | "
            f"**{summ['merged_mean']:.1f} ± {summ['merged_sd']:.1f}** | |"
        )
    c = results["classical"]
    lines.append(f"| classical engine (reference) | | | {c['ap50']:.3f} | {c['map']:.3f} | {c['merged_cells']} | "
                 f"{c['n_pred']} / {c['n_true']} |")
    if any(r.get("threshold_sweep") for r in results["runs"]):
        lines += ["", "Threshold sweep (analysis on the evaluation set; nothing is chosen from it). "
                  "AP50 / mAP / merged cells, mean over seeds:", "",
                  "| arm | " + " | ".join(f"t = {t:g}" for t in SWEEP) + " |",
                  "| --- |" + " ---: |" * len(SWEEP)]
        for arm in ("with edge weighting", "without edge weighting"):
            rows = [r["threshold_sweep"] for r in results["runs"] if r["arm"] == arm and r.get("threshold_sweep")]
            if not rows:
                continue
            cells = []
            for t in SWEEP:
                k = f"{t:g}"
                a = np.mean([r[k]["ap50"] for r in rows])
                m = np.mean([r[k]["map"] for r in rows])
                g = np.mean([r[k]["merged_cells"] for r in rows])
                cells.append(f"{a:.3f} / {m:.3f} / {g:.0f}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def summarise(runs: list[dict]) -> dict:
    out = {}
    for arm in ("with edge weighting", "without edge weighting"):
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        a = np.array([r["scores"]["ap50"] for r in rs])
        m = np.array([r["scores"]["map"] for r in rs])
        g = np.array([r["scores"]["merged_cells"] for r in rs], float)
        out[arm] = {
            "edge_weight": rs[0]["edge_weight"], "n_seeds": len(rs),
            "ap50_mean": float(a.mean()), "ap50_sd": _sd(a), "map_mean": float(m.mean()), "map_sd": _sd(m),
            "merged_mean": float(g.mean()), "merged_sd": _sd(g),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--edge-weight", type=float, default=RECIPES["nuclei"]["edge_weight"])
    parser.add_argument("--steps", type=int, default=RECIPES["nuclei"]["steps"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threshold-sweep", action="store_true", help="also score other thresholds (analysis)")
    parser.add_argument("--models", default=str(ROOT / "runs" / "fcn_edge_weighting"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fcn_edge_weighting"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    recipe = dict(RECIPES["nuclei"], steps=args.steps)
    models = Path(args.models)
    models.mkdir(parents=True, exist_ok=True)
    images, labels, desc = synthetic_training_set(
        recipe["n_images"], channel="nuclei", shape=recipe["shape"], hard=recipe["hard"]
    )
    fields = [synthesize(EVAL_PARAMS, seed=s) for s in EVAL_SEEDS]
    cl = [run_to_end(classical.segment(f.nuclei)).labels for f in fields]
    results = {
        "what": "GoogLeNet FCN trained with vs without edge over-weighting on the same seven synthetic images",
        "training": {"data": desc, "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()}},
        "evaluation": {"params": params_to_dict(EVAL_PARAMS), "seeds": list(EVAL_SEEDS),
                       "segment_params": "FCNParams() defaults (threshold 0.5, foreground 0.5, min_size 0.1)"},
        "classical": score(fields, cl),
        "runs": [],
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
    }
    out = Path(args.out)
    for seed in args.seeds:
        for arm, w in (("with edge weighting", args.edge_weight), ("without edge weighting", 1.0)):
            path = models / f"fcn_nuclei_ew{w:g}_seed{seed}_steps{args.steps}"
            start = time.perf_counter()
            if not path.with_suffix(".safetensors").exists():
                for snap in train(
                    images, labels, output=path, edge_weight=w, edge_width=recipe["edge_width"], steps=recipe["steps"],
                    lr=recipe["lr"], batch_size=recipe["batch_size"], crop=recipe["crop"], width=recipe["width"],
                    stride=recipe["stride"], seed=seed, device="cpu", channel="nuclei", data_description=desc,
                    reproduce=f"python benchmarks/fcn_edge_weighting.py --seeds {seed} --edge-weight {args.edge_weight:g} "
                    f"--steps {args.steps}",
                    report_every=100,
                ):
                    print(f"[{arm}, seed {seed}] {snap.message}", flush=True)
            model = fcn.load_model(str(path), device="cpu")
            # Reused weights: the training time is the one their metadata recorded.
            train_s = float(model.metadata.get("training", {}).get("seconds", time.perf_counter() - start))
            preds = [run_to_end(fcn.segment(f.nuclei, model=model, device="cpu")).labels for f in fields]
            s = score(fields, preds)
            print(f"[{arm}, seed {seed}] {s}", flush=True)
            run = {"arm": arm, "edge_weight": w, "seed": seed, "steps": args.steps,
                   "weights": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
                   "train_seconds": round(train_s, 1), "scores": s}
            if args.threshold_sweep:
                maps = [run_to_end(fcn.segment(f.nuclei, model=model, device="cpu")).maps for f in fields]
                min_area = min_area_pixels(fcn.Params().min_size, model.object_diameter)
                run["threshold_sweep"] = {
                    f"{t:g}": score(fields, [instances_from_probabilities(
                        m["probability"], m["edge"], threshold=t, min_area=min_area) for m in maps])
                    for t in SWEEP
                }
            results["runs"].append(run)
            results["summary"] = summarise(results["runs"])
            out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
            out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
