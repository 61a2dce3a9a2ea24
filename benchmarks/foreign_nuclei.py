"""The nucleus engines on images that ``napari_kaizen.data`` did not make.

    python benchmarks/foreign_nuclei.py [--threads 2]

Every model here was trained on the project's own generator, so its held-out figures
say little about images made differently. This script draws nuclei another way:
flat-topped ellipses (no chromatin texture, no nucleoli), a log-normal brightness per
nucleus, a 1.5 px Gaussian blur, a radial vignetting of 40 %, Poisson photon noise plus
Gaussian read noise, clipped to 12 bits and stored as uint16. Three sets:

* ``sparse``: 3 × 512², up to 120 nuclei of radius 7-13 px, overlap ≤ 5 % of a nucleus;
* ``touching``: 3 × 512², up to 220 nuclei, overlap ≤ 30 % (nuclei pressed together,
  the later one drawn on top);
* ``large``: 3 × 512², up to 35 nuclei twice the size (radius 14-26 px).

Every engine runs with its defaults and ``diameter='auto'``. Nothing was tuned on
these images: they are a check, not a target. Writes
``benchmarks/results/foreign_nuclei.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

SETS = {
    "sparse": dict(n=120, radius=(7, 13), max_overlap=0.05),
    "touching": dict(n=220, radius=(7, 13), max_overlap=0.30),
    "large": dict(n=35, radius=(14, 26), max_overlap=0.05),
}


def foreign_field(seed: int, *, n: int, radius: tuple[float, float], max_overlap: float,
                  shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 nucleus image and its int32 instance labels (see the module docstring)."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n * 10):
        if k >= n:
            break
        r1, r2 = rng.uniform(*radius, 2)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rr, cc = ellipse(cy, cx, r1, r2, shape=shape, rotation=rng.uniform(0, np.pi))
        if rr.size < 20 or (labels[rr, cc] > 0).mean() > max_overlap:
            continue
        k += 1
        labels[rr, cc] = k  # drawn on top of what it overlaps
    # Overlapped nuclei may be cut in two; keep each id's largest piece.
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        part, count = ndi.label(labels[sl] == i)
        if count > 1:
            keep = 1 + int(np.argmax(np.bincount(part.ravel())[1:]))
            labels[sl][(part > 0) & (part != keep)] = 0
    brightness = rng.lognormal(0.0, 0.4, k + 1)
    brightness[0] = 0.0
    signal = ndi.gaussian_filter(brightness[labels].astype(np.float32), 1.5)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    vignetting = 1 - 0.4 * (((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / (shape[0] / 2) ** 2)
    image = rng.poisson((100 + 800 * signal) * vignetting).astype(np.float32) + rng.normal(0, 5, shape)
    return np.clip(image, 0, 4095).astype(np.uint16), labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engines", nargs="+", default=["classical", "kaizen", "fcn"])
    parser.add_argument("--out", default=str(RESULTS / "foreign_nuclei.json"))
    args = parser.parse_args(argv)

    import torch

    from napari_kaizen import metrics, run_to_end
    from napari_kaizen.engines import get_engine

    torch.set_num_threads(args.threads)
    rows = []
    for set_name, kw in SETS.items():
        fields = [foreign_field(70_000 + 10 * list(SETS).index(set_name) + s, **kw) for s in range(3)]
        for name in args.engines:
            engine = get_engine(name)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # diameter fall-backs are reported by the CLI, not here
                preds = [run_to_end(engine.segment(img, engine.params(diameter="auto"))).labels for img, _ in fields]
            seconds = time.perf_counter() - start
            ev = metrics.evaluate([lab for _, lab in fields], preds)
            row = dict(set=set_name, engine=name, ap50=ev.ap50, ap75=ev.ap75, map=ev.map,
                       true=int(sum(lab.max() for _, lab in fields)),
                       found=int(sum(int(p.max()) for p in preds)), seconds=round(seconds, 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"sets": SETS, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    print("\n| set | engine | AP50 | AP75 | mAP | objects (true / found) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['set']} | {r['engine']} | {r['ap50']:.3f} | {r['ap75']:.3f} | {r['map']:.3f} "
              f"| {r['true']} / {r['found']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
