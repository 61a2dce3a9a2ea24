"""Huge images tile by tile (seam stitching), OME-Zarr / BigTIFF, and batches on a dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_kaizen import metrics, run_to_end
from napari_kaizen.cli import main
from napari_kaizen.data import SynthParams, synthesize
from napari_kaizen.engines import get_engine
from napari_kaizen.engines._common import InputError
from napari_kaizen.engines._common.stitch import Tile, merge_tile, owned_objects, tile_grid
from napari_kaizen.io.zarr import create_label_levels, open_lazy, read_label_levels, update_pyramid, write_bigtiff
from napari_kaizen.tiled import TiledSnapshot, segment_tiled

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def field():
    return synthesize(SynthParams(shape=(768, 768)), seed=21)


@pytest.fixture(scope="module")
def untiled(field):
    eng = get_engine("classical")
    return run_to_end(eng.segment(field.nuclei, eng.params_class())).labels


# --------------------------------------------------------------------------- stitching


def test_grid_covers_the_image_once_and_windows_add_the_halo():
    tiles = tile_grid((700, 1000), 256, 40)
    cover = np.zeros((700, 1000), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        assert wy0 == max(0, y0 - 40) and wx1 == min(1000, x1 + 40)
    assert (cover == 1).all()
    # remainders under half a tile fold into their neighbour: no sliver cores
    assert min(t.core[1] - t.core[0] for t in tiles) >= 128
    with pytest.raises(InputError, match="tile size"):
        tile_grid((700, 1000), 8, 4)


def test_an_object_cut_by_a_seam_is_one_object_with_unique_ids():
    # Two tiles side by side (cores x < 50 and x >= 50), halo 20; a disc on the seam,
    # a disc in each core, and one that the left window cuts (seen whole by the right).
    yy, xx = np.mgrid[:60, :100]
    truth = np.zeros((60, 100), np.int32)
    truth[(yy - 30) ** 2 + (xx - 50) ** 2 < 64] = 1  # on the seam
    truth[(yy - 10) ** 2 + (xx - 20) ** 2 < 25] = 2  # left core
    truth[(yy - 50) ** 2 + (xx - 80) ** 2 < 25] = 3  # right core
    truth[(yy - 50) ** 2 + (xx - 70) ** 2 < 16] = 4  # right core, cut by the left window's edge (x = 70)
    tiles = tile_grid((60, 100), 64, 20)
    tiles = [Tile(0, (0, 60, 0, 50), (0, 60, 0, 70)), Tile(1, (0, 60, 50, 100), (0, 60, 30, 100))]
    out = np.zeros_like(truth)
    next_id = 1
    for t in tiles:
        window = truth[t.window_slices] * 7  # tile-local ids differ from the truth's
        owned = owned_objects(window, t, truth.shape)
        merged, next_id, _ = merge_tile(out[t.window_slices], owned, next_id)
        out[t.window_slices] = merged
    assert next_id - 1 == 4 and len(np.unique(out)) == 5
    assert metrics.average_precision(truth, out, [0.9])[0.9] == 1.0
    # the seam object comes from the left tile only: written once, whole
    assert len(np.unique(out[truth == 1])) == 1


def test_tiled_classical_matches_untiled(field, untiled):
    eng = get_engine("classical")
    snaps = list(segment_tiled(eng, field.nuclei, tile=256))
    tiles = [s for s in snaps if isinstance(s, TiledSnapshot) and s.region is not None]
    assert len(tiles) == 9 and sorted(s.tile_index for s in tiles) == list(range(9))
    assert [s.progress for s in snaps] == sorted(s.progress for s in snaps)
    last = snaps[-1]
    assert last.done
    labels = np.asarray(last.labels[:])
    ids = np.unique(labels)[1:]
    assert ids.tolist() == list(range(1, last.n_objects + 1))  # unique, consecutive ids
    ap = metrics.average_precision(untiled, labels, [0.5])[0.5]
    assert ap >= 0.98, ap
    assert metrics.average_precision(field.nucleus_labels, labels, [0.5])[0.5] >= 0.95 * metrics.average_precision(
        field.nucleus_labels, untiled, [0.5])[0.5]


def test_tiled_run_is_deterministic_and_reads_dask_lazily(field):
    da = pytest.importorskip("dask.array")
    image = field.nuclei[:512, :448]
    a = run_to_end(segment_tiled("classical", image, tile=256)).labels
    b = run_to_end(segment_tiled("classical", da.from_array(image, chunks=200), tile=256)).labels
    assert np.asarray(a[:]).max() > 50
    assert np.array_equal(np.asarray(a[:]), np.asarray(b[:]))


def _record_reads(monkeypatch) -> list[tuple]:
    """Every key a job's lazily opened image (``io.zarr.open_lazy``) is read with, from now on."""
    from napari_kaizen.io import zarr as kz_zarr

    reads: list[tuple] = []
    opened = kz_zarr.open_lazy

    class Recording:
        def __init__(self, arr):
            self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype

        def __getitem__(self, key):
            reads.append(key if isinstance(key, tuple) else (key,))
            return self.arr[key]

    monkeypatch.setattr(kz_zarr, "open_lazy", lambda path: Recording(opened(path)))
    return reads


