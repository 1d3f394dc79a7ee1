"""Analytic FLOPs of one attribution graph and the dense peak of the GPU it ran on.

A graph's work: one forward of B copies of the prompt through the frozen body (attention projections,
the attention-weighted sum with frozen patterns, the linear skip; no MLPs), one backward pass per batch
of B targets (input gradients only, through the value and output projections: frozen patterns stop the
gradient to queries and keys), and per pass the edge products: every active feature's decoder vector,
every error and every token embedding dotted with the gradient at its site. circuit-tracer's forward
computes the query and key projections although frozen patterns never read them; circuitbase's replay
skips them (`with_qk=False`). Scores, norms and elementwise work are left out.
"""

from __future__ import annotations

# Dense (no sparsity) peak TFLOP/s by device-name fragment; the first fragment found in the name wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"float32": 51.0, "bfloat16": 756.0}),
    ("H100", {"float32": 67.0, "bfloat16": 989.0}),
    ("H200", {"float32": 67.0, "bfloat16": 989.0}),
    ("A100", {"float32": 19.5, "bfloat16": 312.0}),
    ("L40S", {"float32": 91.6, "bfloat16": 362.0}),
    ("L4", {"float32": 30.3, "bfloat16": 121.0}),
    ("A10", {"float32": 31.2, "bfloat16": 125.0}),
)


def model_dims(config) -> dict:
    """The shape numbers `graph_flops` needs from a Hugging Face model config."""
    heads = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
        "n_heads": heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
    }


def graph_flops(
    dims: dict, *, tokens: int, copies: int, passes: int, active_features: int, with_qk: bool = True
) -> float:
    """FLOPs of a graph: the copies' forward, `passes` backward passes and their edge products.
    with_qk: count the query and key projections (default True; False for a replay that skips them)."""
    n_layers, d, hd = dims["n_layers"], dims["d_model"], dims["head_dim"]
    q, kv = dims["n_heads"] * hd, dims["n_kv_heads"] * hd
    value_output = 2 * d * (kv + q) + 2 * d * d  # v and o projections + skip, per token and layer
    query_key = 2 * d * (q + kv)
    attend = 2 * dims["n_heads"] * hd * tokens * (tokens + 1) / 2  # causal pattern x values
    backward = copies * n_layers * (tokens * value_output + attend)
    forward = backward + (copies * n_layers * tokens * query_key if with_qk else 0)
    edges = 2 * copies * d * (active_features + (n_layers + 1) * tokens)
    return forward + passes * (backward + edges)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The card's dense peak for `dtype` ('float32' or 'bfloat16'), None when the card is not listed."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks.get(dtype)
    return None
