"""The FCN's post-processing constants calibrated on more training images, per fold.

    python benchmarks/fcn_calibration.py --loso runs/real_loso --out-dir runs/real_loso_cal36 --calibrate 36 --wider
    python benchmarks/real_nuclei.py --loso runs/real_loso_cal36 --engines fcn --out X.json --plot X.png

Each leave-one-source-out fold model ``<loso>/fcn_<S>`` is copied to ``--out-dir`` and
its seed contrast, outline threshold, smallest object and dim-object filter are chosen
again (``napari_kaizen.engines.fcn.training.recalibrate``) on the first ``--calibrate``
of its own training images, taken round-robin over the sources it was trained on,
exactly as ``scripts/train_fcn.py`` orders them (the recipe then used 12 real images: two per
source).
The held-out source is never looked at; the tensors are not touched. ``--wider``
extends the grid past the values the recipe's calibration chose at its edge (seed
contrast 0.3, outline threshold 0.9). Score the copies with ``benchmarks/real_nuclei.py``.
Measured 2026-12-06 and not adopted (real images only; the recipe now also calibrates on four
synthetic fields): see ``docs/fcn.md`` ("Where the constants are calibrated").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

#: The recipe's grid extended one or two steps past the edges its folds chose.
WIDER_GRID = {
    "h": (0.05, 0.1, 0.2, 0.3, 0.4),
    "foreground": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95),
    "min_size": (0.1, 0.25),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loso", required=True, help="folder of the fold models fcn_<SOURCE>.safetensors")
    parser.add_argument("--out-dir", required=True, help="where the recalibrated copies go (must not be --loso)")
    parser.add_argument("--calibrate", type=int, default=36, help="training images calibrated on (recipe: 12)")
    parser.add_argument("--wider", action="store_true", help="search WIDER_GRID instead of the recipe's grid")
    parser.add_argument("--sources", nargs="+", default=None, help="default: every source")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from nuclei_sources import load_sources, round_robin, source_names
    from train_fcn import NUCLEI_REAL

    from napari_kaizen.engines.fcn.training import recalibrate

    loso, out = Path(args.loso), Path(args.out_dir)
    if loso.resolve() == out.resolve():
        parser.error("--out-dir must differ from --loso: the fold models' own calibration is kept")
    torch.set_num_threads(max(1, args.threads))
    out.mkdir(parents=True, exist_ok=True)
    chosen = {}
    for s in args.sources or source_names():
        for ext in (".safetensors", ".json"):
            shutil.copyfile(loso / f"fcn_{s}{ext}", out / f"fcn_{s}{ext}")
        real = round_robin(load_sources(exclude=[s]))[: args.calibrate]
        start = time.perf_counter()
        th = recalibrate(out / f"fcn_{s}", [x.image for x in real], [x.labels for x in real],
                         object_diameter=NUCLEI_REAL["object_diameter"], calibrate=args.calibrate,
                         grid=WIDER_GRID if args.wider else None)
        chosen[s] = {k: th[k] for k in ("h", "foreground", "min_size", "min_contrast") if k in th}
        chosen[s]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"without {s}: {chosen[s]}", flush=True)
    (out / "calibration.json").write_text(json.dumps({"calibrate": args.calibrate, "wider": args.wider,
                                                      "chosen": chosen}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
