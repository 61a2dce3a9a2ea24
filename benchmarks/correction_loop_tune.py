"""Choose fine-tune steps / learning rate for the correction loop on frame 0 only.

    python benchmarks/correction_loop_tune.py ENGINE --datasets D1 D2 --grid STEPS:LR STEPS:LR ...

Never looks at the frames ``correction_loop.py`` scores: frame 0 of each real folder is
split into its left half (the checked region: the true labels of every cell touching
it, ``regions=`` the left half) and its right half (scored: the right-half crop is
segmented before and after, against the true labels cropped the same way). Prints and
writes ``benchmarks/results/correction_loop_tune.json`` (appends).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine")
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--grid", nargs="+", required=True, metavar="STEPS:LR")
    parser.add_argument("--lodo", default=str(ROOT / "runs" / "real_lodo"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "correction_loop_tune.json"))
    args = parser.parse_args(argv)

    import torch
    from correction_loop import finetune_timed, score, segment_all
    from real_nuclei import load_real_nuclei

    from napari_kaizen.engines import get_engine

    torch.set_num_threads(1)
    engine = get_engine(args.engine)
    data = load_real_nuclei(datasets=args.datasets)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    with tempfile.TemporaryDirectory() as tmpdir:
        for d in args.datasets:
            first = [x for x in data if x.dataset == d][0]
            img, lab = first.image, first.labels
            w = img.shape[1]
            left = np.zeros(lab.shape, bool)
            left[:, : w // 2] = True
            touching = np.unique(lab[left])
            train_lab = np.where(np.isin(lab, touching[touching > 0]), lab, 0).astype(np.int32)
            test_img, test_lab = img[:, w // 2:], lab[:, w // 2:]
            base = engine.load_model(str(Path(args.lodo) / f"{args.engine}_{d}.safetensors"), "cpu")
            before = score([test_lab], segment_all(engine, base, [test_img]))
            for k, item in enumerate(args.grid):
                steps, lr = item.split(":")
                weights, timing = finetune_timed(engine, img, train_lab, model=base, regions=left, steps=int(steps),
                                                 learning_rate=float(lr), output=Path(tmpdir) / f"{d}_{k}")
                after = score([test_lab], segment_all(engine, engine.load_model(str(weights), "cpu"), [test_img]))
                row = dict(engine=args.engine, dataset=d, frame=first.name, steps=int(steps), learning_rate=float(lr),
                           before=before, after=after, gain=round(after["map"] - before["map"], 4), **timing)
                results.append(row)
                print(json.dumps(row), flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
