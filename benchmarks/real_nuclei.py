"""The nucleus engines on real annotated micrographs, leave one dataset folder out.

    python benchmarks/real_nuclei.py --lodo runs/real_lodo [--engines classical fcn kaizen] [--threads 2]

The data are the real fluorescent nuclei of ``scripts/real_nuclei.py`` (the MIT-licensed
``mnfinder==1.2.3`` wheel's ``training-data`` and ``validation-data`` splits: 33 images,
2614 manually outlined nuclei, seven acquisition folders, uint8 and uint16, 512² to
1024²). Its ``test-data`` split is not used here or anywhere else in training.

Every engine runs exactly as a user gets it: ``engine.params()`` defaults (object size
estimated from the image), no option. The learned engines are scored
leave-one-dataset-out: for the folder ``D`` the model is
``<lodo>/<engine>_<D>.safetensors``, trained by the same recipe as the bundled weights
with ``--exclude D`` (``scripts/train_fcn.py``, ``scripts/train_kaizen_nuclei.py``),
so it never saw that folder's images. Without ``--lodo``, or when a fold's weights are
missing, the bundled model is used and the row is marked ``seen`` (the bundled
weights were trained on every folder: such a row is not a held-out figure).

AP at IoU t is TP / (TP + FP + FN) per image, averaged over the folder's images; mAP
averages t = 0.50:0.05:0.95. Writes ``benchmarks/results/real_nuclei.json``, a
Markdown table ``benchmarks/results/real_nuclei.md`` and the plot
``docs/img/real_nuclei.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "scripts"))


def fold_model(lodo: Path | None, engine: str, dataset: str) -> tuple[str | None, bool]:
    """``(model, held_out)``: the fold's weights when they exist, else the bundled default."""
    if lodo is not None:
        path = lodo / f"{engine}_{dataset}.safetensors"
        if path.exists():
            return str(path), True
    return None, False


def score(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict:
    """AP50 / AP75 / AP90 / mAP and object counts of one folder."""
    from napari_kaizen import metrics

    ev = metrics.evaluate(gts, preds)
    return dict(ap50=ev.ap50, ap75=ev.ap75, ap90=ev.ap[0.9], map=ev.map, true=ev.n_true, found=ev.n_pred)


def markdown(rows: list[dict], engines: list[str]) -> str:
    """Folder x engine table of mAP (AP50 / AP75 / AP90), then the mean over folders."""
    datasets = sorted({r["dataset"] for r in rows})
    by = {(r["dataset"], r["engine"]): r for r in rows}
    head = "| folder | images | nuclei | " + " | ".join(f"{e} mAP (AP50 / AP75 / AP90)" for e in engines) + " |"
    lines = [head, "|" + " --- |" * (3 + len(engines))]
    for d in datasets:
        first = by[(d, engines[0])]
        cells = []
        for e in engines:
            r = by[(d, e)]
            mark = "" if r["held_out"] or e == "classical" else " (seen)"
            cells.append(f"**{r['map']:.3f}** ({r['ap50']:.2f} / {r['ap75']:.2f} / {r['ap90']:.2f}){mark}")
        lines.append(f"| {d} | {first['images']} | {first['true']} | " + " | ".join(cells) + " |")
    means = []
    for e in engines:
        rs = [by[(d, e)] for d in datasets]
        means.append(f"**{np.mean([r['map'] for r in rs]):.3f}** ({np.mean([r['ap50'] for r in rs]):.2f} / "
                     f"{np.mean([r['ap75'] for r in rs]):.2f} / {np.mean([r['ap90'] for r in rs]):.2f})")
    lines.append("| mean over folders | | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], engines: list[str], path: Path) -> None:
    """Grouped bars: mAP per folder and engine, AP50 as a tick above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    by = {(r["dataset"], r["engine"]): r for r in rows}
    x = np.arange(len(datasets))
    width = 0.8 / len(engines)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, e in enumerate(engines):
        maps = [by[(d, e)]["map"] for d in datasets]
        ap50 = [by[(d, e)]["ap50"] for d in datasets]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, maps, width, label=f"{e} mAP")
        ax.scatter(pos, ap50, marker="_", s=120, color="k", zorder=3, label="AP50" if i == 0 else None)
    ax.set_xticks(x, [d.replace("_", "\n", 1) for d in datasets], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Real nuclei, each folder unseen by the learned models (leave one folder out)")
    ax.legend(fontsize=8, ncol=len(engines) + 1, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lodo", default=None, help="folder of per-fold weights <engine>_<dataset>.safetensors")
    parser.add_argument("--engines", nargs="+", default=["classical", "kaizen", "fcn"])
    parser.add_argument("--datasets", nargs="+", default=None, help="default: every folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "real_nuclei.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "real_nuclei.png"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out for engine / folder pairs not rerun")
    args = parser.parse_args(argv)

    import torch
    from real_nuclei import load_real_nuclei

    from napari_kaizen.engines import get_engine
    from napari_kaizen import run_to_end

    torch.set_num_threads(args.threads)
    lodo = Path(args.lodo) if args.lodo else None
    data = load_real_nuclei(datasets=args.datasets)
    datasets = sorted({x.dataset for x in data})
    rows = []
    for name in args.engines:
        engine = get_engine(name)
        for d in datasets:
            items = [x for x in data if x.dataset == d]
            model, held_out = fold_model(lodo, name, d) if engine.default_model else (None, True)
            kwargs = {"model": model} if model else {}
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # size fall-backs are the CLI's to report
                preds = [run_to_end(engine.segment(x.image, engine.params(), **kwargs)).labels for x in items]
            row = dict(dataset=d, engine=name, images=len(items), held_out=held_out,
                       model=model or engine.default_model, seconds=round(time.perf_counter() - start, 1),
                       **score([x.labels for x in items], preds))
            rows.append(row)
            print(json.dumps(row), flush=True)
    engines = list(args.engines)
    if args.merge and Path(args.out).exists():
        done = {(r["engine"], r["dataset"]) for r in rows}
        old = [r for r in json.loads(Path(args.out).read_text())["rows"] if (r["engine"], r["dataset"]) not in done]
        order = {"classical": 0, "kaizen": 1, "fcn": 2}
        engines = sorted({r["engine"] for r in old} | set(engines), key=lambda e: order.get(e, 9))
        rows = sorted(old + rows, key=lambda r: (order.get(r["engine"], 9), r["dataset"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows},
                                         indent=2) + "\n")
    table = markdown(rows, engines)
    Path(args.out).with_suffix(".md").write_text(table + "\n")
    plot(rows, engines, Path(args.plot))
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
