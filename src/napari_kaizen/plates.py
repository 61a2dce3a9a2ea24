"""Segment every field of an OME-Zarr HCS plate: one job per field, labels into the plate.

``kaizen segment plate.zarr`` lands here. :func:`build_plate_jobs` reads the plate's
wells and fields (:mod:`napari_kaizen.io.plates`) and makes one
:class:`~napari_kaizen.jobs.SegmentJob` per field whose labels go into that field's
own ``labels/NAME`` group (so a viewer opens each field with its labels); the overwrite
/ skip rule is :func:`~napari_kaizen.jobs.select_outputs`, the same as for files, so
``--skip-existing`` resumes a plate whose run was cut off. The jobs run through
:func:`napari_kaizen.distributed.run_jobs` like any others: one dask task per field.
Afterwards :func:`write_plate_tables` measures every field from the labels on disk
and writes one CSV per well and a table of counts.

Arrows point down: the command line builds and runs plate jobs; this module imports
:mod:`napari_kaizen.jobs` and :mod:`napari_kaizen.io`, never the runners.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KaizenError
from .io.plates import Plate, read_plate


@dataclass(frozen=True)
class PlateBatch:
    """What :func:`build_plate_jobs` made.

    Attributes
    ----------
    plate : Plate
        Wells and fields, from the plate's metadata.
    label_name : str
        Name of the label image in every field's ``labels/`` group.
    jobs : list of SegmentJob
        One per field to (re)segment.
    skipped : list of Path
        Label images that exist and are kept (``skip_existing``).
    tables : Path
        Folder of the per-well CSVs.
    """

    plate: Plate
    label_name: str
    jobs: list[Any]
    skipped: list[Path]
    tables: Path
    overwrite_tables: bool = False
    removed: list[Path] = field(default_factory=list)


def labels_path(field_path: Path, label_name: str) -> Path:
    """Where a field's labels go: ``FIELD/labels/NAME``."""
    return Path(field_path) / "labels" / label_name


def well_table_path(tables: Path, well_name: str) -> Path:
    """The CSV of one well's objects: ``TABLES/WELL_measurements.csv``."""
    return Path(tables) / f"{well_name}_measurements.csv"


def counts_path(tables: Path) -> Path:
    """The table of objects per field and well: ``TABLES/counts.csv``."""
    return Path(tables) / "counts.csv"


def default_tables_folder(plate: str | os.PathLike) -> Path:
    """Per-well tables go beside the plate by default: ``PLATE_measurements/`` (a CSV is not zarr data)."""
    p = Path(plate)
    return p.with_name(p.stem + "_measurements")


