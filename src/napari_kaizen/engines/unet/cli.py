"""``kaizen train unet ...``: ISL pretraining and few-image fine-tuning from the command line.

Examples
--------
ISL pretraining on synthetic paired fields (label-free -> DAPI-like)::

    kaizen train unet --pretrain nuclei --output weights/my_isl_nuclei

Fine-tuning the bundled ISL model on your own annotated images::

    kaizen train unet --images a.tif b.tif --labels a_labels.tif b_labels.tif \\
        --output weights/my_unet --steps 300

Fine-tuning on synthetic annotated fields, from ISL weights or from scratch::

    kaizen train unet --synthetic 5 --init bundled:unet_isl_nuclei --output weights/unet_5
    kaizen train unet --synthetic 5 --init scratch --output weights/unet_5_scratch
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from ...errors import InputError
from .._common.training import add_finetune_arguments, read_training_files


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the U-Net training options to ``parser`` (the ``kaizen train unet`` sub-command)."""
    mode = parser.add_argument_group("what to train (one of)")
    mode.add_argument("--pretrain", choices=("nuclei", "membrane"), default=None,
                      help="ISL pretraining: predict this fluorescent channel from the label-free one "
                      "(synthetic pairs)")
    mode.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                      help="fine-tune on these label-free images (TIFF / PNG / NPY)")
    mode.add_argument("--labels", nargs="+", default=None, metavar="LABELS",
                      help="instance labels of --images, one file per image, same order")
    mode.add_argument("--synthetic", type=int, default=None, metavar="N",
                      help="fine-tune on N synthetic annotated fields (seeds --seed .. --seed+N-1)")
    parser.add_argument("--output", "-o", required=True,
                        help="weights path (a .safetensors file and a .json beside it are written)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing weights files")
    parser.add_argument("--init", default="bundled:unet_isl_nuclei",
                        help="fine-tuning start: weights path, bundled:NAME, or 'scratch' for random weights "
                        "(default bundled:unet_isl_nuclei)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps (default 3000 for --pretrain, 300 for fine-tuning)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 / 1e-3)")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per step (default 8 / 4)")
    parser.add_argument("--crop", type=int, default=128, help="crop side in pixels, a multiple of 16 (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (and first synthetic field seed)")
    parser.add_argument("--fields", type=int, default=160, help="--pretrain: number of synthetic fields (default 160)")
    parser.add_argument("--field-size", type=int, default=256, help="side of synthetic fields (default 256)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (use 1 beside other work)")
    add_finetune_arguments(parser)


def _print_progress(snapshots) -> object:
    """Print one line per reported step to stderr; return the generator's return value."""
    gen = iter(snapshots)
    last_print = 0.0
    while True:
        try:
            snap = next(gen)
        except StopIteration as stop:
            return stop.value
        now = time.monotonic()
        if snap.validation or getattr(snap, "done", False) or now - last_print > 5 or snap.stage != "training":
            extra = "  " + "  ".join(f"{k} {v:.4g}" for k, v in snap.validation.items()) if snap.validation else ""
            print(f"[{snap.progress * 100:5.1f}%] {snap.message}{extra}", file=sys.stderr, flush=True)
            last_print = now


def run_train(args: argparse.Namespace) -> int:
    """Run ``kaizen train unet`` with parsed ``args``; return the exit status."""
    from . import finetune, pretrain

    modes = [m for m in ("pretrain", "images", "synthetic") if getattr(args, m) is not None]
    if len(modes) != 1:
        raise InputError("choose exactly one of --pretrain TARGET, --images ... --labels ..., --synthetic N")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    reproduce = "kaizen train unet " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if len(sys.argv) > 3 else None
    if args.pretrain:
        if args.regions:
            raise InputError("--regions belong to fine-tuning on --images, not to --pretrain")
        gen = pretrain(
            target=args.pretrain, n_fields=args.fields, field_shape=(args.field_size, args.field_size),
            steps=args.steps or 3000, batch_size=args.batch_size or 8, crop=args.crop,
            learning_rate=args.lr or 2e-3, seed=args.seed, device=args.device, output=args.output,
            overwrite=args.overwrite, reproduce=reproduce,
        )
    else:
        if args.images is not None:
            images, labels, regions = read_training_files(args.images, args.labels, args.regions)
            description = f"{len(images)} annotated image(s): " + ", ".join(args.images)
        else:
            from .training import synthetic_pairs

            if args.regions:
                raise InputError("--regions belong to --images (one mask per image), not to --synthetic")
            regions = None
            if args.synthetic < 1:
                raise InputError(f"--synthetic needs at least 1 field, got {args.synthetic}")
            pairs = synthetic_pairs(range(args.seed, args.seed + args.synthetic), "nuclei",
                                    shape=(args.field_size, args.field_size))
            images, labels = [p[0] for p in pairs], [p[2] for p in pairs]
            description = (f"{args.synthetic} synthetic fields {args.field_size}x{args.field_size} "
                           f"(random_params, hard=0.5), seeds {args.seed}..{args.seed + args.synthetic - 1}")
        gen = finetune(
            images, labels, model=args.init, regions=regions, steps=args.steps or 300, learning_rate=args.lr or 1e-3,
            batch_size=args.batch_size or 4, crop=args.crop, seed=args.seed, device=args.device,
            output=args.output, overwrite=args.overwrite, description=description, reproduce=reproduce,
        )
    model = _print_progress(gen)
    print(f"wrote {model.source}", file=sys.stderr)
    return 0
