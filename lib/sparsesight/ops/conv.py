"""Convolutions that call oneDNN directly for float32 CPU tensors (SUM's layers; same maths and parameters as
torch.nn.Conv2d / Conv3d, which they are)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OneDNN:
    """Convolution that calls oneDNN directly for float32 CPU tensors. PyTorch's dispatch heuristic sends batch-1
    convolutions with few channels x rows (every SUM layer below the first level) to its native kernel, which is
    up to 15x slower and returns contiguous tensors (dropping channels-last). Same maths, same parameters."""

    # provided by the torch convolution it is mixed into (Conv2d, Conv3d)
    weight: Any
    bias: Any
    padding: Any
    stride: Any
    dilation: Any
    groups: Any
    padding_mode: Any

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.padding_mode == "zeros"
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding), list(self.stride),
                                                     list(self.dilation), self.groups)
        return super().forward(x)  # type: ignore[misc]  # (the convolution's forward, next in the MRO)


class Conv2d(OneDNN, nn.Conv2d):
    pass


class Conv3d(OneDNN, nn.Conv3d):
    pass
