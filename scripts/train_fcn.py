"""Train the bundled GoogLeNet FCN weights (``fcn_nuclei``, ``fcn_cells``) on the CPU.

Each model is trained, as in the GoogLeNet FCN post, on seven annotated images: seven
synthetic 512 x 512 fields (training seeds 0..6, ``random_params(..., hard=1.0)``),
nuclei from the DAPI-like channel with ``nucleus_labels``, whole cells from the
CellMask-like membrane channel with ``cell_labels``. Two dense validation fields
(seeds 1000, 1001; never used for evaluation) are scored in the log only.

Usage::

    python scripts/train_fcn.py nuclei            # -> src/napari_kaizen/weights/fcn_nuclei.*
    python scripts/train_fcn.py cells             # -> src/napari_kaizen/weights/fcn_cells.*
    python scripts/train_fcn.py nuclei --output /tmp/fcn_nuclei --threads 1

Both take a few minutes on one CPU core. The same settings are the defaults of
``kaizen train fcn --synthetic 7 --channel nuclei|membrane``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_kaizen.data import SynthParams, synthesize  # noqa: E402
from napari_kaizen.engines.fcn.train import BUNDLED_NAMES, RECIPES, synthetic_training_set, train  # noqa: E402

#: Validation fields for the log: dense, touching, clustered; seeds outside training
#: (0..) and evaluation (>= 10_000).
VALIDATION = SynthParams(shape=(256, 256), density=0.45, touching=0.9, clustering=0.8)
VALIDATION_SEEDS = (1000, 1001)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("nuclei", "cells"))
    parser.add_argument("--output", default=None, help="default: the bundled weights folder")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=None, help="default: the recipe's (0)")
    parser.add_argument("--edge-weight", type=float, default=None, help="default: the recipe's (5)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    key = "nuclei" if args.model == "nuclei" else "membrane"
    r = dict(RECIPES[key])
    for name in ("seed", "edge_weight", "steps"):
        if getattr(args, name) is not None:
            r[name] = getattr(args, name)
    output = args.output or str(ROOT / "src" / "napari_kaizen" / "weights" / BUNDLED_NAMES[key])
    images, labels, desc = synthetic_training_set(r["n_images"], channel=r["channel"], shape=r["shape"], hard=r["hard"])
    vals = [synthesize(VALIDATION, seed=s) for s in VALIDATION_SEEDS]
    val_images = [v.nuclei if key == "nuclei" else v.membrane for v in vals]
    val_labels = [v.nucleus_labels if key == "nuclei" else v.cell_labels for v in vals]
    extra = "".join(f" --{n.replace('_', '-')} {getattr(args, n)}" for n in ("seed", "edge_weight", "steps")
                    if getattr(args, n) is not None)
    reproduce = f"python scripts/train_fcn.py {args.model} --threads {args.threads} --device {args.device}{extra}"
    start = time.perf_counter()
    for snap in train(
        images, labels, output=output, edge_weight=r["edge_weight"], edge_width=r["edge_width"], steps=r["steps"],
        lr=r["lr"], batch_size=r["batch_size"], crop=r["crop"], width=r["width"], stride=r["stride"], seed=r["seed"],
        device=args.device, channel=r["channel"], validation=(val_images, val_labels), validate_every=400,
        data_description=desc, reproduce=reproduce, overwrite=args.overwrite, report_every=50,
    ):
        val = " ".join(f"{k} {v:.3f}" for k, v in snap.validation.items())
        print(f"{time.perf_counter() - start:7.0f}s  {snap.message}  {val}", flush=True)
        if snap.done:
            print(f"wrote {snap.weights_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
