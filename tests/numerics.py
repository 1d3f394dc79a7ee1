"""Devices the engine tests run on, and tolerances relative to the magnitudes compared.

`DEVICES` is every device present (the CPU always, CUDA when there is one); engine tests take the
`device` fixture (conftest.py), which is parametrised over it. `assert_close` compares within a
tolerance scaled by the larger of the two tensors' largest magnitudes, so a bound holds on any x86-64
CPU (different BLAS kernels round differently) as on a GPU.
"""

from __future__ import annotations

import torch

DEVICES = ("cpu", *(("cuda",) if torch.cuda.is_available() else ()))


def max_relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| divided by the larger of the two max magnitudes (0 for two zero tensors)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(float(actual.abs().max()), float(expected.abs().max())) if actual.numel() else 0.0
    difference = float((actual - expected).abs().max()) if actual.numel() else 0.0
    return 0.0 if scale == 0.0 else difference / scale


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rel: float = 1e-5) -> None:
    """|actual - expected| <= rel * max(|actual|, |expected|) elementwise-max, with equal shapes."""
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    difference = max_relative_difference(actual, expected)
    assert difference <= rel, f"relative difference {difference:.3g} exceeds {rel:.1g}"
