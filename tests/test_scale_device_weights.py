"""Object scale, device choice and the weights file format."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_kaizen.data import synthesize
from napari_kaizen.engines._common import (
    InputError,
    WeightsError,
    estimate_diameter,
    median_diameter,
    prepare_image,
    rescale_for_model,
    resolve_diameter,
)
from napari_kaizen.engines._common.device import choose_device
from napari_kaizen.engines._common.weights import load_model, load_weights, read_metadata, save_weights
from napari_kaizen.errors import DeviceError


@pytest.mark.parametrize("diameter", [12.0, 24.0, 40.0])
def test_auto_diameter_within_25_percent(diameter):
    field = synthesize(seed=int(diameter), shape=(320, 320), nucleus_diameter=diameter, density=0.25)
    est = estimate_diameter(prepare_image(field.nuclei))
    true = median_diameter(field.nucleus_labels)
    assert abs(est / true - 1) < 0.25, (est, true)


def test_resolve_diameter_inputs():
    img = np.zeros((10, 10), np.float32)
    assert resolve_diameter(img, None) is None
    assert resolve_diameter(img, "17") == 17.0
    with pytest.raises(InputError, match="positive"):
        resolve_diameter(img, -3)
    with pytest.raises(InputError, match="not understood"):
        resolve_diameter(img, "big")
    with pytest.raises(InputError, match="estimate"):
        resolve_diameter(np.zeros((30, 30), np.float32), "auto")


def test_rescale_round_trip_keeps_label_ids():
    rs = rescale_for_model((100, 80), diameter=40.0, model_diameter=20.0)
    assert rs.factor == pytest.approx(0.5) and rs.model_shape == (50, 40)
    labels = np.zeros((50, 40), np.int32)
    labels[10:20, 5:15] = 7
    back = rs.labels_to_input(labels)
    assert back.shape == (100, 80) and set(np.unique(back)) == {0, 7}
    assert (back == 7).sum() == 4 * 100
    assert rescale_for_model((10, 10), 20.0, 20.5).identity  # within tolerance: no resampling
    assert rescale_for_model((10, 10), None, 20.0).identity


def test_device_choice():
    import torch

    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            choose_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        choose_device("tpu")


def _tiny_model(config):
    import torch

    return torch.nn.Conv2d(config["cin"], config["cout"], 3)


def test_weights_round_trip_and_errors(tmp_path):
    import torch

    model = _tiny_model({"cin": 1, "cout": 2})
    path = save_weights(tmp_path / "m", model.state_dict(), {"architecture": "tiny", "config": {"cin": 1, "cout": 2}})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    loaded, meta = load_model(path, _tiny_model, architecture="tiny")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert meta["sha256"] and meta["format_version"] == 1

    with pytest.raises(WeightsError, match="needs 'other'"):
        load_weights(path, architecture="other")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    # A config that does not fit the tensors.
    meta_path = path.with_suffix(".json")
    bad = json.loads(meta_path.read_text())
    bad["config"] = {"cin": 3, "cout": 2}
    meta_path.write_text(json.dumps(bad))
    with pytest.raises(WeightsError, match="does not fit"):
        load_model(path, _tiny_model, architecture="tiny")
    # A tensor file swapped under its JSON.
    other = save_weights(tmp_path / "o", _tiny_model({"cin": 1, "cout": 2}).state_dict(),
                         {"architecture": "tiny", "config": {"cin": 1, "cout": 2}})
    path.write_bytes(other.read_bytes())
    with pytest.raises(WeightsError, match="checksum"):
        load_weights(path)
    # Not a safetensors file at all, and no JSON.
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04pickle")
    with pytest.raises(WeightsError, match=r"\.json"):
        read_metadata(junk)
    # Refuses to overwrite.
    with pytest.raises(FileExistsError):
        save_weights(tmp_path / "o", model.state_dict(), {"architecture": "tiny", "config": {}})


def test_bundled_name_errors():
    with pytest.raises(WeightsError, match="no bundled model"):
        load_weights("bundled:does_not_exist")


def test_auto_diameter_of_a_dim_8bit_field_of_small_real_nuclei():
    # A crop of a DSB2018 field (CC0, tests/data/dsb2018): ~12 px nuclei, 198 of them,
    # mean intensity 14 of 255 (5 over the whole field). The estimate used before read
    # 270 px on that field and the learned engines refused it.
    import tifffile

    folder = Path(__file__).parent / "data" / "dsb2018"
    image = tifffile.imread(folder / "dim_small_nuclei_image.tif")
    labels = tifffile.imread(folder / "dim_small_nuclei_labels.tif")
    assert image.dtype == np.uint8 and image.mean() < 20
    est = estimate_diameter(prepare_image(image))
    true = median_diameter(labels)
    assert abs(est / true - 1) < 0.25, (est, true)


@pytest.mark.parametrize("zoom", [1, 2, 3])
def test_auto_diameter_of_large_real_nuclei_as_a_higher_magnification_sees_them(zoom):
    # A whole DSB2018 frame (CC0, tests/data/dsb2018): 24 sparse ~41 px nuclei in a dim
    # 8-bit field, enlarged as a 60x or 100x objective would show them (82 and 123 px).
    # At full resolution the pixel noise and chromatin outnumber such nuclei: the
    # estimate read 6 and 8 px before it took the coarser looks (coarse_diameter).
    import tifffile
    from scipy import ndimage as ndi

    folder = Path(__file__).parent / "data" / "dsb2018"
    image = tifffile.imread(folder / "sparse_large_nuclei_image.tif").astype(np.float32)
    labels = tifffile.imread(folder / "sparse_large_nuclei_labels.tif")
    if zoom > 1:
        image = np.clip(np.round(ndi.zoom(image, zoom, order=1)), 0, 255)
        labels = ndi.zoom(labels, zoom, order=0)
    est = estimate_diameter(prepare_image(image.astype(np.uint8)))
    true = median_diameter(labels)
    assert abs(est / true - 1) < 0.25, (est, true)


def test_coarse_looks_see_large_blobs_behind_fine_grain():
    from scipy import ndimage as ndi

    from napari_kaizen.engines._common.scale import block_mean, coarse_diameter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1024, :1024]
    img = np.zeros((1024, 1024), np.float32)
    for cy, cx in [(200, 200), (200, 600), (600, 200), (600, 600), (400, 820), (850, 400), (820, 820)]:
        img[np.hypot(yy - cy, xx - cx) < 45] = 1.0
    # A grain of 2-3 px specks all over (noise, chromatin): far more of them than nuclei.
    img += 0.8 * ndi.gaussian_filter(rng.normal(0, 1, img.shape).astype(np.float32), 1.0)
    assert block_mean(img, 2).shape == (512, 512)
    assert 70 < coarse_diameter(img) < 110
    assert 70 < estimate_diameter(img) < 110
    # Nuclei of 12 px vanish at the coarse looks: no answer there, the full resolution decides.
    small = np.zeros((512, 512), np.float32)
    for cy in range(20, 500, 30):
        for cx in range(20, 500, 30):
            small[np.hypot(yy[:512, :512] - cy, xx[:512, :512] - cx) < 6] = 1.0
    small = ndi.gaussian_filter(small, 1.0)
    assert coarse_diameter(small) is None
    assert 9 < estimate_diameter(small) < 16


def test_a_sparse_field_is_measured_by_its_dim_nuclei_before_it_is_refused():
    # Three nuclei on a quiet 1024² field, one five times brighter than the others and
    # bean-shaped (solidity 0.79: too irregular to measure). Otsu's level of the whole
    # field lies above the dim two, so only the bright one was found, and skipped; the
    # other measurements failed too (as on a real DSB2018 field of three nuclei) and
    # the classical engine refused the image. The last resort before refusing takes
    # every object that stands out of the noise.
    from scipy import ndimage as ndi

    from napari_kaizen import run_to_end
    from napari_kaizen.engines import get_engine
    from napari_kaizen.engines._common.scale import threshold_diameter

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:1024, :1024]
    signal = np.zeros((1024, 1024))
    for (cy, cx), peak in (((300, 400), 150.0), ((620, 700), 30.0), ((800, 250), 28.0)):
        signal[np.hypot(yy - cy, xx - cx) < 9] = peak
    signal[np.hypot(yy - 300, xx - 407) < 6] = 0  # a bite
    truth, _ = ndi.label(signal > 0)
    image = np.clip(np.round(5 + ndi.gaussian_filter(signal, 1.5) + rng.normal(0, 1.2, signal.shape)), 0, 255)
    image = image.astype(np.uint8)
    img = prepare_image(image)
    true = median_diameter(truth)  # 17.8 px
    with pytest.raises(InputError, match="found 0 separate objects"):
        threshold_diameter(img, max_side=2048, min_objects=1, above_noise=True)
    assert abs(threshold_diameter(img, max_side=2048, min_objects=3, above_noise=True, otsu=False) / true - 1) < 0.1
    assert abs(estimate_diameter(img) / true - 1) < 0.1  # measured 17.5 px (refused before)
    classical = get_engine("classical")
    labels = run_to_end(classical.segment(image, classical.params())).labels
    assert labels.max() == 3 and all(labels[truth == i].any() for i in (1, 2, 3))


def test_an_estimated_diameter_out_of_range_is_clamped_with_a_warning_a_given_one_refused():
    from napari_kaizen.engines._common.normalize import InputWarning
    from napari_kaizen.engines._common.scale import MAX_RESCALE, EstimatedDiameter

    with pytest.warns(InputWarning, match="estimated object diameter 238 px"):
        rs = rescale_for_model((603, 1272), EstimatedDiameter(238.0), 24.0)
    assert rs.factor == pytest.approx(1 / MAX_RESCALE)
    with pytest.raises(InputError, match="out of range"):
        rescale_for_model((603, 1272), 238.0, 24.0)
    # A tiny estimate on a large field is held under the memory bar instead of refused.
    with pytest.warns(InputWarning):
        rs = rescale_for_model((8000, 8000), EstimatedDiameter(4.0), 24.0)
    assert np.prod(rs.model_shape) <= 2.6e8
    img = np.zeros((64, 64), np.float32)
    img[10:20, 10:20] = img[40:50, 10:20] = img[10:20, 40:50] = img[40:50, 40:50] = 1
    assert isinstance(resolve_diameter(img, "auto"), EstimatedDiameter)
    assert not isinstance(resolve_diameter(img, 12), EstimatedDiameter)
