"""Metrics against hand-worked cases."""

import numpy as np
import pytest

from napari_kaizen import metrics


def squares(*boxes, shape=(10, 10)):
    lab = np.zeros(shape, np.int32)
    for value, (y0, y1, x0, x1) in boxes:
        lab[y0:y1, x0:x1] = value
    return lab


def test_identical_labels_score_one_with_gaps_in_ids():
    gt = squares((3, (0, 4, 0, 4)), (17, (5, 9, 5, 9)))
    pred = squares((1, (0, 4, 0, 4)), (2, (5, 9, 5, 9)))  # other ids, same objects
    ap = metrics.average_precision(gt, pred)
    assert all(v == 1.0 for v in ap.values())
    assert metrics.mean_average_precision(gt, pred) == 1.0


def test_hand_worked_tp_fp_fn():
    # GT: A (4x4=16 px) and B (4x4). Pred: A' covers A shifted by one column (IoU 12/20 = 0.6),
    # C is a false positive, B is missed.
    gt = squares((1, (0, 4, 0, 4)), (2, (6, 10, 6, 10)))
    pred = squares((5, (0, 4, 1, 5)), (9, (6, 8, 0, 2)))
    m = metrics.match(gt, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.ap == pytest.approx(1 / 3)
    assert m.mean_matched_iou == pytest.approx(0.6)
    # At 0.6 the pair no longer counts (IoU must exceed the threshold).
    m6 = metrics.match(gt, pred, 0.6)
    assert (m6.tp, m6.fp, m6.fn) == (0, 2, 2)
    assert m6.ap == 0.0
    ap = metrics.average_precision(gt, pred)
    assert ap[0.5] == pytest.approx(1 / 3) and ap[0.55] == pytest.approx(1 / 3) and ap[0.6] == 0.0
    assert metrics.mean_average_precision(gt, pred) == pytest.approx(2 / 30)


def test_empty_cases():
    empty = np.zeros((5, 5), int)
    one = squares((1, (0, 2, 0, 2)), shape=(5, 5))
    assert metrics.average_precision(empty, empty)[0.5] == 1.0
    assert metrics.average_precision(one, empty)[0.5] == 0.0  # one FN
    assert metrics.average_precision(empty, one)[0.5] == 0.0  # one FP
    m = metrics.match(one, empty)
    assert (m.tp, m.fp, m.fn) == (0, 0, 1)


def test_one_to_one_matching_below_half_iou():
    # Two GT halves and one prediction over both: at t=0.3 only one GT may match it.
    gt = squares((1, (0, 4, 0, 2)), (2, (0, 4, 2, 4)))
    pred = squares((7, (0, 4, 0, 4)))
    m = metrics.match(gt, pred, 0.3)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_dataset_mean_over_images_and_table():
    gt = squares((1, (0, 4, 0, 4)))
    ev = metrics.evaluate([gt, gt], [gt, np.zeros_like(gt)])
    assert ev.ap50 == pytest.approx(0.5)
    assert ev.map == pytest.approx(0.5)
    assert "mAP" in ev.table()


def test_dice_iou_pcc():
    a = squares((1, (0, 4, 0, 4)))
    b = squares((1, (0, 4, 2, 6)))
    assert metrics.iou(a, b) == pytest.approx(8 / 24)
    assert metrics.dice(a, b) == pytest.approx(16 / 32)
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0
    x = np.arange(10.0)
    assert metrics.pcc(x, 2 * x + 3) == pytest.approx(1.0)
    assert metrics.pcc(x, -x) == pytest.approx(-1.0)
    assert np.isnan(metrics.pcc(x, np.ones(10)))


def test_count_merges():
    gt = squares((1, (0, 4, 0, 4)), (2, (0, 4, 4, 8)), (3, (6, 9, 0, 3)))
    pred = squares((1, (0, 4, 0, 8)), (2, (6, 9, 0, 3)))
    assert metrics.count_merges(gt, pred) == 1
    assert metrics.count_merges(gt, gt) == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.match(np.zeros((3, 3), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="integers"):
        metrics.match(np.zeros((3, 3)) + 0.5, np.zeros((3, 3), int))


def test_error_types_count_each_kind_once():
    gt = np.zeros((20, 40), np.int32)
    gt[1:9, 1:9] = 1      # matched
    gt[1:9, 10:18] = 2    # merged with 3
    gt[1:9, 18:26] = 3
    gt[11:19, 1:13] = 4   # split in two
    gt[11:19, 20:26] = 5  # missed
    pred = np.zeros_like(gt)
    pred[1:9, 1:9] = 10
    pred[1:9, 10:26] = 11
    pred[11:19, 1:7] = 12
    pred[11:19, 7:13] = 13
    pred[12:16, 32:38] = 14  # nothing there
    e = metrics.error_types(gt, pred)
    assert (e.n_true, e.n_pred, e.matched) == (5, 5, 1)
    assert (e.merges, e.merged_true, e.splits, e.misses, e.false_positives) == (1, 2, 1, 1, 1)
    assert e.mean_iou == pytest.approx(1.0)
    total = e + metrics.error_types(gt, gt)
    assert (total.n_true, total.matched, total.merges) == (10, 6, 1) and total.mean_iou == pytest.approx(1.0)
    assert metrics.count_merges(gt, pred) == 1
    assert "merges 1" in e.line()


def test_error_types_on_many_objects_use_memory_of_the_objects_not_their_square():
    # 40,000 objects: a dense (true x predicted) table would need 12.8 GB.
    gt = np.arange(1, 40_001, dtype=np.int32).repeat(4).reshape(400, 400)
    e = metrics.error_types(gt, gt)
    assert e.matched == 40_000 and e.merges == e.splits == e.misses == e.false_positives == 0


def test_cli_evaluate_errors(tmp_path, capsys):
    import json

    import tifffile

    from napari_kaizen.cli import main

    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8] = 1
    gt[2:8, 8:14] = 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:14] = 1
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif"), "--errors"]) == 0
    out = capsys.readouterr().out
    assert "merges 1 (swallowing 2)" in out and "misses 0" in out
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif"), "--errors", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["errors_total"]["merges"] == 1 and res["errors"]["pred.tif"]["matched"] == 0
