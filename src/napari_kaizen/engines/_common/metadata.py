"""One schema for a model's JSON: what it expects, what it finds, its scale and its origin.

Models written by different versions spell the same facts differently: what a model
expects has been ``input_kind``, ``channel`` (the FCN's stain) and ``input`` (prose,
``'label-free (phase contrast, ...)'``); what it finds ``output_kind``, ``task``
(``'fluorescence'`` for an ISL-pretrained U-Net), ``target`` and ``channel``.
:func:`read_model_metadata` reads every spelling into one frozen
:class:`ModelMetadata`, so older and hand-written JSONs still load, and the registry,
the tiled runner and the widgets ask it instead of branching on engine names.
Trainers write the current keys through :func:`kind_keys`.

Examples
--------
>>> m = read_model_metadata({"architecture": "googlenet-fcn", "channel": "membrane", "object_diameter": 25})
>>> m.input_kind, m.output_kind, m.object_diameter
('membrane', 'cells', 25.0)
>>> read_model_metadata({"input": "label-free (phase contrast), one channel", "task": "fluorescence"}).output_kind
'fluorescence'
>>> kind_keys("nuclei", "nuclei")
{'input_kind': 'nuclei', 'output_kind': 'nuclei'}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import WeightsError
from .normalize import DEFAULT_PERCENTILES

#: What a model's input image is: key -> words for menus and messages.
INPUT_KINDS: dict[str, str] = {
    "nuclei": "fluorescent nuclei (DAPI / Hoechst-like)",
    "membrane": "fluorescent membrane / cytoplasm (CellMask-like)",
    "label-free": "label-free (bright field, phase contrast or DIC)",
}

#: What a model finds: key -> words for menus.
OUTPUT_KINDS: dict[str, str] = {
    "nuclei": "nuclei",
    "cells": "whole cells",
    "fluorescence": "a predicted fluorescence image only (no objects)",
}


@dataclass(frozen=True)
class ModelMetadata:
    """What a model's JSON says, in one spelling.

    Attributes
    ----------
    architecture : str or None
        The ``architecture`` string (which engine the weights belong to).
    input_kind : str or None
        A key of :data:`INPUT_KINDS`; None when the JSON does not say (the engine's
        own ``INPUT_KIND`` then applies).
    output_kind : str
        A key of :data:`OUTPUT_KINDS`.
    object_diameter : float or None
        Median object diameter (pixels) of the training data, if valid.
    percentiles : (float, float)
        Normalisation percentiles the model was trained with.
    description : str
        One line on how it was made.
    created : str or None
        When the weights were written.
    package_version : str or None
        The napari-kaizen version that wrote them.
    """

    architecture: str | None
    input_kind: str | None
    output_kind: str
    object_diameter: float | None
    percentiles: tuple[float, float]
    description: str = ""
    created: str | None = None
    package_version: str | None = None

    @property
    def segments(self) -> bool:
        """Whether the model gives objects (not only a predicted image)."""
        return self.output_kind != "fluorescence"

    @property
    def membrane(self) -> bool:
        """Whether the model reads a membrane stain (object size cannot be estimated from it)."""
        return self.input_kind == "membrane"


def _kind_from_text(value: Any) -> str | None:
    """``'nuclei'`` / ``'membrane'`` / ``'label-free'``, also from prose that starts with one."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in INPUT_KINDS:
        return text
    return next((k for k in INPUT_KINDS if text.startswith(k)), None)


def _diameter(value: Any) -> float | None:
    try:
        d = float(value)
    except (TypeError, ValueError):
        return None
    return d if np.isfinite(d) and d > 0 else None


def read_model_metadata(meta: Mapping[str, Any], *, default_input: str | None = None) -> ModelMetadata:
    """Read a model's JSON (any version's spelling) into a :class:`ModelMetadata`.

    Parameters
    ----------
    meta : mapping
        The parsed JSON.
    default_input : str, optional
        The input kind when the JSON says none (an engine's ``INPUT_KIND``).

    Returns
    -------
    ModelMetadata

    Raises
    ------
    WeightsError
        ``meta`` is not a mapping.
    """
    if not isinstance(meta, Mapping):
        raise WeightsError(f"model metadata must be a JSON object, not {type(meta).__name__}")
    input_kind = (_kind_from_text(meta.get("input_kind")) or _kind_from_text(meta.get("channel"))
                  or _kind_from_text(meta.get("input")) or default_input)
    output_kind = meta.get("output_kind")
    if output_kind not in OUTPUT_KINDS:
        if meta.get("task") == "fluorescence":
            output_kind = "fluorescence"
        else:
            which = meta.get("target") or meta.get("channel") or "nuclei"
            output_kind = "cells" if which == "membrane" else "nuclei"
    norm = meta.get("normalization")
    p = norm.get("percentiles", DEFAULT_PERCENTILES) if isinstance(norm, Mapping) else DEFAULT_PERCENTILES
    made = meta.get("training") if isinstance(meta.get("training"), Mapping) else {}
    description = str(meta.get("description") or made.get("description") or made.get("data") or "")
    return ModelMetadata(
        architecture=meta.get("architecture"),
        input_kind=input_kind,
        output_kind=str(output_kind),
        object_diameter=_diameter(meta.get("object_diameter")),
        percentiles=(float(p[0]), float(p[1])),
        description=description.splitlines()[0][:200] if description else "",
        created=meta.get("created"),
        package_version=meta.get("napari_kaizen_version"),
    )


def kind_keys(input_kind: str, output_kind: str) -> dict[str, str]:
    """The current keys a trainer writes for what its model expects and finds.

    Raises
    ------
    WeightsError
        A kind that is not a key of :data:`INPUT_KINDS` / :data:`OUTPUT_KINDS`.
    """
    if input_kind not in INPUT_KINDS:
        raise WeightsError(f"input kind {input_kind!r} is not one of {', '.join(INPUT_KINDS)}")
    if output_kind not in OUTPUT_KINDS:
        raise WeightsError(f"output kind {output_kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
    return {"input_kind": input_kind, "output_kind": output_kind}


def with_kind_keys(meta: Mapping[str, Any], *, default_input: str) -> dict[str, Any]:
    """``meta`` plus the current ``input_kind`` / ``output_kind`` keys, read from whatever
    it says already (the one helper every trainer writes them through).

    Examples
    --------
    >>> with_kind_keys({"channel": "membrane"}, default_input="nuclei")
    {'channel': 'membrane', 'input_kind': 'membrane', 'output_kind': 'cells'}
    """
    info = read_model_metadata(meta, default_input=default_input)
    return {**meta, **kind_keys(str(info.input_kind), info.output_kind)}
