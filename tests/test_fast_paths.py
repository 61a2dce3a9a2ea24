"""The speed work's fast paths give what the plain ones give (issue 23).

Each fast path here replaced a slower computation of the same thing; these tests fail
if it stops being the same thing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_kaizen.engines._common.inference import (
    _as_shuffled_conv,
    _window_max,
    as_inference_input,
    fold_batchnorm,
    inference_network,
)
from napari_kaizen.engines._common.instances import (
    distance_peaks,
    fill_holes,
    h_maxima_by_dome,
    h_maxima_sampled,
    relabel,
    seed_step,
    seeded_watershed,
)
from napari_kaizen.engines._common.tiling import balanced_tile, tile_starts


@pytest.mark.parametrize("shape", [(2, 8, 31, 40), (1, 3, 32, 33), (1, 5, 7, 9)])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 2, 0), (2, 1, 0)])
def test_window_max_is_max_pool(shape, kernel, stride, padding):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_window_max(x, kernel, stride, padding), F.max_pool2d(x, kernel, stride, padding))


@pytest.mark.parametrize("kernel, stride, padding", [(8, 4, 2), (4, 2, 1), (2, 2, 0), (16, 8, 4), (4, 2, 3)])
def test_shuffled_convolution_is_the_transposed_one(kernel, stride, padding):
    gen = torch.Generator().manual_seed(4)
    up = torch.nn.ConvTranspose2d(6, 3, kernel, stride=stride, padding=padding).eval()
    with torch.no_grad():
        up.weight.copy_(torch.randn(up.weight.shape, generator=gen))
    fast = _as_shuffled_conv(up)
    x = torch.randn(2, 6, 9, 13, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = up(x), fast(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


def test_only_transposed_convolutions_of_whole_strides_are_replaced():
    assert _as_shuffled_conv(torch.nn.ConvTranspose2d(4, 2, 3, stride=1, padding=1)) is None  # Kaizen's last layer
    assert _as_shuffled_conv(torch.nn.ConvTranspose2d(4, 2, 6, stride=4)) is None
    assert _as_shuffled_conv(torch.nn.ConvTranspose2d(4, 2, 4, stride=2, output_padding=1)) is None
    assert _as_shuffled_conv(torch.nn.Conv2d(4, 2, 3)) is None


def _untrained_but_not_trivial(net):
    """Random batch-norm statistics, so folding them is tested on more than identities."""
    gen = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


@pytest.mark.parametrize("engine", ["fcn", "unet"])
def test_inference_network_predicts_what_the_network_predicts(engine):
    if engine == "fcn":
        from napari_kaizen.engines.fcn.model import GoogLeNetFCN

        net = GoogLeNetFCN(width=0.5, stride=8, distance=True)
    else:
        from napari_kaizen.engines.unet.model import UNet

        net = UNet(base_channels=8, depth=3, max_channels=32)
    net = _untrained_but_not_trivial(net)
    x = torch.rand(2, 1, 64, 72, generator=torch.Generator().manual_seed(1))
    fast = inference_network(net)
    with torch.inference_mode():
        want, got = net(x), fast(as_inference_input(x))
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    # The network being trained (or fine-tuned) is left as it was.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.training for m in fold_batchnorm(net).modules())


def test_kaizen_predicts_the_same_cells_channels_last():
    from napari_kaizen.engines.kaizen import load_model

    net = load_model(None, device="cpu").net.eval()
    x = torch.rand(5, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = net.predict(x)
        got = inference_network(net).predict(as_inference_input(x))
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("length, tile, overlap, multiple", [(1365, 1024, 64, 4), (900, 1024, 64, 4),
                                                              (4000, 1024, 64, 8), (1025, 512, 64, 1)])
def test_balanced_tiles_cover_the_image_with_the_fewest_tiles(length, tile, overlap, multiple):
    side = balanced_tile(length, tile, overlap, multiple)
    assert side <= max(tile, multiple * -(-tile // multiple)) and side % multiple == 0
    starts = tile_starts(max(length, side), side, side - min(overlap, side // 2))
    covered = np.zeros(max(length, side), bool)
    for s in starts:
        covered[s : s + side] = True
    assert covered.all()
    # No more tiles than full-size ones would need.
    full = len(tile_starts(length, tile, tile - overlap)) if length > tile else 1
    assert len(starts) <= full


def test_sampled_h_maxima_keep_touching_discs_apart():
    yy, xx = np.mgrid[:60, :90]
    d = np.zeros((60, 90))
    for cy, cx in [(30, 25), (30, 48), (30, 71)]:  # three touching discs of 24 px
        d = np.maximum(d, np.clip(1 - np.hypot(yy - cy, xx - cx) / 12, 0, None))

    step = seed_step(24)
    assert step == 4
    assert h_maxima_sampled(d, 0.2, step).max() == 3
    from skimage.morphology import h_maxima

    assert np.array_equal(h_maxima_sampled(d, 0.2, 1) > 0, h_maxima(d, 0.2).astype(bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_work", [0.0, 3.0, 40.0])
def test_h_maxima_by_dome_tops_are_scikit_images(dtype, max_work):
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(7)
    for _ in range(40):
        # Plateaus, exact zeros (flat background), isolated zero pockets and noise.
        a = rng.random((31, 47))
        a[a < 0.3] = 0
        a = (np.round(a * rng.integers(3, 30)) / 10).astype(dtype)
        h = float(rng.choice([0.1, 0.2, 0.5]))
        assert np.array_equal(h_maxima_by_dome(a, h, max_work=max_work) > 0, h_maxima(a, h).astype(bool))


def test_distance_peaks_of_touching_and_faint_nuclei():
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from napari_kaizen.data import synthesize
    from napari_kaizen.engines._common.instances import distance_map

    field = synthesize(seed=10_003, shape=(192, 192))
    d = distance_map(field.nucleus_labels)
    # A predicted map: never exactly 0 between nuclei, a little noise, one faint nucleus.
    d = np.clip(d + np.random.default_rng(1).normal(0, 0.003, d.shape), 0, None).astype(np.float32)
    d[field.nucleus_labels == field.nucleus_labels.max()] *= 0.35
    for h in (0.1, 0.2):
        domes, want = distance_peaks(d, h), h_maxima(d, h).astype(bool)
        assert int(domes.max()) == ndi.label(want, np.ones((3, 3)))[1] > 10
        assert ((domes > 0) != want).sum() <= 2


def _random_watershed_case(rng, plateaus: bool):
    from scipy import ndimage as ndi

    h, w = rng.integers(8, 80, 2)
    surface = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 3))
    if plateaus:
        surface = np.round(surface * rng.integers(2, 10))
    mask = ndi.gaussian_filter(rng.random((h, w)), 1.5) > rng.uniform(0.4, 0.6)
    seeds = rng.random((h, w)) < rng.uniform(0.001, 0.05)
    if rng.random() < 0.5:
        seeds = ndi.binary_dilation(seeds)
    # 8-connected seed ids may span two 4-connected mask components; some lie outside the mask.
    markers, _ = ndi.label(seeds, structure=np.ones((3, 3)) if rng.random() < 0.5 else None)
    return surface, markers, mask


def test_seeded_watershed_is_scikit_images_where_its_order_is_not_arbitrary():
    """No plateaus, and no pixel beside markers of two ids: the very same labels."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(3)
    for _ in range(150):
        surface, _, mask = _random_watershed_case(rng, plateaus=False)
        # Single-pixel markers on a grid of 3 px: no two share a neighbour.
        spots = np.zeros(mask.shape, bool)
        spots[::3, ::3] = rng.random(spots[::3, ::3].shape) < 0.3
        markers, _ = ndi.label(spots)
        assert np.array_equal(seeded_watershed(surface, markers, mask), watershed(surface, markers, mask=mask))