def check_label_name(name: str) -> str:
    """A label image name: one path component a viewer can list (letters, digits, ``_-.``; not starting with a dot)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or ""):
        raise KaizenError(f"--labels-name '{name}': give a plain name such as nuclei (letters, digits, _ - .)")
    return name


def build_plate_jobs(
    plate: str | os.PathLike,
    *,
    engine: str = "classical",
    label_name: str | None = None,
    tables: str | os.PathLike | None = None,
    diameter: float | str | None = None,
    params: Sequence[str] | dict[str, Any] | None = None,
    model: str | None = None,
    device: str = "auto",
    channel: int | None = None,
    plane: str | tuple[int, ...] | None = None,
    tile: int | None = None,
    halo: int | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
) -> PlateBatch:
    """Build and check the jobs of one plate before any work is done.

    Parameters
    ----------
    plate : path-like
        The plate (``plate.zarr``).
    engine : str
    label_name : str, optional
        Name of the label image in each field's ``labels/`` group (default: the engine's name).
    tables : path-like, optional
        Folder of the per-well CSVs (default :func:`default_tables_folder`).
    diameter, params, model, device, channel, plane, tile, halo
        As for :func:`napari_kaizen.jobs.build_jobs`. A field larger than
        :data:`~napari_kaizen.tiled.TILED_ABOVE_PIXELS` (or any, with ``tile``) is
        segmented tile by tile.
    overwrite, skip_existing : bool
        What to do with label images and tables that exist (:func:`~napari_kaizen.jobs.select_outputs`).

    Returns
    -------
    PlateBatch

    Raises
    ------
    KaizenError
        Anything wrong with the request or the plate, in one line.
    """
    from ._files import remove_stale_temporaries
    from .engines import get_engine, parse_diameter
    from .jobs import (
        SegmentJob,
        check_halo,
        image_shape_or_none,
        is_huge,
        make_params,
        model_entry_for,
        parse_param_overrides,
        parse_plane,
        select_outputs,
    )
    from .tiled import check_tile

    if tables is not None and Path(tables).suffix.lower() in (".tif", ".tiff", ".png", ".npy", ".zarr", ".csv"):
        raise KaizenError(f"--output {tables}: a plate's labels go into the plate; --output names the folder of its "
                          "per-well CSVs (default PLATE_measurements/)")
    layout = read_plate(plate)
    if tile is not None:
        check_tile(tile, what="--tile")
    check_halo(halo)
    eng = get_engine(engine)
    name = check_label_name(label_name or eng.name)
    overrides = dict(params) if isinstance(params, dict) else parse_param_overrides(eng.params_class, params or [])
    if diameter is not None:
        overrides["diameter"] = parse_diameter(diameter, what="--diameter")
    built = make_params(eng, overrides)
    planes = parse_plane(plane) if isinstance(plane, str) or plane is None else tuple(int(i) for i in plane)
    if eng.learned:
        model_entry_for(eng, model or eng.default_model)
    elif model:
        raise KaizenError(f"the {eng.name} engine uses no model; --model applies to the learned engines")
    fields = layout.fields
    dests = [labels_path(f, name) for _, f in fields]
    keep, skipped = select_outputs(dests, overwrite=overwrite, skip_existing=skip_existing)
    folder = Path(tables) if tables is not None else default_tables_folder(layout.path)
    existing = [p for p in [counts_path(folder), *(well_table_path(folder, w.name) for w in layout.wells)] if p.exists()]
    if existing and not (overwrite or skip_existing):
        raise KaizenError(f"{existing[0]} already exists; not overwriting it (pass --overwrite, or --skip-existing "
                          "to resume a run)")
    removed = [p for i in keep for p in remove_stale_temporaries(dests[i].parent)]
    jobs = []
    for i in keep:
        src = fields[i][1]
        # A field that fits in memory is one task; a huge one is cut into tiles (its own tasks).
        tiled = tile is not None or is_huge(image_shape_or_none(src))
        jobs.append(SegmentJob(src=src, dest=dests[i], engine=eng.name, params=built, model=model, device=device,
                               channel=channel, plane=planes, tiled=tiled, tile=check_tile(tile), halo=halo,
                               overwrite=overwrite, skip_existing=skip_existing))
    return PlateBatch(plate=layout, label_name=name, jobs=jobs, skipped=skipped, tables=folder,
                      overwrite_tables=overwrite or skip_existing, removed=removed)


def write_plate_tables(batch: PlateBatch, *, intensity: bool = True) -> list[Path]:
    """Measure every field's labels (as on disk) and write one CSV per well and ``counts.csv``.

    A field without labels (its job failed) is counted as missing, not as empty: it is
    left out of the tables and named in the error raised after the others are written.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    KaizenError
        Fields had no labels to measure (named, with how to resume).
    """
    from .io.measurements import measurements_table
    from .io.plates import write_counts_table, write_well_table
    from .io.zarr import read_image_or_ome_zarr, read_label_levels

    batch.tables.mkdir(parents=True, exist_ok=True)
    written, counts, missing = [], [], []
    for well in batch.plate.wells:
        tables = []
        for f in well.fields:
            dest = labels_path(f, batch.label_name)
            if not dest.is_dir():
                missing.append(f"{well.path}/{f.name}")
                continue
            labels = np.asarray(read_label_levels(dest)[0][...])
            image = read_image_or_ome_zarr(f) if intensity else None
            if image is not None and image.shape != labels.shape:
                image = None  # a stack or several channels: which plane was segmented is the job's, so shapes only
            table = measurements_table(labels, image)
            tables.append((f.name, table))
            counts.append((well.name, f.name, len(table["label"])))
        if tables:
            written.append(write_well_table(well_table_path(batch.tables, well.name), tables, well=well.name,
                                            overwrite=batch.overwrite_tables))
    written.append(write_counts_table(counts_path(batch.tables), counts, overwrite=batch.overwrite_tables))
    if missing:
        raise KaizenError(f"{len(missing)} field(s) have no labels to measure ({', '.join(missing[:5])}"
                          f"{', ...' if len(missing) > 5 else ''}); the tables hold the others: rerun with --skip-existing")
    return written
