"""One segmentation job: what to segment, with what, and where the labels go.

A :class:`SegmentJob` is built and checked once (:func:`build_jobs`), by whichever
front end asks for it, and then run the same way everywhere (:func:`run_job`): plainly
for an ordinary field, tile by tile (:mod:`napari_kaizen.tiled`) for a huge one or an
OME-Zarr, in this process or as a dask task (:mod:`napari_kaizen.distributed`). What a
job holds is final: the engine's params with the diameter already a number, ``'auto'``
or ``None`` (:func:`~napari_kaizen.engines._common.scale.parse_diameter`), the
stitching tile and halo, and the output path whose overwrite / skip rule has been
applied (:func:`select_outputs`, the one place those rules live).

Arrows point down: the command line builds jobs, :mod:`napari_kaizen.distributed`
runs them; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, KaizenError
from .tiled import DEFAULT_TILE, check_tile, should_tile

#: Said when someone sets the networks' old ``tile`` parameter (now ``window``).
RENAMED_TILE = ("--param tile= is now --param window= (the network's own window); "
                "--tile is the stitching tile of huge images")

#: File suffixes labels are written as (lossless); a tiled field also takes ``.zarr``.
LABEL_OUTPUT_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


@dataclass(frozen=True)
class SegmentJob:
    """Everything one field's segmentation needs; small and picklable (sent to dask workers).

    Attributes
    ----------
    src : Path
        Image file or OME-Zarr store.
    dest : Path
        Labels file (``.tif``, ``.png``, ``.npy``; ``.zarr`` or BigTIFF for tiled jobs).
    engine : str
        Engine name.
    params : engine params
        The engine's frozen ``Params``; ``diameter`` is a float, ``'auto'`` or None.
    model : str or None
        Weights path or ``'bundled:NAME'`` (None: the engine's default model).
    device : str
    channel : int or None
        Channel of an RGB(A) image.
    plane : tuple of int or None
        Plane of a stack.
    all_planes : bool
        Segment every plane of a stack.
    measurements, rois, geojson : bool
        Also write ``NAME_measurements.csv`` / ``NAME_rois.zip`` / ``NAME.geojson`` (QuPath)
        beside the labels.
    tiled : bool
        Segment tile by tile (huge images, OME-Zarr input or output, ``--tile``).
    tile : int
        Core side of a stitching tile, pixels (tiled jobs).
    halo : int or None
        Context around each tile, pixels (None: from the object diameter).
    overwrite : bool
        Replace an existing output.
    skip_existing : bool
        Resume: keep outputs that exist and are complete, write the missing ones (from
        the labels on disk when they exist), and take an output another run wrote
        meanwhile as done.
    """

    src: Path
    dest: Path
    engine: str
    params: Any
    model: str | None = None
    device: str = "auto"
    channel: int | None = None
    plane: tuple[int, ...] | None = None
    all_planes: bool = False
    measurements: bool = False
    rois: bool = False
    geojson: bool = False
    tiled: bool = False
    tile: int = DEFAULT_TILE
    halo: int | None = None
    overwrite: bool = False
    skip_existing: bool = False

    @property
    def name(self) -> str:
        """The input's file name, as lines about this job begin."""
        return self.src.name

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file this job is asked for, labels first (:func:`job_outputs`)."""
        return job_outputs(self.dest, measurements=self.measurements, rois=self.rois, geojson=self.geojson)


@dataclass(frozen=True)
class JobBatch:
    """What :func:`build_jobs` made: the jobs to run, the outputs left as they were, and the
    stale temporary files of killed runs removed from the output folders."""

    jobs: list[SegmentJob]
    skipped: list[Path]
    removed: list[Path] = dataclasses.field(default_factory=list)


def job_outputs(dest: Path, *, measurements: bool = False, rois: bool = False,
                geojson: bool = False) -> tuple[Path, ...]:
    """The files of one image's run, labels first: ``NAME.tif`` [, ``NAME_measurements.csv``] [, ``NAME_rois.zip``]
    [, ``NAME.geojson``] (:func:`side_outputs`)."""
    return (Path(dest), *side_outputs(dest, measurements=measurements, rois=rois, geojson=geojson))


def output_complete(path: Path) -> bool:
    """Whether an output exists and is whole (a header that reads, a zip's directory, a CSV's last line).

    Every writer here is atomic, so an output under its name is complete; this catches
    those of older versions or other programs cut off mid-write, which a resume redoes.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return any((path / m).exists() for m in (".zgroup", ".zarray", "zarr.json"))
        if not path.is_file() or path.stat().st_size == 0:
            return False
        suffix = path.suffix.lower()
        if suffix == ".zip":
            import zipfile

            return zipfile.is_zipfile(path)
        if suffix == ".csv":
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) == b"\n"
        if suffix in (".tif", ".tiff", ".npy"):
            return image_shape_or_none(path) is not None
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class JobResult:
    """What running one job gives a front end to show: a result line and an optional warning."""

    line: str
    warning: str | None = None


