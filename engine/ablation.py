"""How much of a prompt's answer the real model keeps when groups of transcoder features are ablated.

The answer is the prompt's top token t (by default the clean run's largest logit: the graph's top
logit); its **lead** is its logit minus the largest logit of any other token, so it is positive while t
is the answer and turns negative when the ablation changes the answer. Each group is ablated on the real
model as a faithfulness check intervenes (`interventions.run_with_interventions`, no layer constrained):
every named feature's activation becomes 0, so its decoder contribution leaves the residual stream at its
layer while that layer's error term stays as recorded; every later MLP is the model's own, and attention
patterns and norm scales are recomputed (unless `freeze_attention`). A group's drop is the clean lead
minus the ablated lead (the best other token may change); as a share of the clean lead it is 1 exactly
when the answer ties, above 1 when it changes.

A lead, unlike a logit, ignores what moves every candidate alike: a feature that raises all answers of a
kind (every capital, say) leaves the lead where it was, while one that picks this answer takes it away.

Costs one recorded forward of the prompt plus one forward per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.interventions import FeatureIntervention, run_with_interventions
from circuitbase.engine.replacement import build_replacement_state
from circuitbase.engine.transcoders import TranscoderSet


@dataclass(frozen=True)
class LeadDrops:
    """The answer token, its clean lead and its lead after each group's ablation (logit units)."""

    token: int
    clean_lead: float
    leads: list[float]

    def drops(self) -> list[float]:
        """Clean lead minus the ablated lead, per group (positive: the group supported the answer)."""
        return [self.clean_lead - lead for lead in self.leads]

    def shares(self) -> list[float | None]:
        """Each drop as a share of the clean lead (None when the token was not the clean answer)."""
        if self.clean_lead <= 0.0:
            return [None] * len(self.leads)
        return [drop / self.clean_lead for drop in self.drops()]


def lead(logits: torch.Tensor, token: int) -> float:
    """`token`'s logit minus the largest other logit of a [vocab] tensor."""
    others = torch.cat([logits[:token], logits[token + 1 :]])
    return float(logits[token].double() - others.max().double())


@torch.no_grad()
def ablation_drops(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    input_ids: Sequence[int],
    groups: Sequence[Sequence[tuple[int, int, int]]],
    *,
    token: int | None = None,
    freeze_attention: bool = False,
) -> LeadDrops:
    """The answer's lead after the features of each group, (layer, position, feature index) with positions
    counted over `input_ids`, are ablated together on the real model (module docstring).

    `adapter` is bound to the transcoders' hooks, as for attribution. token: the answer (default None:
    the clean run's top token). freeze_attention: default False (attention responds). An
    InterventionError names a feature outside the prompt or the set.
    """
    device = adapter.unembedding().device
    state = build_replacement_state(
        model, adapter, transcoders, torch.tensor(list(input_ids), dtype=torch.long, device=device)
    )

    def last_logits(group: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        items = [FeatureIntervention(layer, position, index, scale=0.0) for layer, position, index in group]
        run = run_with_interventions(
            model, adapter, transcoders, state, items, freeze_attention=freeze_attention
        )
        return run.logits[-1]

    clean = last_logits(())
    target = int(clean.argmax()) if token is None else token
    return LeadDrops(
        token=target,
        clean_lead=lead(clean, target),
        leads=[lead(last_logits(group), target) for group in groups],
    )
