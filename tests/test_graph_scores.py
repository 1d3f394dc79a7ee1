"""Completeness and replacement scores at their two ends (graph files: test_graph_files.py).

- Perfect transcoders: a GPT-2 whose MLP uses ReLU *is* a ReLU transcoder (W_enc = c_fc, W_dec = c_proj),
  so every error node is zero and both scores are 1.
- Error-only: a Llama whose logits can only see the MLP outputs (embeddings and MLP outputs live in
  orthogonal halves of the residual stream, attention writes nothing, the unembedding reads only the
  MLP half) with transcoders that never fire: everything reaching the logits comes from error nodes,
  so both scores are 0.
"""

from __future__ import annotations

import torch

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import AttributionConfig, attribute
from tests.known_answer_models import IDS, error_only_llama, perfect_transcoders, relu_gpt2

EVERYTHING = AttributionConfig(max_feature_nodes=None, batch_size=16)


def _ids(device: torch.device) -> torch.Tensor:
    return torch.tensor(IDS, device=device)


def test_perfect_transcoders_score_one(device: torch.device):
    model = relu_gpt2().to(device)
    transcoders = perfect_transcoders(model)
    graph = attribute(model, adapter_for(model), transcoders, _ids(device), config=EVERYTHING)
    assert graph.n_features > 50
    assert graph.completeness_score > 1 - 1e-5
    assert graph.replacement_score > 1 - 1e-5


def test_error_only_model_scores_zero(device: torch.device):
    model, silent = error_only_llama()
    graph = attribute(
        model.to(device), adapter_for(model), silent.to(device), _ids(device), config=EVERYTHING
    )
    assert graph.n_features == 0
    assert graph.completeness_score < 1e-6  # shares of the credit: float32 rounding leaves ~1e-9
    assert graph.replacement_score < 1e-6
    logit_rows = graph.dense_adjacency()[graph.logit_offset :]
    from_tokens = logit_rows[:, graph.token_offset : graph.logit_offset]
    from_errors = logit_rows[:, graph.error_offset : graph.token_offset]
    assert float(from_errors.abs().max()) > 0
    # token -> logit edges are float32 rounding noise next to the error -> logit ones
    assert float(from_tokens.abs().max()) <= 1e-5 * float(from_errors.abs().max())