# --------------------------------------------------------------------------- parameters


def _read_int(text: str) -> int:
    """An integer from ``'5'`` or ``'5.0'`` (not ``'5.5'``)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


def parse_param_overrides(params_class: type, items: Sequence[str]) -> dict[str, Any]:
    """Turn ``['h=0.2', 'batched=false']`` into typed keyword arguments for ``params_class``.

    ``diameter`` is read by :func:`~napari_kaizen.engines._common.scale.parse_diameter`,
    as ``--diameter`` is.

    Raises
    ------
    KaizenError
        An item that is not ``NAME=VALUE``, an unknown name, a value of the wrong type.
    """
    from .engines import parse_diameter

    fields = {f.name: f for f in dataclasses.fields(params_class)}
    hints = typing.get_type_hints(params_class)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise KaizenError(f"--param '{item}' is not NAME=VALUE")
        name, text = (s.strip() for s in item.split("=", 1))
        if name == "tile" and "window" in fields:
            raise InputError(RENAMED_TILE)
        if name not in fields:
            raise KaizenError(f"--param: '{name}' is not a parameter of this engine; parameters: {', '.join(fields)}")
        if name == "diameter":
            out[name] = parse_diameter(text, what=f"--param {name}")
            continue
        default = fields[name].default
        hint = str(hints.get(name, ""))
        try:
            if isinstance(default, bool) or hint == "bool":
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value: Any = text.lower() in ("1", "true", "yes", "on")
            elif text.lower() == "none":
                value = None
            elif isinstance(default, int) or (default is None and "int" in hint and "float" not in hint):
                value = _read_int(text)
            elif isinstance(default, float):
                value = float(text)
            elif isinstance(default, tuple):
                value = tuple(type(default[0])(v) for v in text.split(",")) if default else tuple(text.split(","))
            else:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        except ValueError:
            kind = type(default).__name__ if default is not None else hint.replace("typing.", "")
            raise KaizenError(f"--param {name}: cannot read '{text}' as {kind}") from None
        if isinstance(value, float) and not np.isfinite(value):
            # NaN / inf reach loops and allocations that never end (h=nan hung the
            # classical reconstruction); no parameter has a meaning for them.
            raise KaizenError(f"--param {name}={text}: NaN and infinite values are not accepted; give a finite number")
        out[name] = value
    return out


def make_params(engine: Any, overrides: dict[str, Any]) -> Any:
    """The engine's frozen ``Params`` from keyword overrides; one line if they do not fit."""
    from .engines import parse_diameter

    if "diameter" in overrides:
        overrides = {**overrides, "diameter": parse_diameter(overrides["diameter"])}
    if "tile" in overrides and "window" in {f.name for f in dataclasses.fields(engine.params_class)}:
        raise InputError(RENAMED_TILE.replace("--param ", ""))
    try:
        return engine.params_class(**overrides)
    except (TypeError, ValueError) as exc:
        raise KaizenError(f"invalid parameters for the {engine.name} engine: {exc}") from None


