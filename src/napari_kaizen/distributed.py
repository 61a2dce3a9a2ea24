"""Batches and huge images on dask: one task per field, or per tile of a huge field.

``kaizen segment ... --scheduler threads|processes|tcp://HOST:PORT`` lands here (and so
does a run whose image is too large for memory, or whose output is ``.zarr``):

* ``threads`` / ``processes``: a ``dask.distributed.LocalCluster`` on this machine
  (one worker with a thread per core / one single-threaded worker process per core);
* ``tcp://HOST:PORT``: joins a running cluster (``dask scheduler`` and ``dask worker
  tcp://HOST:PORT`` on each machine, each with napari-kaizen installed; the workers
  read the input and write the output paths themselves, so those must be on storage
  every machine sees).

Ordinary fields are one task each (read, segment, write: the same steps, files and
messages as the plain run); a huge field is planned once here and its tiles are tasks
whose labels come back to be stitched in raster order, so the labels are identical to a
run without a cluster. The progress bar counts finished futures; Ctrl-C cancels every
task the cluster still holds, and ``--skip-existing`` resumes.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, KaizenError

#: Fields with more pixels than this are segmented tile by tile (an 8000^2 field took
#: 8.4 GB untiled with the classical engine).
TILED_ABOVE_PIXELS = 4096 * 4096

#: Tile tasks in flight per worker thread: enough to keep workers busy, few enough that
#: windows waiting to be stitched stay a bounded amount of memory.
INFLIGHT_PER_THREAD = 2

SCHEDULERS = ("threads", "processes", "tcp://HOST:PORT")

#: Seconds to wait for a ``tcp://`` scheduler to answer.
CONNECT_TIMEOUT_S = 10


# --------------------------------------------------------------------------- scheduler


def check_scheduler(text: str | None) -> str | None:
    """Validate ``--scheduler``; return it normalised.

    Raises
    ------
    KaizenError
        Anything but ``threads``, ``processes`` or ``tcp://HOST:PORT``.
    """
    if text is None:
        return None
    value = text.strip()
    if value.lower() in ("threads", "processes"):
        return value.lower()
    if value.startswith("tcp://"):
        host, _, port = value[len("tcp://"):].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise KaizenError(f"--scheduler '{text}' is not understood: give threads, processes or tcp://HOST:PORT "
                      "(a running `dask scheduler`)")


@contextlib.contextmanager
def dask_client(scheduler: str, *, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (closed, with its local cluster, on exit)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise KaizenError("--scheduler needs dask.distributed: pip install distributed") from None
    cores = n_workers or os.cpu_count() or 1
    if scheduler.startswith("tcp://"):
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise KaizenError(f"cannot reach the dask scheduler at {scheduler} ({exc.__class__.__name__}): start one "
                              "with `dask scheduler` and workers with `dask worker " + scheduler + "`") from None
        try:
            yield client
        finally:
            client.close()
        return
    processes = scheduler == "processes"
    cluster = LocalCluster(n_workers=cores if processes else 1, threads_per_worker=1 if processes else cores,
                           processes=processes, dashboard_address=None)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _threads(client: Any) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 (a cluster without workers yet still takes tasks)
        return 1


def iter_as_completed(client: Any, futures: list[Any]) -> Iterator[Any]:
    """Yield finished futures as they complete; cancel the rest on Ctrl-C or when closed."""
    from distributed import as_completed

    try:
        yield from as_completed(futures)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending, force=True)


# --------------------------------------------------------------------------- worker side

_MODELS: dict[tuple[str, str, str], Any] = {}


def _worker_model(engine: Any, spec: Any, device: str) -> Any:
    """Each worker loads a model once and keeps it (tasks of a batch share it)."""
    from .tiled import load_engine_model

    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        return spec
    key = (engine.name, str(spec), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_engine_model(engine, spec, device)
    return _MODELS[key]


def tile_task(engine_name: str, window: np.ndarray, plan: Any, tile: Any, model: Any, device: str) -> np.ndarray:
    """A dask task: one tile's owned labels (see :func:`napari_kaizen.tiled.segment_window`)."""
    from .engines import get_engine
    from .tiled import compact, segment_window

    engine = get_engine(engine_name)
    return compact(segment_window(engine, window, plan, tile, model=_worker_model(engine, model, device),
                                  device=device))


