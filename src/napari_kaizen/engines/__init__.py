"""Segmentation engines: pure compute (numpy, torch, scikit-image), no Qt, no napari.

Every engine is one sub-package, registered by one line in :data:`ENGINE_MODULES`, with
the same file roles::

    params.py    the frozen ``Params`` dataclass (defaults from the paper)
    segment.py   ``segment(image, params, *, model, device)``: a snapshot generator
    scale_rule.py ``scale_for(image, params, *, model, prepared)``: what ``diameter`` means
                 for one image (a ``Scale``); ``segment`` and tiled / stack runs all call it
    model.py     the network, its loaded-model type and ``load_model`` (learned engines)
    training.py  ``train`` / ``finetune`` generators (learned engines)
    cli.py       ``add_train_arguments`` / ``run_train`` for ``kaizen train NAME``

and its ``__init__`` names ``TITLE``, ``Params``, ``segment``, ``scale_for`` and, for learned engines,
``DEFAULT_MODEL``, ``ARCHITECTURE`` (the ``architecture`` string of its weights' JSON)
and ``INPUT_KIND``, and makes ``load_model`` / ``finetune`` importable without
importing torch until they are used. :func:`get_engine` checks that and returns an
object that satisfies :class:`Engine`, which is all the CLI, the widgets and the tests
use. ``docs/developers.md`` walks through adding an engine.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from ..errors import EngineNotAvailableError

#: Engine name -> package. The order is the order menus show. One line per engine.
ENGINE_MODULES: dict[str, str] = {
    "classical": "napari_kaizen.engines.classical",
    "kaizen": "napari_kaizen.engines.kaizen",
    "unet": "napari_kaizen.engines.unet",
    "fcn": "napari_kaizen.engines.fcn",
}

#: What every engine package must name, and what a learned one must name besides.
REQUIRED = ("TITLE", "Params", "segment", "scale_for")
REQUIRED_LEARNED = ("DEFAULT_MODEL", "ARCHITECTURE", "INPUT_KIND", "load_model", "finetune")


@runtime_checkable
class Engine(Protocol):
    """What :func:`get_engine` returns: one engine, driven the same way as every other.

    Attributes
    ----------
    name : str
        The registry name (``'kaizen'``, ``'fcn'``, ...).
    title : str
        A human name for menus.
    Params : type
        The frozen parameter dataclass; it has a ``diameter`` field.
    default_model : str or None
        ``'bundled:NAME'`` used when no model is given; None for engines without one.
    architecture : str or None
        The ``architecture`` string of the engine's weights files.
    input_kind : str
        What the default model expects (a key of
        :data:`~napari_kaizen.engines._common.loaded.INPUT_KINDS`).
    learned : bool
        Whether the engine has models (``load_model``, ``finetune``, ``kaizen train``).
    """

    name: str
    title: str
    Params: type
    default_model: str | None
    architecture: str | None
    input_kind: str
    learned: bool

    def segment(self, image: Any, params: Any = None, *, model: Any = None, device: Any = "auto") -> Iterator[Any]:
        """Segment one 2-D image; the last snapshot is a done ``SegmentationSnapshot``."""

    def scale_for(self, image: Any, params: Any = None, *, model: Any = None, prepared: Any = None) -> Any:
        """The object scale (a ``Scale``) this engine segments ``image`` at: its one reading of
        ``params.diameter`` (a number, ``'auto'`` or None), shared by plain, tiled and stack runs."""

    def load_model(self, model: Any = None, device: Any = "auto") -> Any:
        """Load ``'bundled:NAME'`` / a weights path once, to reuse across images."""

    def finetune(self, images: Any, labels: Any, **kwargs: Any) -> Iterator[Any]:
        """Train a model further on corrected labels; a ``TrainingSnapshot`` generator."""

    def add_train_arguments(self, parser: Any) -> None:
        """Add the options of ``kaizen train NAME`` to an argparse parser."""

    def run_train(self, args: Any) -> int:
        """Run ``kaizen train NAME`` from parsed arguments."""


@dataclass(frozen=True)
class PackageEngine:
    """An :class:`Engine` backed by one engine sub-package.

    ``load_model``, ``finetune`` and the CLI hooks are looked up on first use, so that
    building a parameter form or a menu never imports torch.
    """

    name: str
    module: ModuleType

    # -------------------------------------------------------------- declared names
    @property
    def title(self) -> str:
        return str(self.module.TITLE)

    @property
    def Params(self) -> type:  # noqa: N802 - the engines' own name for it
        return self.module.Params

    #: Older name of :attr:`Params`.
    params_class = Params

    @property
    def default_model(self) -> str | None:
        return getattr(self.module, "DEFAULT_MODEL", None)

    @property
    def architecture(self) -> str | None:
        return getattr(self.module, "ARCHITECTURE", None)

    @property
    def input_kind(self) -> str:
        return str(getattr(self.module, "INPUT_KIND", "nuclei"))

    @property
    def learned(self) -> bool:
        return self.default_model is not None

    @property
    def calibrates_on_crops(self) -> bool:
        """Whether a tiled run measures the engine's image-wide values (``whole_image_value``)
        by running it on sample crops first: the package says so with ``CALIBRATE_ON_CROPS``
        (cheap engines; Kaizen's decomposition would take minutes, so its tiles keep their
        own dim-object contrast)."""
        return bool(getattr(self.module, "CALIBRATE_ON_CROPS", False))

    def params(self, **overrides: Any) -> Any:
        """The engine's params with ``overrides`` (unknown names raise TypeError)."""
        return self.Params(**overrides)

    # -------------------------------------------------------------- calls
    def segment(self, image: Any, params: Any = None, *, model: Any = None, device: Any = "auto") -> Iterator[Any]:
        if model is not None and not self.learned:
            raise EngineNotAvailableError(f"the {self.name} engine uses no model; leave the model out")
        return self.module.segment(self._input(image, params), params, model=model, device=device)

    def scale_for(self, image: Any, params: Any = None, *, model: Any = None, prepared: Any = None) -> Any:
        return self.module.scale_for(self._input(image, params), params, model=model, prepared=prepared)

    def _input(self, image: Any, params: Any) -> Any:
        """``image`` as the engine takes it: a nucleus engine's objects bright on a dark field.

        Engines with an ``objects`` parameter (the nucleus engines) look for bright
        objects; a bright-field plane is turned round here, once, by
        :func:`~._common.normalize.bright_objects`. Inside a tiled run the plan has
        turned the whole image round already (every tile the same way).
        """
        objects = getattr(params if params is not None else self.Params(), "objects", None)
        if objects is None:
            return image
        from ._common.normalize import bright_objects, in_tiled_run

        return image if in_tiled_run() else bright_objects(image, objects)

    def load_model(self, model: Any = None, device: Any = "auto") -> Any:
        return self._learned_only("load_model", "loads no model")(model, device=device)

    def finetune(self, images: Any, labels: Any, **kwargs: Any) -> Iterator[Any]:
        return self._learned_only("finetune", "has no model to fine-tune")(images, labels, **kwargs)

    def add_train_arguments(self, parser: Any) -> None:
        self._cli().add_train_arguments(parser)

    def run_train(self, args: Any) -> int:
        return int(self._cli().run_train(args) or 0)

    def _learned_only(self, attr: str, why: str):
        if not self.learned:
            raise EngineNotAvailableError(f"the {self.name} engine {why}; the learned engines are "
                                          f"{', '.join(n for n in learned_engines())}")
        return getattr(self.module, attr)

    def _cli(self) -> ModuleType:
        if not self.learned:
            raise EngineNotAvailableError(f"the {self.name} engine has nothing to train")
        return importlib.import_module(f"{self.module.__name__}.cli")

    def __repr__(self) -> str:
        return f"<engine {self.name!r}: {self.title}>"