def parse_plane(text: str | None) -> tuple[int, ...] | None:
    """``'3'`` -> ``(3,)``, ``'0,3'`` -> ``(0, 3)``; None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(i) for i in text.split(","))
    except ValueError:
        raise KaizenError(f"--plane '{text}': expected a plane index such as 3, or 0,3 for (t, z)") from None


def model_entry_for(engine: Any, spec: str):
    """The registry entry of ``spec`` for ``engine`` (None for a file it cannot describe).

    A model of another engine is refused here, in one line, instead of failing inside
    the network; a model that finds no objects too.
    """
    from .engines.registry import model_entry
    from .errors import WeightsError

    try:
        entry = model_entry(spec)
    except WeightsError:
        return None  # load_model gives the precise reason
    if entry.engine != engine.name:
        raise KaizenError(f"--model {spec} is a {entry.engine} model; the {engine.name} engine needs one of its own "
                          f"(see `kaizen engines`)")
    if not entry.segments:
        raise KaizenError(f"--model {spec} predicts a fluorescence image only (no objects); choose a segmentation "
                          "model (see `kaizen engines`)")
    return entry


# --------------------------------------------------------------------------- inputs and outputs


def find_inputs(items: Sequence[str | os.PathLike], *, zarr: bool = True) -> list[Path]:
    """Image files (and, with ``zarr``, OME-Zarr stores), and those inside folders."""
    from .io import find_images
    from .io.zarr import is_zarr_path

    if not zarr:
        return find_images(list(items))
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if is_zarr_path(p) and p.exists():
            found.append(p)
        elif p.is_dir():
            stores = sorted(c for c in p.iterdir() if c.is_dir() and c.suffix.lower() == ".zarr")
            try:
                found.extend(find_images([p]))
            except InputError:
                if not stores:
                    raise
            found.extend(stores)
        else:
            found.extend(find_images([p]))
    return found


def image_shape_or_none(path: Path) -> tuple[int, ...] | None:
    """A file's shape without reading its pixels (TIFF, NPY, OME-Zarr); None if it cannot be probed."""
    from .io.zarr import image_shape, is_zarr_path

    if not (is_zarr_path(path) or path.suffix.lower() in (".tif", ".tiff", ".npy")):
        return None
    try:
        return tuple(image_shape(path))
    except Exception:  # noqa: BLE001 (a probe: the field's own run reports an unreadable file in one line)
        return None


def is_huge(shape: tuple[int, ...] | None) -> bool:
    """Whether a field of ``shape`` (a file's header) is segmented tile by tile: :func:`~napari_kaizen.tiled.should_tile`."""
    return shape is not None and should_tile(shape)


def output_paths(inputs: list[Path], output: Path, tiled: list[bool] | None = None,
                 shapes: list[tuple[int, ...] | None] | None = None) -> list[Path]:
    """One output path per input: a file for a single input with a label suffix, else a folder.

    Nothing is created here: a name with another suffix (``lab.jpg``) is refused
    rather than silently becoming a folder. With ``tiled`` (one flag per input,
    updated in place: an OME-Zarr output is written tile by tile whatever the size),
    ``.zarr`` is accepted too and a huge field in a folder gets the format its size
    needs.
    """
    from .io.zarr import image_of_labels_group, labels_format_for

    suffix = output.suffix.lower()
    if tiled is None:
        if suffix and suffix not in LABEL_OUTPUT_SUFFIXES and not output.is_dir():
            raise KaizenError(f"--output {output}: labels are written as {', '.join(LABEL_OUTPUT_SUFFIXES)} "
                              "(lossless); give such a file name or a folder")
        if len(inputs) == 1 and suffix in LABEL_OUTPUT_SUFFIXES:
            return [output]
        if suffix in LABEL_OUTPUT_SUFFIXES:
            raise KaizenError(f"--output {output} is a file name but {len(inputs)} images were given: give a folder")
        _distinct_names(inputs)
        return [output / f"{p.stem}.tif" for p in inputs]
    shapes = shapes if shapes is not None else [None] * len(inputs)
    if len(inputs) == 1 and image_of_labels_group(output) is not None:
        tiled[0] = True  # into the input's own labels/ group (OME-Zarr), tile by tile
        return [output]
    accepted = (*LABEL_OUTPUT_SUFFIXES, ".zarr")
    if suffix and suffix not in accepted and not output.is_dir():
        raise KaizenError(f"--output {output}: labels are written as {', '.join(accepted)}; give such a name or a folder")
    if len(inputs) == 1 and suffix in accepted and not (output.is_dir() and suffix != ".zarr"):
        if suffix == ".zarr" and not tiled[0]:
            tiled[0] = True  # an OME-Zarr output is written tile by tile whatever the size
        elif tiled[0] and suffix not in (".zarr", ".tif", ".tiff"):
            raise KaizenError(f"--output {output}: a tiled image's labels are written as .tif (BigTIFF) or .zarr (OME-Zarr)")
        return [output]
    if suffix in accepted and suffix != ".zarr":
        raise KaizenError(f"--output {output} is a file name but {len(inputs)} images were given: give a folder")
    _distinct_names(inputs)
    return [output / (p.stem + (labels_format_for(s[-2:]) if t and s else ".tif")) for p, t, s in zip(inputs, tiled, shapes)]


