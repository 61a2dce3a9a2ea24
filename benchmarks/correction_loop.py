"""The correction loop: correct one frame, fine-tune for at most a minute of CPU, score the rest.

    python benchmarks/correction_loop.py --lodo /work/main/runs/real_lodo [--engines kaizen fcn unet]
        [--datasets 2022-03-18_RPE1 ...] [--steps fcn=60 kaizen=60 unet=60] [--threads 1]

What a person does in the widget's "Fine-tune on my corrections" panel, measured: for
each dataset (one acquisition session), frame 0 is the corrected frame and the other
frames are scored before and after fine-tuning, two ways:

* **full**: frame 0's complete true labels, ``regions=None``;
* **quarter**: a random 25 % of frame 0's true cells are the checked ones; the region
  is those cells dilated by ``MARGIN`` x the median cell diameter; the labels passed
  are the true labels of every cell that touches the region (so inside the region the
  labels are exactly the truth), 0 elsewhere. Only the region teaches (``regions=``).
  Which quarter a person checks is chance, and on a frame of 10-40 cells one draw of a
  quarter is a handful of cells, so each dataset is fine-tuned on ``len(QUARTER_SEEDS)``
  independent draws (``numpy.random.default_rng(seed)``) and the quarter's gain is their
  mean (each draw is kept in the JSON).

Every fine-tune is ``engine.finetune(image, labels, model=..., regions=..., steps=...,
learning_rate=..., output=..., device='cpu', description=...)``, the call the widget's
panel makes, with one torch thread; wall and process CPU time of the whole call are
recorded. Segmentation before and after uses ``engine.params()`` defaults (object size
estimated from the image), as a user gets it.

Datasets:

* with ``--loso DIR``: the real nuclei of every source of ``scripts/nuclei_sources.py``
  (mnfinder and the DSB2018 acquisition groups; at most ``--max-images`` per source, a
  fixed draw), for ``kaizen`` and ``fcn``, each from its leave-one-SOURCE-out model
  ``<loso>/<engine>_<source>.safetensors`` (never saw that lab): frame 0 is corrected,
  the others are scored;
* real nuclei (``scripts/real_nuclei.py``), every folder with at least 3 images, for
  ``kaizen`` and ``fcn``, each starting from its leave-one-folder-out model
  ``<lodo>/<engine>_<folder>.safetensors`` (never saw that folder);
* a synthetic fluorescence session for ``kaizen`` and ``fcn`` (``--synthetic``), from
  their bundled models: the same recipe as below with seed ``SYNTH_SEED + 100`` and the
  ``nuclei`` channel;
* a synthetic label-free session for ``unet`` (it takes label-free input), from
  ``bundled:unet_nuclei``: one ``random_params(default_rng(SYNTH_SEED), shape=(256, 256),
  hard=1.0, real_world=False)`` draw (one microscope), fields ``synthesize(params,
  seed=SYNTH_SEED + k)`` for k = 0..5 (held-out seeds >= 10 000).

AP at IoU t = TP / (TP + FP + FN) per image, averaged over the scored frames; mAP
averages t = 0.50:0.05:0.95. Writes ``benchmarks/results/correction_loop.json``, a
Markdown table next to it and ``docs/img/correction_loop.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "scripts"))

#: Steps and learning rate of each engine's fine-tune here (the widgets' defaults, see
#: ``FINETUNE_DEFAULTS``; steps chosen to fit 60 s of one CPU core on this machine).
SETTINGS = {
    "kaizen": {"steps": 150, "learning_rate": 2e-4},
    "unet": {"steps": 100, "learning_rate": 5e-4},
    "fcn": {"steps": 100, "learning_rate": 2e-4},
}
#: Fraction of frame 0's cells checked in the partial correction, and the seeds of its
#: independent draws (the quarter's gain is their mean).
QUARTER = 0.25
QUARTER_SEED = 0
QUARTER_SEEDS = (0, 1, 2, 3)
#: Margin of the checked region around the checked cells, in median cell diameters.
MARGIN = 0.4
#: First seed of the synthetic label-free session (held out: >= 10 000).
SYNTH_SEED = 10_000
SYNTH_FRAMES = 6


def quarter_correction(labels: np.ndarray, *, fraction: float = QUARTER, seed: int = QUARTER_SEED,
                       margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(labels, region, chosen ids)`` of a partial correction of ``labels``.

    A random ``fraction`` of the cells (at least one) are the checked ones; the region is
    those cells dilated by ``margin`` x the median equivalent diameter; the returned labels
    are the true labels of every cell touching the region, so that inside the region they
    are exactly the truth, and 0 elsewhere.
    """
    from scipy import ndimage as ndi

    from napari_kaizen.engines._common.scale import equivalent_diameters

    ids = np.unique(labels)
    ids = ids[ids > 0]
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * ids.size)))
    chosen = np.sort(rng.choice(ids, size=n, replace=False))
    radius = max(1, int(round(margin * float(np.median(equivalent_diameters(labels))))))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    region = ndi.binary_dilation(np.isin(labels, chosen), structure=disk)
    touching = np.unique(labels[region])
    touching = touching[touching > 0]
    out = np.where(np.isin(labels, touching), labels, 0).astype(np.int32)
    return out, region, [int(i) for i in chosen]


