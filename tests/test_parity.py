"""Parity with circuit-tracer 0.5.0 for every hook pair it maps, on tiny models with non-trivial norm weights.

The fixtures (tests/fixtures/parity/, made by make_fixtures.py in a side environment) hold circuit-tracer's
graph of one prompt with every feature visited; the models and most transcoder tensors are regenerated
here from their seeds, the calibrated encoder biases and thresholds come from the fixture.

One known deviation: on Gemma 3, circuit-tracer's nnsight backend multiplies the gradient at the output
of `embed_tokens` (which already includes Gemma 3's sqrt(d_model) embedding scale) by the unscaled
embedding row, so its token edges are sqrt(d_model) times too small; circuitbase keeps them exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from circuitbase.engine.adapters import (
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    FeatureHooks,
    UnsupportedModelError,
    adapter_for,
)
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.replacement import build_replacement_state, hooked
from circuitbase.engine.transcoder_io import TranscoderConfig, TranscoderWeights
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close
from tests.tiny_models import FAMILIES, parity_model, parity_transcoder_weights, tiny_input_ids

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(path.stem for path in FIXTURES.glob("*.safetensors"))
EVERY_FEATURE = AttributionConfig(max_feature_nodes=None, max_logits=10, logit_probability=0.95)


def _read(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / f"{case}.safetensors"), framework="pt") as handle:
        names = handle.keys()  # safe_open handles are not iterable
        return {name: handle.get_tensor(name) for name in names}, handle.metadata()


def _setup(case: str, device: torch.device):
    fixture, meta = _read(case)
    model = parity_model(meta["family"], seed=int(meta["model_seed"])).to(device)
    hooks = FeatureHooks(input=meta["feature_input_hook"], output=meta["feature_output_hook"])
    adapter = adapter_for(model, hooks=hooks)
    n_layers, d_transcoder = fixture["b_enc"].shape
    seeded = parity_transcoder_weights(
        seed=int(meta["transcoder_seed"]),
        n_layers=n_layers,
        d_model=adapter.d_model,
        d_transcoder=d_transcoder,
    )
    config = TranscoderConfig(
        kind="per_layer",
        activation="jumprelu",
        n_layers=n_layers,
        d_model=adapter.d_model,
        d_transcoder=d_transcoder,
        skip=True,
        input_hook=hooks.input,
        output_hook=hooks.output,
        name=case,
    )
    weights = TranscoderWeights(
        W_enc=seeded["W_enc"],
        b_enc=list(fixture["b_enc"]),
        W_dec=seeded["W_dec"],
        b_dec=seeded["b_dec"],
        threshold=list(fixture["threshold"]),
        W_skip=seeded["W_skip"],
    )
    transcoders = TranscoderSet(config, weights).to(device)
    return model, adapter, transcoders, fixture


def test_fixtures_cover_every_nnsight_mapped_pair() -> None:
    assert len(CASES) == 10
    assert {case.split("__")[0] for case in CASES} == {"gemma2", "gemma3_text", "llama", "qwen3"}


@pytest.mark.parametrize("case", CASES)
def test_graph_matches_circuit_tracer(case: str, device: torch.device) -> None:
    model, adapter, transcoders, expected = _setup(case, device)
    ids = expected["input_ids"]
    state = build_replacement_state(model, adapter, transcoders, ids)
    assert_close(state.logits[-1], expected["logits"][-1], rel=1e-5)

    graph = attribute(model, adapter, transcoders, ids, config=EVERY_FEATURE)
    assert torch.equal(graph.active_features, expected["active_features"])
    assert graph.active_features.shape[0] > 50
    assert_close(graph.activations, expected["activation_values"], rel=1e-5)
    assert torch.equal(graph.selected_features, expected["selected_features"])
    assert torch.equal(graph.logit_tokens, expected["logit_tokens"])
    assert_close(graph.logit_probs, expected["logit_probabilities"], rel=1e-5)
    n_selected, n_logits = graph.selected_features.numel(), graph.logit_tokens.numel()
    dense = graph.adjacency.to_dense()
    rows = torch.cat([dense[:n_selected], dense[-n_logits:]])
    expected_rows = expected["adjacency_rows"].clone()
    if adapter.family == "gemma3":  # circuit-tracer's token edges lack the embedding scale (module doc)
        tokens = n_selected + adapter.n_layers * ids.numel()
        expected_rows[:, tokens : tokens + ids.numel()] *= adapter.d_model**0.5
    assert_close(rows, expected_rows, rel=1e-5)


def test_adapter_and_set_hooks_must_agree(device: torch.device) -> None:
    model, adapter, transcoders, expected = _setup("gemma2__ln2.hook_normalized__hook_mlp_out", device)
    with pytest.raises(
        ValueError, match=r"adapter reads/writes at mlp\.hook_in/mlp\.hook_out .*ln2\.hook_normalized"
    ):
        build_replacement_state(model, adapter.with_hooks(FeatureHooks()), transcoders, expected["input_ids"])


def test_unmapped_hook_is_an_error() -> None:
    model = parity_model("llama", seed=7)
    with pytest.raises(
        UnsupportedModelError, match="feature_input_hook 'hook_resid_pre' has no mapping for the llama"
    ):
        adapter_for(model, hooks=FeatureHooks(input="hook_resid_pre"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("input_hook", INPUT_HOOKS)
def test_input_hooks_read_what_circuit_tracer_reads(
    family: str, input_hook: str, device: torch.device
) -> None:
    """Also for the pairs only circuit-tracer's TransformerLens backend maps (no fixture): the transcoder
    input is the MLP input, the residual stream entering the pre-MLP norm, or that norm's normalised input
    before its weight (and bias)."""
    model = parity_model(family, seed=7).to(device)
    adapter = adapter_for(model, hooks=FeatureHooks(input=input_hook))
    layer, seen = 1, {}
    norm = adapter.pre_mlp_norm(layer)
    handles = [
        norm.register_forward_pre_hook(lambda _m, args: seen.setdefault("resid_mid", args[0])),
        adapter.mlp_in_module(layer).register_forward_pre_hook(
            lambda _m, args: seen.setdefault("mlp_in", args[0])
        ),
    ]
    with hooked(adapter, on_mlp_input=lambda at, x: seen.setdefault("read", x) if at == layer else None):
        model(tiny_input_ids().to(device))
    for handle in handles:
        handle.remove()
    resid = seen["resid_mid"]
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    centred = resid - resid.mean(-1, keepdim=True) if adapter.norm_style == "layernorm" else resid
    normalized = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    expected = {"mlp.hook_in": seen["mlp_in"], "hook_resid_mid": resid, "ln2.hook_normalized": normalized}
    assert_close(seen["read"], expected[input_hook], rel=1e-6)
    assert (seen["mlp_in"] - normalized).abs().max() > 0.1 * normalized.abs().max()  # the weight matters


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("output_hook", OUTPUT_HOOKS)
def test_output_hooks_write_where_circuit_tracer_writes(
    family: str, output_hook: str, device: torch.device
) -> None:
    """mlp.hook_out is the MLP module's output; hook_mlp_out what the MLP adds to the residual stream
    (after Gemma's post_feedforward_layernorm)."""
    model = parity_model(family, seed=7).to(device)
    adapter = adapter_for(model, hooks=FeatureHooks(output=output_hook))
    layer, seen = 1, {}
    mlp = adapter.mlp_in_module(layer)
    handle = mlp.register_forward_hook(lambda _m, _a, out: seen.setdefault("mlp_out", out))
    with hooked(adapter, on_mlp_output=lambda at, m: seen.setdefault("read", m) if at == layer else None):
        model(tiny_input_ids().to(device))
    handle.remove()
    post_norm = getattr(adapter.blocks()[layer], "post_feedforward_layernorm", None)
    added = seen["mlp_out"] if post_norm is None else post_norm(seen["mlp_out"])
    assert_close(seen["read"], seen["mlp_out"] if output_hook == "mlp.hook_out" else added, rel=1e-6)
