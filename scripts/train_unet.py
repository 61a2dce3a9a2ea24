"""Reproduce the bundled ISL U-Net weights (CPU, about 40 minutes on 2 threads in all).

Stages (run in this order; each writes NAME.safetensors + NAME.json into --out-dir):

``nuclei``
    ``unet_isl_nuclei``: ISL pretraining, label-free -> DAPI-like nucleus channel, on 160
    synthetic fields (seeds 0..159), L1 loss, 3000 steps of 8 crops of 128 px (21 min on
    2 threads).
``membrane``
    ``unet_isl_membrane``: the same for the CellMask-like membrane channel (1000 steps).
``finetune``
    ``unet_nuclei``: ``unet_isl_nuclei`` plus the two-layer head, fine-tuned on 6 annotated
    synthetic fields (seeds 2000..2005) to the distance map + mask.

Usage::

    python scripts/train_unet.py --stage nuclei
    python scripts/train_unet.py --stage membrane
    python scripts/train_unet.py --stage finetune

Existing files are never replaced unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: Settings of the bundled models (the metadata records them too); steps per stage below.
PRETRAIN = dict(n_fields=160, field_shape=(256, 256), batch_size=8, crop=128, learning_rate=2e-3,
                seed=0, val_fields=8, validate_every=250)
#: The membrane model is a second, optional ISL model: fewer steps to spare the CPU budget.
#: 1500 nucleus steps gave held-out PCC 0.896, 3000 gave 0.913 (validation still rising slowly).
STEPS = {"nuclei": 3000, "membrane": 1000}
#: Fine-tuning set: 6 fields, two per label-free modality (a model fine-tuned without any
#: DIC image fails on DIC: few-image fine-tuning does not transfer across modalities).
FINETUNE = dict(n_images=6, first_seed=2000, steps=800, batch_size=4, crop=128, learning_rate=1e-3, seed=0)
MODALITIES = ("phase", "brightfield", "dic")


def _run(gen):
    last = time.monotonic()
    while True:
        try:
            snap = next(gen)
        except StopIteration as stop:
            return stop.value
        if snap.validation or snap.done or snap.stage != "training" or time.monotonic() - last > 30:
            val = "  ".join(f"{k} {v:.4f}" for k, v in snap.validation.items())
            print(f"[{snap.progress * 100:5.1f}%] {snap.message}  {val}", flush=True)
            last = time.monotonic()


def _base_model(out: Path) -> str:
    """The ISL model to fine-tune: by its bundled name when --out-dir is the package's folder."""
    bundled = (ROOT / "src" / "napari_kaizen" / "weights").resolve()
    return "bundled:unet_isl_nuclei" if out.resolve() == bundled else str(out / "unet_isl_nuclei")


def main(argv=None) -> int:
    import torch

    from napari_kaizen.engines.unet import finetune, pretrain
    from napari_kaizen.engines.unet.training import synthetic_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=("nuclei", "membrane", "finetune"))
    parser.add_argument("--out-dir", default=str(ROOT / "src" / "napari_kaizen" / "weights"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 beside other work)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the bundled recipe's)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = f"python scripts/train_unet.py --stage {args.stage}" + (f" --steps {args.steps}" if args.steps else "")
    t0 = time.perf_counter()
    if args.stage in ("nuclei", "membrane"):
        settings = dict(PRETRAIN, steps=args.steps or STEPS[args.stage])
        model = _run(pretrain(target=args.stage, device="cpu", output=out / f"unet_isl_{args.stage}",
                              overwrite=args.overwrite, reproduce=cmd, **settings))
    else:
        f = FINETUNE
        seeds = range(f["first_seed"], f["first_seed"] + f["n_images"])
        pairs = [synthetic_pairs([s], "nuclei", label_free=MODALITIES[k % 3])[0] for k, s in enumerate(seeds)]
        model = _run(finetune(
            [p[0] for p in pairs], [p[2] for p in pairs], model=_base_model(out),
            steps=f["steps"], batch_size=f["batch_size"], crop=f["crop"], learning_rate=f["learning_rate"],
            seed=f["seed"], device="cpu", output=out / "unet_nuclei", overwrite=args.overwrite, reproduce=cmd,
            description=f"{f['n_images']} synthetic annotated fields 256x256 (random_params, hard=0.5), "
            f"seeds {seeds.start}..{seeds.stop - 1}, label-free modality cycling phase / brightfield / dic; "
            "label-free -> nucleus labels",
        ))
    print(f"wrote {model.source} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
