"""Kaizen's image outlines: redraw at the visible edge, merge without a valley, drop fragments."""

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_kaizen.engines.kaizen.outlines import image_outlines, merge_without_valley


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene():
    """Two separate blurred nuclei and a third pair pressed together with a dim seam."""
    shape = (96, 160)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(30, 30), (30, 80), (70, 115), (70, 135)], start=1):
        truth[_disc(shape, cy, cx, 10) & (truth == 0)] = i
    img = ndi.gaussian_filter((truth > 0).astype(np.float32), 1.5)
    seam = ndi.binary_dilation(truth == 3) & ndi.binary_dilation(truth == 4)
    img[seam] *= 0.5  # the dark valley where two nuclei meet
    return truth, img


def test_outlines_follow_the_image_not_the_coarse_mask():
    truth, img = _scene()
    coarse = np.zeros_like(truth)
    for i in range(1, 5):  # the model's masks: eroded (too small, blocky) versions of the truth
        coarse[ndi.binary_erosion(truth == i, iterations=2)] = i
    out, lut = image_outlines(coarse, img)
    assert out.max() == 4 and list(lut) == [0, 1, 2, 3, 4]
    def iou(a, b):
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    for i in range(1, 5):
        # The 0.2 level of a 1.5-px blur lies ~1 px outside the geometric disc.
        assert iou(out == i, truth == i) > max(0.75, iou(coarse == i, truth == i) + 0.1), i


def test_two_predictions_in_one_nucleus_merge_but_pressed_nuclei_stay_two():
    truth, img = _scene()
    split = truth.copy()
    left = np.zeros_like(truth, bool)
    left[:, :30] = True
    split[(truth == 1) & left] = 5  # nucleus 1 predicted as two halves
    out, lut = image_outlines(split, img)
    assert lut[1] == lut[5] != 0  # merged: no valley between the halves
    assert lut[3] != lut[4] and lut[3] and lut[4]  # the seam keeps these apart
    assert out.max() == 4


def test_rim_fragments_are_dropped():
    truth, img = _scene()
    pred = truth.copy()
    rim = _disc(truth.shape, 30, 80, 12) & ~_disc(truth.shape, 30, 80, 10)
    rim[:, :80] = False
    pred[rim & (pred == 0)] = 9  # a sliver on the outside of nucleus 2, on dark background
    img2 = img.copy()
    img2[rim] = np.maximum(img2[rim], 0.35)
    out, lut = image_outlines(pred, img2)
    assert lut[9] == 0 or lut[9] == lut[2]
    assert out.max() == 4


def test_merge_table_is_identity_without_contacts():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1
    lab[10:14, 10:14] = 2
    assert list(merge_without_valley(lab, lab.astype(np.float32))) == [0, 1, 2]


def test_dim_objects_are_dropped_relative_to_the_typical_object():
    from napari_kaizen.engines._common.instances import dim_objects, drop_dim_objects

    lab = np.zeros((40, 60), np.int32)
    img = np.zeros((40, 60), np.float32)
    for i, x in enumerate((2, 12, 22, 32, 42), start=1):
        lab[5:15, x : x + 8] = i
        img[5:15, x : x + 8] = 1.0 if i != 3 else 0.1  # object 3: faint haze
    assert list(np.flatnonzero(dim_objects(lab, img, 0.25))) == [3]
    assert not dim_objects(lab, img, 0.0).any()  # 0: off
    out = drop_dim_objects(lab, img, 0.25)
    assert out.max() == 4 and not out[5:15, 22:30].any()
    # With image outlines: the dim cell goes, ids stay in order.
    refined, lut = image_outlines(lab, img, min_contrast=0.25)
    assert lut[3] == 0 and sorted(set(lut[[1, 2, 4, 5]])) == [1, 2, 3, 4]


def test_a_nucleus_cut_by_the_image_edge_is_kept_but_an_inner_piece_of_its_size_is_not():
    shape = (96, 160)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(30, 40), (30, 90), (70, 60), (70, 110)], start=1):
        truth[_disc(shape, cy, cx, 10)] = i
    truth[_disc(shape, 50, -7, 10)] = 5  # a nucleus mostly outside the frame: ~14 % of it shows
    truth[_disc(shape, 50, 150, 3.5)] = 6  # a blob of the same area inside the frame
    img = ndi.gaussian_filter((truth > 0).astype(np.float32), 1.0)
    assert abs(int((truth == 5).sum()) - int((truth == 6).sum())) < 15
    out, lut = image_outlines(truth, img, min_area_fraction=0.3)
    assert lut[5] != 0 and lut[6] == 0
    # The paper-era rule (no lower bar at the edge) dropped both.
    _, lut_same = image_outlines(truth, img, min_area_fraction=0.3, border_area_fraction=None)
    assert lut_same[5] == 0 and lut_same[6] == 0


def test_cells_on_the_background_are_dropped_by_min_foreground():
    """A cell explained out of background noise goes; dim nuclei the threshold still sees stay."""
    truth, img = _scene()
    rng = np.random.default_rng(0)
    noisy = img + rng.normal(0, 0.03, img.shape).astype(np.float32)
    noisy[truth == 2] *= 0.4  # a dim nucleus: on the foreground side of Li's threshold, below Otsu's
    pred = truth.copy()
    ghost = _disc(truth.shape, 75, 40, 8)
    pred[ghost] = 7  # a "cell" the decomposition read into the empty background
    kept, lut = image_outlines(pred, noisy, min_area_fraction=0.1)
    assert lut[7] != 0  # no background filter: the ghost survives
    out, lut = image_outlines(pred, noisy, min_area_fraction=0.1, min_foreground=0.5)
    assert lut[7] == 0 and all(lut[i] for i in range(1, 5)), lut.tolist()
    assert out.max() == kept.max() - 1


