"""Ablation drops (engine/ablation.py) against a direct intervention on the model's own neurons.

In a GPT-2 whose MLPs use ReLU the MLPs *are* per-layer transcoders (no error), so ablating a feature
is zeroing that hidden neuron of the MLP at that position: a forward hook on the MLP's activation,
attention and every later layer free. The answer's lead is read from the model's logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from circuitbase.engine.ablation import ablation_drops, lead
from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.interventions import InterventionError
from tests.known_answer_models import IDS, perfect_transcoders, relu_gpt2
from tests.numerics import assert_close

Group = list[tuple[int, int, int]]


def _logits(model: GPT2LMHeadModel, device: torch.device, zeroed: Group) -> torch.Tensor:
    """The last position's logits with the (layer, position, neuron)s zeroed by hooks on the MLPs."""
    handles = []
    for layer, block in enumerate(model.transformer.h):
        mine = [(p, f) for lay, p, f in zeroed if lay == layer]

        def zero(_module, _inputs, output, mine=mine):
            output = output.clone()
            for position, neuron in mine:
                output[0, position, neuron] = 0.0
            return output

        handles.append(block.mlp.act.register_forward_hook(zero))
    try:
        with torch.no_grad():
            return model(torch.tensor([IDS], device=device)).logits[0, -1].double().cpu()
    finally:
        for handle in handles:
            handle.remove()


def _active(model: GPT2LMHeadModel, device: torch.device, layer: int, position: int, n: int) -> Group:
    """The n most active neurons of `layer` at `position` in the clean run."""
    seen: list[torch.Tensor] = []
    handle = model.transformer.h[layer].mlp.act.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(torch.tensor([IDS], device=device))
    handle.remove()
    return [(layer, position, int(f)) for f in torch.topk(seen[0][0, position], n).indices]


def test_ablation_drops_equal_zeroing_the_neurons(device: torch.device):
    model = relu_gpt2().to(device)
    transcoders = perfect_transcoders(model).to(device)
    adapter = adapter_for(model)
    last = len(IDS) - 1
    groups = [
        [],
        _active(model, device, 1, last, 1),  # a direct effect
        _active(model, device, 0, 2, 4),  # an earlier position: through attention
        _active(model, device, 0, last, 3) + _active(model, device, 1, last, 5),  # both layers
    ]
    result = ablation_drops(model, adapter, transcoders, IDS, groups)
    clean = _logits(model, device, [])
    assert result.token == int(clean.argmax())
    expected = [lead(_logits(model, device, group), result.token) for group in groups]
    cpu = torch.device("cpu")
    measured = torch.tensor(result.leads, dtype=torch.float64, device=cpu)
    assert_close(measured, torch.tensor(expected, dtype=torch.float64, device=cpu), rel=1e-5)
    ranked = clean.sort(descending=True).values
    assert_close(torch.tensor([result.clean_lead], device=cpu), (ranked[0] - ranked[1]).reshape(1), rel=1e-5)
    drops = result.drops()
    assert drops[0] == 0.0 and min(abs(d) for d in drops[1:]) > 1e-3 * result.clean_lead
    assert result.shares() == [d / result.clean_lead for d in drops]
    other = ablation_drops(model, adapter, transcoders, IDS, groups[3:], token=7)
    assert other.token == 7 and other.clean_lead < 0  # not the answer: no shares
    assert other.shares() == [None]
    assert_close(
        torch.tensor(other.leads, device=cpu),
        torch.tensor([lead(_logits(model, device, groups[3]), 7)], device=cpu),
        rel=1e-5,
    )


def test_a_feature_outside_the_prompt_is_refused(device: torch.device):
    model = relu_gpt2().to(device)
    transcoders = perfect_transcoders(model).to(device)
    with pytest.raises(InterventionError, match=r"position must be in 0\.\.7"):
        ablation_drops(model, adapter_for(model), transcoders, IDS, [[(0, 8, 3)]])
