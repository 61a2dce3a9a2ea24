"""Segmentation engines: pure compute (numpy, torch, scikit-image), no Qt, no napari.

Every engine is a sub-package that exports the same four names, so the CLI, the widgets
and the tests drive them all the same way:

``Params``
    The engine's frozen parameter dataclass (defaults from its paper), with a
    ``diameter`` field (pixels, ``'auto'`` or ``None``).
``segment(image, params=None, *, model=None, device='auto')``
    A generator of :class:`~napari_kaizen.engines._common.snapshots.Snapshot` whose
    last item is a ``SegmentationSnapshot`` with ``done=True`` and the labels on the
    input grid. ``model`` is a loaded model, a weights path or ``'bundled:NAME'``.
``DEFAULT_MODEL``
    ``'bundled:NAME'`` of the weights used when none are given (``None`` if the engine
    needs none).
``TITLE``
    A human name for menus.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._common.errors import EngineNotAvailableError

#: Engine name -> module. The order is the order menus show.
ENGINE_MODULES: dict[str, str] = {
    "classical": "napari_kaizen.engines.classical",
    "kaizen": "napari_kaizen.engines.kaizen",
    "unet": "napari_kaizen.engines.unet",
    "fcn": "napari_kaizen.engines.fcn",
}


@dataclass(frozen=True)
class Engine:
    """A loaded engine: its name, title, params class, segment generator and default model."""

    name: str
    title: str
    params_class: type
    segment: Any
    default_model: str | None
    module: ModuleType

    def params(self, **overrides) -> Any:
        """The engine's params with ``overrides`` (unknown names raise TypeError)."""
        return self.params_class(**overrides)


def get_engine(name: str) -> Engine:
    """Load an engine by name.

    Raises
    ------
    EngineNotAvailableError
        If the name is unknown or the engine is not built in this version.
    """
    if name not in ENGINE_MODULES:
        raise EngineNotAvailableError(f"unknown engine '{name}': choose one of {', '.join(ENGINE_MODULES)}")
    try:
        module = importlib.import_module(ENGINE_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(ENGINE_MODULES[name]):
            raise EngineNotAvailableError(f"the '{name}' engine is not built yet in this version of napari-kaizen") from None
        raise
    missing = [attr for attr in ("Params", "segment") if not hasattr(module, attr)]
    if missing:
        raise EngineNotAvailableError(f"the '{name}' engine is not built yet in this version of napari-kaizen")
    return Engine(
        name=name,
        title=getattr(module, "TITLE", name),
        params_class=module.Params,
        segment=module.segment,
        default_model=getattr(module, "DEFAULT_MODEL", None),
        module=module,
    )


def available_engines() -> list[str]:
    """Names of the engines that load in this installation."""
    names = []
    for name in ENGINE_MODULES:
        try:
            get_engine(name)
        except EngineNotAvailableError:
            continue
        names.append(name)
    return names
