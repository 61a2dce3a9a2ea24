"""The bundled nucleus models on real micrographs (two crops shipped in tests/data).

The crops come from the ``validation-data`` split of the MIT-licensed ``mnfinder==1.2.3``
wheel (``tests/data/real_nuclei/NOTICE.txt``, provenance and crop boxes in
``provenance.json``): a 480² uint16 U2OS field and a 512² uint8 field of large nuclei.
The bundled models saw these images in training, so this is a regression check on
real data (outlines as people draw them, real noise and dtypes), not a held-out
figure; those are in ``benchmarks/real_nuclei.py``. Every engine runs with the
defaults a user gets (object size estimated from the image).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).parent / "data" / "real_nuclei"

#: Per engine: lowest acceptable (AP50, mAP) averaged over the two crops. When set, the
#: bundled models scored classical 0.860 / 0.661, kaizen 0.911 / 0.749, fcn 0.963 /
#: 0.798; the floors leave a margin for numerical differences between machines and
#: keep the learned engines' mAP above what the classical engine scores here. The FCN
#: trained on seven sources (0.2) scores 0.931 / 0.712 on these crops of the one lab
#: whose outlines the 0.1 model alone learned (its outlines follow the mean convention
#: of the seven sources' annotators, tighter than this lab's). Averaging the image with
#: its left-right mirror only (the default since the speed work: half the network time
#: of four mirror images, mean mAP over the seven held-out sources 0.5165 against
#: 0.5174; docs/speed.md) it scored 0.917 / 0.699 here (0.931 / 0.721 with four). Trained
#: four times longer (4000 steps, 2026-12-06; mean held-out mAP over the seven sources
#: 0.517 -> 0.526) it scores 0.903 / 0.711: a higher mAP, a lower AP50, so the AP50 floor
#: went from 0.90 to 0.88 to keep a margin between machines, still above the classical
#: engine's 0.860; the mAP floor stays 0.69, above classical's 0.661. With the FCN's and
#: Kaizen's constants chosen on real and synthetic training images (2026-12-06, second
#: round) the FCN scores 0.933 / 0.742 and Kaizen 0.929 / 0.769; with Kaizen's outline
#: level 0.35 (third round: these crops' annotators outline wider) 0.929 / 0.752. See
#: docs/real_nuclei.md.
FLOORS = {"classical": (0.78, 0.58), "kaizen": (0.85, 0.67), "fcn": (0.88, 0.69)}


def _crops():
    prov = json.loads((DATA / "provenance.json").read_text())
    return [(tifffile.imread(DATA / c["image"]), tifffile.imread(DATA / c["labels"]).astype(np.int32))
            for c in prov["crops"]]


def test_crops_carry_their_notice_and_provenance():
    notice = (DATA / "NOTICE.txt").read_text()
    assert "MIT License" in notice and "mnfinder" in notice
    prov = json.loads((DATA / "provenance.json").read_text())
    assert {c["dtype"] for c in prov["crops"]} == {"uint8", "uint16"}
    for image, labels in _crops():
        assert image.shape == labels.shape and labels.max() >= 10


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_bundled_engine_on_real_crops(name):
    from napari_kaizen import metrics, run_to_end
    from napari_kaizen.engines import get_engine

    engine = get_engine(name)
    crops = _crops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = [run_to_end(engine.segment(image, engine.params())).labels for image, _ in crops]
    ev = metrics.evaluate([lab for _, lab in crops], preds)
    ap50_floor, map_floor = FLOORS[name]
    assert ev.ap50 >= ap50_floor, f"{name}: AP50 {ev.ap50:.3f} < {ap50_floor}\n{ev.table()}"
    assert ev.map >= map_floor, f"{name}: mAP {ev.map:.3f} < {map_floor}\n{ev.table()}"


def _benchmark():
    """``benchmarks/real_nuclei.py`` as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kaizen_real_nuclei_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "real_nuclei.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@dataclasses.dataclass(frozen=True)
class Item:
    """What the benchmark's transformations read of a source image."""

    image: np.ndarray
    labels: np.ndarray
    key: str = "tests/item"


def test_benchmark_enlarges_a_field_as_a_higher_magnification_would():
    """``benchmarks/real_nuclei.py --zoom``: image and labels enlarged together, dtype kept."""
    bench = _benchmark()
    image = tifffile.imread(DATA / "u2os_val1_crop_image.tif")
    labels = tifffile.imread(DATA / "u2os_val1_crop_labels.tif")
    big = bench.enlarged(Item(image, labels), 2)
    assert big.image.dtype == image.dtype and big.image.shape == (2 * image.shape[0], 2 * image.shape[1])
    assert big.labels.shape == big.image.shape and set(np.unique(big.labels)) == set(np.unique(labels))
    assert abs(big.image.mean() / image.mean() - 1) < 0.02
    assert bench.enlarged(Item(image, labels), 1).image is image


