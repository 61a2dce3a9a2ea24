"""Run an exported bioimage.io package with ``bioimageio.core`` and compare with its test output.

    python scripts/check_bioimageio_core.py PACKAGE.zip [PACKAGE.zip ...]

Meant for an environment of its own (``scripts/ci_package.sh`` makes one): bioimageio.core
0.11 pins bioimageio.spec 0.5.12, which needs pydantic < 2.13, while napari's environment
has a newer pydantic. Nothing of napari-kaizen is imported here: the package alone must
be enough for a bioimage.io runner. Exit status 1 with one line per package that does
not load, or whose prediction of its own test input differs from its test output by more
than the tolerance. Nothing is downloaded (``perform_io_checks=False``; the package is a
local file).
"""

from __future__ import annotations

import io
import sys
import zipfile

import numpy as np

#: The largest absolute difference accepted between bioimageio.core's prediction and the
#: package's test output (the rdf's own test tolerance is 1e-4 relative and absolute).
TOLERANCE = 1e-4


def check(package: str) -> str | None:
    """``None`` if ``package`` runs to its test output in bioimageio.core, else why not."""
    from bioimageio.core import load_model_description, predict

    descr = load_model_description(package, perform_io_checks=False)
    with zipfile.ZipFile(package) as zf:
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
        want = np.load(io.BytesIO(zf.read("test_output.npy")))
    sample = predict(model=descr, inputs={descr.inputs[0].id: x})
    got = np.asarray(sample.members[descr.outputs[0].id].data).reshape(want.shape)
    diff = float(np.abs(got - want).max())
    print(f"{package}: bioimageio.core predicts its test output, max abs difference {diff:.2e}")
    return None if diff <= TOLERANCE else f"{package}: prediction differs from the test output by {diff:.3g}"


def main(argv: list[str]) -> int:
    failures = [msg for msg in (check(p) for p in argv) if msg]
    for msg in failures:
        print(msg, file=sys.stderr)
    return 1 if failures or not argv else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
