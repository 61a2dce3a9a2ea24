"""OME-Zarr HCS plates: every field segmented (one dask task each), labels into the plate,
per-well tables, resume, and a bad plate in one line."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from napari_kaizen.cli import main
from napari_kaizen.data import SynthParams, synthesize

WELLS = ("A/1", "B/2")
FIELDS = ("0", "1")


def write_plate(path, version="0.5"):
    """A 2-well x 2-field plate as ome-zarr-py writes one; returns {(well, field): SyntheticField}."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt = {"0.4": FormatV04(), "0.5": FormatV05()}[version]
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, ["A", "B"], ["1", "2"], list(WELLS), fmt=fmt, name="test plate")
    truth = {}
    for k, well in enumerate(WELLS):
        group = root.require_group(well)
        write_well_metadata(group, [{"path": f} for f in FIELDS], fmt=fmt)
        for j, f in enumerate(FIELDS):
            # well B/2 holds denser fields, so the counts differ by well
            params = SynthParams(shape=(192, 192), nucleus_diameter=16.0, density=0.6 if k else 0.3)
            syn = synthesize(params, seed=100 + 10 * k + j)
            write_image(syn.nuclei[None, None], group.require_group(f), fmt=fmt, axes="czyx",
                        storage_options=dict(chunks=(1, 1, 96, 96)))
            truth[(well, f)] = syn
    return truth


