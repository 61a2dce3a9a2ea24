"""``kaizen train kaizen ...``: the training generator of :mod:`.training` from the command line."""

from __future__ import annotations

from ...errors import InputError
from .._common.training import add_finetune_arguments, read_training_files
from .training import DEFAULT_LR, DEFAULT_STEPS, finetune, train

#: Fine-tuning defaults (``--init``): a corrected image, not a training set.
FINETUNE_STEPS, FINETUNE_LR = 150, 2e-4


def add_train_arguments(parser) -> None:
    """Add the options of ``kaizen train kaizen`` to an ``argparse`` parser."""
    parser.add_argument("--images", nargs="+", default=None, metavar="PATH",
                        help="training images: files or folders (TIFF, PNG, NPY)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="PATH",
                        help="instance label images, one per image, in the same sorted order")
    parser.add_argument("--output", required=True, metavar="PATH", help="weights to write (.safetensors + .json)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimiser steps (default {DEFAULT_STEPS}; {FINETUNE_STEPS} with --init)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also train on N synthetic fluorescent-nuclei fields (seeds 0..N-1)")
    parser.add_argument("--batch-size", type=int, default=32, help="patches per step (paper: 32)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (default {DEFAULT_LR}; {FINETUNE_LR} with --init)")
    parser.add_argument("--patch-size", type=int, default=40, help="patch side in pixels, a multiple of 8 (paper: 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 beside other work)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing weights files")
    add_finetune_arguments(parser)
    if not any(a.dest == "device" for a in parser._actions):
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def run_train(args) -> int:
    """Run ``kaizen train kaizen`` from parsed arguments; print progress; return 0.

    :class:`~napari_kaizen.errors.KaizenError` propagates with its
    one-line message for the CLI to print.
    """
    if args.init:
        if args.synthetic:
            raise InputError("--init fine-tunes on your --images/--labels; --synthetic trains from scratch: give one")
        images, labels, regions = read_training_files(args.images, args.labels, args.regions)
        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        gen = finetune(images, labels, model=args.init, regions=regions, steps=args.steps or FINETUNE_STEPS,
                       learning_rate=args.lr or FINETUNE_LR, device=getattr(args, "device", "auto"),
                       output=args.output, overwrite=args.overwrite, seed=args.seed,
                       description=f"{len(images)} corrected image(s): " + ", ".join(map(str, args.images)))
    else:
        if args.regions:
            raise InputError("--regions applies to fine-tuning: give --init bundled:NAME or a weights file too")
        if not args.synthetic and not (args.images and args.labels):
            raise InputError("give --images and --labels, or --synthetic N (or both)")
        gen = train(
            args.images, args.labels, output=args.output, synthetic=args.synthetic,
            steps=args.steps or DEFAULT_STEPS, batch_size=args.batch_size, learning_rate=args.lr or DEFAULT_LR,
            patch_size=args.patch_size, device=getattr(args, "device", "auto"), seed=args.seed,
            threads=args.threads, overwrite=args.overwrite,
        )
    for snap in gen:
        extra = "  " + "  ".join(f"{k} {v:.4g}" for k, v in snap.validation.items()) if snap.validation else ""
        print(f"[{snap.progress:6.1%}] {snap.message}{extra}", flush=True)
    return 0
