"""The model picker every engine widget shows, read from the one model registry.

The list is :func:`~napari_kaizen.engines.registry.list_models` for the widget's engine
(bundled models, then the person's fine-tuned ones) plus "Choose file…". Only JSONs
are read on the GUI thread; the tensors are loaded (and hashed) in the worker thread,
once per file, modification time and device (:meth:`ModelPicker.loader`).

When any panel writes a fine-tuned model it calls :func:`models_changed`, and every
picker in every open widget re-reads the registry, so the new model is offered
everywhere at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui import widgets as mw
from psygnal import Signal

from ..errors import WeightsError

#: The combo box entry that reveals the file picker.
CHOOSE_FILE = "choose-file"


class _ModelEvents:
    changed = Signal()


_EVENTS = _ModelEvents()

#: User model files already named as unreadable in this session (each is said once).
_REPORTED: set[str] = set()


def models_changed() -> None:
    """Tell every model picker to re-read the registry (a model was written or removed)."""
    _EVENTS.changed.emit()


class ModelPicker(mw.Container):
    """A combo box of one engine's models plus "Choose file…" with a file picker.

    The value is ``'bundled:NAME'``, a weights path, or a loaded model object added with
    :meth:`add_model` (e.g. a model a script built).

    Parameters
    ----------
    engine : str
        Engine name; only its models are listed.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._extra: list[tuple[str, Any]] = []
        self._cache: dict[Any, Any] = {}
        self.combo = mw.ComboBox(choices=self._all_choices, label="model",
                                 tooltip="Weights to segment with: bundled, fine-tuned (yours), or 'Choose file…'")
        self.file = mw.FileEdit(mode="r", filter="*.safetensors", label="weights file", value="",
                                tooltip="A .safetensors file with its .json beside it")
        super().__init__(widgets=[self.combo, self.file], labels=True)
        self.margins = (0, 0, 0, 0)
        from ..engines import get_engine

        default = get_engine(engine).default_model
        values = [v for _, v in self._all_choices()]
        self.combo.value = default if default in values else values[0]
        self.combo.changed.connect(self._sync)
        _EVENTS.changed.connect(self.refresh)
        self._sync()

    # -------------------------------------------------------------- choices
    def _all_choices(self, widget=None) -> list[tuple[str, Any]]:
        from ..engines.registry import list_models, skipped_line

        skipped: list = []
        listed = [(m.label, m.spec) for m in list_models(self.engine, skipped=skipped)]
        new = [(p, why) for p, why in skipped if str(p) not in _REPORTED]
        if new:
            # Named once per session (the list is re-read on every change), not on every refresh.
            _REPORTED.update(str(p) for p, _ in new)
            import warnings

            warnings.warn(f"napari-kaizen: {skipped_line(new)}", UserWarning, stacklevel=2)
        known = {v for _, v in listed}
        return [*listed, *[(k, v) for k, v in self._extra if not (isinstance(v, str) and v in known)],
                ("Choose file…", CHOOSE_FILE)]

    def refresh(self) -> None:
        """Re-read the registry, keeping the current choice if it is still there."""
        try:
            self.combo.reset_choices()
        except RuntimeError:  # the Qt widget is gone (its dock was closed)
            _EVENTS.changed.disconnect(self.refresh)

    def _sync(self, event=None) -> None:
        self.file.visible = self.combo.value == CHOOSE_FILE

    @property
    def specs(self) -> list[Any]:
        """Every value the list offers (without "Choose file…")."""
        return [v for _, v in self._all_choices() if v != CHOOSE_FILE]

    def add_model(self, model: Any, label: str | None = None, *, select: bool = True) -> None:
        """Offer ``model`` (a weights path or a loaded model) in the list, once."""
        if isinstance(model, (str, Path)) and not str(model).startswith("bundled:"):
            model = str(Path(model).with_suffix(".safetensors").resolve())
        if not any(v is model or v == model for v in self.specs):
            name = label or (Path(model).name if isinstance(model, str) else getattr(model, "source", "") or "model")
            self._extra.append((name, model))
            self.combo.reset_choices()
        if select:
            self.combo.value = model

    # -------------------------------------------------------------- reading
    @property
    def value(self) -> Any:  # noqa: D102 - the combo's value
        return self.combo.value

    def entry(self, spec: Any = None):
        """The registry entry of ``spec`` (default: the selected one), or None for a model object."""
        from ..engines.registry import model_entry

        spec = self.combo.value if spec is None else spec
        if not isinstance(spec, (str, Path)) or spec == CHOOSE_FILE:
            return None
        try:
            return model_entry(spec)
        except WeightsError:
            return None

    def selected(self) -> Any:
        """What to load: ``'bundled:NAME'``, a checked weights path, or a model object.

        Raises
        ------
        WeightsError
            No file chosen, a missing file, or a model of another engine.
        """
        from ..engines.registry import model_entry

        value = self.combo.value
        if value == CHOOSE_FILE:
            text = str(self.file.value or "").strip()
            if text in ("", "."):
                raise WeightsError("no weights file chosen: choose a .safetensors file (with its .json beside it)")
            value = text
        if not isinstance(value, (str, Path)):
            return value
        entry = model_entry(value)
        if entry.engine != self.engine:
            raise WeightsError(f"{entry.name} is a {entry.engine} model, not a {self.engine} one")
        return entry.spec

    def loader(self, model: Any, device: str):
        """A function that loads ``model`` on ``device``; call it in the worker thread.

        Loaded weights are kept per (file, modification time, device), so runs after
        the first neither re-read nor re-hash them.
        """
        from ..engines import get_engine

        engine = get_engine(self.engine)

        def load():
            if not isinstance(model, (str, Path)):
                return engine.load_model(model, device)
            key = (str(model), _mtime(model), device)
            if key not in self._cache:
                self._cache.clear()  # one model per picker is enough; free the last one
                self._cache[key] = engine.load_model(model, device)
            return self._cache[key]

        return load


def _mtime(model: str | Path) -> float:
    from ..engines import weights_paths

    try:
        return weights_paths(model)[0].stat().st_mtime
    except (OSError, WeightsError):
        return 0.0
