"""Scale benchmark: huge fields tile by tile, and a plate on a local dask cluster.

    python benchmarks/scale.py fields --sizes 2048 4096 16384 --engines classical fcn
    python benchmarks/scale.py plate --n 200 --side 256

``fields``: synthetic uint16 fields of N x N (N <= 2048 drawn directly; larger ones a
mosaic of 2048 x 2048 synthetic blocks, written to an on-disk zarr so that the field
itself never sits in the measuring process's memory). Every run is a fresh
subprocess, so its peak RSS is its own: the
tiled run reads the zarr lazily and writes an OME-Zarr label pyramid. Peak memory is
the process's own ``VmHWM`` (see :func:`_peak_gib`). Where the
untiled run fits (``--untiled-max``), it runs too (its own subprocess and peak RSS),
and the seam agreement is AP at IoU 0.5 of tiled against untiled labels.

``plate``: N synthetic fields in a folder, segmented by ``kaizen segment`` in a plain
loop and through ``--scheduler tcp://`` on a local 2-worker dask cluster; wall time
of each and whether the outputs are identical.

Results go to ``benchmarks/results/scale.json`` (merged with earlier runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
BLOCK = 2048


def _channel(field, channel: str) -> np.ndarray:
    """A synthetic field's ``channel`` as uint16 (the label-free one is float, about 0-1.3)."""
    img = getattr(field, channel)
    if img.dtype == np.uint16:
        return img
    return np.clip(np.asarray(img, np.float32) / 2.0 * 65535.0, 0, 65535).astype(np.uint16)


def make_field(n: int, path: Path, seed: int = 0, channel: str = "nuclei") -> Path:
    """Write an n x n uint16 synthetic field to ``path`` (zarr): its nuclei (fluorescence)
    or, for engines that take label-free input, its ``label_free`` channel."""
    import zarr

    from napari_kaizen.data import SynthParams, synthesize

    if path.exists():
        return path
    # Written under a temporary name and renamed when complete: an interrupted run
    # must not leave a half-filled (all-zero) field that a later run would reuse.
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(str(tmp), shape=(n, n), chunks=(1024, 1024), dtype="uint16", zarr_format=2)
    if n <= BLOCK:
        arr[:] = _channel(synthesize(SynthParams(shape=(n, n), dtype="uint16"), seed=seed), channel)
        tmp.rename(path)
        return path
    # A mosaic of a few distinct blocks, each flipped / rotated at random: the cost of
    # drawing 64 blocks of 2048^2 would dominate the benchmark, and a block boundary is
    # just another place where nuclei are cut.
    blocks = [_channel(synthesize(SynthParams(shape=(BLOCK, BLOCK), dtype="uint16"), seed=seed + k), channel)
              for k in range(4)]
    rng = np.random.default_rng(seed)
    for y in range(0, n, BLOCK):
        for x in range(0, n, BLOCK):
            b = np.rot90(blocks[int(rng.integers(4))], int(rng.integers(4)))
            arr[y : y + BLOCK, x : x + BLOCK] = b[: min(BLOCK, n - y), : min(BLOCK, n - x)]
    tmp.rename(path)
    return path