def test_an_ome_zarr_plane_under_leading_axes_is_read_tile_by_tile(tmp_path, field, untiled, capsys):
    # A 5-D OME-Zarr (t, c, z, y, x) = (1, 1, 1, Y, X), as bioformats2raw writes every
    # image: indexing its zarr array with the leading zeros read the whole plane before
    # the first tile (an 8192² uint16 plane: peak memory 766 -> 654 MB once lazy; a
    # slide of 50k² would not fit). Every read of the run now names its rows and columns
    # (a window, a sample: slices the zarr array reads chunk by chunk).
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image


    fmt = FormatV05()
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=fmt.zarr_format)
    write_image(field.nuclei[None, None, None], group, fmt=fmt, axes="tczyx",
                storage_options=dict(chunks=(1, 1, 1, 256, 256)))
    with pytest.MonkeyPatch.context() as patch:
        reads = _record_reads(patch)
        assert main(["segment", str(tmp_path / "img.zarr"), "--engine", "classical", "--tile", "256", "-q",
                     "-o", str(tmp_path / "labels.tif")]) == 0
    assert reads and all(len(key) == 5 and isinstance(key[-2], slice) and isinstance(key[-1], slice)
                         for key in reads), reads
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert metrics.average_precision(untiled, labels, [0.5])[0.5] >= 0.98


def test_one_colour_of_a_huge_rgb_field_is_read_tile_by_tile(tmp_path, monkeypatch):
    # --channel on a tiled colour field took image[..., channel] of the lazy TIFF: the
    # whole colour plane at once (8192² RGB: peak 722 -> 673 MB once lazy, +6-8 % time).

    section = tifffile.imread(Path(__file__).parent / "data" / "dsb2018" / "stained_section_image.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", section, photometric="rgb", tile=(64, 64))
    reads = _record_reads(monkeypatch)
    common = ["segment", str(tmp_path / "rgb.tif"), "--engine", "classical", "--channel", "1", "-q"]
    assert main([*common, "--tile", "128", "-o", str(tmp_path / "tiled.tif")]) == 0
    assert reads and all(isinstance(key[0], slice) and isinstance(key[1], slice) and key[2] == 1
                         for key in reads), reads
    monkeypatch.undo()
    assert main([*common, "-o", str(tmp_path / "plain.tif")]) == 0
    tiled, plain = tifffile.imread(tmp_path / "tiled.tif"), tifffile.imread(tmp_path / "plain.tif")
    assert plain.max() > 20
    assert metrics.average_precision(plain, tiled, [0.5])[0.5] >= 0.9


