"""Models whose attribution graphs have known answers (tests of scores, faithfulness and ablation).

- Perfect transcoders: a GPT-2 whose MLP uses ReLU *is* a ReLU transcoder (W_enc = c_fc, W_dec = c_proj),
  so every error node is zero.
- Error-only: a Llama whose logits can only see the MLP outputs (embeddings and MLP outputs live in
  orthogonal halves of the residual stream, attention writes nothing, the unembedding reads only the
  MLP half) with transcoders that never fire: everything reaching the logits comes from error nodes.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from circuitbase.engine.transcoder_io import TranscoderConfig, TranscoderWeights
from circuitbase.engine.transcoders import TranscoderSet

IDS = (5, 17, 33, 8, 61, 9, 40, 12)  # a prompt of their 96-token vocabulary


def relu_gpt2(*, tie_word_embeddings: bool = True) -> GPT2LMHeadModel:
    """A 2-layer ReLU GPT-2 (d_model 32, seed 0): its MLPs are exact per-layer transcoders."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=96,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="relu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tie_word_embeddings,
    )
    return GPT2LMHeadModel(config).eval()


def perfect_transcoders(model: GPT2LMHeadModel) -> TranscoderSet:
    """The per-layer ReLU transcoders that ARE `model`'s MLPs (every error node zero)."""
    blocks = model.transformer.h
    weights = TranscoderWeights(
        W_enc=[b.mlp.c_fc.weight.detach().T.contiguous() for b in blocks],  # Conv1D stores [in, out]
        b_enc=[b.mlp.c_fc.bias.detach().clone() for b in blocks],
        W_dec=[b.mlp.c_proj.weight.detach().clone() for b in blocks],
        b_dec=[b.mlp.c_proj.bias.detach().clone() for b in blocks],
    )
    d_ff = blocks[0].mlp.c_fc.weight.shape[1]
    config = TranscoderConfig(kind="per_layer", activation="relu", n_layers=2, d_model=32, d_transcoder=d_ff)
    return TranscoderSet(config, weights)


def error_only_llama() -> tuple[LlamaForCausalLM, TranscoderSet]:
    """A 2-layer Llama (d_model 32, seed 0) whose logits see only error nodes, and transcoders that never
    fire."""
    torch.manual_seed(0)
    d, half = 32, 16
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=d,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, half:] = 0  # tokens live in the first half
        model.lm_head.weight[:, :half] = 0  # the logits read only the second half
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()  # attention writes nothing
            layer.mlp.down_proj.weight[:half] = 0  # MLPs write only into the second half
    silent = TranscoderSet.random(n_layers=2, d_model=d, d_transcoder=16, activation="relu", seed=1)
    with torch.no_grad():
        for bias in silent.b_enc:
            bias.fill_(-1e6)  # no feature ever fires
    return model, silent
