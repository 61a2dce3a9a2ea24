#!/usr/bin/env python
"""Reproduce the bundled Kaizen nucleus model ``weights/kaizen_nuclei``, in two stages.

1. ``pretrain``: the Kaizen VQ-VAE from random weights on synthetic fluorescent nuclei
   (fields 0..N-1 of :func:`napari_kaizen.engines.kaizen.dataset.synthetic_training_set`,
   nominal diameter 20 px), with the real-world augmentation (zoom, gamma, contrast,
   blur, shot noise, quantisation) and hard negatives on unlabelled bright specks.
2. ``real``: fine-tuned from stage 1 on the real annotated nuclei of
   ``scripts/real_nuclei.py`` (every dataset folder but ``--exclude``; each image
   brought to the model's object diameter) mixed with fresh synthetic fields, then the
   per-cell mask level is calibrated on the real cells (``mask_fraction``). With
   ``--sources`` the real nuclei are those of every source of ``scripts/nuclei_sources.py``
   (mnfinder and the DSB2018 acquisition groups; ``--exclude`` then names sources).

Fixed seeds; one CPU thread by default (it runs beside other work on a 2-core machine;
``--device cuda`` on a GPU). Same torch version and device, same weights::

    python scripts/train_kaizen_nuclei.py pretrain --output runs/kaizen_pretrain
    python scripts/train_kaizen_nuclei.py real --init runs/kaizen_pretrain \\
        --output src/napari_kaizen/weights/kaizen_nuclei --overwrite
    # leave-one-dataset-out models for benchmarks/real_nuclei.py:
    python scripts/train_kaizen_nuclei.py real --init runs/kaizen_pretrain --exclude 2022-10-14_U2OS \\
        --output runs/real_lodo/kaizen_2022-10-14_U2OS
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

#: Stage settings of the bundled model.
PRETRAIN = dict(fields=160, steps=10000, lr=6e-4, nucleus_diameter=20.0, first_seed=0)
REAL = dict(fields=80, steps=3000, lr=2e-4, real_share=0.6, first_seed=20_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("pretrain", "real"))
    parser.add_argument("--output", required=True)
    parser.add_argument("--init", default=None, help="stage 'real': the stage-1 weights")
    parser.add_argument("--exclude", action="append", default=[], metavar="DATASET",
                        help="leave this real dataset folder out (repeatable)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--sources", action="store_true",
                        help="stage 'real': the real nuclei of every source of scripts/nuclei_sources.py "
                             "(mnfinder and the DSB2018 acquisition groups; --exclude names sources)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also write <output>_stepN weights")
    args = parser.parse_args(argv)

    from napari_kaizen.engines._common.augment import REAL_WORLD
    from napari_kaizen.engines.kaizen.training import train

    command = "python scripts/train_kaizen_nuclei.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    common = dict(output=args.output, seed=args.seed, device=args.device, threads=args.threads,
                  overwrite=args.overwrite, reproduce=command.strip(), report_every=100, validate_every=1000,
                  checkpoint_every=args.checkpoint_every, augment=REAL_WORLD,
                  sampler_options={"bright_fraction": 0.25})
    if args.stage == "pretrain":
        s = PRETRAIN
        gen = train(synthetic=s["fields"], steps=args.steps or s["steps"], learning_rate=s["lr"],
                    synthetic_options={"nucleus_diameter": s["nucleus_diameter"], "first_seed": s["first_seed"]},
                    **common)
    else:
        if not args.init:
            parser.error("stage 'real' needs --init (the stage-1 weights)")
        if args.sources:
            from nuclei_sources import load_sources, provenance_summary

            data = load_sources(exclude=args.exclude)
        else:
            from real_nuclei import load_real_nuclei, provenance_summary

            data = [r for r in load_real_nuclei() if r.dataset not in set(args.exclude)]
        s = REAL
        gen = train([r.image for r in data], [r.labels for r in data], init=args.init, synthetic=s["fields"],
                    steps=args.steps or s["steps"], learning_rate=s["lr"], real_share=s["real_share"],
                    synthetic_options={"nucleus_diameter": PRETRAIN["nucleus_diameter"], "first_seed": s["first_seed"]},
                    data_description=provenance_summary(data, excluded=args.exclude), **common)
    start = time.perf_counter()
    for snap in gen:
        val = "  " + "  ".join(f"{k} {v:.4g}" for k, v in snap.validation.items()) if snap.validation else ""
        print(f"{time.perf_counter() - start:8.1f}s [{snap.progress:6.1%}] {snap.message}{val}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
