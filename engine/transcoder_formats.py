"""One transcoder file -> its layer's tensors under circuit-tracer's names, for every file layout
circuit-tracer 0.5.0 reads.

Names returned (one layer): `W_enc` [d_tc, d_model], `b_enc` [d_tc], `b_dec` [d_model], `W_dec`
[d_tc, d_model] (per-layer) or [d_tc, n_layers - i, d_model] (cross-layer layer i), optional
`threshold` [d_tc] (JumpReLU) and `W_skip` [d_model_out, d_model_in].

Layouts, told apart by suffix and tensor names (circuit-tracer tells the Gemma ones apart by repo name,
which picks the same files on the public sets):
- circuit-tracer per-layer `.safetensors`: the names above, the threshold as `activation_function.threshold`;
- GemmaScope's `params.npz`: `W_enc` stored [d_model, d_tc], `W_dec`, `b_enc`, `b_dec`, `threshold`;
- Gemma Scope 2 `.safetensors`: `w_enc` [d_model, d_tc], `w_dec` [d_tc, d_model] (per-layer) or
  [d_tc, n_layers, d_model] (cross-layer: layer i keeps outputs i..), `b_enc`, `b_dec`, `threshold`,
  optional `affine_skip_connection` [d_in, d_out];
- circuit-tracer cross-layer: `W_enc_{i}.safetensors` (`W_enc_{i}`, `b_enc_{i}`, `b_dec_{i}`, optional
  `threshold_{i}`) and `W_dec_{i}.safetensors` (`W_dec_{i}`).

Tensors are read one by one (safetensors lazily, npz members on access) and converted at once by the
caller's `convert(name, tensor)`, so a set in bfloat16 or float32 files loads as any dtype on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from circuitbase.engine.transcoder_errors import TranscoderError

Convert = Callable[[str, torch.Tensor], torch.Tensor]
PLT_THRESHOLD = "activation_function.threshold"
GEMMA_SCOPE_2_SKIP = "affine_skip_connection"


class _Tensors(Protocol):
    def keys(self) -> list[str]: ...
    def get(self, name: str) -> torch.Tensor: ...


class _SafetensorsFile:
    def __init__(self, handle: object) -> None:
        self.handle = handle

    def keys(self) -> list[str]:
        return list(self.handle.keys())  # type: ignore[attr-defined]

    def get(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)  # type: ignore[attr-defined]

    def rows(self, name: str, first_output: int) -> torch.Tensor:
        """A cross-layer decoder's outputs from `first_output` on, read without the others."""
        return self.handle.get_slice(name)[:, first_output:, :]  # type: ignore[attr-defined]


class _NpzFile:
    def __init__(self, arrays: np.lib.npyio.NpzFile) -> None:
        self.arrays = arrays

    def keys(self) -> list[str]:
        return list(self.arrays.files)

    def get(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.arrays[name]))


@contextmanager
def open_tensors(file: Path) -> Iterator[_Tensors]:
    """The tensors of a `.safetensors` or `.npz` file, read on access; TranscoderError if unreadable."""
    if not file.is_file():
        raise TranscoderError(f"missing transcoder file {file}")
    try:
        if file.suffix == ".npz":
            with np.load(file) as arrays:
                yield _NpzFile(arrays)
        else:
            with safe_open(file, framework="pt", device="cpu") as handle:
                yield _SafetensorsFile(handle)
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, TranscoderError):
            raise
        kind = "npz" if file.suffix == ".npz" else "safetensors"
        raise TranscoderError(f"{file}: not a readable {kind} file ({err})") from err


def _check_names(file: Path, names: set[str], required: set[str], optional: set[str]) -> None:
    log_thresholds = sorted(n for n in names if n.startswith("log_threshold"))
    if log_thresholds:
        raise TranscoderError(
            f"{file}: tensor {log_thresholds[0]!r} is not supported (circuit-tracer rejects log "
            f"thresholds); store the thresholds as {PLT_THRESHOLD!r} (per-layer) or "
            "'threshold_{i}' (cross-layer)"
        )
    missing = sorted(required - names)
    if missing:
        raise TranscoderError(f"{file}: missing tensor(s) {missing}; found {sorted(names)}")
    unexpected = sorted(names - required - optional)
    if unexpected:
        raise TranscoderError(
            f"{file}: unexpected tensor(s) {unexpected}; expected {sorted(required | optional)}"
        )


