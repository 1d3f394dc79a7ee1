"""Freeze a model's attention patterns and normalisation scales, so its residual path becomes linear.

1. ``record()``: the model runs with a registered attention function (``circuitbase_frozen``) that
   computes attention exactly like the eager reference and stores each layer's probabilities
   ``[batch, heads, q, k]`` (after scaling, softcapping and causal / sliding-window masking); every
   norm module on the residual path stores its scale (RMSNorm ``1/rms(x)``, LayerNorm ``1/std(x)``)
   and returns its original output.
2. ``replay()``: attention returns ``stored_pattern @ V`` and norms use the stored scale (LayerNorm's
   centering stays live: it is linear); query and key projections are skipped (they return zeros).
   Stored values are detached, so nothing flows through them, and a stored batch of 1 broadcasts to
   any batch size.

With MLP outputs held constant, the map from the first block's input to the LM head's input is then
affine, and a replay of the recorded input reproduces the recorded forward.

`normalized_input` gives what a norm makes of its input before its weight (circuit-tracer's
``ln2.hook_normalized``), with the replayed scale while a freezer replays, so it stays linear too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .adapters import ModelAdapter, NormStyle

FROZEN_ATTENTION = "circuitbase_frozen"

Mode = Literal["record", "replay"]


class FreezerError(RuntimeError):
    """A freezer was used out of order, or replayed on inputs that do not match the recording."""


# attention module -> (freezer, layer index) while a freezer is active on its model
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, tuple[Freezer, int]] = weakref.WeakKeyDictionary()


def _frozen_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """Attention-interface entry point; dispatches to the freezer active on ``module``'s model."""
    if module not in _ACTIVE:
        raise FreezerError(f"{FROZEN_ATTENTION} attention called outside Freezer.record()/replay()")
    if dropout:
        raise FreezerError("attention dropout is active; put the model in eval mode")
    freezer, layer = _ACTIVE[module]
    return freezer._attend(layer, query, key, value, attention_mask, scaling=scaling, softcap=softcap)


AttentionInterface.register(FROZEN_ATTENTION, _frozen_attention)
AttentionMaskInterface.register(FROZEN_ATTENTION, eager_mask)  # additive float masks, never skipped


def _shared_pattern_attend(pattern: Tensor, value: Tensor) -> Tensor:
    """One pattern [H, q, k] applied to B copies' values [B, H, k, d] -> [B, q, H, d].

    Folding the copies into the matrix columns keeps the pattern un-copied: broadcasting it with
    matmul would materialise B copies of a [H, q, k] tensor, quadratic in the prompt length.
    """
    batch, heads, keys, dim = value.shape
    folded = value.permute(1, 2, 0, 3).reshape(heads, keys, batch * dim)
    output = torch.bmm(pattern, folded).view(heads, pattern.shape[1], batch, dim)
    return output.permute(2, 1, 0, 3).contiguous()


def _norm_eps(module: nn.Module) -> float:
    for attribute in ("variance_epsilon", "eps"):
        if hasattr(module, attribute):
            return float(getattr(module, attribute))
    raise FreezerError(f"norm module {type(module).__name__} has no eps / variance_epsilon attribute")


def _inverse_scale(x: Tensor, style: NormStyle, eps: float) -> Tensor:
    """The normalisation factor a norm multiplies its (centred) input by, in float32, ``[..., 1]``."""
    x = x.float()
    if style == "layernorm":
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _apply_scale(module: nn.Module, x: Tensor, scale: Tensor, style: NormStyle) -> Tensor:
    """The norm's output with a given scale, following the family's numerics."""
    if style == "rms":
        return module.weight * (x.float() * scale).to(x.dtype)
    if style == "rms_one_plus":
        return ((x.float() * scale) * (1.0 + module.weight.float())).type_as(x)
    centred = x - x.mean(-1, keepdim=True)
    return (centred.float() * scale).to(x.dtype) * module.weight + module.bias


def normalized_input(adapter: ModelAdapter, module: nn.Module, x: Tensor) -> Tensor:
    """``x`` (centred for LayerNorm) times the norm ``module``'s normalisation factor, before its weight
    and bias: the factor a Freezer recorded while it replays on ``adapter``'s model, else computed from x."""
    style = adapter.norm_style
    active = _ACTIVE.get(adapter.attention_module(0))
    if active is not None and active[0]._mode == "replay":
        scale = active[0]._stored_scale(module, x)
    else:
        scale = _inverse_scale(x, style, _norm_eps(module))
    if style == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return (x.float() * scale).to(x.dtype)


@contextmanager
def _skipped(projection: nn.Linear) -> Iterator[None]:
    """The projection returns zeros of its output shape: in replay, queries and keys are never read."""

    def zeros(x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[:-1], projection.out_features)

    projection.forward = zeros
    try:
        yield
    finally:
        del projection.forward


def _check_batch(what: str, stored: Tensor, batch: int) -> None:
    if stored.shape[0] not in (1, batch):
        raise FreezerError(f"{what}: recorded batch {stored.shape[0]} cannot serve a batch of {batch}")


