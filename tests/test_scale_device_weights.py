"""Object scale, device choice and the weights file format."""

import json

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