def _transposed(file: Path, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 2:
        raise TranscoderError(f"{file}: tensor {name} has shape {list(tensor.shape)}, expected 2 dimensions")
    return tensor.T


def read_per_layer_file(file: Path, *, convert: Convert) -> dict[str, torch.Tensor]:
    """One per-layer transcoder file in any of the layouts of the module docstring."""
    with open_tensors(file) as tensors:
        names = set(tensors.keys())
        if file.suffix == ".npz":  # GemmaScope's original release
            _check_names(file, names, {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}, set())
            out = {n: convert(n, tensors.get(n)) for n in ("b_enc", "W_dec", "b_dec", "threshold")}
            out["W_enc"] = convert("W_enc", _transposed(file, "W_enc", tensors.get("W_enc")))
            return out
        if "w_enc" in names:  # Gemma Scope 2
            _check_names(file, names, {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}, {GEMMA_SCOPE_2_SKIP})
            out = {
                "W_enc": convert("W_enc", _transposed(file, "w_enc", tensors.get("w_enc"))),
                "b_enc": convert("b_enc", tensors.get("b_enc")),
                "W_dec": convert("W_dec", tensors.get("w_dec")),
                "b_dec": convert("b_dec", tensors.get("b_dec")),
                "threshold": convert("threshold", tensors.get("threshold")),
            }
            if GEMMA_SCOPE_2_SKIP in names:
                skip = _transposed(file, GEMMA_SCOPE_2_SKIP, tensors.get(GEMMA_SCOPE_2_SKIP))
                out["W_skip"] = convert("W_skip", skip)
            return out
        _check_names(file, names, {"W_enc", "b_enc", "W_dec", "b_dec"}, {PLT_THRESHOLD, "W_skip"})
        return {("threshold" if n == PLT_THRESHOLD else n): convert(n, tensors.get(n)) for n in sorted(names)}


def read_cross_layer_files(
    enc_file: Path, dec_file: Path, *, layer: int, convert: Convert
) -> dict[str, torch.Tensor]:
    """Layer `layer` of a circuit-tracer cross-layer set: its W_enc_{i} and W_dec_{i} files."""
    i = layer
    with open_tensors(enc_file) as tensors:
        names = set(tensors.keys())
        _check_names(enc_file, names, {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"}, {f"threshold_{i}"})
        out = {
            n.removesuffix(f"_{i}"): convert(n.removesuffix(f"_{i}"), tensors.get(n)) for n in sorted(names)
        }
    with open_tensors(dec_file) as tensors:
        _check_names(dec_file, set(tensors.keys()), {f"W_dec_{i}"}, set())
        out["W_dec"] = convert("W_dec", tensors.get(f"W_dec_{i}"))
    return out


def read_gemma_scope_2_cross_layer_file(
    file: Path, *, layer: int, convert: Convert
) -> dict[str, torch.Tensor]:
    """Layer `layer` of a Gemma Scope 2 cross-layer set (one file per layer); the decoder keeps the outputs
    to layers `layer`.. of its [d_tc, n_layers, d_model] `w_dec`."""
    with open_tensors(file) as tensors:
        names = set(tensors.keys())
        _check_names(file, names, {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}, {GEMMA_SCOPE_2_SKIP})
        if GEMMA_SCOPE_2_SKIP in names:
            raise TranscoderError(
                f"{file}: a cross-layer transcoder with {GEMMA_SCOPE_2_SKIP!r} is not supported (no skip "
                "connection for cross-layer sets)"
            )
        w_dec = (
            tensors.rows("w_dec", layer) if isinstance(tensors, _SafetensorsFile) else tensors.get("w_dec")
        )
        if w_dec.dim() != 3:
            raise TranscoderError(
                f"{file}: tensor w_dec has shape {list(w_dec.shape)}, expected [d_tc, n_layers, d_model]"
            )
        return {
            "W_enc": convert("W_enc", _transposed(file, "w_enc", tensors.get("w_enc"))),
            "b_enc": convert("b_enc", tensors.get("b_enc")),
            "W_dec": convert("W_dec", w_dec),
            "b_dec": convert("b_dec", tensors.get("b_dec")),
            "threshold": convert("threshold", tensors.get("threshold")),
        }
