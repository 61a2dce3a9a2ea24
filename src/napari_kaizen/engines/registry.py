"""One list of models: the bundled ones and the person's own fine-tuned ones.

Every model is a ``.safetensors`` file with a JSON beside it. The JSON's
``architecture`` says which engine it belongs to, and what image it expects
(fluorescent nuclei, a membrane stain, or a label-free channel) and what it finds are
read in every spelling by :func:`~napari_kaizen.engines._common.metadata.read_model_metadata`
(an engine's own ``INPUT_KIND`` when the JSON does not say). The CLI (``kaizen engines``, ``--model``), every widget's model list
and the fine-tune panels read this registry; nothing else lists models.

Fine-tuned models go to :func:`user_model_dir` (``$NAPARI_KAIZEN_MODELS``, else the
platform's user data folder), so they are there in the next napari session too. Only
the JSONs are read here; tensors are hashed when a model is loaded.

Examples
--------
>>> from napari_kaizen.engines.registry import list_models
>>> [m.spec for m in list_models("fcn") if m.source == "bundled"]
['bundled:fcn_cells', 'bundled:fcn_nuclei']
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ._common.metadata import INPUT_KINDS, OUTPUT_KINDS, read_model_metadata
from ._common.polarity import dark_objects
from ._common.weights import bundled_dir, read_metadata, weights_paths


@dataclass(frozen=True)
class ModelEntry:
    """One model a person can choose.

    Attributes
    ----------
    spec : str
        What ``load_model`` / ``--model`` take: ``'bundled:NAME'`` or a ``.safetensors`` path.
    engine : str
        The engine it belongs to.
    name : str
        File stem.
    source : {'bundled', 'user', 'file'}
        Shipped with the package, in the user model folder, or anywhere else.
    input_kind, output_kind : str
        What it expects and what it finds (keys of :data:`INPUT_KINDS`, :data:`OUTPUT_KINDS`).
    description : str
        One line on how it was made (fine-tuned from what, on which image).
    """

    spec: str
    engine: str
    name: str
    source: str
    input_kind: str
    output_kind: str
    description: str = ""

    @property
    def label(self) -> str:
        """A menu label: name, what it finds, from what, and where it comes from."""
        origin = {"bundled": "bundled", "user": "fine-tuned"}.get(self.source, "file")
        return f"{self.name}: {OUTPUT_KINDS[self.output_kind]} from {self.input_kind} ({origin})"

    @property
    def segments(self) -> bool:
        """Whether the model gives objects (not only a predicted image)."""
        return self.output_kind != "fluorescence"


def user_model_dir() -> Path:
    """Where fine-tuned models are kept: ``$NAPARI_KAIZEN_MODELS`` or the user data folder."""
    env = os.environ.get("NAPARI_KAIZEN_MODELS")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "napari-kaizen" / "models"


def new_model_path(stem: str, folder: str | Path | None = None) -> Path:
    """A ``.safetensors`` path in ``folder`` (default the user model folder) that no file uses yet.

    The folder is created; ``stem``, ``stem_2``, ``stem_3``... are tried in turn, so a
    model the person made is never replaced.
    """
    folder = Path(folder) if folder is not None else user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = folder / (stem if i == 1 else f"{stem}_{i}")
        if not candidate.with_suffix(".safetensors").exists() and not candidate.with_suffix(".json").exists():
            return candidate.with_suffix(".safetensors")
    raise WeightsError(f"no free model name for {stem} in {folder}")


def _architectures() -> dict[str, tuple[str, str]]:
    """``architecture`` -> (engine name, the engine's own input kind)."""
    from . import ENGINE_MODULES, get_engine

    out = {}
    for name in ENGINE_MODULES:
        engine = get_engine(name)
        if engine.architecture:
            out[engine.architecture] = (name, engine.input_kind)
    return out


def model_entry(spec: str | Path, *, source: str | None = None) -> ModelEntry:
    """The registry entry of one model, from its JSON only.

    Raises
    ------
    WeightsError
        The files are missing, the JSON is unreadable, or its architecture belongs to
        no engine of this version.
    """
    tensor_path, json_path = weights_paths(spec)
    if not tensor_path.exists():
        raise WeightsError(f"weights file {tensor_path} not found")
    meta = read_metadata(tensor_path)
    arch = meta.get("architecture")
    engines = _architectures()
    if arch not in engines:
        raise WeightsError(f"{json_path}: architecture {arch!r} belongs to no engine; known: {', '.join(engines)}")
    engine, own_input = engines[arch]
    info = read_model_metadata(meta, default_input=own_input)
    text = str(spec)
    if source is None:
        source = "bundled" if text.startswith("bundled:") else "file"
    if not text.startswith("bundled:"):
        text = str(tensor_path.resolve())
    return ModelEntry(spec=text, engine=engine, name=tensor_path.stem, source=source,
                      input_kind=str(info.input_kind), output_kind=info.output_kind, description=info.description)


def list_models(engine: str | None = None, *, user_dir: str | Path | None = None,
                skipped: list[tuple[Path, str]] | None = None) -> list[ModelEntry]:
    """Bundled models, then the user's fine-tuned ones (newest last), optionally of one engine.

    A file in the user folder that cannot be read (bad JSON, a dangling link, no
    permission) is skipped, not fatal: one bad file must not hide every other model
    from the menus. Pass a list as ``skipped`` to get ``(path, reason)`` for each.
    """
    entries = [model_entry(f"bundled:{p.stem}") for p in sorted(bundled_dir().glob("*.safetensors"))]
    folder = Path(user_dir) if user_dir is not None else user_model_dir()
    bad: list[tuple[Path, str]] = []
    if folder.is_dir():
        found = []
        for path in folder.glob("*.safetensors"):
            try:
                found.append((path.stat().st_mtime, path))
            except OSError as exc:
                bad.append((path, "a link to a file that does not exist" if path.is_symlink()
                            else exc.strerror or str(exc)))
        for _, path in sorted(found):
            try:
                entries.append(model_entry(path, source="user"))
            except (WeightsError, OSError, ValueError) as exc:
                bad.append((path, str(exc)))
    if skipped is not None:
        skipped.extend(sorted(bad))
    return [e for e in entries if engine is None or e.engine == engine]


def skipped_line(skipped: list[tuple[Path, str]]) -> str:
    """One line naming the model files that were skipped and why."""
    return (f"skipped {len(skipped)} model file(s) that cannot be read: "
            + "; ".join(f"{p.name} ({why})" for p, why in skipped))


def image_kind(image: np.ndarray) -> str:
    """Guess whether a 2-D image is fluorescence (dark background) or label-free.

    A fluorescence field is mostly dark background with bright objects, so its median
    sits near its low percentile; bright field, phase and DIC images have a mid-grey
    background with darker and brighter structure around it. Returns ``'fluorescence'``
    or ``'label-free'``.
    """
    arr = np.asarray(image, dtype=np.float32)
    step = max(1, int(np.sqrt(arr.size / 250_000)))
    sample = arr[::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return "fluorescence"
    lo, mid, hi = np.percentile(sample, [1.0, 50.0, 99.5])
    if hi <= lo:
        return "fluorescence"
    return "fluorescence" if (mid - lo) / (hi - lo) < 0.3 else "label-free"


def input_warning(entry: ModelEntry, image: np.ndarray) -> str | None:
    """A one-line warning when ``image`` does not look like what ``entry`` expects, else None.

    A nucleus model given a plane whose objects are darker than its field (stained
    nuclei in bright-field) says nothing here: the engine turns the plane round and
    says so itself (:data:`~._common.normalize.DARK_OBJECTS`).
    """
    kind = image_kind(image)
    wants_label_free = entry.input_kind == "label-free"
    if wants_label_free == (kind == "label-free"):
        return None
    if not wants_label_free and np.ndim(image) == 2 and dark_objects(image):
        return None
    looks = "a label-free image" if kind == "label-free" else "a fluorescence image"
    return (f"the image looks like {looks} but the model {entry.name} expects {INPUT_KINDS[entry.input_kind]}; "
            f"choose a model for {looks.split(' ', 1)[1]}s (see `kaizen engines`)")
