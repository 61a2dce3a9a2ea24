"""OME-Zarr high-content screening plates: which wells and fields a plate holds, and its per-well tables.

An NGFF plate is a zarr group with ``plate`` metadata (its ``wells``, each a
``path`` such as ``A/1``); each well is a group with ``well`` metadata (its
``images``, the fields, each a ``path`` such as ``0``); each field is an OME-Zarr
image (``multiscales``). ome-zarr-py reads the metadata in NGFF 0.4 and 0.5
(:func:`napari_kaizen.io.zarr.ome_attrs`); this module only walks it and says, in
one line, what is missing when a plate is not one.

Examples
--------
>>> from napari_kaizen.io.plates import well_name
>>> well_name("B/03")
'B03'
"""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .zarr import ome_attrs

#: What a plate must hold, said when one does not.
PLATE_LAYOUT = ("an OME-Zarr HCS plate (NGFF 0.4 or 0.5): 'plate' metadata listing 'wells' by path, each well "
                "'well' metadata listing its 'images' (fields) by path, each field an OME-Zarr image ('multiscales')")


@dataclass(frozen=True)
class Well:
    """One well: its path in the plate (``'A/1'``) and its fields' folders."""

    path: str
    fields: tuple[Path, ...]

    @property
    def name(self) -> str:
        """The well's name as people write it (``'A1'``)."""
        return well_name(self.path)


@dataclass(frozen=True)
class Plate:
    """The wells and fields of a plate, read from its metadata (no pixels read)."""

    path: Path
    name: str
    version: str | None
    wells: tuple[Well, ...]

    @property
    def fields(self) -> list[tuple[Well, Path]]:
        """Every ``(well, field folder)``, well by well."""
        return [(w, f) for w in self.wells for f in w.fields]


def well_name(path: str) -> str:
    """``'A/1'`` -> ``'A1'``: the row and column of a well path, joined."""
    return "".join(str(path).strip("/").split("/"))


def is_plate(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group with NGFF ``plate`` metadata (checked only for folders)."""
    p = Path(path)
    if not p.is_dir() or not any((p / m).exists() for m in ("zarr.json", ".zattrs", ".zgroup")):
        return False
    return "plate" in ome_attrs(p)[0]


def read_plate(path: str | os.PathLike) -> Plate:
    """Read a plate's wells and fields from its metadata.

    Parameters
    ----------
    path : path-like
        The plate's folder (``plate.zarr``).

    Returns
    -------
    Plate

    Raises
    ------
    InputError
        In one line: what is missing (no ``plate`` metadata, no wells, a well without
        ``well`` metadata or fields, a field that is no OME-Zarr image) and what a plate is.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"plate {root} not found (expected {PLATE_LAYOUT})")
    attrs, version = ome_attrs(root)
    plate = attrs.get("plate")
    if not isinstance(plate, Mapping):
        raise InputError(f"{root.name} has no 'plate' metadata; expected {PLATE_LAYOUT}")
    listed = plate.get("wells")
    if not isinstance(listed, Sequence) or not listed:
        raise InputError(f"{root.name}: its 'plate' metadata lists no 'wells'; expected {PLATE_LAYOUT}")
    wells = []
    for entry in listed:
        wpath = entry.get("path") if isinstance(entry, Mapping) else None
        if not isinstance(wpath, str) or not wpath:
            raise InputError(f"{root.name}: a well of its 'plate' metadata has no 'path' ({entry!r}); expected {PLATE_LAYOUT}")
        folder = root / wpath
        well = ome_attrs(folder)[0].get("well") if folder.is_dir() else None
        if not isinstance(well, Mapping):
            what = "has no 'well' metadata" if folder.is_dir() else "does not exist"
            raise InputError(f"{root.name}: well {wpath} {what}; expected {PLATE_LAYOUT}")
        images = well.get("images")
        if not isinstance(images, Sequence) or not images:
            raise InputError(f"{root.name}: well {wpath}'s 'well' metadata lists no 'images' (fields); expected {PLATE_LAYOUT}")
        fields = []
        for image in images:
            ipath = image.get("path") if isinstance(image, Mapping) else None
            field = folder / str(ipath)
            if not isinstance(ipath, str) or not field.is_dir() or not ome_attrs(field)[0].get("multiscales"):
                raise InputError(f"{root.name}: field {wpath}/{ipath} of well {wpath} is not an OME-Zarr image "
                                 f"('multiscales' metadata); expected {PLATE_LAYOUT}")
            fields.append(field)
        wells.append(Well(path=wpath, fields=tuple(fields)))
    return Plate(path=root, name=str(plate.get("name") or root.stem), version=version, wells=tuple(wells))


def write_well_table(path: str | os.PathLike, tables: Sequence[tuple[str, Mapping[str, np.ndarray]]], *,
                     well: str, overwrite: bool = False) -> Path:
    """Write the measurements of one well's fields as one CSV: a row per object, ``well`` and ``field`` first.

    Parameters
    ----------
    path : path-like
    tables : sequence of (field name, measurements table)
        Each table as :func:`napari_kaizen.io.measurements.measurements_table` gives it;
        columns missing from one field are left empty.
    well : str
    overwrite : bool

    Returns
    -------
    Path
    """
    from .._files import atomic_write

    columns: list[str] = []
    for _, table in tables:
        columns += [c for c in table if c not in columns]
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["well", "field", *columns])
    for field, table in tables:
        n = len(table["label"]) if "label" in table else 0
        for i in range(n):
            row: list[object] = [well, field]
            for c in columns:
                if c not in table:
                    row.append("")
                    continue
                v = table[c][i]
                row.append(int(v) if np.issubdtype(type(v), np.integer) else repr(float(v)))
            writer.writerow(row)
    text = buf.getvalue()
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text), overwrite=overwrite)


def write_counts_table(path: str | os.PathLike, counts: Sequence[tuple[str, str, int]], *, overwrite: bool = False) -> Path:
    """Write ``(well, field, objects)`` rows as a CSV, with each well's total after its fields."""
    from .._files import atomic_write

    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["well", "field", "objects"])
    totals: dict[str, int] = {}
    for well, field, n in counts:
        writer.writerow([well, field, int(n)])
        totals[well] = totals.get(well, 0) + int(n)
    for well, n in totals.items():
        writer.writerow([well, "all", n])
    text = buf.getvalue()
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text), overwrite=overwrite)
