"""Tiled prediction, augmentation, losses and the training loop."""

import numpy as np
import pytest
import torch

from napari_kaizen import run_to_end
from napari_kaizen.engines._common.augment import AugmentParams, augment
from napari_kaizen.engines._common.losses import dice_loss, log_dice_loss, weighted_bce
from napari_kaizen.engines._common.snapshots import TrainingSnapshot, relay
from napari_kaizen.engines._common.tiling import iter_tiled_predict, tile_starts, tiled_predict
from napari_kaizen.engines._common.training import seed_everything, train_loop


def test_tile_starts_cover_everything():
    for length, tile, step in [(100, 32, 24), (32, 32, 8), (10, 32, 8), (257, 64, 48)]:
        starts = tile_starts(length, tile, step)
        covered = np.zeros(max(length, tile), bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered[:length].all()
        assert all(s + min(tile, length) <= max(length, tile) for s in starts)


def test_tiled_equals_whole_for_a_pointwise_model(rng):
    img = rng.random((150, 170)).astype(np.float32)
    out = tiled_predict(lambda x: torch.stack([x[:, 0] * 2.0, x[:, 0] + 1.0], 1), img, tile=64, overlap=16,
                        batch_size=3, multiple_of=8)
    assert out.shape == (2, 150, 170)
    np.testing.assert_allclose(out[0], img * 2, rtol=1e-5)
    np.testing.assert_allclose(out[1], img + 1, rtol=1e-5)


def test_tiled_small_image_is_padded_and_cropped(rng):
    img = rng.random((20, 30)).astype(np.float32)
    gen = iter_tiled_predict(lambda x: x, img, tile=64, multiple_of=16)
    snaps = []
    while True:
        try:
            snaps.append(next(gen))
        except StopIteration as stop:
            out = stop.value
            break
    assert snaps[-1].progress == 1.0
    np.testing.assert_allclose(out[0], img, rtol=1e-6)


def test_augment_keeps_labels_and_shapes(small_field):
    rng = np.random.default_rng(1)
    img = small_field.nuclei.astype(np.float32) / 1000
    lab = small_field.nucleus_labels
    for _ in range(5):
        a, (b,) = augment(img, [lab], rng=rng, params=AugmentParams(elastic_prob=1.0, roll=True))
        assert a.shape == img.shape and b.shape == lab.shape and b.dtype == lab.dtype
        assert set(np.unique(b)) <= set(np.unique(lab))  # nearest neighbour: no new ids


def test_augment_flip_only_is_exact(small_field):
    rng = np.random.default_rng(2)
    lab = small_field.nucleus_labels
    p = AugmentParams(rotate=False, elastic_prob=0, gain_range=(1, 1), gamma_range=(1, 1), offset_sd=0,
                      noise_sd_range=(0, 0), blur_prob=0)
    a, (b,) = augment(lab.astype(np.float32), [lab], rng=rng, params=p)
    np.testing.assert_array_equal(a.astype(lab.dtype), b)
    assert sorted(np.bincount(b.ravel())) == sorted(np.bincount(lab.ravel()))


def test_losses():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = (target * 20 - 10)
    bad = -good
    assert dice_loss(good, target) < 0.01 < dice_loss(bad, target)
    assert log_dice_loss(good, target) < log_dice_loss(bad, target)
    w = torch.ones_like(target)
    assert weighted_bce(good, target, w) == pytest.approx(float(weighted_bce(good, target)))


def test_train_loop_fits_and_yields():
    seed_everything(0)
    model = torch.nn.Linear(1, 1)
    xs = torch.linspace(-1, 1, 32)[:, None]

    def batches():
        while True:
            yield xs, 3 * xs + 1

    def loss_fn(m, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(m(x), y)
        return loss, {"mse": loss.item()}

    gen = train_loop(model, batches(), loss_fn, torch.optim.Adam(model.parameters(), 0.1), steps=300,
                     device=torch.device("cpu"), report_every=50)
    last = run_to_end(gen)
    assert isinstance(last, TrainingSnapshot) and last.step == 300
    assert last.loss < 1e-2


def test_relay_maps_progress_and_closes():
    closed = []

    def inner():
        try:
            for i in range(4):
                yield TrainingSnapshot(stage="x", progress=(i + 1) / 4)
            return "done"
        finally:
            closed.append(True)

    outer = relay(inner(), 0.5, 1.0)
    first = next(outer)
    assert first.progress == pytest.approx(0.625)
    outer.close()
    assert closed == [True]