def run_one(args: argparse.Namespace) -> None:
    """In a subprocess: one tiled or untiled run; print a JSON line with time and peak RSS."""
    import zarr

    from napari_kaizen import run_to_end
    from napari_kaizen.engines import get_engine
    from napari_kaizen.io.zarr import create_label_levels
    from napari_kaizen.tiled import load_engine_model, segment_tiled

    engine = get_engine(args.engine)
    src = zarr.open(args.field, mode="r")
    params = engine.params_class(**_overrides(args.set))
    start = time.perf_counter()
    if args.untiled:
        model = load_engine_model(engine, None, "cpu")
        labels = run_to_end(engine.segment(np.asarray(src[:]), params, model=model, device="cpu")).labels
        np.save(args.labels, labels.astype(np.int32))
        n_objects, n_tiles = int(labels.max()), 1
    else:
        levels = create_label_levels(args.labels, src.shape)
        last = None
        # One line per finished tile, so a run stopped by the timeout still tells how far
        # it got and its peak memory so far.
        with open(args.labels + ".progress.jsonl", "w") as log:
            for last in segment_tiled(engine, src, params, device="cpu", tile=args.tile, out=levels):
                if last.region is not None:
                    log.write(json.dumps({"tile": last.tile_index + 1, "n_tiles": last.n_tiles,
                                          "seconds": round(time.perf_counter() - start, 1),
                                          "peak_rss_gib": round(_peak_gib(), 2),
                                          "rss_gib": round(_peak_gib("VmRSS:"), 2)}) + "\n")
                    log.flush()
        n_objects, n_tiles = last.n_objects, last.n_tiles
    took = time.perf_counter() - start
    print(json.dumps({"seconds": round(took, 1), "peak_rss_gib": round(_peak_gib(), 2), "n_objects": n_objects,
                      "n_tiles": n_tiles}))


