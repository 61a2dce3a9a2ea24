"""``kaizen``: the engines without a screen.

    kaizen segment IMAGE... --engine classical --output PATH
    kaizen synth OUTPUT_DIR --n 4
    kaizen evaluate GT PRED [--errors]
    kaizen train ENGINE ...
    kaizen engines

Every error a person can cause is reported in one line (``error: ...``); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .engines import ENGINE_MODULES
from .errors import KaizenError

# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def log_dir() -> Path:
    """Where tracebacks of unexpected errors are kept: ``$XDG_STATE_HOME/napari-kaizen/logs``
    (default ``~/.local/state/napari-kaizen/logs``)."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "napari-kaizen" / "logs"


def write_crash_log(exc: BaseException, argv: list[str]) -> Path | None:
    """Write ``exc``'s traceback and the command line to a new log file; its path (None if none could be written)."""
    import datetime as dt
    import os
    import tempfile
    import traceback

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (f"napari-kaizen {__version__}, python {sys.version.split()[0]}, {sys.platform}\n"
            f"command: kaizen {' '.join(argv)}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "napari-kaizen-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"kaizen-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- segment


def build_segment_jobs(args: argparse.Namespace):
    """The checked :class:`~napari_kaizen.jobs.JobBatch` of a ``kaizen segment`` command line."""
    from .distributed import check_scheduler
    from .jobs import build_jobs

    scheduler = check_scheduler(getattr(args, "scheduler", None))
    if args.output is None:
        raise KaizenError("--output is required: a labels file or folder (only an OME-Zarr plate, whose labels go "
                          "into the plate, needs none)")
    return build_jobs(
        args.images, args.output, engine=args.engine, diameter=args.diameter, params=args.param or [],
        model=args.model, device=args.device, channel=args.channel, plane=args.plane, all_planes=args.all_planes,
        measurements=args.measurements, rois=args.rois, geojson=args.geojson, tile=args.tile, halo=args.halo,
        overwrite=args.overwrite, skip_existing=args.skip_existing, scale_out=True if scheduler else None)


def cmd_segment(args: argparse.Namespace) -> int:
    from .distributed import run_jobs
    from .engines import get_engine
    from .io.plates import is_plate
    from .jobs import job_model

    plates = [p for p in args.images if is_plate(p)]
    if plates:
        if len(plates) != len(args.images):
            raise KaizenError("give OME-Zarr plates on their own: one `kaizen segment` run per plate or per set of images")
        codes = [_segment_plate(args, p) for p in plates]  # every plate runs, whatever one gave
        return 1 if any(codes) else 0
    batch = build_segment_jobs(args)
    if batch.skipped:
        print(f"skipping {len(batch.skipped)} image(s) whose outputs all exist (--skip-existing)")
    if batch.removed:
        print(f"removed {len(batch.removed)} temporary file(s) left by an interrupted run in "
              f"{', '.join(sorted({str(p.parent) for p in batch.removed}))}")
    scheduler = getattr(args, "scheduler", None)
    if batch.jobs and not scheduler and not any(j.tiled for j in batch.jobs):
        # Load the model once, up front: a model that cannot load is the run's one error
        # line, not one per image.
        job = batch.jobs[0]
        job_model(get_engine(job.engine), job.model, job.device)
    failures = 0
    for job, result in run_jobs(batch.jobs, scheduler=scheduler, progress=not args.quiet):
        if isinstance(result, Exception):
            failures += 1
            _fail(f"{job.name}: {result}")
            continue
        print(result.line)
        # After the result, not before: an error must stay the only line of a failure.
        if result.warning:
            print(f"warning: {job.name}: {result.warning}", file=sys.stderr)
    return 1 if failures else 0


def _segment_plate(args: argparse.Namespace, plate: str) -> int:
    """Segment every field of an OME-Zarr plate, one dask task per field, then write the per-well tables."""
    from .distributed import check_scheduler, run_jobs
    from .plates import build_plate_jobs, write_plate_tables

    # A plate is a batch: on dask by default (local threads), one task per field.
    scheduler = check_scheduler(getattr(args, "scheduler", None)) or "threads"
    if args.all_planes or args.rois or args.geojson:
        raise KaizenError("--all-planes, --rois and --geojson are not available for a plate: its fields' labels go "
                          "into the plate and every well gets a measurements CSV")
    batch = build_plate_jobs(plate, engine=args.engine, label_name=args.labels_name, tables=args.output,
                             diameter=args.diameter, params=args.param or [], model=args.model, device=args.device,
                             channel=args.channel, plane=args.plane, tile=args.tile, halo=args.halo,
                             overwrite=args.overwrite, skip_existing=args.skip_existing)
    name = Path(plate).name
    if batch.skipped:
        print(f"{name}: skipping {len(batch.skipped)} field(s) whose labels '{batch.label_name}' exist (--skip-existing)")
    failures = 0
    for job, result in run_jobs(batch.jobs, scheduler=scheduler, progress=not args.quiet):
        where = job.src.relative_to(batch.plate.path).as_posix()
        if isinstance(result, Exception):
            failures += 1
            _fail(f"{name} {where}: {result}")
            continue
        print(f"{name} {where}: {result.line.split(': ', 1)[-1]}")
    written = write_plate_tables(batch)
    print(f"{name}: {len(batch.plate.fields)} fields in {len(batch.plate.wells)} wells; labels in each field's "
          f"labels/{batch.label_name}; tables -> {batch.tables} ({len(written)} files)")
    return 1 if failures else 0


# --------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    import tifffile

    from .data import SynthParams, random_params, synthesize, synthesize_stack
    from .io import write_labels

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"shape": tuple(args.shape)}
    for name in ("density", "clustering", "touching", "nucleus_diameter", "dtype", "label_free"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    rng = np.random.default_rng(args.seed)
    for i in range(args.n):
        seed = args.seed + i
        base = random_params(rng, shape=tuple(args.shape)) if args.random else SynthParams()
        params = dataclasses.replace(base, **overrides)
        stem = f"{args.prefix}{seed:05d}"
        if args.stack:
            s = synthesize_stack(params, seed=seed, n_planes=args.planes, axis=args.stack)
            arrays = {"nuclei": s.nuclei, "membrane": s.membrane, "label_free": s.label_free}
            labels = {"nuclei_labels": s.nucleus_labels, "cells_labels": s.cell_labels}
        else:
            f = synthesize(params, seed=seed)
            arrays = {"nuclei": f.nuclei, "membrane": f.membrane, "label_free": f.label_free}
            labels = {"nuclei_labels": f.nucleus_labels, "cells_labels": f.cell_labels}
        for name, arr in arrays.items():
            if name not in args.channels:
                continue
            path = out / f"{stem}_{name}.tif"
            if path.exists() and not args.overwrite:
                raise KaizenError(f"{path} already exists; not overwriting it (pass --overwrite)")
            tifffile.imwrite(path, arr, compression="zlib", photometric="minisblack")
        for name, arr in labels.items():
            write_labels(out / f"{stem}_{name}.tif", arr, overwrite=args.overwrite)
        print(f"{stem}: {int(labels['nuclei_labels'].max())} nuclei -> {out}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _strip_labels(stem: str) -> str:
    return stem[: -len("_labels")] if stem.lower().endswith("_labels") else stem


def _pair_files(gt: Path, pred: Path) -> list[tuple[Path, Path]]:
    from .io import IMAGE_SUFFIXES

    for what, path in (("ground truth", gt), ("prediction", pred)):
        if not path.exists():
            raise KaizenError(f"{what} {path} does not exist")
    if gt.is_file() and pred.is_file():
        return [(gt, pred)]
    if gt.is_dir() and pred.is_dir():
        # 'X_labels' (ground truth as `kaizen synth` writes it) pairs with 'X' (what
        # `kaizen segment` writes for image X), so the folder round trip works.
        # A GT folder that holds images beside their '_labels' files: only the latter.
        gt_files = [p for p in gt.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        gt_files = [p for p in gt_files if p.stem.lower().endswith("_labels")] or gt_files
        gts = {_strip_labels(p.stem): p for p in gt_files}
        preds = {_strip_labels(p.stem): p for p in pred.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        common = sorted(set(gts) & set(preds))
        if not common:
            raise KaizenError(f"no file names in common between {gt} and {pred}")
        return [(gts[k], preds[k]) for k in common]
    raise KaizenError("GT and PRED must both be files or both be folders (matched by file name)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import read_labels
    from .metrics import check_labels, error_types, evaluate, looks_like_intensity

    pairs = _pair_files(Path(args.gt), Path(args.pred))
    gts, preds = [], []
    for g, p in pairs:
        a, b = read_labels(g), read_labels(p)
        if a.shape != b.shape:
            raise KaizenError(f"{g.name} and {p.name} differ in shape: {a.shape} vs {b.shape}")
        a, b = check_labels(a, g.name), check_labels(b, p.name)
        for path, arr in ((g, a), (p, b)):
            why = looks_like_intensity(arr)
            if why:
                print(f"warning: {path.name} looks like an intensity image, not labels ({why}); the scores "
                      "below treat every value as an object", file=sys.stderr)
        gts.append(a)
        preds.append(b)
    result = evaluate(gts, preds)
    errors = [error_types(g, p) for g, p in zip(gts, preds)] if args.errors else []
    if args.json:
        out = {"ap": {f"{k:.2f}": v for k, v in result.ap.items()}, "map": result.map,
               "n_images": result.n_images, "n_true": result.n_true, "n_pred": result.n_pred}
        if errors:
            out["errors"] = {p.name: e.as_dict() for (_, p), e in zip(pairs, errors)}
            out["errors_total"] = sum(errors[1:], errors[0]).as_dict()
        print(json.dumps(out, indent=2))
    else:
        print(result.table())
        for (_, p), e in zip(pairs, errors):
            print(f"{p.name}: {e.line()}")
        if len(errors) > 1:
            print(f"all: {sum(errors[1:], errors[0]).line()}")
    return 0


# --------------------------------------------------------------------------- train / engines


def cmd_engines(args: argparse.Namespace) -> int:
    from .engines import INPUT_KINDS, get_engine
    from .engines.registry import OUTPUT_KINDS, list_models, skipped_line, user_model_dir
    from .errors import EngineNotAvailableError

    skipped: list = []
    models = list_models(skipped=skipped)
    for name in ENGINE_MODULES:
        try:
            eng = get_engine(name)
        except EngineNotAvailableError as exc:
            print(f"{name:10s} not available: {exc}")
            continue
        print(f"{name:10s} {eng.title}")
        if not eng.learned:
            print(f"{'':10s}   no model; expects {INPUT_KINDS[eng.input_kind]}")
        for m in (m for m in models if m.engine == name):
            default = "  [default]" if m.spec == eng.default_model else ""
            print(f"{'':10s}   {m.spec}{default}\n{'':10s}      finds {OUTPUT_KINDS[m.output_kind]}; expects {INPUT_KINDS[m.input_kind]}"
                  + (f"; {m.description}" if m.source == "user" and m.description else ""))
    print(f"fine-tuned models are kept in {user_model_dir()} (set NAPARI_KAIZEN_MODELS to move them)")
    if skipped:
        print(f"warning: {skipped_line(skipped)}", file=sys.stderr)
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from .engines.bioimageio_package import export_bioimageio, validate_package

    out = export_bioimageio(args.model, args.bioimageio, overwrite=args.overwrite)
    summary = validate_package(out)
    if summary.status not in ("valid-format", "passed"):
        raise KaizenError(f"{out} was written but bioimage.io's validation says {summary.status}; please report it")
    print(f"{args.model} -> {out} (bioimage.io model package, spec {summary.format_version}, {summary.status})")
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    from .engines.bioimageio_package import import_bioimageio
    from .engines.registry import model_entry

    dest = import_bioimageio(args.package, folder=args.folder)
    entry = model_entry(dest, source="user")
    print(f"{Path(args.package).name} -> {dest} ({entry.engine} model; use --model {dest})")
    return 0


def _add_train_parsers(sub, *, load: bool = True) -> None:
    train = sub.add_parser("train", help="train or fine-tune an engine's model")
    if not load:
        # The engines' training modules import torch (seconds); only `kaizen train` needs them.
        train.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    from .engines import get_engine, learned_engines

    engines = train.add_subparsers(dest="train_engine", metavar="ENGINE")
    engines.required = True
    for name in learned_engines():
        engine = get_engine(name)
        p = engines.add_parser(name, help=f"train or fine-tune the {name} engine")
        engine.add_train_arguments(p)
        p.set_defaults(func=engine.run_train)


# --------------------------------------------------------------------------- main


def build_parser(*, train: bool = True) -> argparse.ArgumentParser:
    """The ``kaizen`` parser; ``train=False`` leaves the training sub-commands unloaded."""
    parser = argparse.ArgumentParser(prog="kaizen", description="Find every nucleus and cell in a micrograph.")
    parser.add_argument("--version", action="version", version=f"napari-kaizen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser("segment", help="segment images (files or folders of TIFF / PNG / NPY, OME-Zarr images and plates)")
    seg.add_argument("images", nargs="+", metavar="IMAGE",
                     help="image files or folders, OME-Zarr images, or an OME-Zarr HCS plate (every field)")
    seg.add_argument("--engine", default="classical", choices=list(ENGINE_MODULES))
    seg.add_argument("--output", "-o", default=None,
                     help="labels file (one image) or folder; IMAGE.zarr/labels/NAME puts an OME-Zarr image's labels "
                          "beside it; for a plate: the folder of its per-well CSVs (default PLATE_measurements/)")
    seg.add_argument("--labels-name", dest="labels_name", default=None, metavar="NAME",
                     help="a plate's label image name in each field's labels/ group (default: the engine's name)")
    seg.add_argument("--diameter", default=None,
                     help="object diameter in pixels, 'auto' to estimate it, or 'none' for the model's own scale")
    seg.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    seg.add_argument("--model", default=None, help="weights file (.safetensors with .json beside it) or bundled:NAME")
    seg.add_argument("--channel", type=int, default=None,
                     help="colour channel of an RGB(A) image (or an OME-Zarr colour slide) to use; a stack's planes, "
                          "fluorescence channels included, are picked with --plane")
    seg.add_argument("--plane", default=None,
                     help="plane of a stack, one index per leading axis: e.g. 3, or 0,3 for (t, z)")
    seg.add_argument("--all-planes", action="store_true", help="segment every plane of a stack")
    seg.add_argument("--param", action="append", metavar="NAME=VALUE", help="set an engine parameter (repeatable)")
    seg.add_argument("--measurements", action="store_true", help="also write NAME_measurements.csv")
    seg.add_argument("--rois", action="store_true", help="also write an ImageJ ROI set NAME_rois.zip")
    seg.add_argument("--geojson", action="store_true",
                     help="also write the objects as QuPath GeoJSON NAME.geojson (one polygon per object)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--skip-existing", action="store_true",
                     help="leave images whose labels file already exists (resume an interrupted run)")
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    seg.add_argument("--scheduler", default=None, metavar="threads|processes|tcp://HOST:PORT",
                     help="run on dask: local threads or processes, or a running `dask scheduler` (one task per "
                          "field, or per tile of a huge field)")
    seg.add_argument("--tile", type=int, default=None, metavar="PX",
                     help="segment tile by tile with this tile side (default: only images over 4096x4096, 2048 px "
                          "tiles); labels are stitched across the seams")
    seg.add_argument("--halo", type=int, default=None, metavar="PX",
                     help="context around each tile (default: three object diameters)")
    seg.set_defaults(func=cmd_segment)

    syn = sub.add_parser("synth", help="write synthetic micrographs with paired channels and labels")
    syn.add_argument("output", help="output folder")
    syn.add_argument("--n", type=int, default=4, help="number of fields")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--shape", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    syn.add_argument("--random", action="store_true", help="draw varied parameters per field (training sets)")
    syn.add_argument("--density", type=float)
    syn.add_argument("--clustering", type=float)
    syn.add_argument("--touching", type=float)
    syn.add_argument("--nucleus-diameter", dest="nucleus_diameter", type=float)
    syn.add_argument("--dtype", choices=["uint8", "uint16", "float32"])
    syn.add_argument("--label-free", dest="label_free", choices=["phase", "brightfield", "dic"])
    syn.add_argument("--channels", nargs="+", default=["nuclei", "membrane", "label_free"],
                     choices=["nuclei", "membrane", "label_free"])
    syn.add_argument("--stack", choices=["z", "t"], help="write z-stacks or time series instead of 2-D fields")
    syn.add_argument("--planes", type=int, default=5)
    syn.add_argument("--prefix", default="synth_")
    syn.add_argument("--overwrite", action="store_true")
    syn.set_defaults(func=cmd_synth)

    ev = sub.add_parser("evaluate", help="AP per IoU threshold and mAP of predicted vs true labels")
    ev.add_argument("gt", metavar="GT", help="ground-truth labels file or folder")
    ev.add_argument("pred", metavar="PRED", help="predicted labels file or folder (matched by name)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--errors", action="store_true",
                    help="also count, per image, matches at IoU 0.5, merges, splits, misses, false positives "
                         "and the mean IoU of the matches")
    ev.set_defaults(func=cmd_evaluate)

    eng = sub.add_parser("engines", help="list engines and bundled models")
    eng.set_defaults(func=cmd_engines)

    exp = sub.add_parser("export-model", help="write a model as a bioimage.io model package (needs the [bioimageio] extra)")
    exp.add_argument("model", metavar="MODEL", help="bundled:NAME or a .safetensors path (see `kaizen engines`)")
    exp.add_argument("--bioimageio", required=True, metavar="OUT.zip", help="the package to write")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing package")
    exp.set_defaults(func=cmd_export_model)

    imp = sub.add_parser("import-model", help="bring a package written by export-model back into the model list")
    imp.add_argument("package", metavar="PACKAGE.zip")
    imp.add_argument("--folder", default=None, help="where to keep it (default: the fine-tuned models' folder)")
    imp.set_defaults(func=cmd_import_model)

    _add_train_parsers(sub, load=train)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so every ``finally`` (temporary files) runs."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading
    import warnings

    from .engines import InputWarning

    words = list(sys.argv[1:] if argv is None else argv)
    show_warning = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        # An input warning is for the person at the terminal: one line, no source line.
        if issubclass(category, InputWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show_warning(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(train=command == "train")
    args = parser.parse_args(words)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # A killed batch (a scheduler's time limit, `kill`) unwinds like Ctrl-C: files
        # being written are removed, finished ones stay, and --skip-existing resumes.
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except _Terminated:
        _fail("terminated (SIGTERM); files finished before it are kept, rerun with --skip-existing to resume")
        return 143
    except (KaizenError, OSError) as exc:
        if args.debug:
            raise
        _fail(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 (the one place every other error becomes one line)
        if args.debug:
            raise
        log = write_crash_log(exc, words)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        where = f"the traceback is in {log}" if log else "run again with --debug for the traceback"
        _fail(f"unexpected {exc.__class__.__name__}{': ' + first if first else ''} ({where}; please report it)")
        return 1
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
