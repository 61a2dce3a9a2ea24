"""Draw docs/img/synthetic.png: paired channels and labels of a few synthetic fields.

    python scripts/figure_synthetic.py
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from napari_kaizen.data import SynthParams, random_params, synthesize  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "synthetic.png"


def main() -> None:
    rng = np.random.default_rng(7)
    fields = [
        synthesize(SynthParams(shape=(192, 192), density=0.3), seed=1),
        synthesize(SynthParams(shape=(192, 192), density=0.5, touching=1.0, clustering=0.9, label_free="brightfield"),
                   seed=2),
        synthesize(replace(random_params(rng, shape=(192, 192), hard=0.8), label_free="dic"), seed=3),
    ]
    cols = ["nuclei (DAPI-like)", "membrane (CellMask-like)", "label-free", "nucleus labels", "cell labels"]
    fig, axes = plt.subplots(len(fields), len(cols), figsize=(3 * len(cols), 3 * len(fields)))
    for r, f in enumerate(fields):
        for c, img in enumerate([f.nuclei, f.membrane, f.label_free]):
            axes[r, c].imshow(img, cmap="gray", vmax=np.percentile(img, 99.7))
        edge = find_boundaries(f.nucleus_labels)
        overlay = np.zeros(edge.shape + (4,))
        overlay[edge] = (1, 0.2, 0.2, 1)
        axes[r, 3].imshow(f.nuclei, cmap="gray", vmax=np.percentile(f.nuclei, 99.7))
        axes[r, 3].imshow(overlay)
        shuffled = np.random.default_rng(0).permutation(f.cell_labels.max() + 1)
        shuffled[0] = 0
        axes[r, 4].imshow(np.ma.masked_equal(shuffled[f.cell_labels], 0), cmap="tab20", interpolation="nearest")
        axes[r, 4].imshow(overlay)
        p = f.params
        axes[r, 0].set_ylabel(f"density {p.density:.2f}\ntouching {p.touching:.2f}\n{p.dtype}, {p.label_free}",
                              fontsize=9)
    for c, name in enumerate(cols):
        axes[0, c].set_title(name, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=70)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
