"""One segmentation job: built and checked once, run the same way plainly and tile by tile."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from napari_kaizen.cli import main
from napari_kaizen.data import SynthParams, synthesize
from napari_kaizen.engines import get_engine
from napari_kaizen.errors import KaizenError
from napari_kaizen.jobs import SegmentJob, build_jobs, select_outputs
from napari_kaizen.tiled import plan_tiles


@pytest.fixture(scope="module")
def field():
    return synthesize(SynthParams(shape=(384, 384)), seed=3)


@pytest.fixture()
def image_file(tmp_path, field):
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, field.nuclei)
    return path


def test_diameter_option_and_param_give_the_same_tiled_labels(tmp_path, image_file, capsys):
    """``--diameter 20`` once sized the halo as an unknown diameter (a string became None)."""
    out_option, out_param = tmp_path / "option.tif", tmp_path / "param.tif"
    common = ["segment", str(image_file), "--engine", "classical", "--tile", "128", "-q"]
    assert main([*common, "-o", str(out_option), "--diameter", "20"]) == 0
    assert main([*common, "-o", str(out_param), "--param", "diameter=20"]) == 0
    a, b = tifffile.imread(out_option), tifffile.imread(out_param)
    assert a.max() > 10
    np.testing.assert_array_equal(a, b)


def test_a_diameter_given_as_text_sizes_the_halo_as_the_number_does(field):
    engine = get_engine("classical")
    text = plan_tiles(engine, field.nuclei, engine.Params(diameter="20"), tile=128)
    number = plan_tiles(engine, field.nuclei, engine.Params(diameter=20.0), tile=128)
    assert text.halo == number.halo == 60
    assert text.diameter == number.diameter == 20.0


@pytest.mark.parametrize(("given", "parsed"), [("60", 60.0), ("auto", "auto"), ("AUTO", "auto"), ("none", None),
                                                (None, "auto")])
def test_a_job_carries_the_diameter_parsed_once(tmp_path, image_file, given, parsed):
    batch = build_jobs([image_file], tmp_path / "out.tif", engine="classical", diameter=given)
    (job,) = batch.jobs
    assert isinstance(job, SegmentJob) and job.params.diameter == parsed
    # --param diameter= is read by the same function
    if given is not None:
        (by_param,) = build_jobs([image_file], tmp_path / "out.tif", engine="classical",
                                 params=[f"diameter={given}"]).jobs
        assert by_param.params == job.params


@pytest.mark.parametrize("bad", ["abc", "-3", "nan", "inf", "0"])
def test_a_bad_diameter_is_one_line(tmp_path, image_file, capsys, bad):
    out = tmp_path / "out.tif"
    assert main(["segment", str(image_file), "-o", str(out), "-q", "--diameter", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --diameter") and err.count("\n") == 0, err
    assert not out.exists()


def test_plain_and_tiled_jobs_run_the_same_params(tmp_path, image_file):
    plain = build_jobs([image_file], tmp_path / "a.tif", engine="classical", diameter="20").jobs[0]
    tiled = build_jobs([image_file], tmp_path / "b.tif", engine="classical", diameter="20", tile=128).jobs[0]
    assert not plain.tiled and tiled.tiled and tiled.tile == 128
    assert plain.params == tiled.params
    assert dataclasses.replace(tiled, dest=plain.dest, tiled=False, tile=plain.tile) == plain


def test_overwrite_and_skip_rules_live_in_one_place(tmp_path):
    done, todo = tmp_path / "done.tif", tmp_path / "todo.tif"
    tifffile.imwrite(done, np.ones((4, 4), np.uint8))
    assert select_outputs([done, todo], overwrite=False, skip_existing=True) == ([1], [done])
    cut = tmp_path / "cut.tif"
    cut.write_bytes(done.read_bytes()[:6])  # cut off mid-write: not done, a resume redoes it
    assert select_outputs([done, cut], overwrite=False, skip_existing=True) == ([1], [done])
    assert select_outputs([done, todo], overwrite=True, skip_existing=False) == ([0, 1], [])
    with pytest.raises(KaizenError, match="already exists"):
        select_outputs([done, todo], overwrite=False, skip_existing=False)
    with pytest.raises(KaizenError, match="give one of them"):
        select_outputs([done, todo], overwrite=True, skip_existing=True)


def test_skip_existing_is_the_same_rule_plain_and_tiled(tmp_path, image_file, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(image_file), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    for extra in ([], ["--tile", "128"]):
        assert main(["segment", str(image_file), "-o", str(out), "-q", *extra]) == 1
        assert "already exists; not overwriting it" in capsys.readouterr().err
        assert main(["segment", str(image_file), "-o", str(out), "-q", "--skip-existing", *extra]) == 0
        assert "skipping 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["unet", "fcn"])
def test_the_networks_window_is_window_and_tile_says_so(tmp_path, image_file, capsys, engine):
    """``tile`` means only the stitching tile; the networks' own window is ``window``."""
    (job,) = build_jobs([image_file], tmp_path / "out.tif", engine=engine, params=["window=256"]).jobs
    assert job.params.window == 256 and not job.tiled
    out = tmp_path / "never.tif"
    assert main(["segment", str(image_file), "-o", str(out), "-q", "--engine", engine, "--param", "tile=256"]) == 1
    err = capsys.readouterr().err.strip()
    assert "window" in err and "--tile is the stitching tile" in err and err.count("\n") == 0, err
    assert not out.exists()
    import napari_kaizen

    with pytest.raises(KaizenError, match="tile= is now window="):
        napari_kaizen.segment(np.zeros((64, 64)), engine=engine, tile=256)


