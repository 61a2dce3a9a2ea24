"""The Kaizen VQ-VAE: reconstructs the one cell that touches the centre of a patch.

Architecture after section 3.6 of the Kaizen paper (van den Oord et al.'s VQ-VAE with an
exponential-moving-average codebook). The paper's text lost several kernel sizes in
extraction; the choices made here, and why:

Encoder (input ``1 x P x P``, ``P`` a multiple of 8; ``P = 40`` for nuclei)
    * three convolutions, stride 2, kernel 4x4, padding 1 (given by the paper), with 64,
      64 and 128 channels: ``P -> P/2 -> P/4 -> P/8``. A 4x4 kernel with stride 2 and
      padding 1 halves the size exactly, which is why the paper pairs them.
    * two convolutions, stride 1, **kernel 3x3**, padding 1, 128 channels. The kernel
      sizes are missing from the text; 3x3 is the only odd kernel that keeps the
      ``P/8`` grid with padding 1 (the paper's "padding 1" for every layer), and it is
      the reference VQ-VAE's choice.
    * two residual blocks ``x + conv1x1(relu(conv3x3(relu(x))))`` (the paper: "ReLU,
      conv, ReLU, conv"; 3x3 then 1x1 as in the reference implementation), with
      ``residual_channels`` hidden units.
    * ReLU, then a 1x1 convolution to ``embedding_dim`` channels (the pre-quantisation
      projection of the reference implementation).

Codebook
    ``num_embeddings = 128`` codes (paper), updated by exponential moving averages
    (decay 0.99, Laplace smoothing, as in the VQ-VAE paper's appendix), commitment
    cost ``beta = 0.25`` (paper). **Embedding dimension**: the text reads "128 embeddings
    of dimension 2", which looks truncated; we use ``embedding_dim = 16``: small enough
    that 128 codes cover the space without many dead codes, large enough that each
    ``8 x 8``-pixel latent cell can say where an edge of the central cell runs.
    The codebook is initialised from encoder outputs of the first training batch and
    codes that stop being used are restarted on random encoder outputs (a standard
    remedy for codebook collapse; it shortens training, see ``docs/kaizen.md``).

Decoder
    * 3x3 convolution, stride 1, padding 1, 128 channels (paper; kernel 3x3 chosen as
      above), two residual blocks, ReLU.
    * three transposed convolutions, stride 2, **kernel 4x4**, padding 1:
      ``P/8 -> P/4 -> P/2 -> P``. The paper gives padding 1 for the first only; with a
      4x4 kernel only padding 1 everywhere returns exactly to ``P`` (padding 0 would
      give ``P/8 -> P/4 -> P/2 + 2 -> P + 6``), so we read it as all.
    * a final transposed convolution, stride 1, kernel 3x3, padding 1, to one output
      channel (linear: a cell image, not a probability).
    * **Decoder width** (``decoder_channels``): the paper's upsampling layers have 64
      hidden units; the bundled model uses 32. The two layers at ``P/2`` and ``P``
      resolution are three quarters of the network's arithmetic, and on a shared
      CPU halving them doubles the training steps that fit in the time budget;
      the output is a smooth single-cell image, which 32 channels draw as well (see
      ``docs/kaizen.md``). ``decoder_channels=64`` is the paper's network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._common.loaded import LoadedModel, load_or_move
from .params import ARCHITECTURE, DEFAULT_MODEL


@dataclass(frozen=True)
class VQVAEConfig:
    """Constructor arguments of :class:`KaizenVQVAE` (stored as ``config`` in weights JSON).

    Attributes
    ----------
    patch_size : int
        Side of the square input / output patch; a multiple of 8 (three stride-2 layers).
    hidden_channels : int
        Channels of the deeper encoder layers and of the decoder's first layer (128).
    first_channels : int
        Channels of the first two encoder layers (64).
    decoder_channels : int
        Channels of the decoder's transposed convolutions (paper: 64).
    residual_channels : int
        Hidden units inside each residual block.
    num_residual_blocks : int
        Residual blocks on each side (2).
    embedding_dim : int
        Dimension of each codebook vector.
    num_embeddings : int
        Number of codebook vectors (128).
    commitment_cost : float
        Weight ``beta`` of the commitment loss (0.25).
    decay : float
        EMA decay of the codebook statistics.
    outline_rule : int
        Hidden units of the learned outline rule a fine-tune on corrections adds
        (:class:`~napari_kaizen.engines.kaizen.outline_rule.OutlineRule`); 0: none.
    """

    patch_size: int = 40
    hidden_channels: int = 128
    first_channels: int = 64
    decoder_channels: int = 32
    residual_channels: int = 32
    num_residual_blocks: int = 2
    embedding_dim: int = 16
    num_embeddings: int = 128
    commitment_cost: float = 0.25
    decay: float = 0.99
    outline_rule: int = 0

    def __post_init__(self) -> None:
        if self.patch_size < 8 or self.patch_size % 8:
            raise ValueError(f"patch_size must be a positive multiple of 8, got {self.patch_size}")
        for name in ("hidden_channels", "first_channels", "decoder_channels", "residual_channels", "embedding_dim",
                     "num_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.outline_rule) < 0:
            raise ValueError(f"outline_rule must be 0 (none) or a number of hidden units, got {self.outline_rule}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")

    @classmethod
    def from_dict(cls, config: dict) -> VQVAEConfig:
        """Build from a weights-metadata ``config`` (unknown keys are an error)."""
        return cls(**dict(config))

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (the paper's "ReLU, conv, ReLU, conv")."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """Five convolutions (three stride 2, two stride 1), two residual blocks, 1x1 projection."""

    def __init__(self, c: VQVAEConfig) -> None:
        super().__init__()
        f, h = c.first_channels, c.hidden_channels
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, f, 4, stride=2, padding=1),
                nn.Conv2d(f, f, 4, stride=2, padding=1),
                nn.Conv2d(f, h, 4, stride=2, padding=1),
                nn.Conv2d(h, h, 3, stride=1, padding=1),
                nn.Conv2d(h, h, 3, stride=1, padding=1),
            ]
        )
        self.res = nn.Sequential(*[ResidualBlock(h, c.residual_channels) for _ in range(c.num_residual_blocks)])
        self.project = nn.Conv2d(h, c.embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            # No ReLU after the last plain conv: the residual stack starts with one.
            # In place: a convolution's output is not needed by its own backward pass,
            # and a fresh buffer per ReLU was a fifth of the prediction time on the CPU.
            if i < len(self.convs) - 1:
                x = F.relu(x, inplace=True)
        return self.project(F.relu(self.res(x), inplace=True))


class Decoder(nn.Module):
    """3x3 conv, two residual blocks, three stride-2 transposed convs, a stride-1 one."""

    def __init__(self, c: VQVAEConfig) -> None:
        super().__init__()
        f, h = c.decoder_channels, c.hidden_channels
        self.conv = nn.Conv2d(c.embedding_dim, h, 3, padding=1)
        self.res = nn.Sequential(*[ResidualBlock(h, c.residual_channels) for _ in range(c.num_residual_blocks)])
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(h, f, 4, stride=2, padding=1),
                nn.ConvTranspose2d(f, f, 4, stride=2, padding=1),
                nn.ConvTranspose2d(f, f, 4, stride=2, padding=1),
            ]
        )
        self.out = nn.ConvTranspose2d(f, 1, 3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.res(self.conv(z)), inplace=True)
        for up in self.up:
            x = F.relu(up(x), inplace=True)
        return self.out(x)


class EMACodebook(nn.Module):
    """Vector quantiser whose codebook follows exponential moving averages.

    In training mode every forward pass moves each code toward the mean of the encoder
    outputs assigned to it (decay ``decay``, Laplace-smoothed counts), so the codebook
    needs no gradient and no codebook loss; the encoder is held near its codes by the
    commitment loss ``beta * ||z_e - sg(z_q)||^2``.

    Buffers (saved with the weights): ``embedding`` ``(K, D)``, ``cluster_size`` ``(K,)``,
    ``embedding_sum`` ``(K, D)``, ``initialized`` (scalar).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float, decay: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.commitment_cost = float(commitment_cost)
        self.decay = float(decay)
        self.eps = float(eps)
        embed = torch.randn(self.num_embeddings, self.embedding_dim)
        self.register_buffer("embedding", embed)
        self.register_buffer("cluster_size", torch.ones(self.num_embeddings))
        self.register_buffer("embedding_sum", embed.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        #: Codes restarted at the last training step (diagnostics).
        self.last_restarts = 0
        #: Keep the codes as they are in training mode too (fine-tuning: see
        #: :meth:`KaizenVQVAE.freeze_codebook`).
        self.frozen = False

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` ``(N, D)``."""
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2.0 * flat @ self.embedding.t()
            + self.embedding.pow(2).sum(1)[None, :]
        )
        return dist.argmin(1)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        if not bool(self.initialized):
            # Codes start on real encoder outputs, so none begins far from the data.
            pick = torch.randint(0, flat.shape[0], (self.num_embeddings,), device=flat.device)
            self.embedding.copy_(flat[pick])
            self.embedding_sum.copy_(flat[pick])
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(1)
            idx = self.codes(flat)
        onehot = F.one_hot(idx, self.num_embeddings).type(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1.0 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1.0 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.embedding.copy_(self.embedding_sum / size[:, None])
        # Restart dead codes on random encoder outputs of this batch.
        dead = self.cluster_size < 1e-3 * n / self.num_embeddings
        self.last_restarts = int(dead.sum())
        if self.last_restarts:
            pick = torch.randint(0, flat.shape[0], (self.last_restarts,), device=flat.device)
            self.embedding[dead] = flat[pick]
            self.embedding_sum[dead] = flat[pick]
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` ``(B, D, h, w)``.

        Returns
        -------
        z_q : Tensor, same shape
            Quantised latents with the straight-through gradient.
        commitment : Tensor, scalar
            ``beta * mean((z - sg(z_q))^2)``.
        codes : Tensor of int64, shape (B, h, w)
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.codes(flat)
        if self.training and not self.frozen:
            self._ema_update(flat.detach(), idx)
            idx = self.codes(flat)
        quant = self.embedding[idx].view(b, h, w, d).permute(0, 3, 1, 2)
        commitment = self.commitment_cost * F.mse_loss(z, quant.detach())
        z_q = z + (quant - z).detach()
        return z_q, commitment, idx.view(b, h, w)


class KaizenVQVAE(nn.Module):
    """VQ-VAE that maps a ``P x P`` patch to the image of the cell touching its centre.

    Parameters
    ----------
    config : VQVAEConfig or dict, optional
        Architecture; keyword arguments override it.

    Examples
    --------
    >>> import torch
    >>> model = KaizenVQVAE(patch_size=40).eval()
    >>> model(torch.zeros(2, 1, 40, 40))[0].shape
    torch.Size([2, 1, 40, 40])
    """

    def __init__(self, config: VQVAEConfig | dict | None = None, **overrides) -> None:
        super().__init__()
        if isinstance(config, VQVAEConfig):
            base = config.to_dict()
        else:
            base = dict(config or {})
        base.update(overrides)
        self.config = VQVAEConfig(**base)
        c = self.config
        self.encoder = Encoder(c)
        self.codebook = EMACodebook(c.num_embeddings, c.embedding_dim, c.commitment_cost, c.decay)
        self.decoder = Decoder(c)
        self.outline_rule = None
        if c.outline_rule:
            from .outline_rule import OutlineRule

            self.outline_rule = OutlineRule(int(c.outline_rule))

    def attach_outline_rule(self, rule) -> None:
        """Keep a learned :class:`~napari_kaizen.engines.kaizen.outline_rule.OutlineRule`
        with this network (its weights are saved and loaded with the VQ-VAE's)."""
        from dataclasses import replace

        self.outline_rule = rule.to(next(self.encoder.parameters()).device).eval()
        self.config = replace(self.config, outline_rule=int(rule.layers[0].out_features))

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct the central cell.

        Parameters
        ----------
        x : Tensor, shape (B, 1, P, P)

        Returns
        -------
        recon : Tensor, shape (B, 1, P, P)
        commitment : Tensor, scalar
        codes : Tensor of int64, shape (B, P/8, P/8)
        """
        z_q, commitment, codes = self.codebook(self.encoder(x))
        return self.decoder(z_q), commitment, codes

    @torch.no_grad()
    def freeze_codebook(self, frozen: bool = True) -> None:
        """Stop (or restart) the codebook's EMA updates and dead-code restarts.

        Fine-tuning on one corrected image would otherwise pull the codes toward that
        image's cells and restart every code it does not use, forgetting the shapes the
        model learnt elsewhere; with the codebook frozen the encoder and decoder adapt
        to the new image around the codes the model already has.
        """
        self.codebook.frozen = bool(frozen)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction only, ``(B, 1, P, P)`` (no codebook update even in train mode)."""
        was = self.codebook.training
        self.codebook.eval()
        try:
            return self.decoder(self.codebook(self.encoder(x))[0])
        finally:
            self.codebook.train(was)


# --------------------------------------------------------------------------- loading


class KaizenModel(LoadedModel):
    """A loaded Kaizen VQ-VAE with its metadata (device rule: :class:`~.._common.loaded.LoadedModel`).

    Attributes
    ----------
    net : KaizenVQVAE
        The network, in eval mode.
    metadata : dict
        The weights' JSON (``object_diameter``, ``patch_size``, ``outlines``, ``input``,
        ``training``, ...).
    source : str
        Where it was loaded from.
    """

    def __init__(self, net: KaizenVQVAE, metadata: Mapping[str, Any] | None = None, source: str = "<in memory>",
                 device: Any = None) -> None:
        super().__init__(net, metadata or {"patch_size": net.config.patch_size}, source, device)

    @property
    def patch_size(self) -> int:
        return int(self.net.config.patch_size)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct the central cell of each patch ``(B, 1, P, P)``."""
        return self.net.predict(x)


def load_model(model: Any = None, device: Any = "auto") -> KaizenModel:
    """Load Kaizen weights.

    Parameters
    ----------
    model : str, path, KaizenModel or KaizenVQVAE, optional
        ``'bundled:NAME'``, a ``.safetensors`` / ``.json`` path or stem, or an already
        loaded model (device rule of
        :class:`~napari_kaizen.engines._common.loaded.LoadedModel`). ``None`` loads the
        engine's ``DEFAULT_MODEL``.
    device : str or torch.device
        ``'auto'`` (CUDA, then MPS, then CPU), ``'cpu'``, ``'cuda'``, ...

    Returns
    -------
    KaizenModel

    Raises
    ------
    WeightsError
        Missing file, a file for another architecture, a JSON that does not match
        its tensors, or tensors that do not fit the architecture.
    """
    loaded, net, meta = load_or_move(model, device, loaded_type=KaizenModel, network_type=KaizenVQVAE,
                                     default=DEFAULT_MODEL, architecture=ARCHITECTURE,
                                     build=lambda cfg: KaizenVQVAE(dict(cfg)), what="Kaizen model")
    return loaded if loaded is not None else KaizenModel(net, meta, source=str(model or DEFAULT_MODEL))