def _overrides(items: list[str]) -> dict:
    """``['flip_average=False', 'h=0.1']`` -> engine parameter overrides (JSON values)."""
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value.lower() if value in ("True", "False") else value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _peak_gib(field: str = "VmHWM:") -> float:
    """This process's peak resident memory (GiB): VmHWM of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over a vfork + exec
    into the child's ``ru_maxrss``, so a child started by a parent that once held a big
    array reported the parent's peak (identical figures for tiled and untiled runs).
    ``field='VmRSS:'`` gives the current resident memory instead.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024**2  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def _sub(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "_one", *argv]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        progress = Path(argv[argv.index("--labels") + 1] + ".progress.jsonl")
        lines = progress.read_text().splitlines() if progress.exists() else []
        return {"error": f"did not finish in {timeout:.0f} s", "partial": json.loads(lines[-1]) if lines else None}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fields(args: argparse.Namespace) -> None:
    import zarr

    from napari_kaizen.engines import get_engine
    from napari_kaizen.metrics import average_precision

    work = Path(args.work or tempfile.mkdtemp(prefix="kaizen_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        for name in args.engines:
            # The U-Net takes label-free input: its field is the same synthetic scene's
            # label-free channel.
            label_free = get_engine(name).input_kind == "label-free"
            field = make_field(n, work / (f"field_{n}_label_free.zarr" if label_free else f"field_{n}.zarr"),
                               channel="label_free" if label_free else "nuclei")
            # Runs with non-default parameters are kept apart from the defaults' runs.
            tag = "".join(f" {item}" for item in args.set)
            key = f"{name}@{n}{tag}"
            row = {"engine": name, "size": n, "tile": args.tile, "params": _overrides(args.set)}
            stem = f"{name}_{n}" + "".join(f"_{item.replace('=', '-')}" for item in args.set)
            tiled = work / f"{stem}_tiled.zarr"
            extra = [a for item in args.set for a in ("--set", item)]
            row["tiled"] = _sub(["--engine", name, "--field", str(field), "--labels", str(tiled), "--tile",
                                 str(args.tile), *extra], args.timeout)
            if n <= args.untiled_max:
                flat = work / f"{stem}_untiled.npy"
                row["untiled"] = _sub(["--engine", name, "--field", str(field), "--labels", str(flat), "--untiled",
                                       *extra], args.timeout)
                if "error" not in row["tiled"] and "error" not in row["untiled"]:
                    a = np.load(flat)
                    b = np.asarray(zarr.open_group(str(tiled), mode="r")["0"][:])
                    row["seam_ap50"] = round(average_precision(a, b, [0.5])[0.5], 4)
            print(json.dumps({key: row}), flush=True)
            # Re-read before writing: another run of this script may have saved meanwhile.
            results = _load()
            results.setdefault("fields", {})[key] = row
            _save(results)


def plate(args: argparse.Namespace) -> None:
    import tifffile
    from distributed import LocalCluster

    from napari_kaizen.data import SynthParams, synthesize

    work = Path(args.work or tempfile.mkdtemp(prefix="kaizen_plate_"))
    folder = work / "plate"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        p = folder / f"well_{i:04d}.tif"
        if not p.exists():
            tifffile.imwrite(p, synthesize(SynthParams(shape=(args.side, args.side), dtype="uint16"), seed=i).nuclei)
    env = dict(os.environ)
    base = [sys.executable, "-m", "napari_kaizen.cli", "segment", str(folder), "--engine", args.engine, "-q"]
    row = {"engine": args.engine, "n_fields": args.n, "side": args.side}
    start = time.perf_counter()
    subprocess.run([*base, "-o", str(work / "plain")], check=True, env=env, capture_output=True)
    row["plain_loop_s"] = round(time.perf_counter() - start, 1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        start = time.perf_counter()
        subprocess.run([*base, "-o", str(work / "dask"), "--scheduler", cluster.scheduler_address], check=True,
                       env=env, capture_output=True)
        row["dask_2_workers_s"] = round(time.perf_counter() - start, 1)
    same = all(np.array_equal(tifffile.imread(work / "plain" / f.name), tifffile.imread(work / "dask" / f.name))
               for f in sorted(folder.iterdir()))
    row["identical_outputs"] = bool(same)
    print(json.dumps(row), flush=True)
    results = _load()
    results["plate"] = row
    _save(results)


def table(args: argparse.Namespace) -> None:
    """Print the results as the markdown table of docs/scale.md."""
    results = _load()

    def cell(run: dict | None, key: str) -> str:
        if not run:
            return "–"
        if "error" in run:
            part = run.get("partial")
            return f"stopped ({part['tile']}/{part['n_tiles']} tiles, {part.get(key, '–')})" if part else "error"
        return str(run[key])

    print("| field | engine | tile | tiles | objects | tiled time (s) | tiled peak RSS (GiB) | untiled time (s) "
          "| untiled peak RSS (GiB) | seam AP50 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = sorted(results.get("fields", {}).values(), key=lambda r: (r["size"], r["engine"]))
    for r in rows:
        t, u = r.get("tiled"), r.get("untiled")
        engine = r["engine"] + "".join(f", {k}={v}" for k, v in r.get("params", {}).items())
        print(f"| {r['size']}² | {engine} | {r['tile']} | {cell(t, 'n_tiles')} | {cell(t, 'n_objects')} "
              f"| {cell(t, 'seconds')} | {cell(t, 'peak_rss_gib')} | {cell(u, 'seconds')} | {cell(u, 'peak_rss_gib')} "
              f"| {r.get('seam_ap50', '–')} |")
    plate = results.get("plate")
    if plate:
        print(f"\nPlate: {plate['n_fields']} fields of {plate['side']}² ({plate['engine']}): plain loop "
              f"{plate['plain_loop_s']} s, local dask cluster of 2 single-threaded worker processes "
              f"{plate['dask_2_workers_s']} s, outputs identical: {plate['identical_outputs']}.")


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def _save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        p = argparse.ArgumentParser()
        p.add_argument("--engine")
        p.add_argument("--field")
        p.add_argument("--labels")
        p.add_argument("--tile", type=int, default=2048)
        p.add_argument("--untiled", action="store_true")
        p.add_argument("--set", action="append", default=[])
        run_one(p.parse_args(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fields")
    f.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    f.add_argument("--engines", nargs="+", default=["classical", "fcn", "unet", "kaizen"])
    f.add_argument("--tile", type=int, default=2048)
    f.add_argument("--untiled-max", type=int, default=4096, help="largest side also run untiled")
    f.add_argument("--timeout", type=float, default=3600)
    f.add_argument("--work", default=None)
    f.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                   help="engine parameter override, e.g. flip_average=False (kept apart in the results)")
    f.set_defaults(func=fields)
    pl = sub.add_parser("plate")
    pl.add_argument("--n", type=int, default=200)
    pl.add_argument("--side", type=int, default=256)
    pl.add_argument("--engine", default="classical")
    pl.add_argument("--work", default=None)
    pl.set_defaults(func=plate)
    tb = sub.add_parser("table", help="print the results as markdown")
    tb.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