def test_the_stitching_tile_is_checked_in_one_place(tmp_path, image_file, capsys):
    from napari_kaizen.engines._common.stitch import DEFAULT_TILE, check_tile

    assert check_tile(None) == DEFAULT_TILE
    (job,) = build_jobs([image_file], tmp_path / "a.tif", engine="classical", tile=None, scale_out=True).jobs
    assert job.tile == DEFAULT_TILE
    assert main(["segment", str(image_file), "-o", str(tmp_path / "b.tif"), "-q", "--tile", "32"]) == 1
    assert capsys.readouterr().err.strip() == "error: --tile 32 is too small: give at least 64 pixels (e.g. 2048)"
    with pytest.raises(KaizenError, match="tile size 32 is too small"):
        plan_tiles("classical", np.zeros((256, 256)), tile=32)


def test_a_stained_section_tiled_by_the_command_line_is_read_as_its_luminance(tmp_path, capsys):
    # A tiled run tells a colour picture of a bright field from a colour image on a dark
    # field on a sample of the whole image, and reads each tile's luminance, as an
    # untiled run reads the whole picture; the plan turns the image round once (dark
    # nuclei). Before, it asked for --channel.
    from pathlib import Path

    from napari_kaizen import metrics

    data = Path(__file__).parent / "data" / "dsb2018"
    section = tifffile.imread(data / "stained_section_image.tif")
    truth = tifffile.imread(data / "stained_section_labels.tif").astype(np.int32)
    tifffile.imwrite(tmp_path / "section.tif", section)
    common = ["--engine", "classical", "--tile", "128", "-o", str(tmp_path / "out")]
    assert main(["segment", str(tmp_path / "section.tif"), *common]) == 0
    said = capsys.readouterr()
    assert "colour picture of a bright field" in said.out + said.err
    assert "darker than their field" in said.out + said.err
    labels = tifffile.imread(tmp_path / "out" / "section.tif")
    assert labels.max() >= 20
    assert metrics.average_precision(truth, labels, (0.5,))[0.5] >= 0.25  # measured 0.35 (46 objects, 6 tiles)
    # A picked channel is still taken as it is (the green one: nuclei darkest there).
    assert main(["segment", str(tmp_path / "section.tif"), *common, "--channel", "1", "--overwrite"]) == 0
    green = tifffile.imread(tmp_path / "out" / "section.tif")
    assert metrics.average_precision(truth, green, (0.5,))[0.5] >= 0.25  # measured 0.36 (46 objects)
    # Two stains on a dark field are not mixed: the line names what to pick.
    stains = np.zeros((256, 320, 3), np.uint8)
    stains[..., 2] = np.where(truth > 0, 200, 10)
    stains[40:80, 40:80, 0] = 150
    tifffile.imwrite(tmp_path / "stains.tif", stains)
    assert main(["segment", str(tmp_path / "stains.tif"), *common]) != 0
    assert "is a colour RGB(A) image of shape (256, 320, 3) on a dark field: pick one channel (channel=0..2, CLI --channel N)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("tiled", [False, True])
