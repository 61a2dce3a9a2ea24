"""A network made ready for prediction: batch norm folded into convolutions, channels last.

Training keeps every ``BatchNorm2d`` apart from its convolution (its statistics are
learned). At prediction time a batch norm in eval mode is a fixed per-channel scale
and shift, so it folds into the convolution before it exactly (up to float rounding),
and the pass no longer reads and writes every feature map once more for it. Storing
activations channels last (NHWC) lets oneDNN on the CPU, and cuDNN's tensor cores on a
GPU, run convolutions and pooling without reordering them first.

Measured on this project's 2-core CPU (AVX-512, torch 2.13, 1024 x 1024 input, the
bundled FCN): 0.84 s per pass as trained, 0.78 s folded, 0.43 s folded and channels
last; outputs equal to 5e-6. bfloat16 autocast halved that again but lowered the FCN's
leave-one-source-out mAP by up to 0.05 on a source (``docs/speed.md``), so prediction
stays in float32 on the CPU.
"""

from __future__ import annotations

import copy
from typing import Any


def fold_batchnorm(net: Any) -> Any:
    """A copy of ``net`` with every ``Conv2d`` followed by a ``BatchNorm2d`` folded into one conv.

    Pairs are found inside ``nn.Sequential`` containers (the layout of every network of
    this package: convolution, batch norm, activation); the batch norm is replaced by
    an identity. ``net`` itself is not changed (fine-tuning goes on training it).

    Parameters
    ----------
    net : torch.nn.Module
        In eval mode, or at least with batch norms that use their running statistics.

    Returns
    -------
    torch.nn.Module
        In eval mode.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
    >>> fast = fold_batchnorm(net)
    >>> x = torch.randn(1, 1, 16, 16)
    >>> type(fast[1]).__name__, bool(torch.allclose(fast(x), net(x), atol=1e-5))
    ('Identity', True)
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(net).eval()
    for module in out.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return out


def _window_max(x: Any, kernel: int, stride: int, padding: int) -> Any:
    """Max pooling as elementwise maxima of shifted slices (rows, then columns).

    The same values as ``max_pool2d`` (``-inf`` padding, floor output size), faster on
    channels-last activations where the windows do not overlap or the stride is 1
    (:func:`_as_window_max` says where).
    """
    import torch
    import torch.nn.functional as F

    if padding:
        x = F.pad(x, (padding, padding, padding, padding), value=float("-inf"))
    for dim in (2, 3):
        n = (x.shape[dim] - kernel) // stride + 1
        span = stride * (n - 1) + 1
        out = x.narrow(dim, 0, span)[(slice(None),) * dim + (slice(None, None, stride),)]
        for d in range(1, kernel):
            out = torch.maximum(out, x.narrow(dim, d, span)[(slice(None),) * dim + (slice(None, None, stride),)])
        x = out
    return x


def _as_window_max(module: Any) -> Any:
    """A drop-in for a plain ``MaxPool2d`` computed by :func:`_window_max`; ``None`` for anything else."""
    from torch import nn

    if not isinstance(module, nn.MaxPool2d) or module.ceil_mode or module.return_indices:
        return None
    params = []
    for v in (module.kernel_size, module.stride, module.padding, module.dilation):
        vs = {v} if isinstance(v, int) else set(v)
        if len(vs) != 1:
            return None
        params.append(vs.pop())
    kernel, stride, padding, dilation = params
    # Measured on channels-last activations (2 threads): 3 x 3 stride 1 (GoogLeNet's pool
    # branches) 16 -> 6 ms, 2 x 2 stride 2 (the U-Net's) 14 -> 3.4 ms; overlapping
    # strided windows (3 x 3 stride 2) are slower as slices (3 -> 17 ms): kept.
    if dilation != 1 or 2 * padding > kernel or not (stride == 1 or (stride == kernel and padding == 0)):
        return None

    class WindowMax(nn.Module):
        def forward(self, x):  # noqa: D102 - max_pool2d's
            return _window_max(x, kernel, stride, padding)

        def extra_repr(self) -> str:
            return f"kernel_size={kernel}, stride={stride}, padding={padding}"

    return WindowMax()


def _as_shuffled_conv(module: Any) -> Any:
    """A drop-in for a ``ConvTranspose2d`` whose kernel is one or two strides; ``None`` for anything else.

    Output row ``q * stride + r`` of such a transposed convolution (before its padding
    is cropped) is the sum over ``j < taps`` (``taps = kernel / stride``) of input row
    ``q - j`` times kernel row ``r + j * stride``, and the same on columns. That is an
    ordinary ``taps x taps`` convolution with ``C_out * stride**2`` outputs (the
    kernel's taps flipped, one output channel per sub-pixel) followed by a pixel
    shuffle, which oneDNN runs as one dense product instead of scattering every input
    vector over ``kernel**2`` output pixels.

    The FCN's head (kernel 8, stride 4) over a 1328 x 1328 model-grid field: 143 ms as
    ``conv_transpose2d`` on channels-last input, 55 ms this way (2 threads); Kaizen's
    decoder layers (kernel 4, stride 2): 0.18 -> 0.09 ms on a 16 x 22 patch. The
    outputs agree to float rounding (``tests/test_fast_paths.py``).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    if not isinstance(module, nn.ConvTranspose2d) or module.groups != 1 or module.padding_mode != "zeros":
        return None
    k, s, p, d, op = (module.kernel_size, module.stride, module.padding, module.dilation, module.output_padding)
    if len({*k}) != 1 or len({*s}) != 1 or len({*p}) != 1 or set(d) != {1} or set(op) != {0}:
        return None
    k, s, p = k[0], s[0], p[0]
    if s < 2 or k % s or k // s not in (1, 2) or p >= k:
        return None
    taps = k // s
    c_in, c_out = module.in_channels, module.out_channels
    # (C_in, C_out, tap_y, r, tap_x, r') -> (C_out * r * r', C_in, tap_y, tap_x), taps flipped:
    # a convolution reads input row q + t - (taps - 1) with tap t, the sum wants row q - j.
    weight = module.weight.detach().reshape(c_in, c_out, taps, s, taps, s).permute(1, 3, 5, 0, 2, 4)
    weight = weight.reshape(c_out * s * s, c_in, taps, taps).flip(-1).flip(-2)
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = None if module.bias is None else module.bias.detach().repeat_interleave(s * s)

    class ShuffledConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

        def forward(self, x):  # noqa: D102 - conv_transpose2d's
            h, w = x.shape[-2:]
            y = F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=taps - 1), s)
            h_out, w_out = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
            return y[:, :, p : p + h_out, p : p + w_out]

        def extra_repr(self) -> str:
            return f"{c_in}, {c_out}, kernel_size={k}, stride={s}, padding={p}"

    return ShuffledConv()


def inference_network(net: Any) -> Any:
    """``net`` made fast for prediction: batch norm folded, pools and transposed convolutions replaced, channels last.

    :func:`fold_batchnorm`; max pools as shifted maxima (:func:`_as_window_max`);
    transposed convolutions as convolutions and a pixel shuffle (:func:`_as_shuffled_conv`).

    Feed it inputs made by :func:`as_inference_input`. The copy is cheap (milliseconds
    for this package's networks) and made per segmentation, so a network that is being
    fine-tuned is never predicted with stale weights.
    """
    import torch

    fast = fold_batchnorm(net)
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            fast_child = _as_window_max(child)
            if fast_child is None:
                fast_child = _as_shuffled_conv(child)
            if fast_child is not None:
                setattr(module, name, fast_child)
    return fast.to(memory_format=torch.channels_last)


def as_inference_input(batch: Any) -> Any:
    """A ``(B, C, H, W)`` tensor laid out channels last, for :func:`inference_network`."""
    import torch

    return batch.contiguous(memory_format=torch.channels_last)