def test_min_foreground_is_validated_and_calibrated():
    import pytest

    from napari_kaizen.engines.kaizen.params import KaizenParams
    from napari_kaizen.errors import InputError

    with pytest.raises(InputError, match="min_foreground"):
        KaizenParams(min_foreground=1.5)
    assert KaizenParams().outline_constants({"outlines": {"min_foreground": 0.5}})["min_foreground"] == 0.5
    assert KaizenParams(min_foreground=0.0).outline_constants({"outlines": {"min_foreground": 0.5}})["min_foreground"] == 0.0
    assert KaizenParams().outline_constants(None)["min_foreground"] == 0.0


def test_percentiles_of_every_cell_in_one_sort_are_numpys_to_the_bit():
    from napari_kaizen.engines.kaizen.outlines import _percentiles_by_group

    rng = np.random.default_rng(0)
    groups = [rng.random(int(rng.integers(1, 400))).astype(np.float32) for _ in range(300)]
    groups += [np.full(7, 0.25, np.float32), np.array([3.0], np.float32), np.round(rng.random(50) * 4).astype(np.float32)]
    ids = rng.permutation(len(groups)) * 3 + 1  # sparse ids, pixels not grouped in order
    values, owners = np.concatenate(groups), np.repeat(ids, [g.size for g in groups])
    shuffle = rng.permutation(values.size)
    for dtype in (np.float32, np.float64):
        for q in (20, 90, 50, 33.3):
            got_ids, got = _percentiles_by_group(values[shuffle].astype(dtype), owners[shuffle], q)
            want = np.array([np.percentile(g.astype(dtype), q) for g in groups], dtype)[np.argsort(ids)]
            assert np.array_equal(got_ids, np.sort(ids))
            assert got.dtype == dtype and np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))


def test_cell_rings_are_four_connected_dilations():
    """The ring and the grown region, by one city-block distance: the same as dilating."""
    from napari_kaizen.engines.kaizen.outlines import _cell_contrasts

    lab = np.zeros((60, 70), np.int32)
    yy, xx = np.mgrid[:60, :70]
    lab[np.hypot(yy - 20, xx - 20) < 8] = 1
    lab[np.hypot(yy - 22, xx - 37) < 9] = 2
    lab[(yy > 50) & (xx < 6)] = 3  # at the image's corner
    smooth = ndi.gaussian_filter(np.random.default_rng(1).random(lab.shape).astype(np.float32), 1) + (lab > 0)
    peak, back, regions = _cell_contrasts(lab, smooth, 2, 5, 3)
    for i, sl, region in regions:
        own = lab == i
        grown = ndi.binary_dilation(own, iterations=2)
        ring = ndi.binary_dilation(grown, iterations=5) & ~grown & (lab == 0)
        assert np.array_equal(region, grown[sl])
        assert peak[i] == np.float32(np.percentile(smooth[own], 90))
        assert back[i] == np.float32(np.percentile(smooth[ring], 20))


def test_calibration_record_names_the_synthetic_fields_and_its_reproduce_line_the_count(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import calibrate_kaizen_outlines as cal

    from napari_kaizen.engines._common.weights import sha256
    from napari_kaizen.engines.kaizen.model import load_model

    command = cal.reproduce_command(["--sources", "--overwrite"], 4)
    assert command.endswith("--sources --overwrite --synthetic 4")
    assert cal.reproduce_command(["--synthetic", "0"], 4).endswith("--synthetic 0")
    path = cal.write("bundled:kaizen_nuclei", str(tmp_path / "k"), (0.35, 0.8, 0.35), 0.5,
                     ["dsb2018-small", "mnfinder", cal.SYNTHETIC], False, command, (0.25, 0.5), 4)
    record = json.loads(path.with_suffix(".json").read_text())["outlines"]
    assert {k: record[k] for k in ("edge_level", "valley", "min_area_fraction", "min_contrast", "min_foreground")} == {
        "edge_level": 0.35, "valley": 0.8, "min_area_fraction": 0.35, "min_contrast": 0.25, "min_foreground": 0.5}
    # The synthetic fields are named for what they are, not listed as a real source.
    assert "sources dsb2018-small, mnfinder, and the first 4 synthetic fields" in record["chosen_on"]
    assert record["reproduce"] == command
    # Only the record changes: the tensors are the bundled ones.
    assert sha256(path) == load_model("bundled:kaizen_nuclei", "cpu").metadata["sha256"]


def test_cells_on_haze_are_background_though_the_haze_is_above_the_fields_threshold():
    from skimage.filters import threshold_li

    from napari_kaizen.engines._common.instances import background_objects

    # A dark field, a hazy plateau (out-of-focus tissue) and in-focus nuclei on it.
    img = np.zeros((120, 120), np.float32)
    img[20:100, 20:100] = 0.5
    lab = np.zeros((120, 120), int)
    for k, (y, x) in enumerate([(30, 30), (30, 60), (60, 30), (80, 80), (85, 40)], start=1):
        img[y : y + 8, x : x + 8] = 1.0
        lab[y : y + 8, x : x + 8] = k
    lab[55:63, 62:70] = 6  # a cell the decomposition read into the haze
    lab[5:13, 5:13] = 7  # and one on the dark field
    # The haze is far above Li's threshold of the whole field: only the top-hat tells.
    assert 0.5 > threshold_li(ndi.gaussian_filter(img, 1.0))
    off = background_objects(lab, img, 0.5)
    assert off.tolist() == [False] * 6 + [True, True]
    assert not background_objects(lab, img, 0.0).any()
