"""Model weights on disk: a ``.safetensors`` file with a ``.json`` of metadata beside it.

Safetensors holds only tensors, so loading a file a person was sent can never run
code (no unpickling, ever). The JSON says what the tensors are for: the architecture
and its constructor arguments, the patch size and object diameter the model was
trained at, the normalisation, how to reproduce it, and the SHA-256 of the tensor
file, so a ``.json`` paired with the wrong ``.safetensors`` is caught.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...errors import WeightsError

#: Bumped when the metadata layout changes incompatibly.
FORMAT_VERSION = 1

#: Keys every metadata JSON must have.
REQUIRED_KEYS = ("architecture", "config", "format_version")

_BUNDLED_DIR = Path(__file__).resolve().parents[2] / "weights"


def bundled_dir() -> Path:
    """Folder of the weights that ship inside the package."""
    return _BUNDLED_DIR


def list_bundled() -> list[str]:
    """Names of the bundled models (file stems), sorted."""
    return sorted(p.stem for p in _BUNDLED_DIR.glob("*.safetensors"))


def weights_paths(path: str | Path) -> tuple[Path, Path]:
    """Return ``(tensor_file, metadata_file)`` for a weights path.

    ``path`` may name the ``.safetensors`` file, the ``.json`` file, the common stem,
    or ``'bundled:NAME'`` for a model that ships with the package.
    """
    text = str(path)
    if text.startswith("bundled:"):
        name = text.split(":", 1)[1]
        stem = _BUNDLED_DIR / name
        if not stem.with_suffix(".safetensors").exists():
            raise WeightsError(
                f"no bundled model named '{name}': bundled models are {', '.join(list_bundled()) or 'none'}"
            )
    else:
        p = Path(path).expanduser()
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    path: str | Path,
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``state_dict`` as safetensors and ``metadata`` as JSON beside it.

    Parameters
    ----------
    path : path-like
        Destination; the suffix is replaced by ``.safetensors`` and ``.json``.
    state_dict : mapping of str to torch.Tensor
        The model's ``state_dict()``; tensors are moved to the CPU and made contiguous.
    metadata : mapping
        Must hold ``'architecture'`` (str) and ``'config'`` (constructor keyword
        arguments). Anything else (training data, diameter, reproduce command) is kept.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    Path
        The ``.safetensors`` path.
    """
    from safetensors.torch import save_file

    from ..._files import atomic_write

    if "architecture" not in metadata or "config" not in metadata:
        raise ValueError("metadata needs 'architecture' and 'config'")
    tensor_path, json_path = weights_paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    # Tied / shared tensors would make safetensors refuse; clone each to be safe.
    tensors = {k: v.clone() for k, v in tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(tensors, str(tmp)), overwrite=overwrite)
    from ..._version import __version__

    meta = dict(metadata)
    meta.update(
        format_version=FORMAT_VERSION,
        napari_kaizen_version=__version__,
        created=meta.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        weights_file=tensor_path.name,
        sha256=sha256(tensor_path),
    )
    write_metadata(json_path, meta, overwrite=overwrite)
    return tensor_path


def write_metadata(json_path: str | Path, metadata: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Write a weights JSON (sorted keys, 2-space indent), atomically."""
    from ..._files import atomic_write

    text = json.dumps(dict(metadata), indent=2, sort_keys=True, default=str)
    return atomic_write(Path(json_path), lambda tmp: tmp.write_text(text + "\n"), overwrite=overwrite)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and check the metadata JSON of a weights path (see :func:`weights_paths`)."""
    tensor_path, json_path = weights_paths(path)
    if not json_path.exists():
        raise WeightsError(
            f"metadata file {json_path} not found: every .safetensors weights file needs the .json "
            "written beside it by napari-kaizen's training"
        )
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"metadata file {json_path} is not readable JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"metadata file {json_path} does not hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"metadata file {json_path} lacks {', '.join(missing)}: it was not written by napari-kaizen")
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise WeightsError(f"{json_path.name}: format_version must be a whole number, got {version!r}: "
                           "the file was edited or not written by napari-kaizen")
    diameter = meta.get("object_diameter")
    if diameter is not None and (isinstance(diameter, bool) or not isinstance(diameter, (int, float))
                                 or not math.isfinite(diameter) or not 1.0 <= diameter <= 1000.0):
        raise WeightsError(f"{json_path.name}: object_diameter must be a number of pixels in [1, 1000], got "
                           f"{diameter!r}: the file was edited or damaged")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise WeightsError(
            f"{json_path} has format version {meta['format_version']}; this napari-kaizen reads up to "
            f"{FORMAT_VERSION}: upgrade napari-kaizen"
        )
    return meta


def load_weights(path: str | Path, *, architecture: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state_dict, metadata)`` from a weights path, checking they belong together.

    Parameters
    ----------
    path : path-like or 'bundled:NAME'
        See :func:`weights_paths`.
    architecture : str, optional
        The architecture the caller needs; a file for another one is refused.

    Raises
    ------
    WeightsError
        Missing file, unreadable file, wrong architecture, or a JSON that describes a
        different tensor file (checksum mismatch).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_path, json_path = weights_paths(path)
    if not tensor_path.exists():
        raise WeightsError(f"weights file {tensor_path} not found: expected a .safetensors file with a .json beside it")
    meta = read_metadata(path)
    if architecture is not None and meta["architecture"] != architecture:
        raise WeightsError(
            f"{json_path.name} describes a '{meta['architecture']}' model but this engine needs '{architecture}'"
        )
    expected = meta.get("sha256")
    if expected and sha256(tensor_path) != expected:
        raise WeightsError(
            f"{tensor_path.name} does not match {json_path.name} (checksum differs): the pair was mixed up or the "
            "file is damaged"
        )
    try:
        state = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{tensor_path} is not a readable safetensors file ({exc})") from None
    return state, meta


def load_model(
    path: str | Path,
    build: Callable[[Mapping[str, Any]], Any],
    *,
    architecture: str,
    device: Any = "cpu",
):
    """Build a model from its metadata and load its weights strictly.

    Parameters
    ----------
    path : path-like or 'bundled:NAME'
    build : callable
        ``build(config) -> torch.nn.Module`` from the JSON's ``config``.
    architecture : str
        Expected ``architecture`` value.
    device : torch.device or str

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on ``device``.
    metadata : dict
    """
    import torch

    state, meta = load_weights(path, architecture=architecture)
    try:
        # Built first on the 'meta' device (no memory): a config edited to huge channel
        # counts is caught by the shape check below instead of allocating gigabytes.
        with torch.device("meta"):
            model = build(meta["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(f"the 'config' in {weights_paths(path)[1].name} cannot build a model: {exc}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad_shape:
        first = (missing or unexpected or bad_shape)[0]
        raise WeightsError(
            f"{weights_paths(path)[0].name} does not fit its architecture: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(bad_shape)} mis-shaped tensors (first: {first})"
        )
    model = build(meta["config"])  # the shapes match the file: its size bounds this allocation
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, meta
