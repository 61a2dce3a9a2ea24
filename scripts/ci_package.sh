#!/usr/bin/env bash
# The release check of .ci/run, after `make test`: build the sdist and the wheel, install the
# wheel WITHOUT the napari extra in a fresh virtual environment (CPU torch first), segment the
# bundled sample there, and validate the napari manifest in the development environment.
#
#   bash scripts/ci_package.sh        # uses .venv (made by `make test`) for building and npe2
#
# The fresh environment is made from the wheel alone: a file the wheel lacks (weights, the
# sample, NOTICE) or a GUI import in the core fails here, not on a user's machine.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
say() { printf '[ci-package] %s\n' "$*" >&2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/napari-kaizen-ci.XXXXXX")"
trap 'rm -rf "$work"' EXIT

say "building the sdist and the wheel (the wheel from the sdist)"
"$VENV/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
sdist=("$work"/dist/*.tar.gz)
wheel=("$work"/dist/*.whl)
[[ -f "${sdist[0]}" && -f "${wheel[0]}" ]] || { say "build made no sdist or no wheel"; exit 1; }
say "built $(basename "${sdist[0]}") and $(basename "${wheel[0]}")"

# What the wheel must carry for an offline user.
"$VENV/bin/python" - "${wheel[0]}" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["napari_kaizen/NOTICE", "napari_kaizen/napari.yaml", "napari_kaizen/data/samples/nuclei.tif",
        "napari_kaizen/weights/kaizen_nuclei.safetensors", "napari_kaizen/weights/kaizen_nuclei.json"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"the wheel lacks {missing}")
PY

# Nothing from the development environment may leak into the fresh one.
fresh() { env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV "$@"; }
say "fresh environment: $TORCH_SPEC first, then the wheel without extras"
fresh "$PYTHON" -m venv "$work/venv"
fresh "$work/venv/bin/python" -m pip install -q "$TORCH_SPEC"
fresh "$work/venv/bin/python" -m pip install -q "${wheel[0]}"
fresh "$work/venv/bin/python" - <<'PY'
import importlib.util, sys
gui = [m for m in ("napari", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy",
                   "matplotlib") if importlib.util.find_spec(m) is not None]
if gui:
    sys.exit(f"the core install pulled in {gui}")
PY
n_packages=$(fresh "$work/venv/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l)
size=$(du -sh "$work/venv" | cut -f1)
say "core install: $n_packages packages, $size (torch included)"

sample=$(cd "$work" && fresh "$work/venv/bin/python" -c \
    "from napari_kaizen.data._sample_data import NUCLEI_SAMPLE as s; print(s)")
truth="${sample%.tif}_labels.tif"
say "kaizen segment on the bundled sample, in the fresh environment"
(cd "$work" && fresh "$work/venv/bin/kaizen" segment "$sample" --engine kaizen --device cpu \
    --output "$work/out/sample_labels.tif" --quiet --measurements --rois --geojson)
(cd "$work" && fresh "$work/venv/bin/kaizen" evaluate "$truth" "$work/out/sample_labels.tif" | tail -1)
for f in sample_labels.tif sample_labels_measurements.csv sample_labels_rois.zip sample_labels.geojson; do
    [[ -s "$work/out/$f" ]] || { say "missing output $f"; exit 1; }
done

# Model exchange (issue 26): packages exported here must run in bioimage.io's own runner.
# bioimageio.core 0.11 needs pydantic < 2.13 (napari's environment has a newer one), so it
# gets an environment of its own; it never imports napari_kaizen.
say "bioimage.io: export the bundled FCN and U-Net, run them in bioimageio.core (own environment)"
"$VENV/bin/kaizen" export-model bundled:fcn_nuclei --bioimageio "$work/fcn_nuclei.zip"
"$VENV/bin/kaizen" export-model bundled:unet_nuclei --bioimageio "$work/unet_nuclei.zip"
fresh "$PYTHON" -m venv "$work/bioimageio"
fresh "$work/bioimageio/bin/python" -m pip install -q "$TORCH_SPEC"
fresh "$work/bioimageio/bin/python" -m pip install -q "bioimageio.core==0.11.0" "pydantic<2.13"
(cd "$work" && fresh BIOIMAGEIO_CACHE_PATH="$work/bioimageio-cache" "$work/bioimageio/bin/python" \
    "$repo/scripts/check_bioimageio_core.py" "$work/fcn_nuclei.zip" "$work/unet_nuclei.zip")

say "npe2 validate napari-kaizen (development environment)"
"$VENV/bin/npe2" validate napari-kaizen
say "ok"
