"""Model exchange with bioimage.io: export a registry model as a bioimage.io model package, and import one back.

``kaizen export-model MODEL --bioimageio OUT.zip`` writes a package in the bioimage.io
model specification 0.5 (``rdf.yaml``), validated by ``bioimageio.spec`` while it is
built:

* the network as TorchScript (``weights.pt``), wrapped so that its output is the maps
  the engine reads, so a bioimage.io runner (``bioimageio.core``, deepImageJ, ilastik)
  computes the same maps as the engine's predictor: for the FCN the softmax class
  probabilities without background and the distance map through a sigmoid, averaged over
  the engine's mirror images (:func:`napari_kaizen.engines.fcn.segment.predictor`); for the
  ISL U-Net the fluorescence, distance and mask probability;
* the input pre-processing as bioimage.io's ``scale_range`` (percentiles of the
  model's JSON, per image, not clipped: :func:`~napari_kaizen.engines._common.normalize.normalize_percentile`);
* a test input (a synthetic field of the model's input kind) and the output our own
  predictor gives for it;
* a README that says what stays in this package: the rescaling to the model's object
  diameter and the instance post-processing (thresholds, h-maxima seeds on the
  distance map, watershed), with the calibrated thresholds;
* the original ``.safetensors`` and its JSON as attachments, so
  ``kaizen import-model PACKAGE.zip`` brings the model back into the registry
  unchanged (:func:`import_bioimageio`).

Why TorchScript and not ``pytorch_state_dict``: a state-dict entry needs the network's
Python source and its imports inside the package (this package's code); TorchScript
holds the graph and the weights in one file that any runner loads without it.

``bioimageio.spec`` is an optional dependency (``pip install "napari-kaizen[bioimageio]"``),
imported only here and only when a package is written or read. Nothing here downloads:
the package is built from local files, and validation runs with
``perform_io_checks=False`` (the spec library otherwise fetches remote files a
description names; ours names none, but a foreign package might).

This module sits beside the registry (it needs the model and the engine's maps) and
is imported by the command line only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KaizenError, WeightsError

#: How the missing optional dependency is named to a person.
EXTRA_LINE = "model exchange needs bioimage.io's spec library: pip install \"napari-kaizen[bioimageio]\""

#: The key under ``config`` of a package's rdf.yaml that marks it as ours.
CONFIG_KEY = "napari_kaizen"

#: Architectures whose network is one image -> maps pass that bioimage.io can run: the FCN
#: and the ISL U-Net (segmentation models). The Kaizen engine's inference is an iterative
#: decomposition (accept a cell where it lowers the error), which no bioimage.io runner
#: performs. Each architecture's network has its own output head, so the wrapper, the
#: channel names and the README's words are per architecture (this module's table, not a
#: branch in shared code).
EXPORTABLE = ("googlenet-fcn", "unet_isl")

#: Per architecture: title, output channel names, the engine's instance step in words.
_ARCHITECTURES = {
    "googlenet-fcn": dict(
        title="GoogLeNet fully convolutional network (FCN)",
        channels=("probability", "edge", "distance"),
        outputs=("the class probabilities (softmax, background left out) and, with a distance head, the distance "
                 "map (sigmoid; 1 at an object's centre, falling to its outline), averaged over the mirror "
                 "images of the input"),
        post=("thresholds the foreground probability, seeds one object at each of the distance map's h-maxima, "
              "grows the seeds by a watershed inside the foreground, drops objects smaller than a fraction of the "
              "object diameter (`engines/fcn/segment.py`)"),
        cite=("levinejh: Segmenting complex cells with CNNs", "https://levinejh.github.io/segmentation-fully-connected"),
    ),
    "unet_isl": dict(
        title="ISL U-Net (in silico labelling trunk + mask and distance head)",
        channels=("fluorescence", "distance", "mask"),
        outputs="the predicted fluorescence, the distance map and the mask probability (sigmoid)",
        post=("thresholds the mask probability, seeds one object at each of the smoothed distance map's "
              "h-maxima, grows the seeds by a watershed inside the mask and drops objects smaller than a "
              "fraction of the object diameter (`engines/unet/postprocess.py`)"),
        cite=("Bonte et al. 2022, Learning with minimal effort: leveraging in silico labeling for cell and nucleus "
              "segmentation (BioImage Computing workshop, ECCV 2022)", "https://arxiv.org/abs/2301.03914"),
    ),
}

#: Side of the test image written into a package (a multiple of every stride).
TEST_SIDE = 256


def require_spec() -> Any:
    """``bioimageio.spec``, or one line naming the extra that installs it."""
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise KaizenError(EXTRA_LINE) from None
    return spec


def _maps_module(net: Any, n_classes: int, flip_average: bool = True) -> Any:
    """The network wrapped to output the engine's maps (a TorchScript-able module).

    The mirror images averaged are the engine's own (:data:`~napari_kaizen.engines.fcn.segment.FLIPS`).
    """
    import torch
    from torch import nn

    from .fcn.segment import FLIPS

    mirrors = {tuple(sorted(d % 4 for d in dims)) for dims in FLIPS if dims} if flip_average else set()

    class FCNMaps(nn.Module):
        """Input ``(B, 1, H, W)`` normalised; output ``(B, n_classes - 1 [+ 1], H, W)``: class
        probabilities without background [+ the distance map], averaged over the mirror images."""

        def __init__(self, inner: nn.Module, classes: int, left_right: bool, up_down: bool, both: bool) -> None:
            super().__init__()
            self.inner = inner
            self.classes = classes
            # Flags, not a list of axes: TorchScript scripts them without type annotations.
            self.left_right = left_right
            self.up_down = up_down
            self.both = both

        def maps(self, x: torch.Tensor) -> torch.Tensor:
            y = self.inner(x)
            probs = torch.softmax(y[:, : self.classes], dim=1)[:, 1:]
            if y.shape[1] == self.classes:
                return probs
            return torch.cat([probs, torch.sigmoid(y[:, self.classes :])], dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.maps(x)
            n = 1.0
            if self.left_right:
                out = out + torch.flip(self.maps(torch.flip(x, [3])), [3])
                n += 1.0
            if self.up_down:
                out = out + torch.flip(self.maps(torch.flip(x, [2])), [2])
                n += 1.0
            if self.both:
                out = out + torch.flip(self.maps(torch.flip(x, [2, 3])), [2, 3])
                n += 1.0
            return out / n

    return FCNMaps(net, int(n_classes), (3,) in mirrors, (2,) in mirrors, (2, 3) in mirrors).eval()


def _unet_maps_module(net: Any) -> Any:
    """The U-Net wrapped to output the engine's maps: fluorescence, distance, mask probability."""
    import torch
    from torch import nn

    class UNetMaps(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return torch.cat([out[:, :2], torch.sigmoid(out[:, 2:3])], 1)

    return UNetMaps(net).eval()


def _torchscript(arch: str, net: Any, example: Any) -> Any:
    """The maps module of ``net`` as TorchScript: scripted (the FCN), or traced (the U-Net, whose
    code does not script; it has no data-dependent branches, and the tests check other sizes)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated in favour of torch.export; TorchScript is
        # still what bioimage.io's runners (bioimageio.core, deepImageJ) load.
        warnings.simplefilter("ignore", DeprecationWarning)
        if arch == "googlenet-fcn":
            module = _maps_module(net, int(getattr(net, "n_classes", 3)))
            return module, torch.jit.script(module)
        module = _unet_maps_module(net)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            return module, torch.jit.trace(module, example)


def _test_image(object_diameter: float | None, input_kind: str, seed: int = 10_000) -> np.ndarray:
    """A synthetic field of the model's input kind at its scale (float32, raw intensities): the test input."""
    import dataclasses

    from ..data import SynthParams, synthesize

    params = SynthParams(shape=(TEST_SIDE, TEST_SIDE))
    if object_diameter:
        params = dataclasses.replace(params, nucleus_diameter=float(object_diameter))
    field = synthesize(params, seed=seed)
    image = {"label-free": field.label_free, "membrane": field.membrane}.get(str(input_kind), field.nuclei)
    return image.astype(np.float32)


def _readme(entry: Any, meta: Mapping[str, Any], percentiles: tuple[float, float], channels: list[str],
            arch: str) -> str:
    words = _ARCHITECTURES[arch]
    thresholds = meta.get("thresholds") or {}
    picked = {k: v for k, v in thresholds.items() if isinstance(v, (int, float))}
    diameter = meta.get("object_diameter")
    lines = [
        f"# {entry.name}: napari-kaizen {entry.engine} model",
        "",
        f"{words['title']}: finds {entry.output_kind} in {entry.input_kind} images"
        + (f" ({entry.description})." if isinstance(entry.description, str) and 0 < len(entry.description) < 200 else "."),
        "",
        "Exported by `kaizen export-model` (napari-kaizen). Inside napari-kaizen the model is segmented with",
        f"`kaizen segment IMAGE --engine {entry.engine} --model ...` or the napari plugin; this package lets",
        "bioimage.io runners (bioimageio.core, deepImageJ, ilastik) compute the same network output.",
        "",
        "## Input",
        "",
        f"One 2-D grey image, axes (batch, channel, y, x), one channel ({entry.input_kind}).",
        (f"Objects should be about {float(diameter):.3g} pixels across: rescale the image first (napari-kaizen does it "
         "from --diameter)." if diameter else ""),
        "",
        "## Pre-processing (in rdf.yaml)",
        "",
        f"`scale_range` per image: percentile {percentiles[0]:g} maps to 0 and percentile {percentiles[1]:g} to 1, not",
        "clipped (napari-kaizen's `normalize_percentile`; it also keeps the range at least 8 noise SDs wide so an",
        "empty field is not stretched into noise, which only matters for images without objects).",
        "",
        "## Output",
        "",
        f"Channels {', '.join(channels)}: {words['outputs']}, as napari-kaizen's predictor computes them.",
        "",
        "## Post-processing (stays in napari-kaizen)",
        "",
        f"Instances are not part of this package: napari-kaizen {words['post']}, and maps the labels back to the",
        "input grid.",
        f"Calibrated values from the model's JSON: {json.dumps(picked, sort_keys=True) if picked else 'none (the engine defaults)'}.",
        "",
        "## Training",
        "",
        f"See `{entry.name}.json` (attached): data, steps, seed and the command line that reproduces it.",
        "",
        "## Licence",
        "",
        "BSD-3-Clause, as napari-kaizen.",
        "",
    ]
    return "\n".join(lines)


def export_bioimageio(model: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a registry model as a bioimage.io model package (zip).

    Parameters
    ----------
    model : str or path
        ``'bundled:NAME'`` or a ``.safetensors`` path (as ``--model`` takes it).
    output : path-like
        The ``.zip`` to write.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path

    Raises
    ------
    KaizenError
        The extra is missing, the model cannot be exported, the output exists.
    """
    require_spec()
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    from .._files import atomic_write
    from .._version import __version__
    from . import get_engine
    from ._common.normalize import normalize_percentile
    from ._common.weights import read_metadata, weights_paths
    from .registry import model_entry

    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise KaizenError(f"--bioimageio {out}: a bioimage.io model package is a .zip file; give such a name")
    if out.exists() and not overwrite:
        raise KaizenError(f"{out} already exists; not overwriting it (pass --overwrite)")
    entry = model_entry(model)
    meta = read_metadata(entry.spec)
    arch = str(meta.get("architecture"))
    if arch not in EXPORTABLE:
        raise KaizenError(f"{entry.name} is a {entry.engine} model ({arch}): bioimage.io export is available for "
                          f"{', '.join(EXPORTABLE)} models (the FCN and U-Net engines'); Kaizen's inference is not one "
                          "network pass")
    if not entry.segments:
        raise KaizenError(f"{entry.name} predicts no objects; export a segmentation model")
    loaded = get_engine(entry.engine).load_model(entry.spec, device="cpu")
    net = loaded.net.eval()
    words = _ARCHITECTURES[arch]
    percentiles = tuple(float(p) for p in loaded.percentiles)
    raw = _test_image(loaded.object_diameter, entry.input_kind)
    # The package's preprocessing is bioimage.io's plain scale_range.
    normalised = torch.from_numpy(normalize_percentile(raw, *percentiles, by_objects=False))[None, None]
    wrapped, scripted = _torchscript(arch, net, normalised)
    with torch.no_grad():
        expected = wrapped(normalised).numpy().astype(np.float32)
    channels = list(words["channels"][: expected.shape[1]])
    tensor_path, json_path = weights_paths(entry.spec)

    work = Path(tempfile.mkdtemp(prefix="kaizen_bioimageio_"))
    try:
        scripted.save(str(work / "weights.pt"))
        np.save(work / "test_input.npy", raw[None, None], allow_pickle=False)
        np.save(work / "test_output.npy", expected, allow_pickle=False)
        (work / "README.md").write_text(_readme(entry, meta, percentiles, channels, arch))
        shutil.copy(tensor_path, work / tensor_path.name)
        shutil.copy(json_path, work / json_path.name)
        stride = int(getattr(net, "stride", 8))
        # The U-Net needs sides that are multiples of its stride; the FCN pads itself but
        # runs fastest on them: either way a runner picks sizes on this grid.
        space = bio.ParameterizedSize(min=max(64, 4 * stride), step=stride)
        inputs = [bio.InputTensorDescr(
            id=bio.TensorId("raw"),
            description=(f"one grey {entry.input_kind} image, objects about {loaded.object_diameter:g} px across"
                         if loaded.object_diameter else f"one grey {entry.input_kind} image"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("raw")]),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=space), bio.SpaceInputAxis(id=bio.AxisId("x"), size=space)],
            test_tensor=bio.FileDescr(source=work / "test_input.npy"),
            preprocessing=[bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                axes=(bio.AxisId("y"), bio.AxisId("x")), min_percentile=percentiles[0], max_percentile=percentiles[1]))],
        )]
        ref = {"tensor_id": bio.TensorId("raw")}
        outputs = [bio.OutputTensorDescr(
            id=bio.TensorId("maps"),
            description=f"{', '.join(channels)} (see README.md)",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in channels]),
                  bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(axis_id=bio.AxisId("y"), **ref)),
                  bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(axis_id=bio.AxisId("x"), **ref))],
            test_tensor=bio.FileDescr(source=work / "test_output.npy"),
        )]
        ours = {"architecture": arch, "engine": entry.engine, "name": entry.name, "weights": tensor_path.name,
                "metadata": json_path.name, "sha256": meta.get("sha256"), "version": __version__}
        descr = bio.ModelDescr(
            name=f"napari-kaizen {entry.name}"[:128],
            description=(f"{words['title']} ({entry.engine} engine of napari-kaizen): {entry.output_kind} from "
                         f"{entry.input_kind} images; outputs {', '.join(channels)} maps"),
            authors=[bio.Author(name="napari-kaizen developers")],
            cite=[bio.CiteEntry(text=words["cite"][0], url=bio.HttpUrl(words["cite"][1])),
                  bio.CiteEntry(text="napari-kaizen", url=bio.HttpUrl("https://github.com/napari-kaizen/napari-kaizen"))],
            license=bio.LicenseId("BSD-3-Clause"),
            documentation=bio.FileDescr(source=work / "README.md"),
            tags=["napari-kaizen", entry.engine, "segmentation", "nuclei" if entry.output_kind == "nuclei" else "cells",
                  "transmission-light-microscopy" if entry.input_kind == "label-free" else "fluorescence-light-microscopy",
                  "2d"],
            inputs=inputs,
            outputs=outputs,
            weights=bio.WeightsDescr(torchscript=bio.TorchscriptWeightsDescr(
                source=work / "weights.pt", pytorch_version=bio.Version(torch.__version__.split("+")[0]))),
            attachments=[bio.FileDescr(source=work / tensor_path.name), bio.FileDescr(source=work / json_path.name)],
            config=bio.Config(bioimageio=bio.BioimageioConfig(reproducibility_tolerance=[
                bio.ReproducibilityTolerance(absolute_tolerance=1e-4, relative_tolerance=1e-4)]),
                **{CONFIG_KEY: ours}),
        )

        def write(tmp: Path) -> None:
            save_bioimageio_package(descr, output_path=tmp.with_suffix(".zip"))
            os.replace(tmp.with_suffix(".zip"), tmp)

        return atomic_write(out, write, overwrite=overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_package_config(package: str | os.PathLike) -> dict[str, Any]:
    """The ``config.napari_kaizen`` entry of a package's rdf.yaml (read from the zip, no validation, no network).

    Raises
    ------
    KaizenError
        Not a zip, no rdf.yaml, or a package not made by napari-kaizen.
    """
    try:
        import yaml
    except ImportError:
        raise KaizenError(EXTRA_LINE) from None

    src = Path(package)
    if not src.is_file():
        raise KaizenError(f"package {src} not found")
    if not zipfile.is_zipfile(src):
        raise KaizenError(f"{src.name} is not a zip file: a bioimage.io model package is a .zip holding rdf.yaml")
    with zipfile.ZipFile(src) as zf:
        name = next((n for n in ("rdf.yaml", "bioimageio.yaml") if n in zf.namelist()), None)
        if name is None:
            raise KaizenError(f"{src.name} holds no rdf.yaml: not a bioimage.io model package")
        try:
            rdf = yaml.safe_load(zf.read(name))
        except yaml.YAMLError as exc:
            raise KaizenError(f"{src.name}: its {name} is not valid YAML ({exc.__class__.__name__})") from None
    ours = ((rdf or {}).get("config") or {}).get(CONFIG_KEY) if isinstance(rdf, dict) else None
    if not isinstance(ours, dict) or not {"weights", "metadata", "architecture"} <= set(ours):
        title = rdf.get("name") if isinstance(rdf, dict) else None
        raise KaizenError(f"{src.name}{' (' + str(title) + ')' if title else ''} is not a napari-kaizen package "
                          f"(its rdf.yaml has no config.{CONFIG_KEY}); import-model brings back models exported by "
                          "`kaizen export-model` only, since the engines run their own networks, not foreign ones")
    return ours


def validate_package(package: str | os.PathLike) -> Any:
    """Validate a package with ``bioimageio.spec`` (format only: ``perform_io_checks=False``, so nothing is fetched).

    Returns
    -------
    ValidationSummary
        ``summary.status`` is ``'valid-format'`` (or ``'passed'``) for a valid package.
    """
    spec = require_spec()
    descr = spec.load_description(str(package), perform_io_checks=False)
    return descr.validation_summary


def import_bioimageio(package: str | os.PathLike, *, folder: str | os.PathLike | None = None) -> Path:
    """Bring a package written by :func:`export_bioimageio` back into the model registry.

    The attached ``.safetensors`` and JSON are checked (the tensors' SHA-256 against
    the JSON, the architecture against the engines) and written to ``folder``
    (default the user model folder, :func:`~napari_kaizen.engines.registry.user_model_dir`)
    under a name no model uses yet, so nothing is replaced.

    Returns
    -------
    Path
        The new ``.safetensors``.

    Raises
    ------
    KaizenError
        A foreign package (no ``config.napari_kaizen``), missing attachments, or
        weights that do not match their JSON: one line each.
    """
    from ._common.weights import sha256
    from .registry import model_entry, new_model_path

    src = Path(package)
    ours = read_package_config(src)
    weights, metadata = str(ours["weights"]), str(ours["metadata"])
    for name in (weights, metadata):
        if Path(name).name != name or not name.endswith((".safetensors", ".json")):
            raise KaizenError(f"{src.name}: config.{CONFIG_KEY} names '{name}', not a file of the package")
    with zipfile.ZipFile(src) as zf, tempfile.TemporaryDirectory(prefix="kaizen_import_") as tmp:
        members = set(zf.namelist())
        missing = [n for n in (weights, metadata) if n not in members]
        if missing:
            raise KaizenError(f"{src.name} lacks {', '.join(missing)}: re-export it with `kaizen export-model`")
        stage = Path(tmp) / Path(weights).stem
        (stage.with_suffix(".safetensors")).write_bytes(zf.read(weights))
        (stage.with_suffix(".json")).write_bytes(zf.read(metadata))
        meta = json.loads(stage.with_suffix(".json").read_text())
        if meta.get("sha256") and meta["sha256"] != sha256(stage.with_suffix(".safetensors")):
            raise KaizenError(f"{src.name}: {weights} does not match the SHA-256 in {metadata} (a damaged package)")
        try:
            model_entry(stage.with_suffix(".safetensors"))  # an architecture of this version's engines
        except WeightsError as exc:
            raise KaizenError(f"{src.name}: {exc}") from None
        from .._files import atomic_write
        from ._common.weights import write_metadata

        dest = new_model_path(Path(weights).stem, folder)
        meta["imported_from"] = src.name
        # JSON first: the registry lists .safetensors files, so a model appears only once it is whole.
        write_metadata(dest.with_suffix(".json"), meta)
        atomic_write(dest, lambda t: shutil.copyfile(stage.with_suffix(".safetensors"), t))
    return dest
