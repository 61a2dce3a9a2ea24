"""The training loop every engine shares, as a generator of :class:`TrainingSnapshot`.

Each engine supplies what differs (a batch source and a loss); the loop owns what is
the same: device moves, optimiser steps, a smoothed loss, periodic validation and
cancellation by closing the generator.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import numpy as np

from .snapshots import TrainingSnapshot


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return a numpy Generator for data sampling."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_loop(
    model,
    batches: Iterator[tuple[Any, ...]],
    loss_fn: Callable[[Any, tuple[Any, ...]], tuple[Any, Mapping[str, float]]],
    optimizer,
    *,
    steps: int,
    device,
    scheduler=None,
    report_every: int = 10,
    validate: Callable[[Any], Mapping[str, float]] | None = None,
    validate_every: int = 0,
    clip_grad_norm: float | None = None,
) -> Generator[TrainingSnapshot, None, dict[str, Any]]:
    """Run ``steps`` optimiser steps, yielding progress.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``.
    batches : iterator of tuple
        Endless source of batches (numpy arrays or tensors); each is moved to
        ``device`` as float32 tensors (integer arrays keep an integer dtype).
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss_tensor, {name: float})``.
    optimizer : torch.optim.Optimizer
    steps : int
    device : torch.device
    scheduler : optional
        Stepped once per optimiser step.
    report_every : int
        Yield a snapshot every this many steps (and at the end).
    validate : callable, optional
        ``validate(model) -> {name: value}``, run every ``validate_every`` steps and at
        the end, in eval mode under ``torch.no_grad``.
    clip_grad_norm : float, optional

    Yields
    ------
    TrainingSnapshot

    Returns
    -------
    dict
        ``{'steps': ..., 'final_loss': ..., 'seconds': ..., 'validation': {...}}``.
    """
    import torch

    def to_device(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        arr = np.asarray(x)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if arr.dtype.kind == "f":
            t = t.float()
        return t.to(device, non_blocking=True)

    ema = math.nan
    start = time.perf_counter()
    last_val: Mapping[str, float] = {}
    model.train()
    for step in range(1, steps + 1):
        batch = tuple(to_device(x) for x in next(batches))
        loss, parts = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower the learning rate")
        ema = value if math.isnan(ema) else 0.9 * ema + 0.1 * value
        val: Mapping[str, float] = {}
        if validate is not None and ((validate_every and step % validate_every == 0) or step == steps):
            model.eval()
            with torch.no_grad():
                val = dict(validate(model))
            model.train()
            last_val = val
        if step % report_every == 0 or step == steps or val:
            yield TrainingSnapshot(
                stage="training",
                progress=step / steps,
                message=f"step {step}/{steps}  loss {ema:.4g}",
                step=step,
                total_steps=steps,
                loss=ema,
                components=dict(parts),
                validation=val,
            )
    model.eval()
    return {"steps": steps, "final_loss": ema, "seconds": time.perf_counter() - start, "validation": dict(last_val)}
