"""Train the bundled GoogLeNet FCN weights (``fcn_nuclei``, ``fcn_cells``) on the CPU.

``nuclei``: the real annotated nuclei of every source in ``scripts/data/nuclei_manifest.csv``
(``scripts/nuclei_sources.py``: mnfinder and the DSB2018 acquisition groups) but
``--exclude``, each image brought to a median nucleus diameter of 24 px, every source
given the same share of the real crops (so 333 small DSB frames do not drown one lab's
33), mixed with 24 synthetic 384 x 384 fields (training seeds 0..23,
``random_params(..., hard=...)``, nominal diameter 27 px so their labels' median is about
24 px), 70 % of the crops from the real images; stride 4 (outlines fine enough for AP at
IoU 0.9), a distance-map output beside the three classes (instances by h-maxima seeds
and a watershed: ours, not the post's), the real-world augmentation (zoom 0.5-2x,
gamma, contrast, blur, shot noise, quantisation, flips, rotations, elastic, rolls), the
post's edge over-weighting; the post-processing constants (seed contrast, outline
threshold, smallest object, dim-object filter) are then calibrated on 12 of the real
training images, taken round-robin over the sources, and 4 of the synthetic fields (one
of each hardness). ``--recalibrate`` chooses them again for existing weights.

``cells``: whole cells from the CellMask-like membrane channel of seven synthetic
512 x 512 fields (the post's seven annotated images; seeds 0..6), stride 8.

Usage::

    python scripts/train_fcn.py nuclei            # -> src/napari_kaizen/weights/fcn_nuclei.*
    python scripts/train_fcn.py cells             # -> src/napari_kaizen/weights/fcn_cells.*
    python scripts/train_fcn.py nuclei --exclude dsb2018-360x360 --output runs/real_loso/fcn_dsb2018-360x360

The nucleus model takes 22-28 minutes of one CPU core (4000 steps, then the calibration of
its constants); ``--output``'s folder must exist (``mkdir -p runs/real_loso``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from napari_kaizen.data import SynthParams, synthesize  # noqa: E402
from napari_kaizen.engines._common.augment import REAL_WORLD  # noqa: E402
from napari_kaizen.engines.fcn.training import BUNDLED_NAMES, FCN_AUGMENT, RECIPES, synthetic_training_set, train  # noqa: E402

#: Validation fields for the log: dense, touching, clustered; seeds outside training
#: (0..) and evaluation (>= 10_000).
VALIDATION = SynthParams(shape=(256, 256), density=0.45, touching=0.9, clustering=0.8)
VALIDATION_SEEDS = (1000, 1001)

#: The real-nuclei recipe of ``fcn_nuclei``. 4000 steps since 2026-12-06 (1000 before):
#: leave-one-source-out mean mAP 0.517 -> 0.526 (docs/real_nuclei.md). The constants are
#: calibrated on the first ``calibrate`` real images (round-robin over the sources) and
#: the first ``calibrate_synthetic`` synthetic fields (one of each hardness), as the
#: training mixes them; on the real images alone the dim-object filter came out at 0.5
#: and dropped the dim nuclei of the dense synthetic fields (AP50 0.853 -> 0.917 with
#: them; leave one source out, mean mAP 0.526 -> 0.532; docs/fcn.md).
NUCLEI_REAL = dict(
    object_diameter=24.0, synthetic=24, synthetic_shape=(384, 384), synthetic_diameter=27.0, real_share=0.7,
    steps=4000, lr=1e-3, batch_size=8, crop=128, stride=4, edge_weight=5.0, edge_width=2.0, seed=0, calibrate=12,
    calibrate_synthetic=4, distance=True, distance_weight=1.0, width=1.0,
)
#: Recipe entries a command-line option may replace (``--edge-weight`` for ``edge_weight``...).
OVERRIDES = ("seed", "edge_weight", "steps", "distance_weight", "width")
#: Hardness of the recipe's synthetic fields, cycling over their seeds 0, 1, ...
SYNTHETIC_HARDNESS = (0.4, 0.6, 0.8, 1.0)


def calibration_images(n_real: int, recipe: dict) -> tuple[list[int], str]:
    """Indices of the images the constants are calibrated on, and what they are.

    The training list holds ``n_real`` real images (round-robin over the sources)
    followed by the synthetic fields: the first ``calibrate`` of the one, the first
    ``calibrate_synthetic`` of the other.
    """
    k_real = min(recipe["calibrate"], n_real)
    k_synth = min(recipe["calibrate_synthetic"], recipe["synthetic"])
    described = f"{k_real} real and {k_synth} synthetic training images"
    return list(range(k_real)) + list(range(n_real, n_real + k_synth)), described


def nuclei_training_set(recipe: dict, exclude: list[str]) -> tuple[list, list, list[float], dict, int]:
    """The real-nuclei recipe's training images, labels, sampling weights and description.

    Returns ``(images, labels, weights, description, n_real)``: the real images of every
    source not in ``exclude`` (round-robin over the sources, so the first ``calibrate``,
    on which the post-processing constants are chosen, span every lab), then the
    synthetic fields. ``weights`` are per unit area (``iter_batches`` multiplies by each
    image's area at the model's scale): ``real_share`` of the crops come from the real
    images, the same share from every source; the synthetic fields have the rest.
    """
    from nuclei_sources import load_sources, provenance_summary, round_robin

    from napari_kaizen.engines._common.scale import median_diameter

    r = recipe
    real = round_robin(load_sources(exclude=exclude))
    s_imgs, s_labs, s_desc = synthetic_training_set(r["synthetic"], channel="nuclei", shape=r["synthetic_shape"],
                                                    nucleus_diameter=r["synthetic_diameter"], hard=SYNTHETIC_HARDNESS)
    images = [x.image for x in real] + s_imgs
    labels = [x.labels for x in real] + s_labs
    scale2 = [(r["object_diameter"] / median_diameter(lab)) ** 2 for lab in labels]
    area = [img.size * f for img, f in zip(images, scale2)]
    n_real = len(real)
    source_area: dict[str, float] = {}
    for x, a in zip(real, area):
        source_area[x.source] = source_area.get(x.source, 0.0) + a
    synth_area = sum(area[n_real:])
    weights = [r["real_share"] / len(source_area) / source_area[real[i].source] if i < n_real
               else (1 - r["real_share"]) / synth_area for i in range(len(area))]
    desc = {"real": provenance_summary(real, excluded=exclude), "synthetic": s_desc,
            "real_share_of_crops": r["real_share"]}
    return images, labels, weights, desc, n_real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("nuclei", "cells"))
    parser.add_argument("--output", default=None, help="default: the bundled weights folder")
    parser.add_argument("--exclude", action="append", default=[], metavar="SOURCE",
                        help="nuclei: leave this source out (repeatable; see scripts/nuclei_sources.py --list)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=None, help="default: the recipe's (0)")
    parser.add_argument("--edge-weight", type=float, default=None, help="default: the recipe's (5)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--distance-weight", type=float, default=None,
                        help="nuclei: weight of the distance map's loss beside the cross-entropy (default: the recipe's, 1)")
    parser.add_argument("--width", type=float, default=None,
                        help="nuclei: multiplier on the network's channel widths (default: the recipe's, 1)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="nuclei: only choose the post-processing thresholds again for the weights at --output")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    key = "nuclei" if args.model == "nuclei" else "membrane"
    r = dict(NUCLEI_REAL if key == "nuclei" else RECIPES[key])
    if args.distance_weight is not None and key != "nuclei":
        parser.error("--distance-weight is for the nuclei model (the one with a distance output)")
    if args.width is not None and (key != "nuclei" or not args.width > 0):
        parser.error("--width is a positive multiplier, for the nuclei model (the cells recipe fixes its own)")
    for name in OVERRIDES:
        if getattr(args, name) is not None:
            r[name] = getattr(args, name)
    output = args.output or str(ROOT / "src" / "napari_kaizen" / "weights" / BUNDLED_NAMES[key])
    extra = "".join(f" --{n.replace('_', '-')} {getattr(args, n)}"
                    for n in OVERRIDES if getattr(args, n) is not None)
    extra += "".join(f" --exclude {d}" for d in args.exclude)
    reproduce = f"python scripts/train_fcn.py {args.model} --threads {args.threads} --device {args.device}{extra}"
    if key == "nuclei":
        from nuclei_sources import source_names

        unknown = set(args.exclude) - set(source_names())
        if unknown:
            parser.error(f"unknown source(s) {sorted(unknown)}; the sources are {source_names()}")
        images, labels, weights, desc, n_real = nuclei_training_set(r, args.exclude)
        calibrate, described = calibration_images(n_real, r)
        if args.recalibrate:
            from napari_kaizen.engines.fcn.training import recalibrate

            chosen = recalibrate(output, images, labels, object_diameter=r["object_diameter"], calibrate=calibrate,
                                 device=args.device, described=described)
            print(f"recalibrated {output}: " + ", ".join(f"{k} {chosen[k]}" for k in
                                                         ("threshold", "h", "foreground", "min_size", "min_contrast")
                                                         if k in chosen))
            return 0
        gen = train(
            images, labels, output=output, edge_weight=r["edge_weight"], edge_width=r["edge_width"], steps=r["steps"],
            lr=r["lr"], batch_size=r["batch_size"], crop=r["crop"], width=r["width"], stride=r["stride"], seed=r["seed"],
            device=args.device, channel="nuclei", augment_params=REAL_WORLD, validation=None,
            data_description=desc, reproduce=reproduce, overwrite=args.overwrite, report_every=50,
            object_diameter=r["object_diameter"], weights=weights, calibrate=calibrate,
            calibration_described=described, distance=r["distance"], distance_weight=r["distance_weight"],
        )
    else:
        vals = [synthesize(VALIDATION, seed=s) for s in VALIDATION_SEEDS]
        # The 0.1.0 generator's fields: the bundled fcn_cells was trained on them.
        images, labels, desc = synthetic_training_set(r["n_images"], channel=r["channel"], shape=r["shape"], hard=r["hard"],
                                                      real_world=False)
        gen = train(
            images, labels, output=output, edge_weight=r["edge_weight"], edge_width=r["edge_width"], steps=r["steps"],
            lr=r["lr"], batch_size=r["batch_size"], crop=r["crop"], width=r["width"], stride=r["stride"], seed=r["seed"],
            device=args.device, channel=r["channel"], augment_params=FCN_AUGMENT,
            validation=([v.membrane for v in vals], [v.cell_labels for v in vals]), validate_every=400,
            data_description=desc, reproduce=reproduce, overwrite=args.overwrite, report_every=50,
        )
    start = time.perf_counter()
    for snap in gen:
        val = " ".join(f"{k} {v:.3f}" for k, v in snap.validation.items())
        print(f"{time.perf_counter() - start:7.0f}s  {snap.message}  {val}", flush=True)
        if snap.done:
            print(f"wrote {snap.weights_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
