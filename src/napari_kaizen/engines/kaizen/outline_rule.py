"""The outline rule a Kaizen model learns from a person's corrections.

Kaizen's decomposition decides which cells there are; their outlines are then drawn
from the image (:mod:`~napari_kaizen.engines.kaizen.outlines`) at one level of each
cell's own contrast, a level calibrated once on many sessions' annotations. Fine-tuning
the VQ-VAE on a corrected frame changes which cells are found, but a corrected frame
says most about *where the person draws the edge*: on the real annotated sessions the
best level varies from frame to frame and the cells' shapes (a brighter rim, a dim
lobe) are not one level at all.

:class:`OutlineRule` is a small per-pixel classifier (two hidden layers) of
:func:`~napari_kaizen.engines.kaizen.outlines.outline_features`; the features are
relative to each cell's own contrast and size, so the rule carries from the corrected
frame to the session's other frames. :func:`fit_outline_rule` fits it on the
corrected pixels (only those a person checked, for a partial correction).
:meth:`~napari_kaizen.engines.kaizen.finetune` fits one after the VQ-VAE (through
:func:`~napari_kaizen.engines.kaizen.training.learn_from_corrections`, which decomposes the
corrected images, so it lives above the segmentation) and stores it
with the weights (the network's ``outline_rule`` part; its width is the config's
``outline_rule``), so a fine-tuned model outlines as its corrector did, and a model
without one keeps the calibrated level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .outlines import FEATURES

#: Training of the rule: Adam steps, learning rate and pixels per step. Chosen before
#: any scoring (a few seconds of one CPU core for a frame of 100 nuclei).
STEPS = 300
LEARNING_RATE = 1e-2
BATCH = 8192
#: Fewest corrected cells a rule is fitted to: one or two outlines cannot tell a
#: person's convention from one cell's peculiarity. Fitted to the single nucleus of a
#: held-out DSB2018 frame, a rule dropped every cell of that group's other frames (mAP
#: 0.30 -> 0.00; without the rule the same fine-tune gave 0.32; docs/correction_loop.md).
MIN_CELLS = 3
#: Hidden units of each of the rule's two hidden layers.
HIDDEN = 32
#: Pixels per forward pass when applying a rule (a large tile has millions near its cells).
CHUNK = 1 << 18


class OutlineRule(nn.Module):
    """Probability that a pixel near a found cell lies inside a cell, from its features.

    Parameters
    ----------
    hidden : int
        Units of each hidden layer.
    """

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(len(FEATURES), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits, shape (M,), of features of shape (M, len(FEATURES))."""
        return self.layers(features)[:, 0]

    @torch.no_grad()
    def probability(self, features: np.ndarray) -> np.ndarray:
        """Probabilities (float32, shape (M,)) for features of shape (M, len(FEATURES))."""
        dev = next(self.parameters()).device
        out = np.empty(len(features), np.float32)
        for start in range(0, len(features), CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + CHUNK], np.float32)).to(dev)
            out[start:start + len(x)] = torch.sigmoid(self(x)).cpu().numpy()
        return out


def fit_outline_rule(
    features: Sequence[np.ndarray],
    inside: Sequence[np.ndarray],
    *,
    hidden: int = HIDDEN,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
    batch: int = BATCH,
    seed: int = 0,
) -> tuple[OutlineRule, float]:
    """Fit an :class:`OutlineRule` to corrected pixels.

    Parameters
    ----------
    features : sequence of ndarray, shape (M_k, len(FEATURES))
        Features of the checked pixels of each corrected image.
    inside : sequence of ndarray of bool, shape (M_k,)
        Whether each pixel is inside a corrected cell.
    hidden, steps, learning_rate, batch, seed
        The rule's width, Adam steps, learning rate, pixels per step, random seed.

    Returns
    -------
    rule : OutlineRule
        On the CPU, in eval mode.
    loss : float
        Binary cross-entropy over all the given pixels after fitting.

    Raises
    ------
    ValueError
        No pixel, or no pixel inside or none outside a cell (nothing to learn an edge from).
    """
    x = torch.from_numpy(np.concatenate([np.asarray(f, np.float32) for f in features]))
    y = torch.from_numpy(np.concatenate([np.asarray(t, bool) for t in inside]).astype(np.float32))
    if len(y) == 0 or float(y.min()) == float(y.max()):
        raise ValueError("the corrected pixels hold no edge (all inside or all outside a cell)")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        rule = OutlineRule(hidden)
    opt = torch.optim.Adam(rule.parameters(), lr=learning_rate)
    rule.train()
    loss_fn = nn.functional.binary_cross_entropy_with_logits
    for _ in range(int(steps)):
        idx = torch.randint(0, len(x), (min(int(batch), len(x)),), generator=gen)
        with torch.enable_grad():
            loss = loss_fn(rule(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
        opt.step()
    rule.eval()
    with torch.no_grad():
        final = float(loss_fn(rule(x), y))
    return rule, final