@pytest.fixture
def plate(tmp_path):
    path = tmp_path / "plate.zarr"
    return path, write_plate(path)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_plate_is_segmented_into_its_fields_with_tables_per_well(plate, tmp_path, capsys):
    from napari_kaizen import segment
    from napari_kaizen.io.zarr import ome_attrs, read_label_levels

    path, truth = plate
    assert main(["segment", str(path), "--scheduler", "threads", "-q"]) == 0
    out = capsys.readouterr().out
    assert "4 fields in 2 wells" in out and out.count("objects with the classical engine") == 4
    for (well, f), syn in truth.items():
        dest = path / well / f / "labels" / "classical"
        assert ome_attrs(path / well / f / "labels")[0]["labels"] == ["classical"]
        attrs, version = ome_attrs(dest)
        assert version == "0.5" and "image-label" in attrs
        labels = np.asarray(read_label_levels(dest)[0][:])
        # the same labels as segmenting the field's plane directly
        assert labels.max() > 5 and np.array_equal(labels, segment(syn.nuclei, engine="classical"))
    tables = tmp_path / "plate_measurements"
    counts = read_csv(tables / "counts.csv")
    per_field = {(r["well"], r["field"]): int(r["objects"]) for r in counts}
    for k, well in enumerate(("A1", "B2")):
        rows = read_csv(tables / f"{well}_measurements.csv")
        assert {r["well"] for r in rows} == {well} and {r["field"] for r in rows} == set(FIELDS)
        assert "area" in rows[0] and "intensity_mean" in rows[0]
        assert len(rows) == per_field[(well, "all")] == per_field[(well, "0")] + per_field[(well, "1")]
        n_found = sum(int(read_label_levels(path / WELLS[k] / f / "labels/classical")[0][:].max()) for f in FIELDS)
        assert len(rows) == n_found
    assert per_field[("B2", "all")] > per_field[("A1", "all")]  # the denser well counts more
    # a second run refuses to clobber; --skip-existing does no field again
    assert main(["segment", str(path), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", str(path), "--skip-existing", "-q"]) == 0
    out = capsys.readouterr().out
    assert "skipping 4 field(s)" in out and "objects with" not in out


def test_skip_existing_resumes_only_the_missing_fields(plate, tmp_path, capsys):
    from napari_kaizen.io.zarr import read_label_levels
    from napari_kaizen.plates import build_plate_jobs

    path, _ = plate
    batch = build_plate_jobs(path, engine="classical")
    assert len(batch.jobs) == 4 and not any(j.tiled for j in batch.jobs)  # one task per field
    assert main(["segment", str(path), "-q", "--labels-name", "nuclei"]) == 0
    kept = np.asarray(read_label_levels(path / "A/1/0/labels/nuclei")[0][:])
    stamp = (path / "A/1/0/labels/nuclei").stat().st_mtime_ns
    shutil.rmtree(path / "B/2/1/labels/nuclei")  # as if the run had been cut off there
    capsys.readouterr()
    batch = build_plate_jobs(path, engine="classical", label_name="nuclei", skip_existing=True)
    assert [j.src.relative_to(path).as_posix() for j in batch.jobs] == ["B/2/1"] and len(batch.skipped) == 3
    assert main(["segment", str(path), "-q", "--labels-name", "nuclei", "--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert "skipping 3 field(s)" in out and out.count("objects with") == 1 and "B/2/1" in out
    assert (path / "B/2/1/labels/nuclei").is_dir()
    assert (path / "A/1/0/labels/nuclei").stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(read_label_levels(path / "A/1/0/labels/nuclei")[0][:]), kept)
    assert len(read_csv(tmp_path / "plate_measurements" / "counts.csv")) == 4 + 2


def test_an_ngff_04_plate_is_read_and_labelled_in_its_version(tmp_path, capsys):
    from napari_kaizen.io.zarr import ome_attrs

    path = tmp_path / "old.zarr"
    write_plate(path, version="0.4")
    assert (path / ".zattrs").exists()
    assert main(["segment", str(path), "-o", str(tmp_path / "tables"), "-q"]) == 0
    attrs, version = ome_attrs(path / "A/1/0/labels/classical")
    assert version == "0.4" and (path / "A/1/0/labels/classical/.zattrs").exists()
    assert (tmp_path / "tables" / "A1_measurements.csv").exists()


@pytest.mark.parametrize("damage, said", [
    ("plate", "has no 'plate' metadata"),
    ("wells", "lists no 'wells'"),
    ("well", "well A/1 has no 'well' metadata"),
    ("field", "field A/1/0 of well A/1 is not an OME-Zarr image"),
])
def test_a_bad_plate_is_one_line_naming_what_is_wrong(tmp_path, capsys, damage, said):
    import zarr

    from napari_kaizen.errors import InputError
    from napari_kaizen.io.plates import read_plate

    path = tmp_path / "plate.zarr"
    write_plate(path)
    root = zarr.open_group(str(path), mode="r+")
    ome = dict(root.attrs["ome"])
    if damage == "plate":
        ome.pop("plate")
        ome["well"] = {"images": []}  # still a zarr group with NGFF metadata, but no plate
    elif damage == "wells":
        ome["plate"] = {**ome["plate"], "wells": []}
    root.attrs["ome"] = ome
    if damage == "well":
        zarr.open_group(str(path / "A/1"), mode="r+").attrs["ome"] = {"version": "0.5"}
    if damage == "field":
        shutil.rmtree(path / "A/1/0")
        zarr.open_group(str(path / "A/1/0"), mode="w")
    with pytest.raises(InputError) as err:
        read_plate(path)
    line = str(err.value)
    assert said in line and "expected an OME-Zarr HCS plate" in line and "\n" not in line
    if damage != "plate":  # a store without 'plate' metadata is not taken for a plate by the CLI
        assert main(["segment", str(path), "-q"]) == 1
        err_text = capsys.readouterr().err
        assert err_text.count("\n") == 1 and said in err_text


def test_output_names_the_tables_folder_for_a_plate_and_is_required_otherwise(plate, tmp_path, capsys):
    path, _ = plate
    assert main(["segment", str(path), "-o", str(tmp_path / "labels.tif"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names the folder of its per-well CSVs" in err
    assert not list(path.glob("*/*/*/labels"))  # refused before any work
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((8, 8)))
    assert main(["segment", str(image), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--output is required" in err


def test_tiled_fields_of_a_plate_write_their_labels_into_the_plate_too(plate, capsys):
    """A field too large for one task (here forced with --tile) is cut into tiles; its labels
    still go into its own labels/ group, pyramid and all, with the tiles stitched."""
    from napari_kaizen import metrics, segment
    from napari_kaizen.io.zarr import ome_attrs, read_label_levels
    from napari_kaizen.plates import build_plate_jobs

    path, truth = plate
    assert all(j.tiled for j in build_plate_jobs(path, tile=96).jobs)
    assert main(["segment", str(path), "--tile", "96", "-q"]) == 0
    assert capsys.readouterr().out.count("tiles)") == 4
    for (well, f), syn in truth.items():
        dest = path / well / f / "labels" / "classical"
        assert ome_attrs(path / well / f / "labels")[0]["labels"] == ["classical"]
        labels = np.asarray(read_label_levels(dest)[0][:])
        untiled = segment(syn.nuclei, engine="classical")
        assert metrics.average_precision(untiled, labels, [0.5])[0.5] >= 0.9