def test_a_plane_given_for_a_single_plane_is_refused_in_one_line(tmp_path, image_file, capsys, tiled):
    # --plane picks from a stack; for a single 2-D image (grey or colour) it used to be
    # ignored silently, whole image segmented, when the person may have meant another
    # file or a colour channel. Plain and tiled runs say the same line; nothing is written.
    grey = tifffile.imread(image_file)
    colour = np.stack([grey, grey // 2, np.zeros_like(grey)], axis=-1)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    tile = ["--tile", "128"] if tiled else []
    for src, kind in ((image_file, "single 2-D plane"), (tmp_path / "colour.tif", "single 2-D colour image")):
        assert main(["segment", str(src), "--engine", "classical", "--plane", "1", *tile,
                     "-o", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert f"plane 1 was given but the image (shape (384, 384{', 3' if 'colour' in kind else ''})" in err[0]
        assert f"is a {kind}, not a stack: leave the plane out (CLI: drop --plane)" in err[0]
        assert ("--channel i" in err[0]) == ("colour" in kind)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_colour_pictures_run_plane_by_plane_and_a_stack_of_them(tmp_path, capsys):
    # `--all-planes` on a colour picture of a bright field stopped with an unexpected
    # ValueError (the stack's labels were given the colour axis), and a stack of colour
    # images (a colour time-lapse, (T, H, W, 3)) was read as planes of shape (W, 3).
    # Both are read as colour now: each image's luminance, one kind for the stack.
    from pathlib import Path

    from napari_kaizen import metrics

    data = Path(__file__).parent / "data" / "dsb2018"
    section = tifffile.imread(data / "stained_section_image.tif")
    truth = tifffile.imread(data / "stained_section_labels.tif").astype(np.int32)
    tifffile.imwrite(tmp_path / "section.tif", section)
    tifffile.imwrite(tmp_path / "series.tif", np.stack([section, section[::-1]]), photometric="rgb")
    out = tmp_path / "out"
    common = ["--engine", "classical", "-o", str(out)]
    assert main(["segment", str(tmp_path / "section.tif"), "--all-planes", *common]) == 0
    one = tifffile.imread(out / "section.tif")
    assert one.shape == truth.shape and metrics.average_precision(truth, one, (0.5,))[0.5] >= 0.25  # measured 0.35
    assert main(["segment", str(tmp_path / "series.tif"), "--all-planes", *common]) == 0
    both = tifffile.imread(out / "series.tif")
    assert both.shape == (2, *truth.shape)
    for labels, true in ((both[0], truth), (both[1], truth[::-1])):
        assert metrics.average_precision(true, labels, (0.5,))[0.5] >= 0.25
    assert main(["segment", str(tmp_path / "series.tif"), "--plane", "1", *common, "--overwrite"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "series.tif") > 0, both[1] > 0)
    capsys.readouterr()
    # Tiled (a huge colour series), --plane picks a picture without reading the others.
    plain = tifffile.imread(out / "series.tif")
    for extra in ([], ["--channel", "1"]):
        assert main(["segment", str(tmp_path / "series.tif"), "--plane", "1", "--tile", "128", *extra,
                     "--engine", "classical", "-o", str(tmp_path / "tiled.tif"), "--overwrite"]) == 0
        tiled = tifffile.imread(tmp_path / "tiled.tif")
        assert tiled.shape == truth.shape
        if not extra:
            assert metrics.average_precision(plain, tiled, (0.5,))[0.5] >= 0.9
        assert metrics.average_precision(truth[::-1], tiled, (0.5,))[0.5] >= 0.25
    capsys.readouterr()
    for extra, said in ((["--all-planes", "--channel", "5"], "channel 5 does not exist: each image of this stack"),
                        ([], "image is a stack of 2 colour images"),
                        (["--tile", "128"], "is a stack of 2 colour images: a tiled run segments one of them (--plane i)"),
                        (["--plane", "2", "--tile", "128"], "plane 2 is outside series.tif: its leading axes have sizes (2,)")):
        assert main(["segment", str(tmp_path / "series.tif"), *extra, *common, "--overwrite"]) == 1
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err, err


@pytest.mark.parametrize("tiled", [False, True])
def test_a_hyperstacks_refusals_name_its_axes_and_the_named_plane_is_segmented(tmp_path, field, capsys, tiled):
    # An ImageJ hyperstack (TZCYX) was told "--plane i,j,k, one index for each of its 3
    # leading axes", so a person had to know the order; the line now names T, Z and C
    # with their ranges, and the plane picked that way is the one segmented.
    plane = np.round(field.nuclei / field.nuclei.max() * 4000).astype(np.uint16)
    stack = np.zeros((2, 3, 2, *plane.shape), np.uint16)
    stack[1, 2, 0] = plane
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TZCYX"})
    common = ["segment", str(path), "--engine", "classical", "-o", str(tmp_path / "out.tif"), "-q"]
    common += ["--tile", "256"] if tiled else []
    assert main(common) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--plane t,z,c" in err and "T 0..1, Z 0..2, C 0..1" in err
    assert main([*common, "--plane", "1,3,0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("leading axes T, Z, C have sizes (2, 3, 2)")
    assert main([*common, "--plane", "1"]) == 1  # too few indices: told how many
    err = capsys.readouterr().err.strip()
    assert err.endswith("plane 1 does not fit " + ("hyper.tif" if tiled else "this stack")
                        + ": give one index for each of its 3 leading axes T, Z, C (sizes (2, 3, 2))"), err
    assert not (tmp_path / "out.tif").exists()
    assert main([*common, "--plane", "1,2,0"]) == 0
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    common[1], common[5] = str(tmp_path / "plane.tif"), str(tmp_path / "alone.tif")
    assert main(common) == 0
    labels = tifffile.imread(tmp_path / "out.tif")
    assert labels.max() > 10
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "alone.tif"))


def test_a_stack_without_axis_names_is_told_by_index(tmp_path, field, capsys):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.stack([field.nuclei] * 4).reshape(2, 2, *field.nuclei.shape))
    assert main(["segment", str(path), "--engine", "classical", "-o", str(tmp_path / "out.tif"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "(plane=(i, j), CLI --plane i,j, one index for each of its 2 leading axes)" in err



def test_a_hyperstacks_labels_keep_its_axes_for_fiji(tmp_path, field):
    # Segmented plane by plane, an ImageJ hyperstack's labels were a plain stack of 12
    # planes (axes QQQYX): Fiji showed one slider. They are a hyperstack with the
    # image's T, Z and C now; a stack whose file names no axes stays a plain one.
    plane = np.round(field.nuclei / field.nuclei.max() * 4000).astype(np.uint16)
    stack = np.zeros((2, 3, 2, *plane.shape), np.uint16)
    stack[1, 2, 0] = plane
    tifffile.imwrite(tmp_path / "hyper.tif", stack, imagej=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    for name in ("hyper", "plain", "plane"):
        assert main(["segment", str(tmp_path / f"{name}.tif"), "--engine", "classical", "-q",
                     *(["--all-planes"] if name != "plane" else []), "-o", str(tmp_path / f"{name}_labels.tif")]) == 0
    with tifffile.TiffFile(tmp_path / "hyper_labels.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZCYX" and tif.series[0].shape == stack.shape
        labels = tif.asarray()
    with tifffile.TiffFile(tmp_path / "plain_labels.tif") as tif:
        assert not tif.is_imagej and tif.series[0].shape == stack.shape
    alone = tifffile.imread(tmp_path / "plane_labels.tif")
    assert alone.max() > 10
    np.testing.assert_array_equal(labels[1, 2, 0], alone)
    assert labels.max(axis=(-2, -1)).sum() == alone.max()  # the other planes are empty
