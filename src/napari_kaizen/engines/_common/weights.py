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

#: Largest metadata JSON read (the bundled ones are under 8 KiB).
MAX_METADATA_BYTES = 1 << 20

#: Deepest nesting of objects / lists a metadata JSON may have (the bundled ones: 6).
MAX_METADATA_DEPTH = 12

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
        # Only the package's own names: no folders, no '..', no absolute paths.
        if name not in list_bundled():
            raise WeightsError(
                f"no bundled model named '{name}': bundled models are {', '.join(list_bundled()) or 'none'} "
                "(a file of your own is given by its path, without 'bundled:')"
            )
        stem = _BUNDLED_DIR / name
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
        size = json_path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"metadata file {json_path} is not readable ({exc.strerror or exc})") from None
    if size > MAX_METADATA_BYTES:
        raise WeightsError(f"metadata file {json_path} is {size / 2**20:.1f} MiB; a napari-kaizen weights JSON is "
                           f"under {MAX_METADATA_BYTES // 2**20} MiB: not reading it")
    try:
        with open(json_path, "rb") as fh:
            meta = json.loads(fh.read(MAX_METADATA_BYTES + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else f"{exc.__class__.__name__}: {exc}"
        raise WeightsError(f"metadata file {json_path} is not readable JSON ({what})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"metadata file {json_path} does not hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"metadata file {json_path} lacks {', '.join(missing)}: it was not written by napari-kaizen")
    _check_metadata_types(meta, json_path)
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


def _depth(value: Any) -> int:
    """Nesting depth of JSON objects and lists (iterative: a hostile file cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
    return deepest


def _check_metadata_types(meta: dict[str, Any], json_path: Path) -> None:
    """Refuse, in one line, a weights JSON whose fields have the wrong types or nest too deeply."""
    scalar = (bool, int, float, str, type(None))
    depth = _depth(meta)
    if depth > MAX_METADATA_DEPTH:
        raise WeightsError(f"{json_path.name} nests {depth} levels deep (at most {MAX_METADATA_DEPTH}): the file was "
                           "edited or not written by napari-kaizen")
    problems = []
    if not isinstance(meta["architecture"], str):
        problems.append(f"architecture must be text, got {type(meta['architecture']).__name__}")
    config = meta["config"]
    if not isinstance(config, dict):
        problems.append(f"config must be an object, got {type(config).__name__}")
    else:
        for key, value in config.items():
            ok = isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))
            if not ok:
                problems.append(f"config.{key} must be a number, text or a list of them, got {type(value).__name__}")
                break
    digest = meta.get("sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest.lower())):
        problems.append("sha256 must be 64 hexadecimal digits")
    for key in ("normalization", "training"):
        if key in meta and not isinstance(meta[key], dict):
            problems.append(f"{key} must be an object, got {type(meta[key]).__name__}")
    if problems:
        raise WeightsError(f"{json_path.name}: {problems[0]}: the file was edited or not written by napari-kaizen")


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
    if not expected:
        # Without the checksum nothing ties the JSON to these tensors.
        raise WeightsError(f"{json_path.name} has no sha256 of {tensor_path.name}: napari-kaizen writes one with every "
                           "model; refusing tensors the JSON cannot vouch for")
    if sha256(tensor_path) != expected:
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
