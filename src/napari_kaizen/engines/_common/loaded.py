"""The one loaded-model type every learned engine returns from ``load_model``.

A loaded model is a network in eval mode plus the JSON that came with its weights
(object diameter, normalisation, what input it expects, how it was trained) and where
it came from. Engines subclass it to add what only they need (the FCN's calibrated
thresholds, the U-Net's task); the device rule below is the same for all of them:

* ``load_model(path_or_name, device)`` puts a freshly loaded network on
  ``choose_device(device)`` (``'auto'``: CUDA, then MPS, then CPU);
* ``load_model(already_loaded, 'auto')`` leaves it where it is, so a model a caller
  placed on purpose is not moved behind its back;
* ``load_model(already_loaded, device)`` and ``model.to(device)`` move it **in place**
  and return the same object, as ``torch.nn.Module.to`` does.

Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...errors import WeightsError
from .metadata import INPUT_KINDS, ModelMetadata, read_model_metadata

__all__ = ["INPUT_KINDS", "LoadedModel", "load_or_move"]


class LoadedModel:
    """A network ready to predict, with its metadata and its device.

    Parameters
    ----------
    net : torch.nn.Module
        The network; it is put in eval mode.
    metadata : mapping, optional
        The weights' JSON.
    source : str
        Where it was loaded from (``'bundled:NAME'``, a path, ``'<in memory>'``).
    device : str or torch.device, optional
        Move the network there now (see the module docstring for the rule).
    """

    def __init__(self, net: Any, metadata: Mapping[str, Any] | None = None, source: str = "<in memory>",
                 device: Any = None) -> None:
        self.net = net.eval()
        self.metadata = dict(metadata or {})
        self.source = str(source)
        if device is not None and device != "auto":
            self.to(device)

    # -------------------------------------------------------------- device
    @property
    def device(self):
        """The torch device the network's parameters are on."""
        return next(self.net.parameters()).device

    def to(self, device: Any) -> LoadedModel:
        """Move the network to ``device`` in place and return self (``'auto'`` picks one)."""
        from .device import choose_device

        self.net.to(choose_device(device))
        return self

    # -------------------------------------------------------------- metadata
    @property
    def model_metadata(self) -> ModelMetadata:
        """The JSON read into the one schema (:func:`~.metadata.read_model_metadata`)."""
        return read_model_metadata(self.metadata)

    @property
    def object_diameter(self) -> float | None:
        """Median object diameter (pixels) of the training data, if the JSON records a valid one."""
        return self.model_metadata.object_diameter

    @property
    def percentiles(self) -> tuple[float, float]:
        """The normalisation percentiles the model was trained with."""
        return self.model_metadata.percentiles

    @property
    def input_kind(self) -> str | None:
        """What the model expects as input (a key of :data:`INPUT_KINDS`), if recorded."""
        return self.model_metadata.input_kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, object_diameter={self.object_diameter})"


def load_or_move(
    model: Any,
    device: Any,
    *,
    loaded_type: type[LoadedModel],
    network_type: type,
    default: str,
    architecture: str,
    build: Callable[[Mapping[str, Any]], Any],
    what: str,
) -> tuple[LoadedModel | None, Any, Any]:
    """The shared part of every engine's ``load_model``.

    Returns ``(loaded, None, None)`` for an already loaded model or a bare network (with
    the device rule applied), else ``(None, net, metadata)`` read from ``model`` (a path
    or ``'bundled:NAME'``; ``None`` means ``default``), on ``choose_device(device)``.

    Raises
    ------
    WeightsError
        ``model`` is of no accepted type, or its files do not load (see
        :func:`~napari_kaizen.engines._common.weights.load_model`).
    """
    from .device import choose_device
    from .weights import load_model as load_weights

    if isinstance(model, loaded_type):
        return (model if device in (None, "auto") else model.to(device)), None, None
    if isinstance(model, network_type):
        return loaded_type(model, source="<in memory>", device=choose_device(device)), None, None
    if model is None:
        model = default
    if not isinstance(model, (str, Path)):
        raise WeightsError(f"model must be 'bundled:NAME', a weights path or a loaded {what}, "
                           f"not {type(model).__name__}")
    net, meta = load_weights(model, build, architecture=architecture, device=choose_device(device))
    return None, net, meta
