"""A compact GoogLeNet whose fully connected head is one transposed convolution.

The GoogLeNet FCN post (seed 003) took GoogLeNet (Szegedy et al. 2015: a strided stem,
inception modules with parallel 1x1 / 3x3 / 5x5 / max-pool branches, strided max-pool
reductions between them) and replaced its classifier (average pool, dropout, fully
connected layer) by a single ``ConvTranspose2d`` that maps the strided feature map
straight back to the input size, one score per class and pixel.

This is that network at about a quarter of GoogLeNet's widths and with the stages up
to inception 4 (total stride 8 by default, 16 on request), so it trains on a CPU in
minutes and ships as a few hundred kB. Batch normalisation after every convolution (as
in Inception v2) is the one addition to the 2015 layers, there so a net trained from
scratch on seven images converges in a CPU budget of about a thousand steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._common.loaded import LoadedModel, load_or_move
from .params import ARCHITECTURE, DEFAULT_MODEL

#: Output classes, in channel order.
CLASSES: tuple[str, ...] = ("background", "interior", "edge")

#: GoogLeNet's inception widths (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) for
#: modules 3a, 3b, 4a, 4b, divided by four.
_INCEPTION_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (16, 24, 32, 4, 8, 8),
    "3b": (32, 32, 48, 8, 24, 16),
    "4a": (48, 24, 52, 4, 12, 16),
    "4b": (40, 28, 56, 6, 16, 16),
}


def _w(n: int, width: float) -> int:
    return max(2, int(round(n * width)))


class ConvBN(nn.Sequential):
    """Convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Inception(nn.Module):
    """GoogLeNet inception module: four parallel branches concatenated on channels.

    Parameters
    ----------
    cin : int
        Input channels.
    c1 : int
        1x1 branch.
    c3r, c3 : int
        1x1 reduction, then 3x3.
    c5r, c5 : int
        1x1 reduction, then 5x5.
    pool : int
        3x3 max pool (stride 1), then 1x1 projection.
    """

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
        super().__init__()
        self.b1 = ConvBN(cin, c1, 1)
        self.b3 = nn.Sequential(ConvBN(cin, c3r, 1), ConvBN(c3r, c3, 3))
        self.b5 = nn.Sequential(ConvBN(cin, c5r, 1), ConvBN(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBN(cin, pool, 1))
        self.out_channels = c1 + c3 + c5 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class GoogLeNetFCN(nn.Module):
    """GoogLeNet backbone + one transposed convolution back to the input size.

    Parameters
    ----------
    in_channels : int
        Image channels (1: one fluorescence channel).
    n_classes : int
        Output classes; 3 = background, cell interior, cell edge.
    width : float
        Multiplier on the (quarter-GoogLeNet) channel widths.
    stride : {4, 8, 16}
        Total stride of the backbone; the transposed convolution upsamples by it. 16
        adds GoogLeNet's max pool between inception 3b and 4a.
    distance : bool
        Also output a distance map (one more channel of the same transposed
        convolution: each object's distance to its outline, 1 at its centre; a logit).
        Not the post's: its interior class stops an edge band short of each outline,
        which separates touching nuclei only where the band is visible; the distance
        map dips on every contact line, so its h-maxima seed one object per nucleus
        and a watershed splits a touching clump (the ISL U-Net's instance step).

    Notes
    -----
    Any input size works: the input is padded (reflection) to a multiple of ``stride``
    and the output cropped back, so ``forward(x).shape[-2:] == x.shape[-2:]``.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 3, width: float = 1.0, stride: int = 8,
                 distance: bool = False) -> None:
        super().__init__()
        if stride not in (4, 8, 16):
            raise ValueError(f"stride must be 4, 8 or 16, got {stride}")
        if n_classes < 2 or in_channels < 1 or not width > 0:
            raise ValueError("n_classes >= 2, in_channels >= 1 and width > 0 are required")
        self.config = {"in_channels": int(in_channels), "n_classes": int(n_classes), "width": float(width),
                       "stride": int(stride)}
        if distance:
            # Only written when on, so the configs of class-only models stay as they were.
            self.config["distance"] = True
        self.stride = int(stride)
        self.n_classes = int(n_classes)
        self.distance = bool(distance)
        s1, s2, s3 = _w(16, width), _w(32, width), _w(64, width)
        # GoogLeNet's stem: strided conv, max pool, 1x1, 3x3, max pool (7x7 first conv
        # made 3x3: objects here are ~20 px, not ImageNet-sized).
        stem: list[nn.Module] = [
            ConvBN(in_channels, s1, 3, stride=2),
            ConvBN(s1, s2, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
            ConvBN(s2, s2, 1),
            ConvBN(s2, s3, 3),
        ]
        if stride >= 8:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        cin = s3
        for name, widths in _INCEPTION_WIDTHS.items():
            if name == "4a" and stride == 16:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            block = Inception(cin, *(_w(c, width) for c in widths))
            layers.append(block)
            cin = block.out_channels
        self.inception = nn.Sequential(*layers)
        self.features = cin
        # The post's head: one transposed convolution from the strided map to full size.
        # Kernel 2*stride, padding stride/2: output is exactly stride * input, and every
        # output pixel mixes the 2x2 nearest feature vectors (a learned interpolation).
        self.head = nn.ConvTranspose2d(cin, n_classes + int(bool(distance)), kernel_size=2 * stride, stride=stride,
                                       padding=stride // 2)
        self._freeze_bn = False

    def freeze_batchnorm(self, frozen: bool = True) -> None:
        """Keep batch-norm statistics fixed in training mode (fine-tuning on tiny batches)."""
        self._freeze_bn = bool(frozen)
        self.train(self.training)

    def train(self, mode: bool = True):  # noqa: D102 - torch's docstring applies
        super().train(mode)
        if mode and self._freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits), shape ``(B, n_classes, H, W)`` for input ``(B, C, H, W)``.

        With ``distance``, one more channel last: the distance map's logit.
        """
        h, w = x.shape[-2:]
        s = self.stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            # Reflection needs the pad to be smaller than the side; tiny inputs replicate.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.head(self.inception(self.stem(x)))
        return y[..., :h, :w]


def build_model(config: Mapping[str, Any] | None = None) -> GoogLeNetFCN:
    """Build a :class:`GoogLeNetFCN` from a metadata ``config`` (constructor kwargs)."""
    cfg = dict(config or {})
    unknown = set(cfg) - {"in_channels", "n_classes", "width", "stride", "distance"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    return GoogLeNetFCN(**cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- loading


class FCNModel(LoadedModel):
    """A GoogLeNet FCN ready to segment: the network, its metadata and its device.

    What :func:`load_model` returns and :func:`~napari_kaizen.engines.fcn.segment`
    accepts as ``model=``; load once, segment many images. The device rule is
    :class:`~napari_kaizen.engines._common.loaded.LoadedModel`'s.

    Attributes
    ----------
    net : GoogLeNetFCN
        In eval mode.
    metadata : dict
        The weights' JSON (``architecture``, ``config``, ``object_diameter``,
        ``normalization``, ``targets``, ``training``, ``channel``...).
    source : str
        Where it came from (``'bundled:NAME'``, a path, or ``'<in memory>'``).
    """

    def __init__(self, net: GoogLeNetFCN, metadata: Mapping[str, Any] | None = None, source: str = "<in memory>",
                 device: Any = None) -> None:
        super().__init__(net, metadata or {"architecture": ARCHITECTURE, "config": dict(net.config)}, source, device)

    @property
    def stride(self) -> int:
        return int(self.net.stride)

    @property
    def has_distance(self) -> bool:
        """Whether the network also predicts a distance map (instances by seeded watershed)."""
        return bool(getattr(self.net, "distance", False))

    def calibrated(self, name: str, override: float | None = None) -> float:
        """A post-processing value: ``override``, else the model's calibrated one, else the default.

        ``name`` is ``'threshold'``, ``'foreground'`` (defaults 0.5), ``'min_size'``
        (default 0.1), ``'min_contrast'`` (default 0, off) or ``'h'`` (the seed contrast
        of a distance model, default 0.1); calibrated values are in the metadata's
        ``thresholds``, chosen on the model's training images.
        """
        default = {"threshold": 0.5, "foreground": 0.5, "min_size": 0.1, "min_contrast": 0.0, "h": 0.1}[name]
        if override is not None:
            return float(override)
        value = self.metadata.get("thresholds", {}).get(name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return default
        upper = 10.0 if name == "min_size" else 1.0
        lowest_ok = name in ("min_size", "min_contrast")  # 0 turns these off
        return value if 0.0 <= value < upper and (lowest_ok or value > 0) else default

    def foreground(self, override: float | None = None) -> float:
        """The outline threshold (see :meth:`calibrated`)."""
        return self.calibrated("foreground", override)


def load_model(model: Any = None, device: Any = "auto") -> FCNModel:
    """Load a GoogLeNet FCN from bundled weights or a weights path.

    Parameters
    ----------
    model : str, path, FCNModel, GoogLeNetFCN or None
        ``'bundled:NAME'`` (``None`` means :data:`DEFAULT_MODEL`), a ``.safetensors``
        / ``.json`` path (or their common stem), or an already loaded model (returned
        as is, moved to ``device``).
    device : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'} or torch.device

    Returns
    -------
    FCNModel

    Raises
    ------
    WeightsError
        Missing file, a file for another architecture, a config that does not build,
        tensors that do not fit, or a model with other than 1 input channel and 3
        classes.
    DeviceError
        If ``device`` is not available.
    """
    from ...errors import WeightsError

    loaded, net, meta = load_or_move(model, device, loaded_type=FCNModel, network_type=GoogLeNetFCN,
                                     default=DEFAULT_MODEL, architecture=ARCHITECTURE, build=build_model,
                                     what="FCN model")
    if loaded is not None:
        return loaded
    cfg = net.config
    if cfg["in_channels"] != 1 or cfg["n_classes"] != len(CLASSES):
        raise WeightsError(
            f"{model}: this engine needs a 1-channel, {len(CLASSES)}-class FCN, the file holds "
            f"{cfg['in_channels']} channel(s) and {cfg['n_classes']} classes"
        )
    return FCNModel(net, meta, source=str(model or DEFAULT_MODEL))
