"""Sparse nonlinearities of transcoders: ReLU, JumpReLU and TopK, along the last (feature) dimension.

JumpReLU uses a strict comparison (a pre-activation equal to its threshold stays off), as circuit-tracer
does. TopK keeps the k largest pre-activations of each position and passes them through ReLU, so a
position has exactly k non-zeros when its k largest pre-activations are positive.
"""

from __future__ import annotations

import torch

ACTIVATIONS = ("relu", "jumprelu", "topk")


def relu(pre: torch.Tensor) -> torch.Tensor:
    """max(pre, 0)."""
    return torch.relu(pre)


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """pre where pre > threshold (strict), else 0; threshold broadcasts over the last dimension."""
    return pre * (pre > threshold).to(pre.dtype)


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row (last dimension), zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def activate(
    kind: str, pre: torch.Tensor, *, threshold: torch.Tensor | None = None, k: int | None = None
) -> torch.Tensor:
    """Apply activation `kind` ("relu" | "jumprelu" | "topk"); jumprelu needs `threshold`, topk `k`."""
    if kind == "relu":
        return relu(pre)
    if kind == "jumprelu":
        if threshold is None:
            raise ValueError("jumprelu needs a threshold tensor")
        return jumprelu(pre, threshold)
    if kind == "topk":
        if k is None:
            raise ValueError("topk needs k")
        return topk(pre, k)
    raise ValueError(f"unknown activation {kind!r}; supported: {', '.join(ACTIVATIONS)}")
