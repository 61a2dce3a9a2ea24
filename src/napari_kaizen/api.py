"""The public Python API: segment an image, watch it being segmented, fine-tune a model.

These are the functions :mod:`napari_kaizen` exports; everything they need is imported
when they are called, so ``import napari_kaizen`` stays free of torch and napari.

Examples
--------
>>> import napari_kaizen
>>> from napari_kaizen.data import synthesize
>>> field = synthesize(seed=1, shape=(128, 128), density=0.4)
>>> labels = napari_kaizen.segment(field.nuclei, engine="classical", diameter="auto")
>>> labels.shape, labels.dtype.kind, int(labels.max()) > 0
((128, 128), 'i', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

S = TypeVar("S")


def _engine_and_params(engine: Any, params: Any, overrides: dict[str, Any]) -> tuple[Any, Any]:
    from .engines import get_engine
    from .jobs import make_params

    eng = get_engine(engine) if isinstance(engine, str) else engine
    if params is None:
        return eng, make_params(eng, overrides)
    if not isinstance(params, eng.params_class):
        from .errors import InputError

        raise InputError(f"params is a {type(params).__name__}; the {eng.name} engine takes {eng.params_class.__name__}")
    if overrides:
        base = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
        return eng, make_params(eng, {**base, **overrides})
    return eng, params


def iter_segment(image: Any, engine: Any = "kaizen", *, model: Any = None, device: str = "auto", params: Any = None,
                 **overrides: Any) -> Iterator[Any]:
    """Segment one 2-D image, yielding what the engine has found so far (for live use).

    Parameters
    ----------
    image : array_like, shape (H, W)
        One plane (pick a plane or channel of a stack or RGB image first).
    engine : str
        ``'kaizen'``, ``'unet'``, ``'fcn'`` or ``'classical'``
        (:data:`napari_kaizen.engines.ENGINE_MODULES`).
    model : str, path or loaded model, optional
        ``'bundled:NAME'``, a ``.safetensors`` path, or a model from the engine's
        ``load_model`` (reuse it across images). Default: the engine's default model.
    device : str
        ``'auto'`` (CUDA, then MPS, then CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'``.
    params : engine params, optional
        The engine's ``Params``; ``overrides`` replace its fields.
    **overrides
        Fields of the engine's ``Params``, e.g. ``diameter=17`` (pixels, ``'auto'`` or
        None, read by :func:`~napari_kaizen.engines._common.scale.parse_diameter`).

    Yields
    ------
    SegmentationSnapshot
        Progress, intermediate maps and the labels so far; the last has ``done=True``
        and the final ``labels``. Closing the generator cancels the run.

    Raises
    ------
    KaizenError
        An unknown engine or parameter, or a bad value, in one line.
    """
    eng, p = _engine_and_params(engine, params, overrides)
    if model is not None and not eng.learned:
        from .errors import EngineNotAvailableError

        raise EngineNotAvailableError(f"the {eng.name} engine uses no model; leave the model out")
    return eng.segment(image, p, model=model, device=device)


def segment(image: Any, engine: Any = "kaizen", *, model: Any = None, device: str = "auto", params: Any = None,
            **overrides: Any) -> np.ndarray:
    """Segment one 2-D image; return its instance labels.

    The same run as :func:`iter_segment`, driven to its end.

    Parameters
    ----------
    image : array_like, shape (H, W)
    engine : str
        ``'kaizen'`` (default), ``'unet'``, ``'fcn'`` or ``'classical'``.
    model, device, params, **overrides
        As :func:`iter_segment`.

    Returns
    -------
    labels : ndarray of int, shape (H, W)
        0 is background, 1..N the objects.
    """
    last = run_to_end(iter_segment(image, engine, model=model, device=device, params=params, **overrides))
    if last.labels is None:
        from .errors import KaizenError

        raise KaizenError(f"the {engine} engine finished without labels")
    return np.asarray(last.labels)


def finetune(images: Any, labels: Any, engine: Any = "kaizen", **kwargs: Any) -> Iterator[Any]:
    """Fine-tune an engine's model on (corrected) labels; a generator of training snapshots.

    Parameters
    ----------
    images, labels : ndarray or sequence of ndarray
        Images and their instance labels (e.g. a corrected labels layer).
    engine : str
        A learned engine: ``'kaizen'``, ``'unet'`` or ``'fcn'``.
    **kwargs
        The engine's ``finetune`` options: ``model`` (the starting point), ``output``
        (where the weights go), ``steps``, ``regions``, ``device``, ...

    Yields
    ------
    TrainingSnapshot
        Progress and losses; the last has ``done=True`` and ``weights_path``.
    """
    from .engines import get_engine

    eng = get_engine(engine) if isinstance(engine, str) else engine
    return eng.finetune(images, labels, **kwargs)


def run_to_end(snapshots: Iterable[S]) -> S:
    """Drive a snapshot generator (:func:`iter_segment`, :func:`finetune`, an engine's
    ``segment``) to its end and return the last snapshot."""
    from .engines import run_to_end as drain

    return drain(snapshots)