def _sparse_fields(k: int, side: int = 1024):
    """``k`` nuclei of each shipped real field on a ``side`` square field of its own background (``--sparse``)."""
    bench = _benchmark()
    dsb = Path(__file__).parent / "data" / "dsb2018"
    pairs = [(DATA / "u2os_val1_crop_image.tif", DATA / "u2os_val1_crop_labels.tif"),
             (dsb / "dim_small_nuclei_image.tif", dsb / "dim_small_nuclei_labels.tif"),
             (dsb / "sparse_large_nuclei_image.tif", dsb / "sparse_large_nuclei_labels.tif")]
    return [bench.sparse(Item(tifffile.imread(im), tifffile.imread(lab).astype(np.int32), key=im.name), k, side)
            for im, lab in pairs]


def test_benchmark_sets_a_few_nuclei_on_a_wide_empty_field():
    """``benchmarks/real_nuclei.py --sparse``: k separate nuclei, dtype kept, the rest background noise."""
    for field in _sparse_fields(3):
        assert field.image.shape == field.labels.shape == (1024, 1024)
        assert field.labels.max() == 3 and field.image.dtype in (np.uint8, np.uint16)
        inside, outside = field.image[field.labels > 0], field.image[field.labels == 0]
        assert np.median(inside) > np.percentile(outside, 99.9)


@pytest.mark.parametrize("k", [1, 3])
def test_size_estimate_of_a_few_real_nuclei_on_a_wide_empty_field(k):
    # Thinly plated cells on a camera's whole frame: the noise outnumbers the nuclei
    # thousands to one. The estimate read its specks (a fifth to a third of the nuclei's
    # size) or found too few objects in the central crop and refused.
    from napari_kaizen.engines._common.normalize import prepare_image
    from napari_kaizen.engines._common.scale import estimate_diameter, median_diameter

    for field in _sparse_fields(k):
        est, true = estimate_diameter(prepare_image(field.image)), median_diameter(field.labels)
        assert abs(est / true - 1) < 0.25, (k, est, true)


@pytest.mark.parametrize("name", ["classical", "kaizen", "fcn"])
def test_engines_find_the_few_nuclei_of_a_wide_empty_field(name):
    # Before, the learned engines found thousands of noise specks on such fields (the
    # size read from the noise, the 99.8th percentile of the noise taken as the nuclei's
    # brightness, the field of 7 px nuclei called noise without structure) and the
    # classical engine refused them or split the noise at Otsu's threshold.
    from napari_kaizen import metrics, run_to_end
    from napari_kaizen.engines import get_engine

    engine = get_engine(name)
    fields = _sparse_fields(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = [run_to_end(engine.segment(f.image, engine.params())).labels for f in fields]
    assert all(p.max() <= 6 for p in preds), [int(p.max()) for p in preds]
    ev = metrics.evaluate([f.labels for f in fields], preds)
    assert ev.ap50 >= 0.75, ev.table()


@pytest.mark.parametrize("name", ["classical", "fcn"])
def test_a_huge_sparse_field_is_segmented_tile_by_tile_as_a_whole(name):
    # A slide scan or a mosaic of thinly plated cells is segmented tile by tile. Before,
    # its tiles took the whole image's percentiles (noise) as the nuclei's brightness and
    # the classical engine Otsu's threshold of the noise: 38 objects and AP50 0 for 8
    # nuclei (classical, dim small nuclei), AP50 0.31 (FCN, U2OS); on 5000 x 5000 fields
    # the FCN found 342,307 objects for 37 nuclei. The whole image is now judged sparse
    # from a grid of crops, its size is the median over crops that hold nuclei, and
    # every tile follows the untiled sparse-field rules.
    from napari_kaizen import metrics, run_to_end
    from napari_kaizen.engines._common.scale import median_diameter
    from napari_kaizen.tiled import load_engine_model, plan_tiles, resolve_engine, segment_tiled

    engine = resolve_engine(name)
    model = load_engine_model(engine, None, "cpu")
    fields = _sparse_fields(8, 2048)
    if name == "fcn":
        fields = [fields[0], fields[2]]  # the 7 px nuclei are enlarged 4x for the network (50 s)
    preds = []
    for f in fields:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_tiles(engine, f.image, model=model, tile=512)
            assert plan.stats.sparse and plan.stats.sparse_objects.size and len(plan.tiles) == 16
            assert abs(plan.diameter / median_diameter(f.labels) - 1) < 0.25, (f.key, plan.diameter)
            run = segment_tiled(engine, f.image, model=model, tile=512, plan=plan)
            preds.append(np.asarray(run_to_end(run).labels[:]))
    assert all(p.max() <= 11 for p in preds), [int(p.max()) for p in preds]
    ev = metrics.evaluate([f.labels for f in fields], preds)
    assert ev.ap50 >= 0.8, ev.table()