def _distinct_names(inputs: list[Path]) -> None:
    names = [p.stem for p in inputs]
    if len(set(names)) != len(names):
        raise KaizenError("two input images share a file name; their outputs would collide: rename or run separately")


def select_outputs(outputs: Sequence[Path | Sequence[Path]], *, overwrite: bool,
                   skip_existing: bool) -> tuple[list[int], list[Path]]:
    """The one overwrite / skip rule: which outputs to (re)make, and which exist and are kept.

    Parameters
    ----------
    outputs : sequence of Path, or of tuples of Path
        Per image, its labels file or all its requested files, labels first
        (:func:`job_outputs`). They are one unit: an image is done only when every one
        exists and is complete (:func:`output_complete`).

    Returns
    -------
    keep : list of int
        Indices of the images to (re)run: with ``skip_existing`` those with any output
        missing or incomplete (the run writes only those).
    skipped : list of Path
        Labels of images whose outputs all exist, left as they are (``skip_existing``).

    Raises
    ------
    KaizenError
        Both policies at once, or an existing output with neither.
    """
    if skip_existing and overwrite:
        raise KaizenError("--skip-existing keeps existing outputs and --overwrite replaces them: give one of them")
    groups = [(Path(o),) if isinstance(o, (str, os.PathLike)) else tuple(Path(p) for p in o) for o in outputs]
    if skip_existing:
        done = [all(output_complete(p) for p in g) for g in groups]
        return [i for i, d in enumerate(done) if not d], [g[0] for g, d in zip(groups, done) if d]
    clash = next((p for g in groups for p in g if p.exists()), None)
    if not overwrite and clash is not None:
        raise KaizenError(f"{clash} already exists; not overwriting it (pass --overwrite, or --skip-existing "
                          "to resume a run)")
    return list(range(len(outputs))), []


def side_outputs(dest: Path, *, measurements: bool = False, rois: bool = False, geojson: bool = False) -> list[Path]:
    """The files a plain job writes beside its labels ``dest``, in the order it writes them.

    >>> [p.name for p in side_outputs(Path("out/a.tif"), measurements=True, geojson=True)]
    ['a_measurements.csv', 'a.geojson']
    """
    dest = Path(dest)
    names = [(measurements, "_measurements.csv"), (rois, "_rois.zip"), (geojson, ".geojson")]
    return [dest.with_name(dest.stem + suffix) for wanted, suffix in names if wanted]


