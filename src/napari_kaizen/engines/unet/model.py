"""The U-Net of the ISL engine: a fluorescence trunk and a two-layer segmentation head.

The ISL paper (seed 001) pretrains a U-Net to predict a fluorescent channel (DAPI,
CellMask) from a label-free one, then, for instance segmentation, appends *two extra
convolution layers* that turn the single predicted-fluorescence channel into a
distance-map channel and a mask channel (its Fig. 5b). :class:`ISLUNet` is exactly that:
``trunk`` is a plain U-Net with one output channel; ``head`` (present only for
segmentation models) maps that channel to ``(distance, mask_logits)``.

The trunk uses batch normalisation, which in eval mode is a per-channel affine map:
every output pixel depends only on its receptive field, so tiled prediction matches
whole-image prediction away from tile borders (group or instance normalisation would
make each tile's output depend on the tile's content as a whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._common.loaded import LoadedModel, load_or_move
from .params import ARCHITECTURE, DEFAULT_MODEL

#: Constructor defaults: 5 levels (4 poolings, total stride 16), 16 -> 96 channels.
DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "base_channels": 16,
    "depth": 5,
    "max_channels": 96,
    "head_channels": 16,
    "segmentation": False,
}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A U-Net (Ronneberger et al. 2015) with bilinear up-sampling and one output channel.

    Parameters
    ----------
    in_channels : int
        Input channels (1: one label-free image).
    base_channels : int
        Channels of the first level; doubled at every level down to ``max_channels``.
    depth : int
        Number of resolution levels (``depth - 1`` poolings). 5 levels give a receptive
        field of about 220 pixels, enough context for 512 x 512 crops of cells 15-40 px
        across.
    max_channels : int
        Cap on the channel count (keeps the file a few MB).
    out_channels : int
        Output channels (1: a fluorescence image).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        depth: int = 5,
        max_channels: int = 96,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        widths = [min(base_channels * 2**i, max_channels) for i in range(depth)]
        self.widths = widths
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        for i in range(depth - 2, -1, -1):
            self.up.append(_block(widths[i + 1] + widths[i], widths[i]))
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (total pooling factor)."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


class SegmentationHead(nn.Module):
    """The paper's two extra conv layers: fluorescence channel -> (distance, mask logit)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, fluo: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(fluo)))


class ISLUNet(nn.Module):
    """U-Net trunk (predicted fluorescence) plus an optional segmentation head.

    Parameters
    ----------
    in_channels, base_channels, depth, max_channels
        See :class:`UNet`.
    head_channels : int
        Width of the hidden layer of the segmentation head.
    segmentation : bool
        False: an ISL model, output ``(B, 1, H, W)`` fluorescence. True: output
        ``(B, 3, H, W)`` = ``(fluorescence, distance, mask_logit)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        depth: int = 5,
        max_channels: int = 96,
        head_channels: int = 16,
        segmentation: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": int(in_channels),
            "base_channels": int(base_channels),
            "depth": int(depth),
            "max_channels": int(max_channels),
            "head_channels": int(head_channels),
            "segmentation": bool(segmentation),
        }
        self.trunk = UNet(in_channels, base_channels, depth, max_channels, out_channels=1)
        self.head = SegmentationHead(head_channels) if segmentation else None

    @property
    def stride(self) -> int:
        return self.trunk.stride

    @property
    def segmentation(self) -> bool:
        return self.head is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fluo = self.trunk(x)
        if self.head is None:
            return fluo
        return torch.cat([fluo, self.head(fluo)], 1)

    def with_head(self, head_channels: int | None = None) -> ISLUNet:
        """A segmentation model whose trunk is a copy of this one's (head freshly initialised)."""
        cfg = dict(self.config, segmentation=True)
        if head_channels is not None:
            cfg["head_channels"] = int(head_channels)
        new = ISLUNet(**cfg)
        new.trunk.load_state_dict(self.trunk.state_dict())
        if self.head is not None and cfg["head_channels"] == self.config["head_channels"]:
            new.head.load_state_dict(self.head.state_dict())
        return new


def build_model(config: Mapping[str, Any] | None = None) -> ISLUNet:
    """Build an :class:`ISLUNet` from a metadata ``config`` (unknown keys are an error)."""
    cfg = dict(DEFAULT_CONFIG)
    if config:
        unknown = sorted(set(config) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"unknown U-Net config key(s): {', '.join(unknown)}")
        cfg.update(config)
    return ISLUNet(**cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- loading


class UNetModel(LoadedModel):
    """A loaded U-Net with its metadata (device rule: :class:`~.._common.loaded.LoadedModel`).

    Attributes
    ----------
    net : ISLUNet
        The network, in eval mode.
    metadata : dict
        The weights JSON (``architecture``, ``config``, ``object_diameter``,
        ``normalization``, ``target``, ``task``, ``input``, ``training``, ...).
    source : str
        Where the weights came from (path or ``'bundled:NAME'``).
    """

    def __init__(self, net: ISLUNet, metadata: Mapping[str, Any] | None = None, source: str = "<in memory>",
                 device: Any = None) -> None:
        super().__init__(net, metadata or {"architecture": ARCHITECTURE, "config": dict(net.config)}, source, device)

    @property
    def segmentation(self) -> bool:
        """Whether the model predicts distance + mask (else fluorescence only)."""
        return bool(self.net.segmentation)

    @property
    def target(self) -> str:
        """The fluorescent channel the trunk predicts (``'nuclei'`` or ``'membrane'``)."""
        return str(self.metadata.get("target", "nuclei"))


def load_model(model: Any = None, device: Any = "auto") -> UNetModel:
    """Load U-Net weights.

    Parameters
    ----------
    model : str, path, UNetModel, ISLUNet or None
        ``None`` loads the engine's ``DEFAULT_MODEL``; ``'bundled:NAME'`` a bundled
        model; a path names a ``.safetensors`` file (its ``.json`` must lie beside it).
        A loaded model follows the device rule of
        :class:`~napari_kaizen.engines._common.loaded.LoadedModel`.
    device : {'auto', 'cpu', 'cuda', 'mps'} or torch.device

    Returns
    -------
    UNetModel

    Raises
    ------
    WeightsError
        Missing file, missing JSON, a file for another architecture, or tensors that
        do not fit the U-Net the JSON describes.
    DeviceError
        The device is not available.
    """
    loaded, net, meta = load_or_move(model, device, loaded_type=UNetModel, network_type=ISLUNet,
                                     default=DEFAULT_MODEL, architecture=ARCHITECTURE, build=build_model,
                                     what="U-Net")
    return loaded if loaded is not None else UNetModel(net, meta, source=str(model or DEFAULT_MODEL))