def iter_tile_labels(client: Any, engine: Any, src: Any, plan: Any, *, model: Any = None, device: str = "auto"
                     ) -> Iterator[tuple[Any, np.ndarray]]:
    """Run a plan's tiles as dask tasks; yield ``(tile, owned labels)`` in raster order.

    Windows are read here and sent with their task, at most
    :data:`INFLIGHT_PER_THREAD` per worker thread at a time; finished tiles wait
    (small, compact dtype) until every tile before them is done.
    """
    from .tiled import read_region

    plan_future = client.scatter(plan, broadcast=True)
    limit = INFLIGHT_PER_THREAD * _threads(client)
    tiles = list(plan.tiles)
    futures: dict[Any, Any] = {}
    ready: dict[int, np.ndarray] = {}
    nxt, submitted = 0, 0
    from distributed import wait

    try:
        while nxt < len(tiles):
            while submitted < len(tiles) and len(futures) < limit:
                t = tiles[submitted]
                f = client.submit(tile_task, engine.name, read_region(src, t.window), plan_future, t, model, device,
                                  pure=False, key=f"kaizen-tile-{t.index}-{os.getpid()}-{time.monotonic_ns()}")
                futures[f] = t
                submitted += 1
            done = wait(list(futures), return_when="FIRST_COMPLETED").done
            for f in done:
                t = futures.pop(f)
                ready[t.index] = f.result()
            while nxt in ready:
                yield tiles[nxt], ready.pop(nxt)
                nxt += 1
    finally:
        if futures:
            client.cancel(list(futures), force=True)


@dataclass(frozen=True)
class FieldJob:
    """Everything one ordinary field's task needs (picklable: sent to a worker)."""

    src: str
    dest: str
    engine: str
    params: Any
    model: Any
    device: str
    channel: int | None
    plane: tuple[int, ...] | None
    all_planes: bool
    overwrite: bool
    measurements: bool
    rois: bool


def run_field(job: FieldJob) -> str:
    """A dask task: read, segment and write one field; return the line the plain run prints.

    The same steps as ``kaizen segment`` without a scheduler (and the same files).
    """
    from .cli import segment_file
    from .engines import get_engine
    from .engines._common.snapshots import run_to_end

    engine = get_engine(job.engine)
    model = _worker_model(engine, job.model, job.device) if (job.model or engine.default_model) else None
    line, _ = segment_file(engine, job.params, Path(job.src), Path(job.dest), model=model, device=job.device,
                           channel=job.channel, plane=job.plane, all_planes=job.all_planes,
                           measurements=job.measurements, rois=job.rois, overwrite=job.overwrite, run=run_to_end)
    return line


# --------------------------------------------------------------------------- the CLI path


def find_inputs(items: list[str]) -> list[Path]:
    """Image files, OME-Zarr stores, and the images / stores inside folders."""
    from .io import find_images
    from .io.zarr import is_zarr_path

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


def _pixels(path: Path) -> int:
    from .io.zarr import image_shape, is_zarr_path

    if not (is_zarr_path(path) or path.suffix.lower() in (".tif", ".tiff", ".npy")):
        return 0
    try:
        shape = image_shape(path)
    except Exception:  # noqa: BLE001 (a probe only: the run that reads the file reports what is wrong, in one line)
        return 0
    return math.prod(shape[-2:]) if len(shape) >= 2 else 0


def needs_scale_out(args: Any) -> bool:
    """Whether ``kaizen segment`` should run through :func:`run_segment` (the first lines of cmd_segment ask)."""
    from .io.zarr import is_zarr_path

    if getattr(args, "scheduler", None) or getattr(args, "tile", None) or is_zarr_path(args.output):
        return True
    try:
        inputs = find_inputs(args.images)
    except (KaizenError, OSError):
        return False  # the plain path reports it
    return any(is_zarr_path(p) or _pixels(p) > TILED_ABOVE_PIXELS for p in inputs)


def _outputs(inputs: list[Path], output: Path, tiled: list[bool], shapes: list[tuple[int, ...] | None]) -> list[Path]:
    from .cli import LABEL_OUTPUT_SUFFIXES
    from .io.zarr import labels_format_for

    suffix = output.suffix.lower()
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
    names = [p.stem for p in inputs]
    if len(set(names)) != len(names):
        raise KaizenError("two input images share a file name; their outputs would collide: rename or run separately")
    return [output / (p.stem + (labels_format_for(s[-2:]) if t and s else ".tif")) for p, t, s in zip(inputs, tiled, shapes)]


