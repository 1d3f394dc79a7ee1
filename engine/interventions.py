"""Interventions on the replacement model: set, scale or zero features and re-run.

For every layer l the MLP output becomes

    base_l + sum_{i <= l} (a'_i - b_i) @ W_dec_i[:, l - i]        (only i = l for per-layer transcoders)

where a'_i are the activations after the interventions and b_i the activations they were taken from:
- a free layer recomputes everything from its current input: b_i = encode(x_i), base_l = MLP(x_l)
  (the true MLP, so its transcoder error follows the input);
- a constrained layer (`constrained_layers`) keeps the clean prompt's activations and error:
  b_i = clean activations, base_l = skip(x_l) + (clean MLP output - clean skip), so only the
  intervened features change and nothing else responds. With every layer constrained and attention
  frozen, an intervention measures exactly the direct effects the attribution graph reports.
`freeze_attention=True` replays the clean prompt's attention patterns and norm scales.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.replacement import ReplacementState, hooked, zeroed_positions_for
from circuitbase.engine.transcoders import TranscoderSet


class InterventionError(ValueError):
    """An intervention names a layer, position or feature the prompt does not have."""


@dataclass(frozen=True)
class FeatureIntervention:
    """Set (`value`) or scale (`scale`) one feature's activation at one position; value=0 zeroes it."""

    layer: int
    position: int
    feature: int
    value: float | None = None
    scale: float | None = None

    def apply(self, current: torch.Tensor) -> torch.Tensor:
        if (self.value is None) == (self.scale is None):
            raise InterventionError(f"{self}: give exactly one of value or scale")
        return current * self.scale if self.scale is not None else torch.full_like(current, float(self.value))


def resolve_intervention(
    layer: int,
    position: int,
    feature: int,
    *,
    value: float | None = None,
    scale: float | None = None,
    n_layers: int,
    n_positions: int,
    d_transcoder: int,
) -> FeatureIntervention:
    """The intervention scaling (`scale`) or setting (`value`; neither: 0) a feature of a prompt of
    `n_positions` tokens; a negative `position` counts from the end. InterventionError naming what is out of
    range."""
    if not 0 <= layer < n_layers:
        raise InterventionError(f"layer {layer} is not one of 0..{n_layers - 1}")
    resolved = position + n_positions if position < 0 else position
    if not 0 <= resolved < n_positions:
        raise InterventionError(
            f"position {position} is past the prompt's {n_positions} tokens "
            f"(0..{n_positions - 1}, or -{n_positions}..-1 from the end)"
        )
    if not 0 <= feature < d_transcoder:
        raise InterventionError(
            f"feature {feature} is not one of 0..{d_transcoder - 1} (d_transcoder {d_transcoder})"
        )
    if scale is not None:
        return FeatureIntervention(layer, resolved, feature, scale=scale)
    return FeatureIntervention(layer, resolved, feature, value=value or 0.0)


@dataclass
class InterventionResult:
    logits: torch.Tensor  # [T, vocab]
    mlp_inputs: list[torch.Tensor]  # per layer [T, d]
    activations: list[torch.Tensor]  # per layer [T, d_tc], after the interventions

    def top_tokens(self, k: int = 5) -> list[tuple[int, float]]:
        probs = torch.softmax(self.logits[-1].float(), dim=-1)
        values, ids = torch.topk(probs, k)
        return list(zip(ids.tolist(), values.tolist(), strict=True))


def _validate(
    interventions: Sequence[FeatureIntervention], transcoders: TranscoderSet, n_positions: int
) -> None:
    for item in interventions:
        if not 0 <= item.layer < transcoders.n_layers:
            raise InterventionError(f"{item}: layer must be in 0..{transcoders.n_layers - 1}")
        if not 0 <= item.position < n_positions:
            raise InterventionError(f"{item}: position must be in 0..{n_positions - 1}")
        if not 0 <= item.feature < transcoders.d_transcoder:
            raise InterventionError(f"{item}: feature must be in 0..{transcoders.d_transcoder - 1}")


