"""The nucleus engines on real annotated micrographs, leave one SOURCE out.

    python benchmarks/real_nuclei.py --loso runs/real_loso [--engines classical kaizen fcn] [--max-images 12]
    python benchmarks/real_nuclei.py --by folder --lodo runs/real_lodo     # the one-lab folder table

``--by source`` (default): the real nuclei of ``scripts/nuclei_sources.py``, every source
in ``scripts/data/nuclei_manifest.csv`` (mnfinder: one lab; DSB2018 / BBBC038
``stage1_train`` with corrected masks, split into its acquisition groups: other labs,
microscopes and cell lines, 8- and 16-bit, nuclei 8-60 px across). For each source S
the learned engines use ``<loso>/<engine>_<S>.safetensors``, made by the bundled
recipe with S left out (``scripts/train_fcn.py nuclei --exclude S``;
``scripts/calibrate_kaizen_outlines.py --sources --lodo``), so the model never saw that
source. At most ``--max-images`` images of a source are scored (a fixed draw,
``nuclei_sources.per_source_sample``, the same for every engine).

``--zoom F`` (by source): every image and its labels enlarged F times (linear for the
image, kept in its dtype; nearest for the labels), as a higher-magnification objective
would see the same nuclei: the real sources' nuclei are 7-58 px across, users' 60x and
100x fields have 60-150 px ones. The results go to ``real_nuclei_sources_zoomF.json``.

``--sparse K`` (by source): every image becomes a sparse field, as a few cells plated
thinly or a wide camera frame give: K of its separate, whole annotated nuclei (with a 3 px
rim of their surroundings, less the rim's median) placed at random on a ``--sparse-side`` square (default
1024) of its own background (a normal distribution at the median and pixel noise of
its pixels away from the nuclei). The results go to
``real_nuclei_sources_sparseK[_SIDE].json``.

``--tile PX``: every image is segmented tile by tile (``napari_kaizen.tiled``, as a
field over 4096^2 or a slide is), and the size check reports the tiled plan's
estimate; ``_tilePX`` is added to the results' name. With ``--sparse 10 --sparse-side
2048 --tile 1024``: a mostly empty field cut into four tiles.

``--dark-sources PATH`` (by source): instead, DSB2018's frames of nuclei darker than
their field, read from a local checkout at PATH (``nuclei_sources.load_dark_sources``):
``dsb2018-stained`` (colour pictures of hematoxylin-stained sections) and
``dsb2018-brightfield`` (grey bright-field frames), each image as stored (colour stays
colour). No model here was trained or calibrated on them, so the bundled models are
held out by construction; ``--loso`` is not used. The results go to
``real_nuclei_sources_dark.json``.

``--by folder``: the seven acquisition folders of mnfinder, leave one folder out
(``--lodo``), the table kept from before the multi-source work; it comes from one lab,
so it overstates what another microscope gives.

Every engine runs exactly as a user gets it: ``engine.params()`` defaults (object size
estimated from the image), no option. Without the fold's weights the bundled model is
used and the row is marked ``seen``. Per source the benchmark also reports the error
types (``napari_kaizen.metrics.error_types``: matches at IoU 0.5, merges, splits,
misses, false positives, mean matched IoU), the automatic size estimate against the
annotated median diameter of every image, and images refused.

AP at IoU t is TP / (TP + FP + FN) per image, averaged over the source's images; mAP
averages t = 0.50:0.05:0.95. Writes ``benchmarks/results/real_nuclei_sources.json``
(``real_nuclei.json`` by folder), a Markdown table beside it and a plot in ``docs/img``.
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


def enlarged(item, factor: float):
    """``item`` with its image and labels enlarged ``factor`` times (a higher magnification)."""
    import dataclasses

    from scipy import ndimage as ndi

    if factor == 1:
        return item
    image = ndi.zoom(item.image.astype(np.float32), factor, order=1)
    if item.image.dtype.kind in "ui":
        info = np.iinfo(item.image.dtype)
        image = np.clip(np.round(image), info.min, info.max)
    return dataclasses.replace(item, image=image.astype(item.image.dtype),
                               labels=ndi.zoom(item.labels, factor, order=0))


def sparse(item, k: int, side: int = 1024):
    """``item`` as a sparse field: ``k`` of its separate nuclei on a ``side`` square of its background.

    Each nucleus is pasted whole with a 3 px rim of what surrounds it, where it overlaps
    no other, less the median of that rim and plus the field's background (a nucleus
    in haze is set on the empty field as it stood out of its haze); only whole nuclei
    that touch no other annotated one within their box are taken (not those cut by
    their frame's edge: since 2026-12-07). The background is drawn
    from a normal distribution at the median of the pixels more than 5 px from every
    nucleus, with their pixel noise (median absolute difference of neighbours, at
    least half a grey level: the field's own quantisation). The draw is fixed by the
    image's key.
    """
    import dataclasses
    import zlib

    from scipy import ndimage as ndi

    rng = np.random.default_rng(zlib.crc32(item.key.encode()))
    image, labels = item.image, item.labels
    away = ~ndi.binary_dilation(labels > 0, iterations=5)
    both = away[:, 1:] & away[:, :-1]
    d = np.diff(image.astype(np.float32), axis=1)[both]
    sd = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0) if d.size else 0.0
    background = float(np.median(image[away])) if away.any() else 0.0
    canvas = rng.normal(background, max(sd, 0.5), (side, side))
    lo, top = (np.iinfo(image.dtype).min, np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else (-np.inf, np.inf)
    canvas = np.clip(np.round(canvas) if image.dtype.kind in "ui" else canvas, lo, top).astype(image.dtype)
    out = np.zeros((side, side), np.int32)
    boxes = ndi.find_objects(labels)
    ids = [i + 1 for i, b in enumerate(boxes) if b is not None]
    rng.shuffle(ids)
    n = 0
    for i in ids:
        box = tuple(slice(max(b.start - 4, 0), b.stop + 4) for b in boxes[i - 1])
        mine = labels[box] == i
        if mine.sum() < 30 or max(mine.shape) > side // 4 or (labels[box][~mine] > 0).any():
            continue
        if any(b.start == 0 or b.stop == n for b, n in zip(boxes[i - 1], labels.shape)):
            continue  # cut by its frame's edge: a half nucleus with a straight side, which no field shows inside
        y, x = (int(rng.integers(0, side - m)) for m in mine.shape)
        target = (slice(y, y + mine.shape[0]), slice(x, x + mine.shape[1]))
        if (out[target] > 0).any():
            continue
        rim = ndi.binary_dilation(mine, iterations=3)
        # The nucleus over its own surroundings (their median), set on the field's background.
        patch = image[box].astype(np.float64) - np.median(image[box][rim & ~mine]) + background
        canvas[target][rim] = np.clip(np.round(patch[rim]), lo, top)
        n += 1
        out[target][mine] = n
        if n == k:
            break
    return dataclasses.replace(item, image=canvas, labels=out)


def score(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict:
    """AP50 / AP75 / AP90 / mAP, object counts and error types of one folder or source."""
    from napari_kaizen import metrics

    ev = metrics.evaluate(gts, preds)
    errs = [metrics.error_types(g, p) for g, p in zip(gts, preds)]
    total = sum(errs[1:], errs[0]).as_dict()
    return dict(ap50=ev.ap50, ap75=ev.ap75, ap90=ev.ap[0.9], map=ev.map, true=ev.n_true, found=ev.n_pred,
                errors=total)


def size_check(items, tiled: bool = False) -> dict:
    """The automatic size estimate of every image against its annotated median diameter.

    ``tiled``: the estimate a tiled run's plan makes for the whole image
    (``tiled.plan_scale`` with the classical engine's rule, which is the estimate itself).
    """
    from napari_kaizen.engines import get_engine
    from napari_kaizen.engines._common.normalize import bright_objects, prepare_image
    from napari_kaizen.engines._common.scale import estimate_diameter, median_diameter
    from napari_kaizen.errors import InputError
    from napari_kaizen.tiled import plan_scale, whole_image_intensity

    classical = get_engine("classical")
    ratios = []
    for x in items:
        try:
            if tiled:
                stats = whole_image_intensity(x.image)
                est = plan_scale(classical, x.image, classical.params(), stats=stats).diameter
            else:
                # The plane the engines take: a bright-field one turned round (no change to fluorescence).
                est = estimate_diameter(prepare_image(bright_objects(x.image)))
        except InputError:
            est = float("nan")
        ratios.append(est / median_diameter(x.labels))
    r = np.asarray(ratios)
    within = np.isfinite(r) & (r >= 0.75) & (r <= 1.25)
    return {"within_25pct": int(within.sum()), "images": int(r.size), "ratio_min": float(np.nanmin(r)),
            "ratio_max": float(np.nanmax(r)), "ratio_median": float(np.nanmedian(r))}


def error_markdown(rows: list[dict], engines: list[str], unit: str = "source") -> str:
    """Error types per source and engine, as shares of the annotated nuclei."""
    datasets = sorted({r["dataset"] for r in rows})
    by = {(r["dataset"], r["engine"]): r for r in rows}
    lines = [f"| {unit} | engine | nuclei | found | matched@0.5 | merges (nuclei in them) | splits | misses | "
             "false positives | mean matched IoU | refused |", "|" + " --- |" * 11]
    for d in datasets:
        for e in engines:
            r = by.get((d, e))
            if r is None:
                continue
            x, n = r["errors"], max(1, r["errors"]["n_true"])
            lines.append(f"| {d} | {e} | {x['n_true']} | {x['n_pred']} | {x['matched'] / n:.1%} | "
                         f"{x['merges'] / n:.1%} ({x['merged_true'] / n:.1%}) | {x['splits'] / n:.1%} | "
                         f"{x['misses'] / n:.1%} | {x['false_positives'] / n:.1%} | {x['mean_iou']:.3f} | "
                         f"{r.get('refused', 0)} |")
    return "\n".join(lines)


def markdown(rows: list[dict], engines: list[str], unit: str = "folder") -> str:
    """Folder (or source) x engine table of mAP (AP50 / AP75 / AP90), then the mean over them."""
    datasets = sorted({r["dataset"] for r in rows})
    by = {(r["dataset"], r["engine"]): r for r in rows}
    head = f"| {unit} | images | nuclei | " + " | ".join(f"{e} mAP (AP50 / AP75 / AP90)" for e in engines) + " |"
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
    lines.append(f"| mean over {unit}s | | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], engines: list[str], path: Path, unit: str = "folder") -> None:
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
    ax.set_title(f"Real nuclei, each {unit} unseen by the learned models (leave one {unit} out)")
    ax.legend(fontsize=8, ncol=len(engines) + 1, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by", choices=("source", "folder"), default="source")
    parser.add_argument("--loso", default=None, help="--by source: per-fold weights <engine>_<source>.safetensors")
    parser.add_argument("--lodo", default=None, help="--by folder: per-fold weights <engine>_<folder>.safetensors")
    parser.add_argument("--engines", nargs="+", default=["classical", "kaizen", "fcn"])
    parser.add_argument("--datasets", nargs="+", default=None, help="default: every source / folder")
    parser.add_argument("--max-images", type=int, default=12, help="--by source: images per source (default 12)")
    parser.add_argument("--zoom", type=float, default=1.0,
                        help="--by source: enlarge every image and its labels this many times (default 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/real_nuclei[_sources].json")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out for engine / folder pairs not rerun")
    parser.add_argument("--sparse", type=int, default=0, metavar="K",
                        help="--by source: K nuclei of each image on a wide field of its background")
    parser.add_argument("--sparse-side", type=int, default=1024, help="side of the --sparse field (default 1024)")
    parser.add_argument("--dark-sources", type=Path, default=None, metavar="PATH",
                        help="--by source: DSB2018's stained and bright-field frames from a local checkout "
                             "(nuclei darker than their field), scored with the bundled models")
    parser.add_argument("--tile", type=int, default=0, metavar="PX",
                        help="segment every image tile by tile with this tile side (napari_kaizen.tiled), "
                             "as a huge image is")
    args = parser.parse_args(argv)
    if args.zoom <= 0 or (args.zoom != 1 and args.by != "source"):
        parser.error("--zoom takes a positive factor, with --by source")
    if args.sparse < 0 or (args.sparse and (args.by != "source" or args.zoom != 1)) or args.sparse_side < 64:
        parser.error("--sparse takes a count of nuclei, with --by source and no --zoom; --sparse-side at least 64")
    if args.tile < 0:
        parser.error("--tile takes a tile side in pixels")
    if args.dark_sources and (args.by != "source" or args.zoom != 1 or args.sparse or args.tile or args.loso):
        parser.error("--dark-sources scores the stored frames with the bundled models: no --by folder, --zoom, "
                     "--sparse, --tile or --loso")

    import torch

    from napari_kaizen import run_to_end
    from napari_kaizen.engines import get_engine
    from napari_kaizen.errors import KaizenError
    from napari_kaizen.tiled import load_engine_model, segment_tiled

    torch.set_num_threads(args.threads)
    unit = args.by
    if unit == "source":
        from nuclei_sources import load_dark_sources, load_sources, per_source_sample

        folds = Path(args.loso) if args.loso else None
        if args.dark_sources:
            data = per_source_sample(load_dark_sources(args.dark_sources, sources=args.datasets), args.max_images)
        else:
            data = per_source_sample(load_sources(sources=args.datasets), args.max_images)
        data = [enlarged(x, args.zoom) for x in data]
        tag = "" if args.zoom == 1 else f"_zoom{args.zoom:g}"
        if args.sparse:
            data = [y for y in (sparse(x, args.sparse, args.sparse_side) for x in data) if y.labels.any()]
            tag = f"_sparse{args.sparse}" + ("" if args.sparse_side == 1024 else f"_{args.sparse_side}")
        tag += f"_tile{args.tile}" if args.tile else ""
        tag += "_dark" if args.dark_sources else ""
        out = Path(args.out or RESULTS / f"real_nuclei_sources{tag}.json")
        plot_path = Path(args.plot or ROOT / "docs" / "img" / f"real_nuclei_sources{tag}.png")
    else:
        from real_nuclei import load_real_nuclei

        folds = Path(args.lodo) if args.lodo else None
        data = load_real_nuclei(datasets=args.datasets)
        out = Path(args.out or RESULTS / "real_nuclei.json")
        plot_path = Path(args.plot or ROOT / "docs" / "img" / "real_nuclei.png")
    datasets = sorted({x.dataset for x in data})
    sizes = ({d: size_check([x for x in data if x.dataset == d], tiled=bool(args.tile)) for d in datasets}
             if unit == "source" else {})
    rows = []
    for name in args.engines:
        engine = get_engine(name)
        for d in datasets:
            items = [x for x in data if x.dataset == d]
            model, held_out = fold_model(folds, name, d) if engine.default_model else (None, True)
            held_out = held_out or bool(args.dark_sources)  # no model here saw those frames
            kwargs = {"model": model} if model else {}
            loaded = load_engine_model(engine, model, "cpu") if args.tile else None
            start = time.perf_counter()
            preds, refused = [], 0
            for x in items:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # size fall-backs are the CLI's to report
                    try:
                        if args.tile:
                            run = segment_tiled(engine, x.image, engine.params(), tile=args.tile, model=loaded)
                            preds.append(np.asarray(run_to_end(run).labels[:]))
                        else:
                            preds.append(run_to_end(engine.segment(x.image, engine.params(), **kwargs)).labels)
                    except KaizenError:
                        # A refused image scores as an empty prediction, and is counted.
                        preds.append(np.zeros(x.labels.shape, np.int32))
                        refused += 1
            row = dict(dataset=d, engine=name, images=len(items), held_out=held_out,
                       model=model or engine.default_model, seconds=round(time.perf_counter() - start, 1),
                       refused=refused, **score([x.labels for x in items], preds))
            rows.append(row)
            print(json.dumps(row), flush=True)
    engines = list(args.engines)
    if args.merge and out.exists():
        done = {(r["engine"], r["dataset"]) for r in rows}
        before = json.loads(out.read_text())
        old = [r for r in before["rows"] if (r["engine"], r["dataset"]) not in done]
        # The size checks of the sources not rerun are kept too.
        sizes = {**(before.get("size_estimate") or {}), **sizes}
        order = {"classical": 0, "kaizen": 1, "fcn": 2}
        engines = sorted({r["engine"] for r in old} | set(engines), key=lambda e: order.get(e, 9))
        rows = sorted(old + rows, key=lambda r: (order.get(r["engine"], 9), r["dataset"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"by": unit, "threads": args.threads, "torch": torch.__version__,
                               "max_images": args.max_images if unit == "source" else None, "zoom": args.zoom,
                               "sparse": [args.sparse, args.sparse_side] if args.sparse else None,
                               "tile": args.tile or None,
                               "dark_sources": [x.key for x in data] if args.dark_sources else None,
                               "size_estimate": sizes, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, engines, unit) + "\n\n" + error_markdown(rows, engines, unit)
    if sizes:
        table += "\n\n| source | size estimate within ±25 % | estimate / annotated (min / median / max) |\n| --- | --- | --- |\n"
        table += "\n".join(f"| {d} | {v['within_25pct']} of {v['images']} | {v['ratio_min']:.2f} / "
                           f"{v['ratio_median']:.2f} / {v['ratio_max']:.2f} |" for d, v in sizes.items())
    out.with_suffix(".md").write_text(table + "\n")
    plot(rows, engines, plot_path, unit)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
