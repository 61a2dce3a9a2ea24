"""Write the bundled sample micrograph and its ground truth (reproducible).

    python scripts/make_samples.py [--overwrite]
"""

from __future__ import annotations

import argparse

from napari_kaizen.data import SynthParams, synthesize
from napari_kaizen.data._sample_data import NUCLEI_SAMPLE, NUCLEI_SAMPLE_LABELS
from napari_kaizen.io import write_labels

#: The sample: a moderately dense, clustered field with touching, dim and mitotic nuclei.
SAMPLE_PARAMS = SynthParams(shape=(256, 256), density=0.35, clustering=0.6, touching=0.6, dim_fraction=0.12)
SAMPLE_SEED = 20261123


def main() -> None:
    import tifffile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    field = synthesize(SAMPLE_PARAMS, seed=SAMPLE_SEED)
    if NUCLEI_SAMPLE.exists() and not args.overwrite:
        raise SystemExit(f"{NUCLEI_SAMPLE} exists; pass --overwrite to regenerate it")
    tifffile.imwrite(NUCLEI_SAMPLE, field.nuclei, compression="zlib", photometric="minisblack")
    write_labels(NUCLEI_SAMPLE_LABELS, field.nucleus_labels, overwrite=args.overwrite)
    print(f"wrote {NUCLEI_SAMPLE} ({field.n_nuclei} nuclei) and {NUCLEI_SAMPLE_LABELS}")


if __name__ == "__main__":
    main()
