"""The manifest of real training images: open licences, no reserved or held-back image."""

import csv
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "scripts" / "data" / "nuclei_manifest.csv"
RESERVED = ROOT.parent / "shared" / "reserved-images.txt"


def _rows():
    with open(MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_image_is_openly_licensed_and_traceable():
    rows = _rows()
    assert len(rows) >= 500
    assert {r["license"] for r in rows} <= {"MIT", "CC0-1.0"}
    for r in rows:
        assert len(r["sha256"]) == 64 and int(r["n_nuclei"]) > 0 and r["original_path"] and r["origin"]
    assert len({r["sha256"] for r in rows}) == len(rows), "an image is listed twice"


def test_at_least_five_independent_sources_with_the_size_range_of_the_issue():
    counts = Counter(r["source"] for r in _rows())
    assert len(counts) >= 5
    assert counts["mnfinder"] == 33 and sum(v for k, v in counts.items() if k.startswith("dsb2018-")) >= 500
    assert {r["dtype"] for r in _rows()} >= {"uint8", "uint16"}


def test_no_held_back_image_is_listed():
    rows = _rows()
    # mnfinder's test-data split is never used.
    assert not any("test-data" in r["original_path"] or "test_" in r["name"] for r in rows if r["source"] == "mnfinder")
    if not RESERVED.exists():
        pytest.skip("../shared/reserved-images.txt is not beside this checkout")
    reserved = {ln.strip() for ln in RESERVED.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    assert reserved, "the reserved list is empty"
    listed = {Path(r["original_path"]).name for r in rows}
    assert not reserved & listed
