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
    from napari_kaizen import run_to_end
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


def paired_differences(results: dict) -> dict:
    """ISL minus scratch mAP for each (images, seed) pair that has both runs."""
    by = {(r["init"], r["n_images"], r["seed"]): r["held_out_same_modality"]["map"] for r in results["runs"]}
    out: dict = {}
    for (init, n, seed), v in by.items():
        if init == "isl" and ("scratch", n, seed) in by:
            out.setdefault(n, []).append(v - by[("scratch", n, seed)])
    return out


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
    diffs = paired_differences(results)
    for n, d in diffs.items():
        key = f"{n}_isl"
        if key in summary:
            summary[key]["paired_gain_mean"] = float(np.mean(d))
            summary[key]["paired_gain_sd"] = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
            summary[key]["isl_better_in"] = f"{sum(x > 0 for x in d)}/{len(d)}"
    results["summary"] = summary
    controls = [json.loads(Path(c).read_text()) for c in (args.control or [])]
    if controls:
        results["controls"] = [{"steps": c["protocol"]["steps"], "runs": c["runs"]} for c in controls]
    out.write_text(json.dumps(results, indent=2) + "\n")
    sizes = sorted({v["n_images"] for v in summary.values()})
    print("| images | ISL-pretrained mAP | from scratch mAP | ISL - scratch (paired) | ISL better in | ISL AP50 "
          "| scratch AP50 | ISL mAP, all modalities | scratch mAP, all modalities |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        a, b = summary.get(f"{n}_isl"), summary.get(f"{n}_scratch")
        if not a or not b:
            continue
        print(f"| {n} | {a['map_mean']:.3f} ± {a['map_sd']:.3f} | {b['map_mean']:.3f} ± {b['map_sd']:.3f} "
              f"| {a.get('paired_gain_mean', float('nan')):+.3f} ± {a.get('paired_gain_sd', float('nan')):.3f} "
              f"| {a.get('isl_better_in', '-')} | {a['ap50_mean']:.3f} | {b['ap50_mean']:.3f} "
              f"| {a['map_all_modalities_mean']:.3f} ± {a['map_all_modalities_sd']:.3f} "
              f"| {b['map_all_modalities_mean']:.3f} ± {b['map_all_modalities_sd']:.3f} |")
    for c in results.get("controls", []):
        for r in c["runs"]:
            print(f"control: {r['init']} {r['n_images']} image(s), seed {r['seed']} ({r['modality']}), "
                  f"{c['steps']} steps: mAP {r['held_out_same_modality']['map']:.3f}")
    plot(results, Path(args.plot))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.0, 4.4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    colours = {"isl": "#d95f02", "scratch": "#1b9e77"}
    names = {"isl": "ISL-pretrained (DAPI)", "scratch": "random init"}
    markers = {"phase": "o", "brightfield": "s", "dic": "^"}
    sizes = sorted({r["n_images"] for r in results["runs"]})
    seeds = sorted({r["seed"] for r in results["runs"]})
    for init in ("isl", "scratch"):
        for seed in seeds:
            runs = sorted((r for r in results["runs"] if r["init"] == init and r["seed"] == seed),
                          key=lambda r: r["n_images"])
            if not runs:
                continue
            ax.plot([r["n_images"] for r in runs], [r["held_out_same_modality"]["map"] for r in runs],
                    color=colours[init], alpha=0.35, lw=0.8, marker=markers[runs[0]["modality"]], ms=4)
        means = [np.mean([r["held_out_same_modality"]["map"] for r in results["runs"]
                          if r["init"] == init and r["n_images"] == n] or [np.nan]) for n in sizes]
        ax.plot(sizes, means, color=colours[init], lw=2.2, label=f"{names[init]}, mean")
    for c in results.get("controls", []):
        for r in c["runs"]:
            ax.scatter([r["n_images"] * 1.08], [r["held_out_same_modality"]["map"]], facecolors="none",
                       edgecolors=colours[r["init"]], s=40, lw=1.4, zorder=5)
    if results.get("controls"):
        ax.scatter([], [], facecolors="none", edgecolors="grey", s=40, label=f"{results['controls'][0]['steps']} steps "
                   "(control)")
    for m, mk in markers.items():
        ax.plot([], [], color="grey", marker=mk, lw=0.8, ms=4, label=m)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlabel("annotated training images")
    ax.set_ylabel("mAP, held-out fields (same modality)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    diffs = paired_differences(results)
    for k, n in enumerate(sizes):
        d = diffs.get(n, [])
        bx.scatter(np.full(len(d), k), d, color="#7570b3", s=18, alpha=0.7)
        if d:
            bx.errorbar([k], [np.mean(d)], yerr=[np.std(d, ddof=1) if len(d) > 1 else 0], color="k", marker="_",
                        ms=14, capsize=4)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xticks(range(len(sizes)))
    bx.set_xticklabels([str(n) for n in sizes])
    bx.set_xlabel("annotated training images")
    bx.set_ylabel("ISL minus scratch mAP (paired)")
    bx.grid(alpha=0.3)
    fig.suptitle("Nucleus instances from label-free images: ISL pretraining vs random init", fontsize=10)
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
    parser.add_argument("--control", nargs="*", default=None,
                        help="result JSONs of control runs (e.g. more steps), shown beside the main runs")
    args = parser.parse_args(argv)
    if not args.report_only:
        run_all(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
