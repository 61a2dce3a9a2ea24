"""ISL pretext task: how well do the bundled U-Nets predict fluorescence from label-free images?

PCC (Pearson correlation, the paper's metric) between the predicted and the measured
fluorescent channel of held-out synthetic fields (seeds 10 500 .. 10 500 + N - 1,
random_params with hard=0.5: all three label-free modalities, every microscope setting),
for the nucleus (DAPI-like) and the membrane (CellMask-like) models. Also reported: PCC
against the noise-free channel (what the camera noise leaves unpredictable) and the
ceiling ``PCC(measured, noise-free)``.

Writes ``benchmarks/results/isl_pcc.json``.

Usage::

    python benchmarks/isl_pcc.py [--fields 16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    import torch

    from napari_kaizen import run_to_end
    from napari_kaizen.data import random_params, synthesize
    from napari_kaizen.engines._common import prepare_image
    from napari_kaizen.engines.unet import load_model, segment
    from napari_kaizen.metrics import pcc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "isl_pcc.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(10_500, 10_500 + args.fields))
    models = {t: load_model(f"bundled:unet_isl_{t}", device="cpu") for t in ("nuclei", "membrane")}
    rows = []
    for s in seeds:
        p = random_params(np.random.default_rng(s), shape=(256, 256), hard=0.5, real_world=False)
        f = synthesize(p, seed=s)
        row = {"seed": s, "label_free": p.label_free, "label_free_contrast": round(p.label_free_contrast, 3),
               "photons": round(p.photons, 1)}
        for target, model in models.items():
            measured = prepare_image(f.nuclei if target == "nuclei" else f.membrane)
            clean = f.nuclei_clean if target == "nuclei" else f.membrane_clean
            pred = run_to_end(segment(f.label_free, model=model)).maps["fluorescence"]
            row[target] = {"pcc": pcc(pred, measured), "pcc_noise_free": pcc(pred, clean),
                           "ceiling": pcc(measured, clean)}
        rows.append(row)
        print(s, row["label_free"], "  ".join(f"{t} {row[t]['pcc']:.3f}" for t in models), flush=True)
    summary = {}
    for target in models:
        v = np.array([r[target]["pcc"] for r in rows])
        c = np.array([r[target]["pcc_noise_free"] for r in rows])
        summary[target] = {
            "pcc_mean": float(v.mean()), "pcc_sd": float(v.std(ddof=1)), "pcc_min": float(v.min()),
            "pcc_noise_free_mean": float(c.mean()),
            "ceiling_mean": float(np.mean([r[target]["ceiling"] for r in rows])),
            "by_modality": {m: float(np.mean([r[target]["pcc"] for r in rows if r["label_free"] == m]))
                            for m in ("phase", "brightfield", "dic")},
        }
    result = {"fields": f"{args.fields} held-out synthetic fields 256x256, seeds {seeds[0]}..{seeds[-1]}, "
              "random_params(hard=0.5)", "summary": summary, "per_field": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
