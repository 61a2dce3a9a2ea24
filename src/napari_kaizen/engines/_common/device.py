"""Compute-device choice shared by every engine.

``auto`` picks CUDA, then Apple's MPS, then the CPU. An explicit request for a device
that is not there is an error with a one-line message, never a silent fallback: a person
who asked for the GPU should learn that they are not getting it.
"""

from __future__ import annotations

from ...errors import DeviceError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def choose_device(device: str | object = "auto"):
    """Return a :class:`torch.device` for ``device``.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'} or torch.device
        What to run on. ``'auto'`` picks CUDA, then MPS, then CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        If the requested device is unknown or not available here.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' was requested but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use device 'auto' or 'cpu'"
            )
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise DeviceError(f"device '{name}' is not a valid CUDA device name: use 'cuda' or 'cuda:N'") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return dev
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError("device 'mps' was requested but Apple MPS is not available here; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise DeviceError(f"unknown device '{device}': expected one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N')")