@pytest.mark.parametrize("plateaus", [False, True])
def test_seeded_watershed_differs_only_between_seeds(plateaus):
    """Arbitrary ties may go the other way, but only inside components of two or more seeds."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(4)
    for _ in range(150):
        surface, markers, mask = _random_watershed_case(rng, plateaus=plateaus)
        got, want = seeded_watershed(surface, markers, mask), watershed(surface, markers, mask=mask)
        assert np.array_equal(got > 0, want > 0)
        comps, _ = ndi.label(mask)
        differ = got != want
        # Where they differ, the component holds two or more seed ids.
        for c in np.unique(comps[differ]):
            assert len(np.unique(markers[(comps == c) & (markers > 0)])) >= 2


def test_fill_holes_and_relabel_are_scipys_and_scikit_images():
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(5)
    for _ in range(100):
        h, w = rng.integers(1, 60, 2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
        labels, n = ndi.label(mask)
        labels = labels * (rng.random(n + 1) < 0.6)[labels]
        got = relabel(labels)
        assert got.dtype == np.int32 and np.array_equal(got, relabel_sequential(labels)[0])
    assert relabel(np.zeros((0, 3), np.int32)).shape == (0, 3)


def test_two_equal_tops_of_one_nucleus_are_one_seed():
    # An elongated nucleus whose predicted distance has two tops of exactly the same
    # height (float16 maps, or a ridge that rounds so) with a dip far below h between
    # them: scikit-image's h-maxima are two separate pixels there; one nucleus, one seed.
    from napari_kaizen.engines._common.instances import find_seeds, watershed_instances
    from napari_kaizen.engines.fcn.segment import instances_from_distance

    yy, xx = np.mgrid[:40, :60]
    d = np.clip(1 - np.hypot((yy - 20) / 10, np.maximum(np.abs(xx - 30) - 8, 0) / 10), 0, None)
    d = d.astype(np.float32)
    d[20, 22] = d[20, 38] = np.float32(1.0)
    d[20, 23:38] = np.float32(0.999)  # a one-thousandth dip along the ridge
    mask = d > 0.05
    seeds = find_seeds(d, mask, 0.2)
    assert seeds.max() == 1 and seeds[20, 22] == seeds[20, 38] == 1
    assert watershed_instances(d, mask, seeds, 1).max() == 1
    assert instances_from_distance(mask.astype(np.float32), np.zeros_like(d), d, h=0.2).max() == 1
    # The same tops cut apart by the mask are two seeds, one per piece.
    cut = mask.copy()
    cut[:, 30] = False
    assert find_seeds(d, cut, 0.2).max() == 2


def test_fcn_seeds_survive_rounding_the_distance_map_to_float16():
    # On the bundled dense field at seed contrast 0.3, rounding the FCN's distance map to
    # float16 made two tops of one nucleus equal and split it (266 objects against 265)
    # before the tops were grouped by dome.
    from napari_kaizen import run_to_end
    from napari_kaizen.data._sample_data import sample_dense_nuclei
    from napari_kaizen.engines.fcn import segment
    from napari_kaizen.engines.fcn.segment import instances_from_distance

    maps = run_to_end(segment(sample_dense_nuclei()[0][0], device="cpu")).maps
    d = maps["distance"]
    full = instances_from_distance(maps["probability"], maps["edge"], d, h=0.3, foreground=0.85)
    half = instances_from_distance(maps["probability"], maps["edge"], d.astype(np.float16).astype(np.float32),
                                   h=0.3, foreground=0.85)
    assert full.max() > 200
    assert half.max() == full.max()
    assert np.mean(half != full) < 1e-3
