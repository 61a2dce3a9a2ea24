"""The model picker of the Kaizen widget: bundled Kaizen weights, or a weights file.

Only the metadata JSON is read on the GUI thread (to list the bundled models and to
refuse a file made for another architecture with a one-line message); the tensors
are loaded in the worker thread by :meth:`ModelChoice.loader`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui import widgets as mw

from ..engines._common.errors import WeightsError

#: The ``architecture`` of Kaizen weights (``engines/kaizen/model.py``; not imported
#: from there because that module imports torch).
KAIZEN_ARCHITECTURE = "kaizen-vqvae"

#: The combo box entry that reveals the file picker.
CHOOSE_FILE = "choose-file"


def bundled_kaizen_models() -> list[str]:
    """Names of the bundled weights whose metadata says they are Kaizen VQ-VAEs."""
    from ..engines._common.weights import list_bundled, read_metadata

    names = []
    for name in list_bundled():
        try:
            meta = read_metadata(f"bundled:{name}")
        except WeightsError:
            continue
        if meta.get("architecture") == KAIZEN_ARCHITECTURE:
            names.append(name)
    return names


def check_weights_file(path: str | Path) -> Path:
    """The ``.safetensors`` path of a Kaizen weights file, or a one-line WeightsError.

    Reads only the JSON beside the tensors; the tensors are checked when loaded.
    """
    from ..engines._common.weights import read_metadata, weights_paths

    text = str(path).strip()
    if text in ("", "."):
        raise WeightsError("no weights file chosen: choose a Kaizen .safetensors file (with its .json beside it)")
    tensors, _ = weights_paths(text)
    if not tensors.is_file():
        raise WeightsError(f"weights file {tensors} not found")
    meta = read_metadata(tensors)
    arch = meta.get("architecture")
    if arch != KAIZEN_ARCHITECTURE:
        raise WeightsError(f"{tensors.name} holds a '{arch}' model, not Kaizen weights ('{KAIZEN_ARCHITECTURE}')")
    return tensors


class ModelChoice(mw.Container):
    """A combo box of Kaizen models plus "Choose file…" with a file picker.

    The value is ``'bundled:NAME'``, a weights path, or an already loaded model object
    added with :meth:`add_model` (e.g. fine-tuned weights, or a model a script built).
    """

    def __init__(self) -> None:
        self._choices: list[tuple[str, Any]] = [(f"{n} (bundled)", f"bundled:{n}") for n in bundled_kaizen_models()]
        self.combo = mw.ComboBox(
            choices=self._all_choices, label="model",
            tooltip="Kaizen VQ-VAE weights: a bundled model, or 'Choose file…' for a .safetensors file",
        )
        self.file = mw.FileEdit(mode="r", filter="*.safetensors", label="weights file", value="",
                                tooltip="A Kaizen .safetensors file with its .json beside it")
        super().__init__(widgets=[self.combo, self.file], labels=True)
        self.combo.value = self._choices[0][1] if self._choices else CHOOSE_FILE
        self.combo.changed.connect(self._sync)
        self._sync()
        self._cache: dict[Any, Any] = {}

    def _all_choices(self, widget=None) -> list[tuple[str, Any]]:
        return [*self._choices, ("Choose file…", CHOOSE_FILE)]

    def _sync(self, event=None) -> None:
        self.file.visible = self.combo.value == CHOOSE_FILE

    @property
    def has_bundled(self) -> bool:
        return any(isinstance(v, str) and v.startswith("bundled:") for _, v in self._choices)

    def add_model(self, model: Any, label: str | None = None, *, select: bool = True) -> None:
        """Offer ``model`` (a weights path or a loaded model) in the list, once."""
        if isinstance(model, (str, Path)) and not str(model).startswith("bundled:"):
            model = str(Path(model).with_suffix(".safetensors"))
        if not any(v is model or v == model for _, v in self._choices):
            name = label or (Path(model).name if isinstance(model, str) else getattr(model, "source", "") or "model")
            self._choices.append((name, model))
            self.combo.reset_choices()
        if select:
            self.combo.value = model

    def selected(self) -> Any:
        """What to load: ``'bundled:NAME'``, a checked weights path, or a model object.

        Raises
        ------
        WeightsError
            No file chosen, a missing file, or a file for another architecture.
        """
        value = self.combo.value
        if value == CHOOSE_FILE:
            return str(check_weights_file(self.file.value or ""))
        if isinstance(value, str) and not value.startswith("bundled:"):
            return str(check_weights_file(value))
        return value

    def loader(self, model: Any, device: str):
        """A function that loads ``model`` on ``device``; call it in the worker thread.

        Loaded weights are kept per (file, modification time, device), so stepping
        through several runs does not reload them.
        """

        def load():
            from ..engines.kaizen import load_model

            if not isinstance(model, (str, Path)):
                return load_model(model, device)
            key = (str(model), _mtime(model), device)
            if key not in self._cache:
                self._cache[key] = load_model(model, device)
            return self._cache[key]

        return load


def _mtime(model: str | Path) -> float:
    from ..engines._common.weights import weights_paths

    try:
        return weights_paths(model)[0].stat().st_mtime
    except (OSError, WeightsError):
        return 0.0
