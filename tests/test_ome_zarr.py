"""OME-Zarr through ome-zarr-py: NGFF 0.5 and 0.4 in, labels beside the image out."""

from __future__ import annotations

import numpy as np
import pytest

from napari_kaizen import segment
from napari_kaizen.cli import main
from napari_kaizen.data import SynthParams, synthesize
from napari_kaizen.errors import InputError, OverwriteError
from napari_kaizen.io.zarr import (
    image_of_labels_group,
    ome_attrs,
    open_lazy,
    open_pyramid,
    read_image_or_ome_zarr,
    read_label_levels,
    write_labels_or_ome_zarr,
    write_ome_zarr_labels,
)


@pytest.fixture(scope="module")
def field():
    return synthesize(SynthParams(shape=(320, 288), nucleus_diameter=18.0), seed=3)


def write_ngff_image(path, image, version):
    """An OME-Zarr image as another program writes it: ome-zarr-py's write_image, 5 levels, axes (c, y, x)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = {"0.4": FormatV04(), "0.5": FormatV05()}[version]
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(image[None], group, fmt=fmt, axes="cyx", storage_options=dict(chunks=(1, 128, 128)))
    return path


@pytest.mark.parametrize("version, metadata_file", [("0.5", "zarr.json"), ("0.4", ".zattrs")])
def test_both_ngff_versions_read_lazily(tmp_path, field, version, metadata_file):
    store = write_ngff_image(tmp_path / "img.zarr", field.nuclei, version)
    assert (store / metadata_file).exists()  # really the version asked for
    attrs, found = ome_attrs(store)
    assert found == version and attrs["multiscales"]
    lazy = open_lazy(store)
    assert not isinstance(lazy, np.ndarray) and tuple(lazy.shape) == (1, *field.nuclei.shape)
    assert np.array_equal(np.asarray(lazy[0, 10:20, 30:50]), field.nuclei[10:20, 30:50])
    levels = open_pyramid(store)
    assert type(levels[0]).__name__ == "Array" and levels[0].shape[-2:] == field.nuclei.shape  # dask, not numpy
    assert np.array_equal(read_image_or_ome_zarr(store), field.nuclei)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_labels_go_into_the_images_labels_group(tmp_path, field, version):
    store = write_ngff_image(tmp_path / "img.zarr", field.nuclei, version)
    dest = store / "labels" / "nuclei"
    assert image_of_labels_group(dest) == store and image_of_labels_group(tmp_path / "labels" / "x") is None
    labels = field.nucleus_labels.astype(np.int32)
    write_labels_or_ome_zarr(dest, labels)
    # the labels group lists it; the label image says what it is, in the image's own version
    group_attrs, _ = ome_attrs(store / "labels")
    assert group_attrs["labels"] == ["nuclei"]
    attrs, found = ome_attrs(dest)
    assert found == version and attrs["image-label"]["source"]["image"] == "../../"
    assert attrs["multiscales"][0]["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert np.array_equal(np.asarray(read_label_levels(dest)[0][:]), labels)
    # no temporary folder is left beside it, and a second label image is listed too
    assert sorted(p.name for p in (store / "labels").iterdir() if not p.name.startswith((".z", "zarr"))) == ["nuclei"]
    write_labels_or_ome_zarr(store / "labels" / "cells", field.cell_labels.astype(np.int32))
    assert ome_attrs(store / "labels")[0]["labels"] == ["nuclei", "cells"]
    # ome-zarr-py's own reader finds image, labels group and label image (what napari-ome-zarr opens)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(store)))())
    found_labels = [n for n in nodes if n.load(Label) is not None]
    assert len(found_labels) == 2 and found_labels[0].data[0].shape == labels.shape
    with pytest.raises(OverwriteError, match="already exists"):
        write_labels_or_ome_zarr(dest, labels)
    write_labels_or_ome_zarr(dest, labels[::-1].copy(), overwrite=True)
    assert np.array_equal(np.asarray(read_label_levels(dest)[0][:]), labels[::-1])
    assert ome_attrs(store / "labels")[0]["labels"] == ["nuclei", "cells"]  # replaced, not listed twice


def test_a_crash_leaves_no_label_image_behind(tmp_path, field):
    store = write_ngff_image(tmp_path / "img.zarr", field.nuclei, "0.5")

    class Boom:
        shape = field.nuclei.shape

        def __getitem__(self, key):
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_ome_zarr_labels(store / "labels" / "nuclei", Boom())
    assert not (store / "labels" / "nuclei").exists()
    assert not [p for p in (store / "labels").iterdir() if p.name.startswith(".kaizen")]
    assert "nuclei" not in ome_attrs(store / "labels")[0].get("labels", [])


def test_cli_writes_labels_beside_an_ome_zarr_input(tmp_path, field, capsys):
    store = write_ngff_image(tmp_path / "img.zarr", field.nuclei, "0.5")
    dest = store / "labels" / "nuclei"
    assert main(["segment", str(store), "-o", str(dest), "-q"]) == 0
    assert "img.zarr" in capsys.readouterr().out
    labels = np.asarray(read_label_levels(dest)[0][:])
    expected = segment(field.nuclei, engine="classical")
    from napari_kaizen import metrics

    assert labels.max() > 20 and metrics.average_precision(np.asarray(expected), labels, [0.5])[0.5] >= 0.95
    assert main(["segment", str(store), "-o", str(dest), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", str(store), "-o", str(dest), "--skip-existing", "-q"]) == 0


def test_writing_a_version_that_does_not_exist_is_one_line():
    from napari_kaizen.io.zarr import ngff_format

    with pytest.raises(InputError, match="cannot be written: choose one of 0.4, 0.5"):
        ngff_format("0.6")


def test_a_group_without_metadata_says_what_is_accepted(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w")
    group.create_array("a", shape=(8, 8), dtype="uint8")
    group.create_array("b", shape=(8, 8), dtype="uint8")
    with pytest.raises(InputError) as err:
        open_lazy(tmp_path / "odd.zarr")
    assert "expected an OME-Zarr image (NGFF 'multiscales', 0.4 or 0.5)" in str(err.value)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.parametrize("axes", ["cyx", "tczyx"])
def test_a_colour_slide_in_ome_zarr_is_read_as_a_colour_image(tmp_path, capsys, axes):
    # bioformats2raw keeps an RGB slide's colours on the NGFF channel axis: (t, c, z, y,
    # x) = (1, 3, 1, Y, X), uint8. It is read as a colour TIFF is: a stained section's
    # luminance, its dark nuclei turned round (before: refused as a stack of three
    # planes); --channel picks a colour, and --plane, which has no stack to pick from,
    # is refused in one line that names --channel.
    from pathlib import Path

    import tifffile
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    from napari_kaizen import metrics

    data = Path(__file__).parent / "data" / "dsb2018"
    section = tifffile.imread(data / "stained_section_image.tif")
    truth = tifffile.imread(data / "stained_section_labels.tif").astype(np.int32)
    stored = np.moveaxis(section, -1, 0)
    stored = stored[None, :, None] if axes == "tczyx" else stored
    fmt = FormatV05()
    group = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w", zarr_format=fmt.zarr_format)
    write_image(stored, group, fmt=fmt, axes=axes, storage_options=dict(chunks=(1,) * (len(axes) - 2) + (128, 128)))
    assert open_lazy(tmp_path / "slide.zarr").shape == section.shape
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "slide.zarr")), section)
    dest = tmp_path / "slide.zarr" / "labels" / "nuclei"
    common = ["segment", str(tmp_path / "slide.zarr"), "--engine", "classical", "-o", str(dest)]
    assert main(common) == 0
    said = capsys.readouterr()
    assert "colour picture of a bright field" in said.out + said.err
    labels = np.asarray(read_label_levels(dest)[0][:])
    assert metrics.average_precision(truth, labels, (0.5,))[0.5] >= 0.25  # measured 0.35
    assert main([*common, "--channel", "1", "--overwrite"]) == 0
    labels = np.asarray(read_label_levels(dest)[0][:])
    assert metrics.average_precision(truth, labels, (0.5,))[0.5] >= 0.25  # measured 0.35 (46 objects)
    capsys.readouterr()
    assert main([*common, "--plane", "1", "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert "is a single 2-D colour image, not a stack" in err and "--channel i" in err and "\n" not in err


def test_an_ome_zarr_stacks_refusals_name_its_ngff_axes(tmp_path, field, capsys):
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    stored = np.zeros((1, 2, 3, *field.nuclei.shape), np.uint16)
    stored[0, 1, 2] = field.nuclei
    fmt = FormatV05()
    group = zarr.open_group(str(tmp_path / "stack.zarr"), mode="w", zarr_format=fmt.zarr_format)
    write_image(stored, group, fmt=fmt, axes="tczyx", storage_options=dict(chunks=(1, 1, 1, 128, 128)))
    common = ["segment", str(tmp_path / "stack.zarr"), "--engine", "classical", "-o", str(tmp_path / "out.tif"), "-q"]
    assert main(common) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(--plane c,z: C 0..1, Z 0..2)" in err
    assert main([*common, "--plane", "1,3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("leading axes T, C, Z have sizes (1, 2, 3)")
    assert main([*common, "--plane", "1,2"]) == 0