#: The quarter / full ratio is reported only where the full correction gained at least
#: this much mAP: a ratio to a gain of a few thousandths (frame-to-frame noise) means nothing.
RATIO_MIN_GAIN = 0.005


def quarter_over_full(full_gain: float, quarter_gain: float) -> float | None:
    """The quarter's gain over the full correction's, where the latter is large enough."""
    return round(quarter_gain / full_gain, 3) if full_gain >= RATIO_MIN_GAIN else None


def score(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict:
    from napari_kaizen import metrics

    ev = metrics.evaluate(gts, preds)
    return dict(map=round(float(ev.map), 4), ap50=round(float(ev.ap50), 4), found=int(ev.n_pred), true=int(ev.n_true))


def segment_all(engine, model, images: list[np.ndarray]) -> list[np.ndarray]:
    from napari_kaizen import run_to_end

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [run_to_end(engine.segment(img, engine.params(), model=model, device="cpu")).labels for img in images]


def finetune_timed(engine, image, labels, *, model, regions, steps, learning_rate, output, **extra
                   ) -> tuple[Path, dict]:
    """Run ``engine.finetune`` as the widget's panel does (``extra``: engine keywords the
    panel leaves at their defaults, set only to compare); weights path and timings."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    last = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for snap in engine.finetune(image, labels, model=model, regions=regions, steps=steps,
                                    learning_rate=learning_rate, output=output, device="cpu",
                                    description="benchmarks/correction_loop.py", **extra):
            last = snap
    timing = dict(wall_s=round(time.perf_counter() - wall0, 1), cpu_s=round(time.process_time() - cpu0, 1),
                  final_loss=None if last is None or last.loss is None else round(float(last.loss), 5))
    return Path(last.weights_path), timing


def run_dataset(engine_name: str, dataset: str, model: str, frames: list[np.ndarray], truths: list[np.ndarray],
                steps: int, learning_rate: float, tmp: Path, quarter_seeds: tuple[int, ...] = QUARTER_SEEDS,
                corrected_frame: int | None = None, **extra) -> dict:
    from napari_kaizen.engines import get_engine

    engine = get_engine(engine_name)
    base = engine.load_model(model, "cpu")
    others, other_truths = frames[1:], truths[1:]
    before = score(other_truths, segment_all(engine, base, others))
    row = dict(engine=engine_name, dataset=dataset, model=model, frames=len(frames), scored_frames=len(others),
               corrected_cells=int(np.count_nonzero(np.unique(truths[0]))), steps=steps,
               learning_rate=learning_rate, **extra, before=before)
    if corrected_frame is not None:
        row["corrected_frame"] = corrected_frame
    print(json.dumps(dict(engine=engine_name, dataset=dataset, corrected_frame=corrected_frame, before=before)),
          flush=True)
    cases = [("full", None, truths[0], None, None)]  # (name, quarter seed, labels, region, checked cells)
    cases += [(f"quarter {seed}", seed, *quarter_correction(truths[0], seed=seed)) for seed in quarter_seeds]
    draws = []
    for case, seed, labels, region, chosen in cases:
        turn = "" if corrected_frame is None else f"_frame{corrected_frame}"
        out = tmp / f"{engine_name}_{dataset}{turn}_{case.replace(' ', '_')}"
        weights, timing = finetune_timed(engine, frames[0], labels, model=base, regions=region, steps=steps,
                                         learning_rate=learning_rate, output=out, **extra)
        tuned = engine.load_model(str(weights), "cpu")
        after = score(other_truths, segment_all(engine, tuned, others))
        result = dict(after=after, gain=round(after["map"] - before["map"], 4),
                      gain_ap50=round(after["ap50"] - before["ap50"], 4), **timing)
        if region is None:
            row[case] = result
        else:
            draws.append(dict(seed=seed, cells=len(chosen),
                              region_fraction=round(float(region.mean()), 4), **result))
        print(json.dumps(dict(engine=engine_name, dataset=dataset, corrected_frame=corrected_frame, case=case,
                              **result)), flush=True)
    row["quarter"] = dict(
        after={k: round(float(np.mean([d["after"][k] for d in draws])), 4) for k in ("map", "ap50")},
        **{k: round(float(np.mean([d[k] for d in draws])), 4) for k in ("gain", "gain_ap50", "cpu_s", "wall_s")},
        draws=draws)
    row["quarter_cells"] = [d["cells"] for d in draws]
    full, quarter = row["full"]["gain"], row["quarter"]["gain"]
    row["quarter_over_full"] = quarter_over_full(full, quarter)
    return row


def synthetic_session(n: int = SYNTH_FRAMES, seed: int = SYNTH_SEED, channel: str = "label_free"
                      ) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``n`` fields of one ``random_params`` draw (one microscope), seeds ``seed + k``."""
    from napari_kaizen.data import random_params, synthesize

    prm = random_params(np.random.default_rng(seed), shape=(256, 256), hard=1.0, real_world=False)
    fields = [synthesize(prm, seed=seed + k) for k in range(n)]
    desc = (f"random_params(default_rng({seed}), shape=(256, 256), hard=1.0, real_world=False); "
            f"synthesize(params, seed={seed}+k), k=0..{n - 1}; {channel}"
            + (f" ({prm.label_free})" if channel == "label_free" else ""))
    return [getattr(f, channel) for f in fields], [f.nucleus_labels.astype(np.int32) for f in fields], desc


def label(row: dict) -> str:
    """The dataset, and which of its frames was the corrected one when several took turns."""
    k = row.get("corrected_frame")
    return row["dataset"] if k is None else f"{row['dataset']} (frame {k} corrected)"


def per_source(rows: list[dict]) -> list[dict]:
    """Mean gains of each engine and dataset over the frames that took turns as the corrected one."""
    out = []
    for key in dict.fromkeys((r["engine"], r["dataset"]) for r in rows):
        group = [r for r in rows if (r["engine"], r["dataset"]) == key]
        out.append(dict(engine=key[0], dataset=key[1], turns=len(group),
                        before=round(float(np.mean([r["before"]["map"] for r in group])), 4),
                        full_gain=round(float(np.mean([r["full"]["gain"] for r in group])), 4),
                        quarter_gain=round(float(np.mean([r["quarter"]["gain"] for r in group])), 4),
                        full_gains=[r["full"]["gain"] for r in group]))
    return out


def per_source_markdown(summary: list[dict]) -> str:
    lines = ["| engine | dataset | frames that took turns | mAP before (mean) | full correction: mean gain (each turn) | "
             "quarter: mean gain |", "|" + " --- |" * 6]
    for s in summary:
        each = " ".join(f"{g:+.3f}" for g in s["full_gains"])
        lines.append(f"| {s['engine']} | {s['dataset']} | {s['turns']} | {s['before']:.3f} | "
                     f"{s['full_gain']:+.3f} ({each}) | {s['quarter_gain']:+.3f} |")
    for engine in dict.fromkeys(s["engine"] for s in summary):
        # The real datasets' mean: a synthetic session is a check, not a source.
        mine = [s for s in summary if s["engine"] == engine and not s["dataset"].startswith("synthetic")]
        if not mine:
            continue
        lines.append(f"| {engine} | **mean over {len(mine)} real datasets** | | "
                     f"{np.mean([s['before'] for s in mine]):.3f} | "
                     f"**{np.mean([s['full_gain'] for s in mine]):+.3f}** | "
                     f"**{np.mean([s['quarter_gain'] for s in mine]):+.3f}** |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    head = ("| engine | dataset | frames scored | mAP before | after full (gain) | after quarter, mean of draws (gain) | "
            "quarter / full | gain of each quarter draw | AP50 before → full / quarter | "
            "fine-tune CPU s (full / quarter) | wall s |")
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        f, q, b = r["full"], r["quarter"], r["before"]
        ratio = "—" if r["quarter_over_full"] is None else f"{r['quarter_over_full']:.2f}"
        draws = " ".join(f"{d['gain']:+.3f}" for d in q.get("draws", []))
        lines.append(
            f"| {r['engine']} | {label(r)} | {r['scored_frames']} | {b['map']:.3f} | "
            f"{f['after']['map']:.3f} ({f['gain']:+.3f}) | {q['after']['map']:.3f} ({q['gain']:+.3f}) | {ratio} | "
            f"{draws} | "
            f"{b['ap50']:.2f} → {f['after']['ap50']:.2f} / {q['after']['ap50']:.2f} | "
            f"{f['cpu_s']:.0f} / {q['cpu_s']:.0f} | {f['wall_s']:.0f} / {q['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['engine']}: {label(r)}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows) + 2), 5.0))
    w = 0.27
    ax.bar(x - w, [r["before"]["map"] for r in rows], w, label="before", color="#999999")
    ax.bar(x, [r["full"]["after"]["map"] for r in rows], w, label="after: the corrected frame in full", color="#1b9e77")
    ax.bar(x + w, [r["quarter"]["after"]["map"] for r in rows], w, label="after: a quarter of its cells",
           color="#d95f02")
    lo = min(min(r["before"]["map"], r["full"]["after"]["map"], r["quarter"]["after"]["map"]) for r in rows)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(x, names, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("mAP on the other frames")
    ax.set_title("Correct one frame, fine-tune (<= 60 s CPU), score the rest of the session")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lodo", default=str(ROOT / "runs" / "real_lodo"),
                        help="folder of leave-one-folder-out weights <engine>_<folder>.safetensors")
    parser.add_argument("--engines", nargs="+", default=["kaizen", "fcn", "unet"])
    parser.add_argument("--datasets", nargs="+", default=None, help="real folders (default: every one with >= 3 images)")
    parser.add_argument("--steps", nargs="*", default=[], metavar="ENGINE=N")
    parser.add_argument("--lr", nargs="*", default=[], metavar="ENGINE=LR")
    parser.add_argument("--synthetic", nargs="*", default=["kaizen", "fcn"],
                        help="engines also run on a synthetic fluorescence session (from their bundled model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "correction_loop.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "correction_loop.png"))
    parser.add_argument("--merge", action="store_true", help="keep rows of --out for engine/dataset pairs not rerun")
    parser.add_argument("--loso", default=None,
                        help="sources instead of folders: leave-one-source-out weights <engine>_<source>.safetensors "
                             "(scripts/nuclei_sources.py); frame 0 is a source's first image of a fixed draw")
    parser.add_argument("--dark-sources", type=Path, default=None, metavar="PATH",
                        help="DSB2018's stained and bright-field frames from a local checkout (nuclei darker than "
                             "their field; scripts/nuclei_sources.load_dark_sources), from the bundled models, "
                             "which never saw them")
    parser.add_argument("--max-images", type=int, default=6, help="--loso / --dark-sources: images per source (default 6)")
    parser.add_argument("--quarter-draws", type=int, default=len(QUARTER_SEEDS),
                        help="independent quarter corrections per dataset (default %(default)s)")
    parser.add_argument("--corrected-frames", type=int, default=1,
                        help="--loso: the first N frames of a source each take a turn as the corrected one, the "
                             "others scored (default 1: frame 0 only)")
    parser.add_argument("--rehearsal", type=float, default=None, metavar="SHARE",
                        help="fcn: fine-tune with this rehearsal share instead of the engine's default (to compare)")
    args = parser.parse_args(argv)

    import torch

    from napari_kaizen.engines import get_engine

    torch.set_num_threads(args.threads)
    settings = {k: dict(v) for k, v in SETTINGS.items()}
    for item in args.steps:
        k, v = item.split("=")
        settings[k]["steps"] = int(v)
    for item in args.lr:
        k, v = item.split("=")
        settings[k]["learning_rate"] = float(v)
    if args.rehearsal is not None:
        settings["fcn"]["rehearsal"] = args.rehearsal
    lodo = Path(args.lodo)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        real = [e for e in args.engines if e in ("kaizen", "fcn")]
        seeds = QUARTER_SEEDS[: args.quarter_draws]
        if real:
            if args.dark_sources:
                from nuclei_sources import load_dark_sources, per_source_sample

                data = per_source_sample(load_dark_sources(args.dark_sources, sources=args.datasets),
                                         args.max_images)
            elif args.loso:
                from nuclei_sources import load_sources, per_source_sample

                lodo = Path(args.loso)
                data = per_source_sample(load_sources(sources=args.datasets), args.max_images)
            else:
                from real_nuclei import load_real_nuclei

                data = load_real_nuclei(datasets=args.datasets)
            for d in sorted({x.dataset for x in data}):
                items = [x for x in data if x.dataset == d]
                if len(items) < 3:
                    continue
                sources = args.loso or args.dark_sources
                turns = range(min(args.corrected_frames, len(items)) if sources else 1)
                for e in real:
                    # No model here saw a dark-sources frame: the bundled one is held out.
                    model = get_engine(e).default_model if args.dark_sources else lodo / f"{e}_{d}.safetensors"
                    if not args.dark_sources and not model.exists():
                        print(f"skipping {e} on {d}: no leave-one-out model {model}", flush=True)
                        continue
                    for k in turns:
                        # Frame k is the corrected one; the others keep their order.
                        turn = [k] + [i for i in range(len(items)) if i != k]
                        rows.append(run_dataset(e, d, str(model), [items[i].image for i in turn],
                                                [items[i].labels for i in turn], tmp=tmp, quarter_seeds=seeds,
                                                corrected_frame=k if args.corrected_frames > 1 else None,
                                                **settings[e]))
        for e in [e for e in args.synthetic if e in args.engines]:
            frames, truths, desc = synthetic_session(seed=SYNTH_SEED + 100, channel="nuclei")
            row = run_dataset(e, "synthetic nuclei", get_engine(e).default_model, frames, truths, tmp=tmp,
                              **settings[e])
            row["synthetic"] = desc
            rows.append(row)
        if "unet" in args.engines:
            frames, truths, desc = synthetic_session()
            row = run_dataset("unet", "synthetic label-free", "bundled:unet_nuclei", frames, truths, tmp=tmp,
                              **settings["unet"])
            row["synthetic"] = desc
            rows.append(row)
    out = Path(args.out)
    if args.merge and out.exists():
        done = {(r["engine"], r["dataset"]) for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"] if (r["engine"], r["dataset"]) not in done] + rows
    order = {"kaizen": 0, "fcn": 1, "unet": 2}
    rows.sort(key=lambda r: (order.get(r["engine"], 9), r["dataset"], r.get("corrected_frame") or 0))
    RESULTS.mkdir(parents=True, exist_ok=True)
    from napari_kaizen.engines.fcn.training import FINETUNE_START_SHARE, REHEARSAL_SHARE

    meta = dict(threads=args.threads, torch=torch.__version__, quarter=QUARTER, quarter_seeds=list(QUARTER_SEEDS),
                margin_diameters=MARGIN, settings=settings,
                fcn_rehearsal=REHEARSAL_SHARE if args.rehearsal is None else args.rehearsal,
                fcn_start_share=FINETUNE_START_SHARE,
                corrected_frames=args.corrected_frames,
                max_images=args.max_images if args.loso or args.dark_sources else None,
                dark_sources=[x.key for x in data] if args.dark_sources and real else None)
    summary = per_source(rows)
    out.write_text(json.dumps({**meta, "rows": rows, "per_dataset": summary}, indent=2) + "\n")
    table = markdown(rows) + "\n\n" + per_source_markdown(summary)
    out.with_suffix(".md").write_text(table + "\n")
    plot(rows, Path(args.plot))
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