def check_writable(outputs: Iterable[Path]) -> None:
    """Create the output folders and refuse an unwritable one before any work is done."""
    for folder in sorted({Path(o).parent for o in outputs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KaizenError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise KaizenError(f"the output folder {folder} is not writable: choose another --output")


def check_halo(halo: int | None) -> int | None:
    """``halo`` if it is None or a number of pixels >= 0."""
    if halo is not None and (isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0):
        raise KaizenError(f"--halo {halo} must be >= 0 pixels")
    return halo


# --------------------------------------------------------------------------- building


def needs_tiles(images: Sequence[str | os.PathLike], output: str | os.PathLike, *, tile: int | None = None) -> bool:
    """Whether any field of a run is segmented tile by tile (``--tile``, OME-Zarr in or out, a huge field)."""
    from .io.zarr import is_zarr_path

    if tile is not None or is_zarr_path(Path(output)):
        return True
    try:
        inputs = find_inputs(images)
    except (KaizenError, OSError):
        return False  # the plain path reports it
    return any(is_zarr_path(p) or is_huge(image_shape_or_none(p)) for p in inputs)


def build_jobs(
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    engine: str = "classical",
    diameter: float | str | None = None,
    params: Sequence[str] | dict[str, Any] | None = None,
    model: str | None = None,
    device: str = "auto",
    channel: int | None = None,
    plane: str | tuple[int, ...] | None = None,
    all_planes: bool = False,
    measurements: bool = False,
    rois: bool = False,
    geojson: bool = False,
    tile: int | None = None,
    halo: int | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    scale_out: bool | None = None,
) -> JobBatch:
    """Build and check the jobs of one ``kaizen segment`` run before any work is done.

    Parameters
    ----------
    images : sequence of path
        Image files, OME-Zarr stores, or folders of them.
    output : path
        A labels file (one image) or a folder.
    engine : str
    diameter : float, str or None
        As ``--diameter`` (overrides ``params``' diameter); read once by
        :func:`~napari_kaizen.engines._common.scale.parse_diameter`.
    params : list of 'NAME=VALUE' or dict, optional
        Engine parameters.
    model, device, channel, plane, all_planes, measurements, rois, geojson
        As the command line's options.
    tile, halo : int, optional
        Stitching tile and its halo (pixels); ``tile`` makes every field tiled.
    overwrite, skip_existing : bool
        What to do with outputs that exist (:func:`select_outputs`).
    scale_out : bool, optional
        Whether the run may tile fields and read OME-Zarr (default: when
        :func:`needs_tiles` says so); a plain run never tiles.

    Returns
    -------
    JobBatch

    Raises
    ------
    KaizenError
        Anything wrong with the request, in one line.
    """
    from .engines import get_engine, learned_engines, parse_diameter
    from .io.zarr import is_zarr_path

    if tile is not None:
        check_tile(tile, what="--tile")  # the one tile check (None: the default tile)
    check_halo(halo)
    eng = get_engine(engine)
    overrides = dict(params) if isinstance(params, dict) else parse_param_overrides(eng.params_class, params or [])
    if diameter is not None:
        overrides["diameter"] = parse_diameter(diameter, what="--diameter")
    built = make_params(eng, overrides)
    planes = parse_plane(plane) if isinstance(plane, str) or plane is None else tuple(int(i) for i in plane)
    if plane is not None and all_planes:
        raise KaizenError("--plane picks one plane and --all-planes runs every plane: give one of them")
    if geojson and all_planes:
        raise KaizenError("--geojson holds the objects of one 2-D plane: leave out --all-planes, or pick one with --plane")
    if not eng.learned and model:
        raise KaizenError(f"the {eng.name} engine uses no model; --model applies to the learned engines "
                          f"({', '.join(learned_engines())})")
    if not eng.learned and device not in ("auto", "cpu"):
        raise KaizenError(f"the {eng.name} engine runs on the CPU only; --device applies to the learned engines")
    if scale_out is None:
        scale_out = needs_tiles(images, output, tile=tile)
    inputs = find_inputs(images, zarr=scale_out)
    if scale_out:
        shapes = [image_shape_or_none(p) for p in inputs]
        tiled = [is_zarr_path(p) or tile is not None or is_huge(s) for p, s in zip(inputs, shapes)]
        outputs = output_paths(inputs, Path(output), tiled, shapes)
        if any(tiled) and (rois or geojson or all_planes):
            raise KaizenError("--rois, --geojson and --all-planes are not available for tiled (huge or OME-Zarr) images: "
                              "segment one plane (--measurements is)")
    else:
        tiled = [False] * len(inputs)
        outputs = output_paths(inputs, Path(output))
    groups = [job_outputs(o, measurements=measurements, rois=rois, geojson=geojson) for o in outputs]
    keep, skipped = select_outputs(groups, overwrite=overwrite, skip_existing=skip_existing)
    check_writable([outputs[i] for i in keep])
    from ._files import remove_stale_temporaries

    removed = [p for folder in sorted({outputs[i].parent for i in keep}) for p in remove_stale_temporaries(folder)]
    if eng.learned and keep:
        model_entry_for(eng, model or eng.default_model)
    jobs = [SegmentJob(src=inputs[i], dest=outputs[i], engine=eng.name, params=built, model=model, device=device,
                       channel=channel, plane=planes, all_planes=all_planes, measurements=measurements, rois=rois,
                       geojson=geojson, tiled=tiled[i], tile=check_tile(tile), halo=halo, overwrite=overwrite,
                       skip_existing=skip_existing) for i in keep]
    return JobBatch(jobs=jobs, skipped=skipped, removed=removed)


# --------------------------------------------------------------------------- running


def progress_bar(total: float, desc: str, enabled: bool):
    """A one-line progress bar on stderr (tqdm), or a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="", bar_format="{desc} {bar} {percentage:3.0f}% {elapsed}",
                disable=not enabled, leave=False, file=sys.stderr)


def drive(snapshots, desc: str = "", *, progress: bool = True):
    """Run a snapshot generator to the end with a progress bar; return the last snapshot."""
    last = None
    with progress_bar(1000, desc, progress) as bar:
        for snap in snapshots:
            last = snap
            target = int(1000 * float(snap.progress))
            if target > bar.n:
                bar.update(target - bar.n)
            if snap.message:
                bar.set_postfix_str(snap.message[:60], refresh=False)
    if last is None:
        raise KaizenError("the engine produced no result")
    return last


def job_model(engine: Any, spec: Any, device: str) -> Any:
    """The loaded model of a job (None for an engine without models); each process loads a model once
    and keeps it, so a batch's jobs share it (:func:`~napari_kaizen.tiled.cached_model`)."""
    from .tiled import cached_model

    return cached_model(engine, spec, device) if engine.learned else None


def run_job(job: SegmentJob, *, progress: bool = False, client: Any = None) -> JobResult:
    """Run one job to its files, plainly or tile by tile; return the line to print.

    Parameters
    ----------
    job : SegmentJob
    progress : bool
        Show a progress bar on stderr.
    client : dask.distributed.Client, optional
        Run a tiled job's tiles as dask tasks (the labels are identical).
    """
    from .engines import get_engine

    engine = get_engine(job.engine)
    if job.tiled:
        return JobResult(_run_tiled(engine, job, progress=progress, client=client))
    return _run_plain(engine, job, progress=progress)


def _scores(snapshot) -> dict[str, dict[int, float]]:
    scores = getattr(snapshot, "scores", None)
    return {"score": {int(k): float(v) for k, v in dict(scores).items()}} if scores else {}


def _run_plain(engine: Any, job: SegmentJob, *, progress: bool) -> JobResult:
    """Read, segment and write one image file (or a plate's field: an OME-Zarr image whose labels
    go into its ``labels/`` group, through the ``*_or_ome_zarr`` readers and writer)."""
    from .engines import channel_error, segment_planes, to_plane
    from .engines.registry import input_warning
    from .io import write_geojson, write_measurements_csv, write_roi_zip
    from .io.images import read_plane
    from .io.zarr import read_image_or_ome_zarr as read_image
    from .io.zarr import read_labels_or_ome_zarr as read_labels
    from .io.zarr import stack_axes
    from .io.zarr import write_labels_or_ome_zarr as write_labels

    start = time.perf_counter()
    dest = job.dest
    # A resume whose labels exist (its measurements or ROIs do not) reuses them: the
    # missing files then describe the labels on disk, and nothing is segmented twice.
    reuse = job.skip_existing and output_complete(dest)
    model = None if reuse else job_model(engine, job.model, job.device)
    image = None
    if job.plane is not None and not job.all_planes and job.channel is None:
        image = read_plane(job.src, job.plane)  # only that page of a stack is read
    plane = job.plane if image is None else None
    if image is None:
        image = read_image(job.src)
    if job.all_planes:
        if job.channel is not None:
            # A colour image, or every image of a stack of them, gives that channel; a
            # grey image or any other stack is refused.
            what = "the image" if image.ndim <= 3 else "each image of this stack"
            said = channel_error(job.channel, image.shape[-3:], f"{what} (shape {image.shape})")
            if said:
                raise InputError(said)
            image = image[..., job.channel]
        gen = None if reuse else segment_planes(engine.segment, image, job.params, model=model, device=job.device,
                                                  scale_for=engine.scale_for)
    else:
        # A stack's refusals name its axes (T, Z, C) when the file does.
        axes = stack_axes(job.src, image.ndim - 2) if image.ndim > 2 else None
        image = to_plane(image, channel=job.channel, plane=plane, axes=axes)
        gen = None if reuse else engine.segment(image, job.params, model=model, device=job.device)
    kept: list[str] = []
    if reuse:
        last = None
        labels = read_labels(dest)
        kept.append(dest.name)
    else:
        last = drive(gen, job.name, progress=progress)
        labels = last.labels
        if labels is None:
            raise KaizenError("the engine finished without labels")
        # A stack's labels keep its named axes (an ImageJ hyperstack's T, Z, C) for Fiji.
        axes = stack_axes(job.src, labels.ndim - 2) if labels.ndim > 2 else None
        if not _write_output(job, dest, lambda ow: write_labels(dest, labels, overwrite=ow, axes=axes)):
            labels = read_labels(dest)  # another run wrote them meanwhile: the rest describes those
            kept.append(dest.name)
    _, *others = job.outputs
    csv_path = dest.with_name(dest.stem + "_measurements.csv")
    roi_path = dest.with_name(dest.stem + "_rois.zip")
    extra = []
    geojson_path = dest.with_name(dest.stem + ".geojson")
    scores = _scores(last) if last is not None else {}
    if csv_path in others:
        if _write_output(job, csv_path, lambda ow: write_measurements_csv(
                csv_path, labels, image if image.shape == labels.shape else None, extra=scores, overwrite=ow)):
            extra.append(csv_path.name)
        else:
            kept.append(csv_path.name)
    if roi_path in others and labels.max() > 0:
        if _write_output(job, roi_path, lambda ow: write_roi_zip(roi_path, labels, overwrite=ow)):
            extra.append(roi_path.name)
        else:
            kept.append(roi_path.name)
    if geojson_path in others and labels.max() > 0:
        if _write_output(job, geojson_path, lambda ow: write_geojson(geojson_path, labels, extra=scores, overwrite=ow)):
            extra.append(geojson_path.name)
        else:
            kept.append(geojson_path.name)
    n = int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0))
    also = f" (+ {', '.join(extra)})" if extra else ""
    also += f" (kept existing {', '.join(kept)})" if kept else ""
    # No objects is a result, but never a silent one: say the engine's reason.
    why = f" ({last.message})" if n == 0 and last is not None and last.message else ""
    took = time.perf_counter() - start
    how = "from its existing labels" if reuse else f"with the {engine.name} engine"
    line = f"{job.name}: {n} objects {how} in {took:.1f} s -> {dest}{also}{why}"
    warning = None
    if engine.learned and image.ndim == 2 and not reuse:
        entry = model_entry_for(engine, job.model or engine.default_model)
        warning = input_warning(entry, image) if entry is not None else None
    return JobResult(line, warning)


