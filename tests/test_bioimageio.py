"""Model exchange with bioimage.io: export a model as a package that bioimageio.spec validates
offline, whose TorchScript reproduces our predictor, and import it back into the registry."""

from __future__ import annotations

import json
import socket
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")

from napari_kaizen.cli import main  # noqa: E402


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and a private cache: any download attempt fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from napari_kaizen.engines.bioimageio_package import export_bioimageio

    out = tmp_path_factory.mktemp("pkg") / "fcn_nuclei.zip"
    return export_bioimageio("bundled:fcn_nuclei", out)


def test_the_package_is_valid_bioimageio_0_5_without_network(package, offline):
    import bioimageio.spec as spec

    descr = spec.load_description(str(package), perform_io_checks=False)
    summary = descr.validation_summary
    assert summary.status in ("valid-format", "passed"), summary.display()
    assert str(descr.format_version).startswith("0.5") and descr.type == "model"
    assert descr.weights.torchscript is not None
    pre = next(step for step in descr.inputs[0].preprocessing if step.id == "scale_range")
    assert (pre.kwargs.min_percentile, pre.kwargs.max_percentile) == (1.0, 99.8)
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == ["probability", "edge", "distance"]
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "test_input.npy", "test_output.npy", "README.md",
            "fcn_nuclei.safetensors", "fcn_nuclei.json"} <= names
    # the README documents what bioimage.io runners do not: scale and instance post-processing
    assert "scale_range" in readme and "h-maxima" in readme and "watershed" in readme and "24 pixels" in readme
    # validate_format too (the spec library's own entry point for a description's content)
    import yaml

    with zipfile.ZipFile(package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    context = spec.ValidationContext(perform_io_checks=False)
    assert spec.validate_format(rdf, context=context).status in ("valid-format", "passed")
    rdf["inputs"][0]["preprocessing"][1]["kwargs"]["max_percentile"] = 0.5  # below min_percentile: invalid
    assert spec.validate_format(rdf, context=context).status == "failed"  # the validation can fail


def test_the_torchscript_reproduces_our_predictor(package, offline):
    import torch

    from napari_kaizen.engines.fcn import load_model
    from napari_kaizen.engines.fcn.segment import predictor

    with zipfile.ZipFile(package) as zf:
        scripted = torch.jit.load(__import__("io").BytesIO(zf.read("weights.pt")))
        raw = np.load(__import__("io").BytesIO(zf.read("test_input.npy")))
        expected = np.load(__import__("io").BytesIO(zf.read("test_output.npy")))
    # bioimage.io's scale_range as the spec defines it (per sample over y, x, eps 1e-6)
    lo, hi = np.percentile(raw[0, 0], [1.0, 99.8])
    normalised = ((raw - lo) / (hi - lo + 1e-6)).astype(np.float32)
    with torch.no_grad():
        runner = scripted(torch.from_numpy(normalised)).numpy()
        ours = predictor(load_model("bundled:fcn_nuclei", device="cpu").net, True)(torch.from_numpy(normalised)).numpy()
    assert runner.shape == expected.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(runner, ours, rtol=0, atol=1e-6)  # the same network and maps as the engine's
    np.testing.assert_allclose(runner, expected, rtol=1e-4, atol=1e-4)  # the test output, within the rdf's tolerance
    assert expected[:, 2].max() > 0.5  # real nuclei in the test image, not an empty field


def test_a_unet_package_is_valid_and_its_traced_network_reproduces_the_engines_maps(tmp_path, offline):
    import io

    import bioimageio.spec as spec
    import torch

    from napari_kaizen.engines.bioimageio_package import export_bioimageio
    from napari_kaizen.engines.unet import load_model
    from napari_kaizen.engines.unet.segment import _predict_fn

    out = export_bioimageio("bundled:unet_nuclei", tmp_path / "unet.zip")
    descr = spec.load_description(str(out), perform_io_checks=False)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.display()
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == ["fluorescence", "distance", "mask"]
    assert descr.inputs[0].axes[2].size.step == 16  # the U-Net's sides are multiples of its stride
    with zipfile.ZipFile(out) as zf:
        traced = torch.jit.load(io.BytesIO(zf.read("weights.pt")))
        raw = np.load(io.BytesIO(zf.read("test_input.npy")))
        expected = np.load(io.BytesIO(zf.read("test_output.npy")))
        assert "label-free" in zf.read("README.md").decode()
    net = load_model("bundled:unet_nuclei", device="cpu").net
    lo, hi = np.percentile(raw[0, 0], [1.0, 99.8])
    x = torch.from_numpy(((raw - lo) / (hi - lo + 1e-6)).astype(np.float32))
    # The engine predicts with batch norm folded into the convolutions (engines/_common/inference.py),
    # which rounds differently from the packaged network by a few 1e-6.
    with torch.no_grad():
        np.testing.assert_allclose(traced(x).numpy(), _predict_fn(net, True)(x).numpy(), rtol=0, atol=2e-5)
        np.testing.assert_allclose(traced(x).numpy(), expected, rtol=1e-4, atol=1e-4)
        # traced at 256 x 256, it still follows the network at another size on the stride grid
        other = x[..., :128, :192].contiguous()
        np.testing.assert_allclose(traced(other).numpy(), _predict_fn(net, True)(other).numpy(), rtol=0, atol=2e-5)


def test_import_brings_the_model_back_into_the_registry(package, tmp_path, monkeypatch, capsys):
    from napari_kaizen.engines._common.weights import sha256
    from napari_kaizen.engines.registry import list_models

    monkeypatch.setenv("NAPARI_KAIZEN_MODELS", str(tmp_path / "models"))
    assert main(["import-model", str(package)]) == 0
    assert "fcn model" in capsys.readouterr().out
    mine = [m for m in list_models("fcn") if m.source == "user"]
    assert [m.name for m in mine] == ["fcn_nuclei"]
    from napari_kaizen.engines._common.weights import bundled_dir

    assert sha256(tmp_path / "models" / "fcn_nuclei.safetensors") == sha256(bundled_dir() / "fcn_nuclei.safetensors")
    meta = json.loads((tmp_path / "models" / "fcn_nuclei.json").read_text())
    assert meta["imported_from"] == package.name
    assert main(["import-model", str(package)]) == 0  # a second import never replaces the first
    assert sorted(p.name for p in (tmp_path / "models").glob("*.safetensors")) == ["fcn_nuclei.safetensors",
                                                                                  "fcn_nuclei_2.safetensors"]


def test_a_foreign_package_is_refused_in_one_line(package, tmp_path, capsys):
    import yaml

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["config"].pop("napari_kaizen")
                rdf["name"] = "someone else's model"
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(name, data)
    assert main(["import-model", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a napari-kaizen package" in err and "someone else's model" in err
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert main(["import-model", str(tmp_path / "junk.zip")]) == 1
    assert "is not a zip file" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_export_in_one_line(tmp_path, capsys):
    assert main(["export-model", "bundled:kaizen_nuclei", "--bioimageio", str(tmp_path / "k.zip")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bioimage.io export is available for googlenet-fcn, unet_isl models" in err
    assert main(["export-model", "bundled:fcn_nuclei", "--bioimageio", str(tmp_path / "k.tar")]) == 1
    assert "is a .zip file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_cli_exports_and_refuses_to_clobber(tmp_path, capsys, offline):
    out = tmp_path / "m.zip"
    assert main(["export-model", "bundled:fcn_nuclei", "--bioimageio", str(out)]) == 0
    assert "valid-format" in capsys.readouterr().out or "passed" in capsys.readouterr().out
    assert main(["export-model", "bundled:fcn_nuclei", "--bioimageio", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_without_the_extra_the_message_names_it(monkeypatch):
    import builtins

    from napari_kaizen.engines import bioimageio_package
    from napari_kaizen.errors import KaizenError

    real = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name.startswith("bioimageio"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(KaizenError, match=r'pip install "napari-kaizen\[bioimageio\]"'):
        bioimageio_package.require_spec()
