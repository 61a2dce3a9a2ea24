#!/usr/bin/env bash
# Set up everything napari-kaizen needs on a fresh machine, idempotently.
#
#   bash scripts/bootstrap.sh          # .venv with the package and its napari plugin (CPU torch first)
#   bash scripts/bootstrap.sh --test   # + Debian packages for headless Qt (Xvfb, GL) + test extras
#   EXTRAS= bash scripts/bootstrap.sh  # the headless core only (no napari, Qt, magicgui, matplotlib)
#
# Order matters: torch==2.13.0 (the CPU wheel) is installed before the package, because
# a bare `torch` requirement resolved on an empty environment pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

if [[ $WANT_TEST == 1 ]]; then
    # Qt needs an X server in tests (QT_QPA_PLATFORM=offscreen breaks once a layer is
    # added); pytest-xvfb starts Xvfb. These are the Debian packages it and Qt 6 need.
    pkgs=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1
          libgl1-mesa-dri libdbus-1-3 libfontconfig1)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if (( ${#missing[@]} )); then
        SUDO=""
        [[ $(id -u) != 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
        say "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
        say "napari-kaizen needs Python >= 3.10 (found $("$PYTHON" --version 2>&1))"; exit 1; }
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# The core runs `kaizen segment` without napari; the plugin's extra keeps `.venv/bin/napari`
# finding the plugin as before (EXTRAS overrides, e.g. EXTRAS="napari,pyqt6" or EXTRAS="").
EXTRAS="${EXTRAS-napari}"
[[ $WANT_TEST == 1 ]] && EXTRAS="testing"
extras="${EXTRAS:+[$EXTRAS]}"
stamp="$VENV/.napari-kaizen-installed${EXTRAS:+-${EXTRAS//,/-}}"
fingerprint="$(cat pyproject.toml; echo "$TORCH_SPEC $extras")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]]; then
    exit 0
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_SPEC#torch==}')" 2>/dev/null; then
    say "installing $TORCH_SPEC (CPU wheel) first"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
say "installing napari-kaizen$extras"
"$VENV/bin/python" -m pip install -q -e ".$extras"
printf '%s' "$fingerprint" > "$stamp"
