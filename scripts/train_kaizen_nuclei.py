#!/usr/bin/env python
"""Reproduce the bundled Kaizen nucleus model ``weights/kaizen_nuclei``.

Trains the Kaizen VQ-VAE on synthetic fluorescent nuclei (fields 0..N-1 of
:func:`napari_kaizen.engines.kaizen.dataset.synthetic_training_set`) with fixed
seeds, on one CPU thread by default (it runs beside other work on a 2-core machine;
pass ``--device cuda`` on a GPU). Same torch version and device, same weights.

    python scripts/train_kaizen_nuclei.py --output src/napari_kaizen/weights/kaizen_nuclei --overwrite
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

#: The settings of the bundled model.
FIELDS = 160
STEPS = 12000
LEARNING_RATE = 6e-4
SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="src/napari_kaizen/weights/kaizen_nuclei")
    parser.add_argument("--fields", type=int, default=FIELDS, help="synthetic training fields")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also write <output>_stepN weights")
    args = parser.parse_args(argv)

    from napari_kaizen.engines.kaizen.train import train

    command = "python scripts/train_kaizen_nuclei.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    start = time.perf_counter()
    for snap in train(
        output=args.output, synthetic=args.fields, steps=args.steps, learning_rate=args.lr, seed=args.seed,
        device=args.device, threads=args.threads, overwrite=args.overwrite, reproduce=command.strip(),
        report_every=100, validate_every=1000, checkpoint_every=args.checkpoint_every,
    ):
        val = "  " + "  ".join(f"{k} {v:.4g}" for k, v in snap.validation.items()) if snap.validation else ""
        print(f"{time.perf_counter() - start:8.1f}s [{snap.progress:6.1%}] {snap.message}{val}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