@torch.no_grad()
def run_with_interventions(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    state: ReplacementState,
    interventions: Sequence[FeatureIntervention],
    *,
    freeze_attention: bool = False,
    constrained_layers: Iterable[int] = (),
) -> InterventionResult:
    """Re-run the prompt of `state` with `interventions` applied (see the module docstring)."""
    _validate(interventions, transcoders, state.n_positions)
    constrained = set(constrained_layers)
    n_layers = adapter.n_layers
    zeroed = zeroed_positions_for(state.input_ids, adapter)
    deltas: list[torch.Tensor | None] = [None] * n_layers
    inputs: list[torch.Tensor | None] = [None] * n_layers
    used: list[torch.Tensor | None] = [None] * n_layers

    def on_mlp_input(layer: int, x: torch.Tensor) -> None:
        x = x[0]
        inputs[layer] = x
        if layer in constrained:
            before = state.activations[layer]
        else:
            before = transcoders.encode(layer, x)
            before[:zeroed] = 0
        after = before.clone()
        for item in interventions:
            if item.layer == layer:
                after[item.position, item.feature] = item.apply(before[item.position, item.feature])
        used[layer] = after
        deltas[layer] = after - before

    def on_mlp_output(layer: int, output: torch.Tensor) -> torch.Tensor:
        x = inputs[layer]
        if layer in constrained:
            skip_now = transcoders.skip(layer, x)
            skip_clean = transcoders.skip(layer, state.mlp_inputs[layer])
            base = (
                state.mlp_outputs[layer]
                if skip_now is None
                else state.mlp_outputs[layer] - skip_clean + skip_now
            )
        else:
            base = output[0]
        sources = range(layer + 1) if transcoders.cross_layer else (layer,)
        for source in sources:
            delta = deltas[source]
            nonzero = torch.nonzero(delta)
            if nonzero.numel() == 0:
                continue
            for position, feature in nonzero.tolist():
                decoder = transcoders.decoder_vectors(source, torch.tensor([feature], device=delta.device))[0]
                base = base.clone()
                base[position] += delta[position, feature] * decoder[layer - source].to(base.dtype)
        return base[None]

    device = state.embeddings.device
    with hooked(adapter, on_mlp_input=on_mlp_input, on_mlp_output=on_mlp_output):
        if freeze_attention:
            with state.freezer.replay():
                logits = model(state.input_ids.to(device)[None]).logits[0]
        else:
            logits = model(state.input_ids.to(device)[None]).logits[0]
    return InterventionResult(
        logits=logits,
        mlp_inputs=[x for x in inputs if x is not None],
        activations=[a for a in used if a is not None],
    )


def intervention_report(
    logits_before: torch.Tensor, logits_after: torch.Tensor, *, decode: Callable[[int], str], top: int
) -> dict[str, list[dict[str, Any]]]:
    """Top `top` next tokens before and after ([vocab] logits of the last position) with probabilities,
    and the logit change of every token in either list (before's order, then after's new ones)."""

    def top_tokens(logits: torch.Tensor) -> list[dict[str, Any]]:
        probs = torch.softmax(logits.double(), dim=-1)
        values, ids = torch.topk(probs, top)
        return [
            {"token": decode(i), "id": i, "prob": p, "logit": float(logits[i])}
            for i, p in zip(ids.tolist(), values.tolist(), strict=True)
        ]

    before, after = top_tokens(logits_before), top_tokens(logits_after)
    ids = list(dict.fromkeys([t["id"] for t in before] + [t["id"] for t in after]))
    changes = [
        {
            "token": decode(i),
            "id": i,
            "before": float(logits_before[i]),
            "after": float(logits_after[i]),
            "change": float(logits_after[i]) - float(logits_before[i]),
        }
        for i in ids
    ]
    return {"before": before, "after": after, "logit_changes": changes}