def test_a_tiled_run_measures_its_objects_tile_by_tile(tmp_path, field, capsys):
    # --measurements was refused for every tiled (huge or OME-Zarr) image. Each object is
    # now measured once, whole, in the window whose core holds its bounding box's
    # top-left corner: the table is the one the whole field's labels give.
    from napari_kaizen.io.measurements import measurements_table, read_measurements_csv

    src = tmp_path / "big.tif"
    tifffile.imwrite(src, field.nuclei, tile=(128, 128))
    common = ["segment", str(src), "--engine", "classical", "--tile", "256", "--measurements", "-o", str(tmp_path / "out")]
    assert main(common) == 0
    assert "(+ big_measurements.csv)" in capsys.readouterr().out
    labels = tifffile.imread(tmp_path / "out" / "big.tif")
    table = read_measurements_csv(tmp_path / "out" / "big_measurements.csv")
    whole = measurements_table(labels, field.nuclei)
    assert len(table["label"]) == labels.max() > 100 and list(table) == list(whole)
    for name in whole:
        np.testing.assert_allclose(table[name], whole[name], rtol=1e-9, equal_nan=True, err_msg=name)
    # A resume makes the missing table from the labels on disk, without segmenting again.
    (tmp_path / "out" / "big_measurements.csv").unlink()
    stamp = (tmp_path / "out" / "big.tif").stat().st_mtime_ns
    assert main([*common, "--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert "objects from its existing labels" in said and "(+ big_measurements.csv) (kept existing big.tif)" in said
    assert (tmp_path / "out" / "big.tif").stat().st_mtime_ns == stamp
    np.testing.assert_allclose(read_measurements_csv(tmp_path / "out" / "big_measurements.csv")["area"], whole["area"])
    assert main([*common[:-3], "--rois", "-o", str(tmp_path / "rois")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--rois, --geojson and --all-planes are not available for tiled" in err and "\n" not in err


def test_pyramid_levels_follow_level_zero():
    levels = create_label_levels(__import__("zarr").storage.MemoryStore(), (1500, 1100))
    assert [tuple(lv.shape) for lv in levels] == [(1500, 1100), (750, 550), (375, 275)]
    rng = np.random.default_rng(0)
    block = rng.integers(0, 50, (300, 400)).astype(np.int32)
    levels[0][101:401, 333:733] = block
    update_pyramid(levels, (101, 401, 333, 733))
    full = np.asarray(levels[0][:])
    for k in (1, 2):
        assert np.array_equal(np.asarray(levels[k][:]), full[:: 2**k, :: 2**k])


# --------------------------------------------------------------------------- files


def test_bigtiff_and_ome_zarr_round_trip(tmp_path, field):
    labels = synthesize(SynthParams(shape=(1100, 700)), seed=2).nucleus_labels.astype(np.int32)
    write_bigtiff(tmp_path / "l.tif", labels)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
    assert np.array_equal(tifffile.imread(tmp_path / "l.tif"), labels)
    with pytest.raises(Exception, match="already exists"):
        write_bigtiff(tmp_path / "l.tif", labels)
    # An image read lazily from an OME-Zarr written here: labels -> OME-Zarr -> lazy level 0
    from napari_kaizen.io.zarr import write_ome_zarr_labels

    write_ome_zarr_labels(tmp_path / "l.zarr", labels)
    # NGFF 0.5 (zarr format 3) since 0.3: the metadata sits under attributes.ome of zarr.json
    meta = json.loads((tmp_path / "l.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["version"] == "0.5" and "image-label" in meta and meta["multiscales"][0]["axes"][0]["name"] == "y"
    levels = read_label_levels(tmp_path / "l.zarr")
    assert np.array_equal(np.asarray(levels[0][:]), labels)
    assert np.array_equal(np.asarray(levels[1][:]), labels[::2, ::2])
    lazy = open_lazy(tmp_path / "l.zarr")
    assert not isinstance(lazy, np.ndarray) and np.array_equal(np.asarray(lazy[5:9, 7:20]), labels[5:9, 7:20])


def test_cli_tiles_a_tiff_into_ome_zarr_and_bigtiff(tmp_path, field, untiled, capsys):
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, field.nuclei, tile=(256, 256), compression="zlib")
    assert main(["segment", str(src), "-o", str(tmp_path / "big.zarr"), "--tile", "256", "-q"]) == 0
    assert "9 tiles" in capsys.readouterr().out
    zarr_labels = np.asarray(read_label_levels(tmp_path / "big.zarr")[0][:])
    assert metrics.average_precision(untiled, zarr_labels, [0.5])[0.5] >= 0.98
    assert main(["segment", str(src), "-o", str(tmp_path / "labels.tif"), "--tile", "256", "-q"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "labels.tif"), zarr_labels)
    # never clobbered without --overwrite; bad values give one line
    assert main(["segment", str(src), "-o", str(tmp_path / "big.zarr"), "--tile", "256", "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", str(src), "-o", str(tmp_path / "x.zarr"), "--tile", "16", "-q"]) == 1
    assert "--tile 16 is too small" in capsys.readouterr().err
    assert main(["segment", str(src), "-o", str(tmp_path / "y.tif"), "--scheduler", "ftp://x", "-q"]) == 1
    assert "--scheduler 'ftp://x' is not understood" in capsys.readouterr().err


# --------------------------------------------------------------------------- dask cluster


def _dask_cli(kind: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from distributed.cli.dask_{kind} import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    """A real `dask scheduler` + one `dask worker` process on 127.0.0.1 (the worker imports this checkout)."""
    pytest.importorskip("distributed")
    folder = tmp_path_factory.mktemp("cluster")
    info = folder / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([*_dask_cli("scheduler"), "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], env=env, cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([*_dask_cli("worker"), address, "--nthreads", "2", "--nworkers", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"], env=env, cwd=folder,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_folder_on_a_tcp_cluster_equals_the_plain_run_and_resumes(tmp_path, tcp_cluster, capsys):
    plate = tmp_path / "plate"
    plate.mkdir()
    for i in range(4):
        tifffile.imwrite(plate / f"well_{i}.tif", synthesize(SynthParams(shape=(160, 160)), seed=100 + i).nuclei)
    assert main(["segment", str(plate), "-o", str(tmp_path / "plain"), "-q"]) == 0
    capsys.readouterr()
    assert main(["segment", str(plate), "-o", str(tmp_path / "dask"), "--scheduler", tcp_cluster, "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("objects with the classical engine") == 4
    for f in sorted(plate.iterdir()):
        a, b = tifffile.imread(tmp_path / "plain" / f.name), tifffile.imread(tmp_path / "dask" / f.name)
        assert a.max() > 5 and np.array_equal(a, b)
    # resume: delete one output, rerun with --skip-existing: only that one is redone
    (tmp_path / "dask" / "well_2.tif").unlink()
    assert main(["segment", str(plate), "-o", str(tmp_path / "dask"), "--scheduler", tcp_cluster, "--skip-existing",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "skipping 3 image(s)" in out and out.count("objects with") == 1
    assert np.array_equal(tifffile.imread(tmp_path / "dask" / "well_2.tif"), tifffile.imread(tmp_path / "plain" / "well_2.tif"))


def test_tiles_on_a_tcp_cluster_equal_the_plain_tiled_run(tmp_path, field, tcp_cluster):
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, field.nuclei)
    assert main(["segment", str(src), "-o", str(tmp_path / "plain.tif"), "--tile", "256", "-q"]) == 0
    assert main(["segment", str(src), "-o", str(tmp_path / "dask.tif"), "--tile", "256", "--scheduler", tcp_cluster,
                 "-q"]) == 0
    a, b = tifffile.imread(tmp_path / "plain.tif"), tifffile.imread(tmp_path / "dask.tif")
    assert a.max() > 100 and np.array_equal(a, b)


def test_closing_a_run_cancels_the_clusters_tiles(field, tcp_cluster):
    """What Ctrl-C does (closing the generator): no tile task is left on the cluster."""
    from distributed import Client

    with Client(tcp_cluster, timeout=30) as client:
        gen = segment_tiled("classical", field.nuclei, tile=128, client=client)
        first = [next(gen), next(gen)]
        assert first[-1].tile_index == 0 and first[-1].n_tiles == 36
        gen.close()

        def tile_tasks(dask_scheduler):
            return [str(k) for k in dask_scheduler.tasks if str(k).startswith("kaizen-tile")]

        deadline = time.monotonic() + 20
        while client.run_on_scheduler(tile_tasks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.run_on_scheduler(tile_tasks) == []


def test_local_threads_scheduler_equals_the_plain_run(tmp_path):
    pytest.importorskip("distributed")
    for i in range(2):
        tifffile.imwrite(tmp_path / f"f{i}.tif", synthesize(SynthParams(shape=(128, 128)), seed=200 + i).nuclei)
    assert main(["segment", str(tmp_path / "f0.tif"), str(tmp_path / "f1.tif"), "-o", str(tmp_path / "a"), "-q"]) == 0
    assert main(["segment", str(tmp_path / "f0.tif"), str(tmp_path / "f1.tif"), "-o", str(tmp_path / "b"), "-q",
                 "--scheduler", "threads"]) == 0
    for i in range(2):
        assert np.array_equal(tifffile.imread(tmp_path / "a" / f"f{i}.tif"), tifffile.imread(tmp_path / "b" / f"f{i}.tif"))


def test_a_huge_rgb_field_is_tiled_by_its_pixels_and_asks_for_its_channel(tmp_path, capsys):
    """An RGB(A) file counts H x W pixels (its colour axis is no plane): a 5000 x 5000 x 3
    slide is tiled, not loaded whole; tiled, it reads one channel through --channel."""
    from napari_kaizen.jobs import is_huge

    assert is_huge((5000, 5000, 3)) and is_huge((5000, 5000)) and not is_huge((3000, 3000, 4))
    nuclei = synthesize(SynthParams(shape=(320, 320)), seed=5).nuclei
    src = tmp_path / "slide.tif"
    tifffile.imwrite(src, np.dstack([np.zeros_like(nuclei), nuclei, np.zeros_like(nuclei)]))  # nuclei in green
    out = tmp_path / "slide_labels.tif"
    assert main(["segment", str(src), "--engine", "classical", "--tile", "160", "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--channel" in err and "RGB" in err
    assert main(["segment", str(src), "--engine", "classical", "--tile", "160", "--channel", "1", "-o", str(out),
                 "-q"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == nuclei.shape and labels.max() > 5


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("napari_kaizen.distributed.CONNECT_TIMEOUT_S", 2)
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthesize(SynthParams(shape=(96, 96)), seed=1).nuclei)
    assert main(["segment", str(src), "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the dask scheduler at tcp://127.0.0.1:9") and "\n" not in err


# --------------------------------------------------------------------------- napari


@pytest.mark.gui
def test_napari_tiled_run_on_a_multiscale_dask_layer(make_napari_viewer, qtbot, field):
    da = pytest.importorskip("dask.array")
    from napari_kaizen.widgets._tiled_run import tiled_job
    from napari_kaizen.widgets._worker import SnapshotRunner

    viewer = make_napari_viewer()
    level0 = da.from_array(field.nuclei, chunks=256)
    layer = viewer.add_image([level0, level0[::2, ::2]], multiscale=True, name="huge")
    make, draw = tiled_job(viewer, layer, "classical", tile=256)
    seen, drawn = [], []
    runner = SnapshotRunner(min_interval_ms=10)  # as the dock widgets run engines

    def draw_and_note(snap):
        draw(snap)
        drawn.append(snap)

    runner.start(make, draw=draw_and_note, on_snapshot=seen.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=60_000)
    assert seen and seen[-1].done and drawn[-1].done
    labels = viewer.layers["huge labels"]
    # lazy: a pyramid of zarr arrays, never one numpy array of the image's size
    assert labels.multiscale and not any(isinstance(lv, np.ndarray) for lv in labels.data)
    assert sum(s.region is not None for s in seen) == 9  # every tile was drawn as it finished
    expected = np.asarray(run_to_end(segment_tiled("classical", field.nuclei, tile=256)).labels[:])
    assert np.array_equal(np.asarray(labels.data[0][:]), expected) and expected.max() > 100


@pytest.mark.gui
def test_napari_tiled_run_on_a_colour_pyramid_of_a_stained_section(make_napari_viewer, qtbot):
    # A stained slide opens as a colour pyramid; it is told apart on its coarsest level
    # and read tile by tile as its luminance (tiled.ColourPlane), as the command line and
    # an untiled run read it. Before, the layer was refused ("split its channels").
    da = pytest.importorskip("dask.array")
    from pathlib import Path

    from napari_kaizen import metrics
    from napari_kaizen.widgets._layers import image_layer_problem
    from napari_kaizen.widgets._tiled_run import tiled_job
    from napari_kaizen.widgets._worker import SnapshotRunner

    data = Path(__file__).parent / "data" / "dsb2018"
    section = tifffile.imread(data / "stained_section_image.tif")
    truth = tifffile.imread(data / "stained_section_labels.tif").astype(np.int32)
    viewer = make_napari_viewer()
    level0 = da.from_array(section, chunks=(128, 128, 3))
    layer = viewer.add_image([level0, level0[::2, ::2]], multiscale=True, rgb=True, name="slide")
    assert image_layer_problem(layer) is None
    with pytest.warns(UserWarning, match="colour picture of a bright field"):
        make, draw = tiled_job(viewer, layer, "classical", tile=128)
    runner = SnapshotRunner(min_interval_ms=10)
    seen = []
    runner.start(make, draw=draw, on_snapshot=seen.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=60_000)
    assert seen and seen[-1].done
    out = viewer.layers["slide labels"]
    labels = np.asarray((out.data[0] if out.multiscale else out.data)[:])
    assert labels.shape == section.shape[:2]
    assert metrics.average_precision(truth, labels, (0.5,))[0.5] >= 0.25  # measured 0.35, as the command line