def _write_output(job: SegmentJob, path: Path, write) -> bool:
    """Write one output by ``write(overwrite)``; False if it was left as it is.

    With ``skip_existing`` a complete file is kept, an incomplete one (an older
    version's, cut off) is replaced, and one another run wrote meanwhile is kept: two
    resumes into one folder share the work instead of failing.
    """
    from .errors import OverwriteError

    if not job.skip_existing:
        write(job.overwrite)
        return True
    if output_complete(path):
        return False
    try:
        write(path.exists())
    except OverwriteError:
        return False
    return True


def _from_a_codec(exc: BaseException) -> bool:
    """Whether ``exc`` was raised decoding stored data (numcodecs, blosc, imagecodecs, zarr's codec pipeline)."""
    import traceback

    words = ("numcodecs", "blosc", "imagecodecs", "zstd", "codec", "decompress")
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    if any(w in f for f in files for w in words[:3]) or any("/zarr/" in f and "codec" in f for f in files):
        return True
    return any(w in str(exc).lower() for w in words)


def _run_tiled(engine: Any, job: SegmentJob, *, progress: bool, client: Any) -> str:
    """Segment one huge field (or an OME-Zarr) tile by tile into ``job.dest``."""
    from ._files import temp_prefix
    from .engines import DEFAULT_TILE, channel_error, colour_stack_layout, plane_of_one_plane, rgb_layout
    from .errors import OverwriteError
    from .io.images import plane_outside
    from .io.measurements import write_table_csv
    from .io.zarr import (
        create_label_levels,
        is_ome_zarr_labels_path,
        label_levels_at,
        open_lazy,
        picked,
        read_label_levels,
        squeeze_to_2d,
        stack_axes,
        write_bigtiff,
    )
    from .tiled import as_2d_source, measure_tiled, segment_tiled

    start = time.perf_counter()
    src, dest = job.src, job.dest
    image = open_lazy(src)
    shape = tuple(int(n) for n in image.shape)
    plane = job.plane
    if colour_stack_layout(shape):
        # A stack of huge colour pictures (a slide scanned at several times): --plane picks
        # one, without reading it, and it is then read as any colour picture is.
        lead = shape[:-3]
        if plane is None:
            raise InputError(f"the image (shape {shape}) is a stack of {int(np.prod(lead))} colour images: a tiled "
                             f"run segments one of them (--plane {','.join('ijk'[:len(lead)])}); every one: "
                             "leave out --tile and give --all-planes")
        index = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
        if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead)):
            raise InputError(plane_outside(index, src.name, lead, stack_axes(src, len(lead))))
        image, shape, plane = picked(image, index), shape[len(lead):], None
    rgb = rgb_layout(shape)
    if job.channel is not None:
        said = channel_error(job.channel, shape, f"the image (shape {shape})")
        if said:
            raise InputError(said)
        image = picked(image, channel=job.channel)  # read tile by tile, not now
    if plane is not None and (rgb or len(image.shape) == 2):
        raise InputError(plane_of_one_plane(plane, f"the image (shape {shape})",
                                            colour=rgb and job.channel is None))
    if job.channel is not None or not rgb:
        lead = len(image.shape) - 2
        image = squeeze_to_2d(image, plane=plane, name=src.name, axes=stack_axes(src, lead) if lead else None)
    else:
        # A colour image: its grey plane, read tile by tile, if it has one (tiled.ColourPlane).
        image = as_2d_source(image, name="the image")
    # With a cluster, workers load (and keep) the model themselves from its spec.
    model = job.model if client is not None else job_model(engine, job.model, job.device)
    kwargs = dict(model=model, device=job.device, tile=job.tile, halo=job.halo, client=client)
    # An incomplete output of an older version is replaced on a resume; complete labels
    # are kept, and only the measurements missing beside them are made.
    reuse = job.skip_existing and output_complete(dest)
    overwrite = job.overwrite or (job.skip_existing and dest.exists() and not reuse)
    try:
        if reuse:
            last = None
        elif is_ome_zarr_labels_path(dest):
            # a store of its own, or the labels/ group of an OME-Zarr input (then named by dest)
            name = src.stem if dest.suffix.lower() == ".zarr" else None
            with label_levels_at(dest, image.shape[-2:], name=name, overwrite=overwrite) as levels:
                last = drive(segment_tiled(engine, image, job.params, out=levels, **kwargs), src.name, progress=progress)
        else:
            # Stitch into a compressed zarr beside the output (bounded memory), then stream it into a BigTIFF.
            tmp = None
            try:
                tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".tmp.zarr", dir=dest.parent))
                levels = create_label_levels(tmp, image.shape[-2:], levels=1)
                last = drive(segment_tiled(engine, image, job.params, out=levels, **kwargs), src.name, progress=progress)
                write_bigtiff(dest, levels[0], overwrite=overwrite)
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
    except OverwriteError:
        if not job.skip_existing:
            raise
        return f"{src.name}: {dest} was written meanwhile by another run; kept it"
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        if not _from_a_codec(exc):
            raise
        raise InputError(f"cannot read '{src.name}': a damaged chunk or tile ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); restore or rewrite the file") from None
    extra, n = "", None if last is None else last.n_objects
    if job.measurements:
        csv_path = side_outputs(dest, measurements=True)[0]
        stored = read_label_levels(dest)[0] if is_ome_zarr_labels_path(dest) else open_lazy(dest)
        table = measure_tiled(stored, image, tile=job.tile or DEFAULT_TILE)
        n = len(table["label"])
        if _write_output(job, csv_path, lambda ow: write_table_csv(csv_path, table, overwrite=ow)):
            extra = f" (+ {csv_path.name})"
    took = time.perf_counter() - start
    if last is None:
        return f"{src.name}: {n} objects from its existing labels in {took:.1f} s -> {dest}{extra} (kept existing {dest.name})"
    return (f"{src.name}: {last.n_objects} objects with the {engine.name} engine in {took:.1f} s "
            f"({last.n_tiles} tiles) -> {dest}{extra}")
