"""What an intervention must answer, straight from the Python function (`run_with_interventions`) on a
model and transcoder set loaded here: the reference the API and dashboard tests compare against.
PYTEST_DONT_REWRITE: it holds no asserts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitbase.engine.interventions import FeatureIntervention, run_with_interventions
from circuitbase.engine.models import load_model
from circuitbase.engine.prompts import prompt_token_ids
from circuitbase.engine.replacement import build_replacement_state, hooks_of
from circuitbase.engine.transcoders import TranscoderSet


@dataclass(frozen=True)
class Reference:
    """The prompt's token count, last-position logits before and after, the top ids and probabilities of
    each, and the changed features' activations in the prompt and in the run."""

    n_tokens: int
    before: torch.Tensor
    after: torch.Tensor
    top_before: tuple[list[int], list[float]]
    top_after: tuple[list[int], list[float]]
    activation_before: list[float]
    activation_after: list[float]


def reference(
    model_dir: Path,
    set_dir: Path,
    prompt: str,
    interventions: Sequence[FeatureIntervention],
    *,
    freeze_attention: bool,
    top: int,
) -> Reference:
    """`interventions` on `prompt` (positions counted from 0) run by the Python function on the CPU."""
    device = torch.device("cpu")
    loaded = load_model(str(model_dir), device=device)
    transcoders = TranscoderSet.load(set_dir, device=device)
    adapter = loaded.adapter.with_hooks(hooks_of(transcoders))
    ids = prompt_token_ids(loaded.tokenizer, prompt)
    state = build_replacement_state(
        loaded.model, adapter, transcoders, torch.tensor(ids, dtype=torch.long, device=device)
    )
    result = run_with_interventions(
        loaded.model, adapter, transcoders, state, interventions, freeze_attention=freeze_attention
    )

    def top_of(logits: torch.Tensor) -> tuple[list[int], list[float]]:
        probs, found = torch.topk(torch.softmax(logits.double(), dim=-1), top)
        return found.tolist(), probs.tolist()

    before, after = state.logits[-1].detach(), result.logits[-1].detach()
    return Reference(
        n_tokens=len(ids),
        before=before,
        after=after,
        top_before=top_of(before),
        top_after=top_of(after),
        activation_before=[float(state.activations[i.layer][i.position, i.feature]) for i in interventions],
        activation_after=[float(result.activations[i.layer][i.position, i.feature]) for i in interventions],
    )