def run_segment(args: Any) -> int:
    """``kaizen segment`` for huge images, OME-Zarr and dask schedulers (see the module docstring)."""
    from .cli import _check_writable, _fail, _progress_bar, drive, segment_setup
    from .io.zarr import image_shape, is_zarr_path

    scheduler = check_scheduler(getattr(args, "scheduler", None))
    tile = getattr(args, "tile", None)
    halo = getattr(args, "halo", None)
    from .tiled import DEFAULT_TILE

    if tile is not None and tile < 64:
        raise KaizenError(f"--tile {tile} is too small: give at least 64 pixels (e.g. {DEFAULT_TILE})")
    if halo is not None and halo < 0:
        raise KaizenError(f"--halo {halo} must be >= 0 pixels")
    engine, params, plane = segment_setup(args)
    inputs = find_inputs(args.images)
    shapes: list[tuple[int, ...] | None] = []
    for p in inputs:
        try:
            shapes.append(image_shape(p) if (is_zarr_path(p) or p.suffix.lower() in (".tif", ".tiff", ".npy")) else None)
        except Exception:  # noqa: BLE001 (a probe: the field's own run reports an unreadable file in one line)
            shapes.append(None)
    tiled = [is_zarr_path(p) or tile is not None or (s is not None and math.prod(s[-2:]) > TILED_ABOVE_PIXELS)
             for p, s in zip(inputs, shapes)]
    outputs = _outputs(inputs, Path(args.output), tiled, shapes)
    if any(tiled) and (args.measurements or args.rois or args.all_planes):
        raise KaizenError("--measurements, --rois and --all-planes are not available for tiled (huge or OME-Zarr) "
                          "images: segment one plane, then measure the labels")
    if args.skip_existing and args.overwrite:
        raise KaizenError("--skip-existing keeps existing outputs and --overwrite replaces them: give one of them")
    keep = list(range(len(inputs)))
    if args.skip_existing:
        done = [i for i, o in enumerate(outputs) if o.exists()]
        if done:
            print(f"skipping {len(done)} image(s) whose labels already exist (--skip-existing)")
        keep = [i for i in keep if i not in set(done)]
    elif not args.overwrite:
        clash = [o for o in outputs if o.exists()]
        if clash:
            raise KaizenError(f"{clash[0]} already exists; not overwriting it (pass --overwrite, or --skip-existing "
                              "to resume a run)")
    _check_writable([outputs[i] for i in keep])
    fields = [i for i in keep if not tiled[i]]
    huge = [i for i in keep if tiled[i]]
    failures = 0
    quiet = args.quiet
    with (dask_client(scheduler) if scheduler else contextlib.nullcontext()) as client:
        jobs = [FieldJob(src=str(inputs[i]), dest=str(outputs[i]), engine=engine.name, params=params,
                         model=args.model, device=args.device, channel=args.channel, plane=plane,
                         all_planes=args.all_planes, overwrite=args.overwrite, measurements=args.measurements,
                         rois=args.rois) for i in fields]
        if jobs and client is not None:
            futures = [client.submit(run_field, job, pure=False, key=f"kaizen-field-{k}-{os.getpid()}-{time.monotonic_ns()}")
                       for k, job in enumerate(jobs)]
            names = {f.key: Path(job.src).name for f, job in zip(futures, jobs)}
            with _progress_bar(len(futures), f"{len(futures)} fields on {scheduler}", not quiet) as bar:
                for f in iter_as_completed(client, futures):
                    bar.update(1)
                    try:
                        line = f.result()
                    except (KaizenError, OSError) as exc:
                        failures += 1
                        bar.clear()
                        _fail(f"{names[f.key]}: {exc}")
                        continue
                    bar.clear()
                    print(line)
        else:
            for job in jobs:
                try:
                    print(run_field(job))
                except (KaizenError, OSError) as exc:
                    failures += 1
                    _fail(f"{Path(job.src).name}: {exc}")
        for i in huge:
            try:
                print(_run_huge(engine, inputs[i], outputs[i], params, args, plane, client, tile, halo, drive))
            except (KaizenError, OSError) as exc:
                failures += 1
                _fail(f"{inputs[i].name}: {exc}")
    return 1 if failures else 0


def _run_huge(engine, src: Path, dest: Path, params, args, plane, client, tile, halo, drive) -> str:
    from .io.zarr import atomic_zarr, create_label_levels, open_lazy, squeeze_to_2d, write_bigtiff
    from .tiled import DEFAULT_TILE, load_engine_model, segment_tiled

    start = time.perf_counter()
    image = open_lazy(src)
    if args.channel is not None:
        if len(image.shape) != 3 or image.shape[-1] not in (3, 4):
            raise InputError(f"--channel {args.channel} was given but {src.name} is not RGB(A) (shape {tuple(image.shape)})")
        image = image[..., args.channel]
    image = squeeze_to_2d(image, plane=plane, name=src.name)
    model = load_engine_model(engine, args.model, args.device)
    kwargs = dict(model=model, device=args.device, tile=tile or DEFAULT_TILE, halo=halo, client=client)
    if client is not None:
        kwargs["model"] = args.model  # workers load (and keep) the model themselves
    if dest.suffix.lower() == ".zarr":
        with atomic_zarr(dest, overwrite=args.overwrite) as tmp:
            levels = create_label_levels(tmp, image.shape[-2:], name=src.stem)
            last = drive(segment_tiled(engine, image, params, out=levels, **kwargs), src.name, progress=not args.quiet)
    else:
        # Stitch into a compressed zarr beside the output (bounded memory), then stream it into a BigTIFF.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp.zarr", dir=dest.parent))
        try:
            levels = create_label_levels(tmp, image.shape[-2:], levels=1)
            last = drive(segment_tiled(engine, image, params, out=levels, **kwargs), src.name, progress=not args.quiet)
            write_bigtiff(dest, levels[0], overwrite=args.overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    took = time.perf_counter() - start
    return (f"{src.name}: {last.n_objects} objects with the {engine.name} engine in {took:.1f} s "
            f"({last.n_tiles} tiles) -> {dest}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `kaizen segment ... --scheduler ...`")
