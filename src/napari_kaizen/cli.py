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
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .engines import ENGINE_MODULES
from .errors import KaizenError

LABEL_OUTPUT_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _progress_bar(total: float, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="", bar_format="{desc} {bar} {percentage:3.0f}% {elapsed}",
                disable=not enabled, leave=False, file=sys.stderr)


def drive(snapshots, desc: str, *, progress: bool = True):
    """Run a snapshot generator to the end with a progress bar; return the last snapshot."""
    last = None
    with _progress_bar(1000, desc, progress) as bar:
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


def parse_param_overrides(params_class: type, items: list[str]) -> dict[str, Any]:
    """Turn ``['h=0.2', 'batched=false']`` into typed keyword arguments for ``params_class``."""
    fields = {f.name: f for f in dataclasses.fields(params_class)}
    hints = typing.get_type_hints(params_class)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise KaizenError(f"--param '{item}' is not NAME=VALUE")
        name, text = (s.strip() for s in item.split("=", 1))
        if name not in fields:
            raise KaizenError(f"--param: '{name}' is not a parameter of this engine; parameters: {', '.join(fields)}")
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


def _read_int(text: str) -> int:
    """An integer from ``'5'`` or ``'5.0'`` (not ``'5.5'``)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


def _output_paths(inputs: list[Path], output: Path) -> list[Path]:
    """One output path per input: a file for a single input with a label suffix, else a folder.

    Nothing is created here: a name with another suffix (``lab.jpg``) is refused
    rather than silently becoming a folder.
    """
    suffix = output.suffix.lower()
    if suffix and suffix not in LABEL_OUTPUT_SUFFIXES and not output.is_dir():
        raise KaizenError(f"--output {output}: labels are written as {', '.join(LABEL_OUTPUT_SUFFIXES)} "
                          "(lossless); give such a file name or a folder")
    if len(inputs) == 1 and suffix in LABEL_OUTPUT_SUFFIXES:
        return [output]
    if suffix in LABEL_OUTPUT_SUFFIXES:
        raise KaizenError(f"--output {output} is a file name but {len(inputs)} images were given: give a folder")
    names = [p.stem for p in inputs]
    if len(set(names)) != len(names):
        raise KaizenError("two input images share a file name; their outputs would collide: rename or run separately")
    return [output / f"{p.stem}.tif" for p in inputs]


def _check_writable(outputs: list[Path]) -> None:
    """Create the output folders and refuse an unwritable one before any work is done."""
    import os

    for folder in sorted({o.parent for o in outputs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KaizenError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise KaizenError(f"the output folder {folder} is not writable: choose another --output")


def _parse_plane(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(i) for i in text.split(","))
    except ValueError:
        raise KaizenError(f"--plane '{text}': expected a plane index such as 3, or 0,3 for (t, z)") from None


# --------------------------------------------------------------------------- segment


def segment_setup(args: argparse.Namespace):
    """``(engine, params, plane)`` of a ``kaizen segment`` command line, checked before any work.

    Shared by the plain run here and the scaled-out one (:mod:`napari_kaizen.distributed`).
    """
    from .engines import get_engine, learned_engines

    engine = get_engine(args.engine)
    overrides = parse_param_overrides(engine.params_class, args.param or [])
    if args.diameter is not None:
        overrides["diameter"] = None if args.diameter.lower() == "none" else args.diameter
    try:
        params = engine.params_class(**overrides)
    except (TypeError, ValueError) as exc:
        raise KaizenError(f"invalid parameters for the {engine.name} engine: {exc}") from None
    plane = _parse_plane(args.plane)
    if args.plane is not None and args.all_planes:
        raise KaizenError("--plane picks one plane and --all-planes runs every plane: give one of them")
    if not engine.learned and args.model:
        raise KaizenError(f"the {engine.name} engine uses no model; --model applies to the learned engines "
                          f"({', '.join(learned_engines())})")
    if not engine.learned and args.device not in ("auto", "cpu"):
        raise KaizenError(f"the {engine.name} engine runs on the CPU only; --device applies to the learned engines")
    return engine, params, plane


def cmd_segment(args: argparse.Namespace) -> int:
    from .distributed import needs_scale_out, run_segment
    from .engines.registry import input_warning
    from .io import find_images

    if needs_scale_out(args):
        # Huge images (tile by tile), OME-Zarr, or a dask scheduler: see distributed.py.
        return run_segment(args)
    engine, params, plane = segment_setup(args)
    inputs = find_images(args.images)
    outputs = _output_paths(inputs, Path(args.output))
    if args.skip_existing and args.overwrite:
        raise KaizenError("--skip-existing keeps existing outputs and --overwrite replaces them: give one of them")
    if args.skip_existing:
        done = [o for o in outputs if o.exists()]
        if done:
            print(f"skipping {len(done)} image(s) whose labels already exist (--skip-existing)")
        keep = [i for i, o in enumerate(outputs) if not o.exists()]
        inputs, outputs = [inputs[i] for i in keep], [outputs[i] for i in keep]
    elif not args.overwrite:
        clash = [o for o in outputs if o.exists()]
        if clash:
            raise KaizenError(f"{clash[0]} already exists; not overwriting it (pass --overwrite, or --skip-existing "
                              "to resume a run)")
    _check_writable(outputs)
    model = entry = None
    if engine.learned and inputs:
        entry = _model_entry(engine, args.model or engine.default_model)
        model = engine.load_model(entry.spec if entry else args.model, device=args.device)
    failures = 0
    for src, dest in zip(inputs, outputs):
        try:
            line, image = segment_file(
                engine, params, src, dest, model=model, device=args.device, channel=args.channel, plane=plane,
                all_planes=args.all_planes, measurements=args.measurements, rois=args.rois,
                overwrite=args.overwrite, run=lambda gen, name=src.name: drive(gen, name, progress=not args.quiet))
            print(line)
            # After the result, not before: an error must stay the only line of a failure.
            warning = input_warning(entry, image) if entry is not None and image.ndim == 2 else None
            if warning:
                print(f"warning: {src.name}: {warning}", file=sys.stderr)
        except (KaizenError, OSError) as exc:
            failures += 1
            _fail(f"{src.name}: {exc}")
    return 1 if failures else 0


def _model_entry(engine, spec: str):
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


def segment_file(engine, params, src: Path, dest: Path, *, model, device: str, channel: int | None,
                 plane: tuple[int, ...] | None, all_planes: bool, measurements: bool, rois: bool, overwrite: bool,
                 run) -> tuple[str, np.ndarray]:
    """Read, segment and write one image file as ``kaizen segment`` does (plain and on dask).

    ``run(snapshots)`` drives the engine's generator to its last snapshot (with or
    without a progress bar). Returns the result line to print and the image (or plane)
    that was segmented.
    """
    from .engines._common.normalize import to_plane
    from .engines._common.planes import segment_planes
    from .io import read_image, write_labels, write_measurements_csv, write_roi_zip

    start = time.perf_counter()
    image = read_image(src)
    if all_planes:
        if channel is not None:
            image = to_plane(image, channel=channel) if image.ndim == 3 else image[..., channel]
        gen = segment_planes(engine.segment, image, params, model=model, device=device)
    else:
        if plane is not None and image.ndim == 2:
            raise KaizenError(f"--plane {','.join(map(str, plane))} was given but the image is 2-D; leave --plane out")
        image = to_plane(image, channel=channel, plane=plane)
        gen = engine.segment(image, params, model=model, device=device)
    last = run(gen)
    labels = last.labels
    if labels is None:
        raise KaizenError("the engine finished without labels")
    write_labels(dest, labels, overwrite=overwrite)
    extra = []
    if measurements:
        csv_path = dest.with_name(dest.stem + "_measurements.csv")
        write_measurements_csv(csv_path, labels, image if image.shape == labels.shape else None,
                               extra=_scores(last), overwrite=overwrite)
        extra.append(csv_path.name)
    if rois and labels.max() > 0:
        roi_path = dest.with_name(dest.stem + "_rois.zip")
        write_roi_zip(roi_path, labels, overwrite=overwrite)
        extra.append(roi_path.name)
    n = int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0))
    also = f" (+ {', '.join(extra)})" if extra else ""
    # No objects is a result, but never a silent one: say the engine's reason.
    why = f" ({last.message})" if n == 0 and last.message else ""
    took = time.perf_counter() - start
    return f"{src.name}: {n} objects with the {engine.name} engine in {took:.1f} s -> {dest}{also}{why}", image


def _scores(snapshot) -> dict[str, dict[int, float]]:
    scores = getattr(snapshot, "scores", None)
    return {"score": {int(k): float(v) for k, v in dict(scores).items()}} if scores else {}


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
    from .metrics import error_types, evaluate

    pairs = _pair_files(Path(args.gt), Path(args.pred))
    gts, preds = [], []
    for g, p in pairs:
        a, b = read_labels(g), read_labels(p)
        if a.shape != b.shape:
            raise KaizenError(f"{g.name} and {p.name} differ in shape: {a.shape} vs {b.shape}")
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
    from .engines import get_engine
    from .engines._common.loaded import INPUT_KINDS
    from .engines.registry import OUTPUT_KINDS, list_models, user_model_dir
    from .errors import EngineNotAvailableError

    models = list_models()
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

    seg = sub.add_parser("segment", help="segment images (files or folders of TIFF / PNG / NPY)")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    seg.add_argument("--engine", default="classical", choices=list(ENGINE_MODULES))
    seg.add_argument("--output", "-o", required=True, help="labels file (one image) or folder")
    seg.add_argument("--diameter", default=None,
                     help="object diameter in pixels, 'auto' to estimate it, or 'none' for the model's own scale")
    seg.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    seg.add_argument("--model", default=None, help="weights file (.safetensors with .json beside it) or bundled:NAME")
    seg.add_argument("--channel", type=int, default=None, help="channel of an RGB(A) image to use")
    seg.add_argument("--plane", default=None, help="plane of a stack, e.g. 3 or 0,3 for (t, z)")
    seg.add_argument("--all-planes", action="store_true", help="segment every plane of a stack")
    seg.add_argument("--param", action="append", metavar="NAME=VALUE", help="set an engine parameter (repeatable)")
    seg.add_argument("--measurements", action="store_true", help="also write NAME_measurements.csv")
    seg.add_argument("--rois", action="store_true", help="also write an ImageJ ROI set NAME_rois.zip")
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

    from .engines._common.normalize import InputWarning

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
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
