"""The ISL paper's claim on our data: does ISL pretraining help fine-tuning from few images?

For each run seed ``s`` (one label-free modality per seed: phase, bright field, DIC), the
U-Net is fine-tuned on ``n`` annotated synthetic fields (``n`` in 1, 2, 10; the sets are
nested, seeds ``1000 + 100 s + k``) to the distance map + mask, starting either from the
bundled ISL-pretrained weights (label-free -> DAPI-like, ``unet_isl_nuclei``) or from
random weights, with everything else identical (architecture, including the two-layer
head; steps; learning rate; augmentation; lambda measured at the start of each run).
Each model is scored by mAP (IoU 0.50:0.05:0.95, AP = TP / (TP + FP + FN)) on a fixed
held-out set of 6 fields of the same modality (seeds 10 100 + 20 m + j, never used in
training or pretraining), and on all 18 held-out fields (all three modalities).

Writes ``benchmarks/results/isl_experiment.json`` (every run, resumable: finished runs
are kept and skipped) and ``docs/img/isl_experiment.png``; prints a Markdown table.

Usage::

    python benchmarks/isl_experiment.py                 # all runs (about 45 CPU minutes)
    python benchmarks/isl_experiment.py --report-only   # table + plot from the JSON

    # or in two processes, then merge:
    python benchmarks/isl_experiment.py --seeds 0 1 --out runs/isl_a.json
    python benchmarks/isl_experiment.py --seeds 2 --out runs/isl_b.json
    python benchmarks/isl_experiment.py --report-only --merge runs/isl_a.json runs/isl_b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODALITIES = ("phase", "brightfield", "dic")
HELD_OUT_PER_MODALITY = 6


def train_seeds(run_seed: int, n: int) -> list[int]:
    return [1000 + 100 * run_seed + k for k in range(n)]


def held_out_seeds(modality: str) -> list[int]:
    m = MODALITIES.index(modality)
    return [10_100 + 20 * m + j for j in range(HELD_OUT_PER_MODALITY)]


def score(model, fields, h: float) -> dict:
    from napari_kaizen.engines._common import run_to_end
    from napari_kaizen.engines.unet import UNetParams, segment
    from napari_kaizen.metrics import evaluate

    preds = [run_to_end(segment(x, UNetParams(h=h), model=model, device="cpu")).labels for x, _, _ in fields]
    ev = evaluate([lab for _, _, lab in fields], preds)
    return {"map": ev.map, "ap50": ev.ap50, "ap75": ev.ap75, "n_true": ev.n_true, "n_pred": ev.n_pred}


def run_all(args) -> None:
    import torch

    from napari_kaizen.engines.unet import finetune
    from napari_kaizen.engines.unet.training import synthetic_pairs

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["init"], r["n_images"], r["seed"]) for r in results["runs"]}
    held = {m: synthetic_pairs(held_out_seeds(m), "nuclei", label_free=m) for m in MODALITIES}
    mixed = [f for m in MODALITIES for f in held[m]]
    results["protocol"] = {
        "sizes": args.sizes, "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
        "crop": args.crop, "learning_rate": args.lr, "h": args.h, "pretrained": args.pretrained,
        "train_fields": "synthetic 256x256, random_params(default_rng(seed), hard=0.5) with the run's modality, "
        "seeds 1000 + 100*run_seed + k (nested sets)",
        "held_out": {m: held_out_seeds(m) for m in MODALITIES},
        "metric": "mAP over IoU 0.50:0.05:0.95, AP = TP/(TP+FP+FN), mean over images",
        "command": "python benchmarks/isl_experiment.py " + " ".join(sys.argv[1:]),
    }
    for seed in args.seeds:
        modality = MODALITIES[seed % len(MODALITIES)]
        pool = synthetic_pairs(train_seeds(seed, max(args.sizes)), "nuclei", label_free=modality)
        for n in args.sizes:
            for init in args.inits:
                if (init, n, seed) in done:
                    continue
                t0 = time.perf_counter()
                gen = finetune(
                    [p[0] for p in pool[:n]], [p[2] for p in pool[:n]],
                    model=args.pretrained if init == "isl" else "scratch",
                    steps=args.steps, batch_size=args.batch_size, crop=args.crop, learning_rate=args.lr,
                    seed=seed, device="cpu",
                )
                lam = None
                while True:
                    try:
                        snap = next(gen)
                    except StopIteration as stop:
                        model = stop.value
                        break
                    if snap.stage == "start":
                        lam = snap.components.get("lambda")
                train_s = time.perf_counter() - t0
                own = score(model, held[modality], args.h)
                allm = score(model, mixed, args.h)
                run = {
                    "init": init, "n_images": n, "seed": seed, "modality": modality,
                    "lambda": lam, "final_loss": model.metadata["training"]["final_loss"],
                    "train_seconds": round(train_s, 1),
                    "held_out_same_modality": own, "held_out_all_modalities": allm,
                }
                results["runs"].append(run)
                out.write_text(json.dumps(results, indent=2) + "\n")
                print(f"seed {seed} ({modality}) n={n:2d} {init:7s}: mAP {own['map']:.3f} AP50 {own['ap50']:.3f} "
                      f"| all modalities mAP {allm['map']:.3f}  ({train_s:.0f} s, lambda {lam:.3g})", flush=True)


def summarise(results: dict) -> dict:
    table = {}
    for run in results["runs"]:
        key = (run["n_images"], run["init"])
        table.setdefault(key, []).append(run)
    summary = {}
    for (n, init), runs in sorted(table.items()):
        own = np.array([r["held_out_same_modality"]["map"] for r in runs])
        ap50 = np.array([r["held_out_same_modality"]["ap50"] for r in runs])
        allm = np.array([r["held_out_all_modalities"]["map"] for r in runs])
        summary[f"{n}_{init}"] = {
            "n_images": n, "init": init, "runs": len(runs),
            "map_mean": float(own.mean()), "map_sd": float(own.std(ddof=1)) if len(runs) > 1 else 0.0,
            "map_min": float(own.min()), "map_max": float(own.max()),
            "ap50_mean": float(ap50.mean()),
            "map_all_modalities_mean": float(allm.mean()),
            "map_all_modalities_sd": float(allm.std(ddof=1)) if len(runs) > 1 else 0.0,
        }
    return summary


def report(args) -> None:
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    # Runs made by parallel processes (--out elsewhere) are merged in with --merge.
    have = {(r["init"], r["n_images"], r["seed"]) for r in results["runs"]}
    for extra in args.merge or []:
        other = json.loads(Path(extra).read_text())
        results.setdefault("protocol", other.get("protocol"))
        for r in other["runs"]:
            if (r["init"], r["n_images"], r["seed"]) not in have:
                results["runs"].append(r)
                have.add((r["init"], r["n_images"], r["seed"]))
    results["runs"].sort(key=lambda r: (r["seed"], r["n_images"], r["init"]))
    summary = summarise(results)
    results["summary"] = summary
    out.write_text(json.dumps(results, indent=2) + "\n")
    sizes = sorted({v["n_images"] for v in summary.values()})
    print("| images | ISL-pretrained mAP | from scratch mAP | ISL gain | ISL AP50 | scratch AP50 "
          "| ISL mAP, all modalities | scratch mAP, all modalities |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        a, b = summary.get(f"{n}_isl"), summary.get(f"{n}_scratch")
        if not a or not b:
            continue
        gain = (a["map_mean"] - b["map_mean"]) / b["map_mean"] * 100 if b["map_mean"] > 0 else float("inf")
        print(f"| {n} | {a['map_mean']:.3f} ± {a['map_sd']:.3f} | {b['map_mean']:.3f} ± {b['map_sd']:.3f} "
              f"| {gain:+.0f} % | {a['ap50_mean']:.3f} | {b['ap50_mean']:.3f} "
              f"| {a['map_all_modalities_mean']:.3f} ± {a['map_all_modalities_sd']:.3f} "
              f"| {b['map_all_modalities_mean']:.3f} ± {b['map_all_modalities_sd']:.3f} |")
    plot(results, Path(args.plot))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    colours = {"isl": "#d95f02", "scratch": "#1b9e77"}
    names = {"isl": "ISL-pretrained (DAPI)", "scratch": "random init"}
    sizes = sorted({r["n_images"] for r in results["runs"]})
    for k, init in enumerate(("isl", "scratch")):
        means, sds = [], []
        for n in sizes:
            vals = [r["held_out_same_modality"]["map"] for r in results["runs"] if r["init"] == init
                    and r["n_images"] == n]
            xs = np.full(len(vals), n) * (1.0 + (k - 0.5) * 0.06)
            ax.scatter(xs, vals, s=12, color=colours[init], alpha=0.5, linewidths=0)
            means.append(np.mean(vals) if vals else np.nan)
            sds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        ax.errorbar(sizes, means, yerr=sds, color=colours[init], marker="o", capsize=3, label=names[init])
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlabel("annotated training images")
    ax.set_ylabel("mAP on held-out fields")
    ax.set_title("Nucleus instances from label-free images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--inits", nargs="+", default=["isl", "scratch"], choices=["isl", "scratch"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--h", type=float, default=0.12)
    parser.add_argument("--pretrained", default="bundled:unet_isl_nuclei")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "isl_experiment.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "isl_experiment.png"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", nargs="*", default=None, help="result JSONs of parallel runs to merge into --out")
    args = parser.parse_args(argv)
    if not args.report_only:
        run_all(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