def get_engine(name: str) -> PackageEngine:
    """Load an engine by name.

    Raises
    ------
    EngineNotAvailableError
        If the name is unknown, the engine is not built in this version, or its package
        misses part of the contract (named in the message).
    """
    if name not in ENGINE_MODULES:
        raise EngineNotAvailableError(f"unknown engine '{name}': choose one of {', '.join(ENGINE_MODULES)}")
    try:
        module = importlib.import_module(ENGINE_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(ENGINE_MODULES[name]):
            raise EngineNotAvailableError(f"the '{name}' engine is not built yet in this version of napari-kaizen") from None
        raise
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if getattr(module, "DEFAULT_MODEL", None) is not None:
        missing += [attr for attr in REQUIRED_LEARNED if attr not in _names(module)]
    if missing:
        raise EngineNotAvailableError(f"the '{name}' engine package lacks {', '.join(missing)} (see docs/developers.md)")
    return PackageEngine(name=name, module=module)


def _names(module: ModuleType) -> set[str]:
    """Names a package defines or lazily provides (its ``__all__``), without importing them."""
    return set(vars(module)) | set(getattr(module, "__all__", ()))


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


def learned_engines() -> list[str]:
    """Names of the engines that have models."""
    return [n for n in available_engines() if get_engine(n).learned]


def lazy_exports(package: str, table: dict[str, str]):
    """A module ``__getattr__`` that imports ``table[name]`` (a submodule) on first access.

    Engine packages use it for everything that needs torch (``load_model``,
    ``finetune``, the networks), so importing an engine stays light.
    """
    def __getattr__(name: str) -> Any:
        if name in table:
            module = importlib.import_module(table[name], package)
            value = getattr(module, name)
            # Cache on the package (a submodule of the same name as a function, e.g.
            # ``train``, must not shadow it afterwards).
            setattr(importlib.import_module(package), name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def signature_of(func: Any) -> list[str]:
    """Keyword names of ``func`` (for the contract test and the docs)."""
    return list(inspect.signature(func).parameters)


#: What the layers above the engines (jobs, tiled runs, the CLI, the widgets) use of
#: the engines' shared machinery, by its one name: they import these from
#: ``napari_kaizen.engines`` and never from ``engines._common``
#: (``tests/test_import_structure.py``). Each is imported on first use, so importing
#: this package stays light.
SHARED: dict[str, str] = {
    # one reading of a diameter, and what an engine's scale rule returns
    "parse_diameter": "._common.scale", "SPARSE_SIDE": "._common.scale", "Scale": "._common.scale_rule",
    # input planes and normalisation
    "InputWarning": "._common.normalize", "MIN_SIDE": "._common.normalize", "to_plane": "._common.normalize",
    "rgb_layout": "._common.normalize",
    "as_float": "._common.normalize", "noise_sd": "._common.normalize", "WholeImageStats": "._common.normalize",
    "whole_image_stats": "._common.normalize", "pooled_values": "._common.normalize",
    "share_standing_out": "._common.normalize", "pixels_standing_out": "._common.normalize",
    "SPARSE_SHARE": "._common.normalize", "DARK_OBJECTS": "._common.normalize",
    "decide_dark": "._common.polarity", "turned_round": "._common.polarity",
    "grey_plane_of_colour": "._common.normalize", "colour_plane_kind": "._common.normalize",
    "colour_without_grey_plane": "._common.normalize", "plane_of_one_plane": "._common.normalize",
    "channel_error": "._common.normalize", "colour_stack_layout": "._common.normalize",
    "grey_of_colour": "._common.normalize",
    # snapshots and running them
    "SegmentationSnapshot": "._common.snapshots", "run_to_end": "._common.snapshots",
    "segment_planes": "._common.planes",
    # the stitching tile of huge images
    "DEFAULT_TILE": "._common.stitch", "Tile": "._common.stitch", "check_tile": "._common.stitch",
    "choose_halo": "._common.stitch", "merge_tile": "._common.stitch", "owned_objects": "._common.stitch",
    "tile_grid": "._common.stitch",
    # devices, models and their files
    "DEVICE_CHOICES": "._common.device", "INPUT_KINDS": "._common.metadata", "weights_paths": "._common.weights",
}

__getattr__ = lazy_exports(__name__, SHARED)
