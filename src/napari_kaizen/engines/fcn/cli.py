"""``kaizen train fcn ...``: the training generators of :mod:`.training` from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys

from ...errors import InputError, KaizenError
from .._common.training import add_finetune_arguments, check_output, read_training_files
from .training import FINETUNE_START_SHARE, RECIPES, REHEARSAL_SHARE, finetune, synthetic_training_set, train


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``kaizen train fcn`` to ``parser`` and return it."""
    parser.add_argument("--images", nargs="+", metavar="FILE", help="training images (TIFF, PNG or NPY)")
    parser.add_argument("--labels", nargs="+", metavar="FILE", help="instance labels, one per image, same order")
    parser.add_argument("--output", required=True, metavar="PATH", help="weights to write (.safetensors + .json)")
    parser.add_argument("--channel", choices=("nuclei", "membrane"), default="nuclei",
                        help="stain of the images; picks the recipe defaults and the synthetic channel")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="train on N synthetic fields (seeds 0..N-1) instead of files")
    parser.add_argument("--edge-weight", type=float, default=None, help="loss weight of edge pixels (1 = none)")
    parser.add_argument("--edge-width", type=float, default=None, help="edge band width inside objects, pixels")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_finetune_arguments(parser)
    parser.add_argument("--rehearsal", type=float, default=None, metavar="SHARE",
                        help=f"with --init: share of the crops from synthetic fields of the model's channel, in "
                             f"[0, 1) (default {REHEARSAL_SHARE}; 0 = your images only)")
    parser.add_argument("--start-share", type=float, default=None, metavar="SHARE",
                        help=f"with --init: share of the starting weights averaged into the saved ones, in [0, 1) "
                             f"(default {FINETUNE_START_SHARE}; 0 = the fine-tuned weights as trained)")
    return parser


def _reproduce_command(args: argparse.Namespace) -> str:
    """The ``kaizen train fcn`` command line that repeats this run."""
    parts = ["kaizen", "train", "fcn"]
    if args.synthetic:
        parts += ["--synthetic", str(args.synthetic)]
    else:
        parts += ["--images", *map(str, args.images or [])] + ["--labels", *map(str, args.labels or [])]
    if getattr(args, "init", None):
        parts += ["--init", str(args.init)]
    if getattr(args, "regions", None):
        parts += ["--regions", *map(str, args.regions)]
    parts += ["--channel", args.channel]
    for name in ("edge_weight", "edge_width", "steps", "lr", "batch_size", "crop", "seed", "rehearsal",
                 "start_share"):
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    parts += ["--device", str(args.device), "--output", str(args.output)]
    return " ".join(shlex.quote(p) for p in parts)


def run_train(args: argparse.Namespace) -> int:
    """Run ``kaizen train fcn`` with parsed ``args``; return the exit status."""
    recipe = RECIPES[args.channel]

    def pick(name: str, attr: str | None = None):
        v = getattr(args, attr or name, None)
        return recipe[name] if v is None else v

    try:
        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        seed = pick("seed")
        # Refuse an existing output before spending time on data.
        check_output(args.output, args.overwrite)
        if args.init:
            if args.synthetic:
                raise InputError("--init fine-tunes on your --images/--labels; --synthetic trains from scratch: "
                                 "give one")
            images, labels, regions = read_training_files(args.images, args.labels, args.regions)
            # Only what was given: every other setting is finetune's own default.
            given = {k: v for k, v in (("steps", args.steps), ("learning_rate", args.lr),
                                       ("batch_size", args.batch_size), ("rehearsal", args.rehearsal),
                                       ("start_share", args.start_share))
                     if v is not None}
            gen = finetune(images, labels, model=args.init, regions=regions, device=args.device,
                           output=args.output, overwrite=args.overwrite, seed=seed, **given,
                           description=f"{len(images)} corrected image(s): " + ", ".join(map(str, args.images)),
                           reproduce=_reproduce_command(args))
            for snap in gen:
                print(snap.message, flush=True)
                if snap.done:
                    print(f"wrote {snap.weights_path}", flush=True)
            return 0
        for flag, value in (("--rehearsal", args.rehearsal), ("--start-share", args.start_share)):
            if value is not None:
                raise InputError(f"{flag} applies to fine-tuning: give --init bundled:NAME or a weights file too")
        if args.regions:
            raise InputError("--regions applies to fine-tuning: give --init bundled:NAME or a weights file too")
        if args.synthetic:
            if args.images or args.labels:
                raise InputError("give either --synthetic N or --images/--labels, not both")
            images, labels, desc = synthetic_training_set(
                args.synthetic, channel=args.channel, shape=recipe["shape"], hard=recipe["hard"]
            )
        else:
            if not args.images or not args.labels:
                raise InputError("give --images and --labels (one label file per image), or --synthetic N")
            images, labels, _ = read_training_files(args.images, args.labels)
            desc = {"images": list(args.images), "labels": list(args.labels), "channel": args.channel}
        reproduce = _reproduce_command(args)
        gen = train(
            images, labels, output=args.output, edge_weight=pick("edge_weight"), edge_width=pick("edge_width"),
            steps=pick("steps"), lr=pick("lr"), batch_size=pick("batch_size"), crop=pick("crop"),
            width=recipe["width"], stride=recipe["stride"], seed=seed, device=args.device, channel=args.channel,
            data_description=desc, reproduce=reproduce, overwrite=args.overwrite, report_every=50,
        )
        for snap in gen:
            print(snap.message, flush=True)
            if snap.done:
                print(f"wrote {snap.weights_path}", flush=True)
    except KaizenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
