"""A magicgui form built from an engine's frozen params dataclass.

The widget, the CLI and the tests all build from the same dataclass, so the defaults
a person sees are the paper's defaults, and the tooltips are the dataclass' numpydoc
``Attributes`` text.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from magicgui import widgets as mw

from ..engines import parse_diameter


def attribute_docs(cls: type) -> dict[str, str]:
    """Parse the numpydoc ``Attributes`` section of ``cls`` into ``{name: text}``."""
    doc = cls.__doc__ or ""
    match = re.search(r"Attributes\n\s*-+\n(.*?)(\n\s*\n\s*[A-Z][a-z]+\n\s*-+\n|\Z)", doc, re.S)
    if not match:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    names: list[str] = []
    for line in match.group(1).splitlines():
        head = re.match(r"^\s{4}([A-Za-z_][\w, ]*?)\s*:\s*(.*)$", line)
        if head and not line.startswith(" " * 8):
            for n in names:
                out[n] = " ".join(current).strip()
            names = [n.strip() for n in head.group(1).split(",")]
            current = []
        elif line.strip():
            current.append(line.strip())
    for n in names:
        out[n] = " ".join(current).strip()
    return out


def _optional_number(hint: Any) -> type | None:
    """``int`` or ``float`` for a hint ``int | None`` / ``float | None`` (a text field), else None."""
    args = set(typing.get_args(hint))
    if type(None) not in args or str in args:
        return None
    return int if int in args else float if float in args else None


def _parse_optional_number(name: str, text: str, kind: type) -> int | float | None:
    # An empty field means "derive it" (the dataclass' None: a default or the model's
    # calibrated value), as the tooltip says.
    if text.lower() in ("", "none", "auto"):
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{_label(name)} '{text}' is not {what} (leave it empty for the default)") from None


def _label(name: str) -> str:
    return name.replace("_", " ")


class ParamsForm(mw.Container):
    """Editable fields for a params dataclass; ``value()`` builds a new instance.

    Parameters
    ----------
    params_class : type
        A (frozen) dataclass.
    exclude : iterable of str
        Fields not shown (they keep their defaults or the values of ``base``).
    base : instance, optional
        Initial values (default: the class defaults).
    """

    def __init__(self, params_class: type, *, exclude=(), base: Any = None) -> None:
        super().__init__(labels=True)
        self.params_class = params_class
        self._base = base if base is not None else params_class()
        docs = attribute_docs(params_class)
        hints = typing.get_type_hints(params_class)
        self._hints = hints
        self._fields: dict[str, mw.Widget] = {}
        for f in dataclasses.fields(params_class):
            if f.name in exclude or not f.init:
                continue
            value = getattr(self._base, f.name)
            widget = self._make(f.name, hints.get(f.name), value)
            if widget is None:
                continue
            widget.tooltip = docs.get(f.name, "")
            self._fields[f.name] = widget
            self.append(widget)

    def _make(self, name: str, hint: Any, value: Any):
        label = _label(name)
        if typing.get_origin(hint) is typing.Literal:
            return mw.ComboBox(choices=list(typing.get_args(hint)), value=value, label=label, name=name)
        if isinstance(value, bool):
            return mw.CheckBox(value=value, label=label, name=name)
        if isinstance(value, int) and not isinstance(value, bool):
            return mw.SpinBox(value=value, min=0, max=10**6, label=label, name=name)
        if isinstance(value, float):
            step = 10 ** (len(f"{value:g}".split(".")[-1]) * -1) if "." in f"{value:g}" else 1.0
            return mw.FloatSpinBox(value=value, min=0.0, max=1e6, step=min(step, 0.1), label=label, name=name)
        if name == "diameter" or value is None or isinstance(value, str):
            text = "" if value is None else str(value)
            return mw.LineEdit(value=text, label=label, name=name)
        return None  # tuples etc. stay at their defaults

    def value(self) -> Any:
        """A new params instance from the form (raises ValueError with a one-line message)."""
        kwargs: dict[str, Any] = {}
        for name, widget in self._fields.items():
            v = widget.value
            if isinstance(widget, mw.LineEdit):
                text = str(v).strip()
                if name == "diameter":
                    # The same reading as the command line's --diameter (InputError is a ValueError).
                    v = parse_diameter(text)
                elif _optional_number(self._hints.get(name)) is not None:
                    v = _parse_optional_number(name, text, _optional_number(self._hints.get(name)))
                else:
                    v = text
            kwargs[name] = v
        return dataclasses.replace(self._base, **kwargs)