class Freezer:
    """Records attention patterns and norm scales of one forward, then replays them (see module doc)."""

    def __init__(self, model: PreTrainedModel, adapter: ModelAdapter) -> None:
        self.model = model
        self.adapter = adapter
        self._mode: Mode | None = None
        self._patterns: dict[int, Tensor] = {}
        self._scales: dict[nn.Module, Tensor] = {}
        norms = set(adapter.norm_modules())
        self._norm_names = {module: name for name, module in model.named_modules() if module in norms}

    @classmethod
    def stacked(cls, freezers: list[Freezer], copies: list[int], *, n_positions: int) -> Freezer:
        """One freezer replaying several recordings of one model side by side: recording i serves
        `copies[i]` consecutive batch rows. Shorter prompts are right-padded to `n_positions`: padded
        queries and keys get zero attention and unit norm scales, and causal attention keeps the
        padding out of every real position."""
        first = freezers[0]
        stacked = cls(first.model, first.adapter)
        bounds = (
            torch.tensor([0, *copies]).cumsum(0).tolist()
        )  # batch rows of recording i: bounds[i]:bounds[i+1]
        for layer, pattern in first._patterns.items():
            shape = (bounds[-1], pattern.shape[1], n_positions, n_positions)
            out = torch.zeros(shape, dtype=pattern.dtype, device=pattern.device)
            for i, freezer in enumerate(freezers):
                recorded = freezer._patterns[layer]  # [1, heads, q, k]
                out[bounds[i] : bounds[i + 1], :, : recorded.shape[-2], : recorded.shape[-1]] = recorded
            stacked._patterns[layer] = out
        for module, scale in first._scales.items():
            out = torch.ones(bounds[-1], n_positions, 1, dtype=scale.dtype, device=scale.device)
            for i, freezer in enumerate(freezers):
                recorded = freezer._scales[module]  # [1, positions, 1]
                out[bounds[i] : bounds[i + 1], : recorded.shape[1]] = recorded
            stacked._scales[module] = out
        return stacked

    @property
    def attention_patterns(self) -> dict[int, Tensor]:
        """Recorded attention probabilities per layer, ``[batch, heads, q, k]``."""
        return dict(self._patterns)

    @property
    def norm_scales(self) -> dict[str, Tensor]:
        """Recorded normalisation scales per norm module name, ``[batch, q, 1]`` float32."""
        return {self._norm_names[module]: scale for module, scale in self._scales.items()}

    @contextmanager
    def record(self) -> Iterator[Freezer]:
        """Forwards inside compute the model exactly and store patterns and scales (replacing old ones)."""
        with self._active("record"):
            self._patterns.clear()
            self._scales.clear()
            yield self

    @contextmanager
    def replay(self) -> Iterator[Freezer]:
        """Forwards inside use the stored patterns and scales instead of recomputing them."""
        with self._active("replay"):
            if len(self._patterns) != self.adapter.n_layers or len(self._scales) != len(self._norm_names):
                raise FreezerError("no complete forward was recorded; run a forward in record() first")
            yield self

    @contextmanager
    def _active(self, mode: Mode) -> Iterator[None]:
        if self._mode is not None:
            raise FreezerError(f"cannot enter {mode}() while inside {self._mode}()")
        attention = [self.adapter.attention_module(layer) for layer in range(self.adapter.n_layers)]
        if any(module in _ACTIVE for module in attention):
            raise FreezerError("another Freezer is already active on this model")
        original_implementation = self.model.config._attn_implementation
        with ExitStack() as stack:
            self._mode = mode
            stack.callback(setattr, self, "_mode", None)
            for layer, module in enumerate(attention):
                _ACTIVE[module] = (self, layer)
                stack.callback(_ACTIVE.pop, module, None)
            self.model.set_attn_implementation(FROZEN_ATTENTION)
            stack.callback(self.model.set_attn_implementation, original_implementation)
            for module in self._norm_names:
                stack.enter_context(self._patched_norm(module))
            if mode == "replay":
                for layer in range(self.adapter.n_layers):
                    for projection in self.adapter.query_key_projections(layer):
                        stack.enter_context(_skipped(projection))
            yield

    @contextmanager
    def _patched_norm(self, module: nn.Module) -> Iterator[None]:
        original = module.forward
        own_forward = module.__dict__.get("forward")
        style = self.adapter.norm_style
        eps = _norm_eps(module)

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self._mode == "record":
                self._scales[module] = _inverse_scale(x, style, eps).detach()
                return original(x, *args, **kwargs)
            return _apply_scale(module, x, self._stored_scale(module, x), style)

        module.forward = forward
        try:
            yield
        finally:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward

    def _stored_scale(self, module: nn.Module, x: Tensor) -> Tensor:
        scale = self._scales[module]
        name = self._norm_names[module]
        if scale.shape[1] != x.shape[-2]:
            raise FreezerError(f"norm {name}: recorded {scale.shape[1]} positions, replay has {x.shape[-2]}")
        _check_batch(f"norm {name}", scale, x.shape[0])
        return scale

    def _attend(
        self,
        layer: int,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        *,
        scaling: float | None,
        softcap: float | None,
    ) -> tuple[Tensor, Tensor]:
        n_rep = query.shape[1] // key.shape[1]  # grouped-query attention: repeat each kv head
        value = value.repeat_interleave(n_rep, dim=1)
        if self._mode == "record":
            key = key.repeat_interleave(n_rep, dim=1)
            scores = torch.matmul(query, key.transpose(2, 3)) * (
                query.shape[-1] ** -0.5 if scaling is None else scaling
            )
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            if attention_mask is not None:
                scores = scores + attention_mask[:, :, :, : key.shape[-2]]
            probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            self._patterns[layer] = probs.detach()
        else:
            probs = self._patterns[layer]
            expected = (query.shape[1], query.shape[2], value.shape[2])
            if tuple(probs.shape[1:]) != expected:
                raise FreezerError(
                    f"layer {layer}: recorded pattern (heads, q, k) = {tuple(probs.shape[1:])}, "
                    f"replay needs {expected}; record the same prompt first"
                )
            _check_batch(f"layer {layer} attention", probs, query.shape[0])
            probs = probs.to(value.dtype)
            if probs.shape[0] == 1 and value.shape[0] > 1:
                return _shared_pattern_attend(probs[0], value), probs
        output = torch.matmul(probs, value).transpose(1, 2).contiguous()
        return output, probs
