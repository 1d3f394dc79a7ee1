"""Attribution graphs by batched backward passes through the frozen replacement model.

1. Clean recorded forward (`build_replacement_state`): activations a, errors e, embeddings E.
2. Linear forward: B copies of the prompt under `Freezer.replay()`. The residual stream entering the
   first block is a leaf E; each MLP output becomes skip(x_l) + C_l, where the leaf C_l holds the recorded
   constant m_l - skip(x_l). With attention patterns, norm scales and MLP outputs fixed, every MLP
   input x_l and the final normed residual z are linear in (E, C).
3. A target is a dot product with a hook point: a feature's pre-activation is W_enc[f] . x_l[p] (+ b_enc),
   a logit's value is (W_U[t] - mean_v W_U[v]) . z[T-1] (before any final soft-capping). One backward
   pass per batch of B targets, each seeded in its own copy, gives d target / d(E, C).
4. Edge weight = source vector . gradient: feature s at (i, q) -> a_s * sum_o W_dec_i[s, o - i] . dC_o[q]
   (o = i only for per-layer transcoders); error at (l, q) -> e_l[q] . dC_l[q]; token at q -> E[q] . dE[q].
5. Logits are visited first, then features in order of their current estimated influence on the
   logits, batch by batch, until every active feature or `max_feature_nodes` has been visited.
6. Prune by influence (`pruning.prune`) and package an `AttributionGraph`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.pruning import NodeKinds, prune
from circuitbase.engine.replacement import (
    ReplacementState,
    build_replacement_state,
    hooked,
    mlps_bypassed,
)
from circuitbase.engine.transcoders import TranscoderSet

_GATHER_ELEMENTS = 1 << 25  # gradient rows gathered at once for feature sources (128 MiB in float32)


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of one attribution run; every threshold is recorded in the graph's params."""

    max_logits: int = 10  # at most this many logit nodes
    logit_probability: float = 0.95  # logit nodes cover this much of the next-token probability
    batch_size: int = 64  # targets per backward pass (copies of the prompt in the linear forward)
    max_feature_nodes: int | None = 4096  # feature targets visited; None = every active feature
    node_threshold: float = 0.8  # pruning keeps features/errors covering this share of influence
    edge_threshold: float = 0.98  # pruning keeps edges covering this share of edge influence
    max_row_memory_mb: int = 4096  # cap on the stored feature rows; fewer feature nodes are visited past it
    max_batch_memory_mb: int = 4096  # cap on the copies' residual tensors; long prompts use smaller batches


@dataclass
class Sources:
    """Every source node of a prompt: active features, error nodes (layer-major), tokens."""

    features: torch.Tensor  # [n_active, 3] long (layer, position, feature)
    activations: torch.Tensor  # [n_active]
    n_layers: int
    n_positions: int

    @property
    def n_active(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_sources(self) -> int:
        return self.n_active + self.n_layers * self.n_positions + self.n_positions


def active_sources(state: ReplacementState) -> Sources:
    rows, values = [], []
    for layer, acts in enumerate(state.activations):
        pos, feat = torch.nonzero(acts, as_tuple=True)
        rows.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
        values.append(acts[pos, feat])
    return Sources(
        features=torch.cat(rows).long(),
        activations=torch.cat(values),
        n_layers=len(state.activations),
        n_positions=state.n_positions,
    )


def select_logits(
    logits: torch.Tensor, *, max_logits: int, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top next tokens until their probability reaches `probability` (at most `max_logits`)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_probs, top_ids = torch.topk(probs, k=min(max_logits, probs.numel()))
    needed = int(torch.searchsorted(torch.cumsum(top_probs, 0), torch.tensor(probability)).item()) + 1
    needed = min(needed, top_ids.numel())
    return top_ids[:needed], top_probs[:needed]


class LinearizedPrompt:
    """The frozen linear forward of one prompt, ready for repeated batched backward passes."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        transcoders: TranscoderSet,
        state: ReplacementState,
        sources: Sources,
        *,
        batch_size: int,
    ) -> None:
        self.adapter, self.transcoders, self.state, self.sources = adapter, transcoders, state, sources
        self.batch_size = batch_size
        self.backward_passes = 0
        n_layers, n_pos = adapter.n_layers, state.n_positions
        expand = (batch_size, n_pos, state.embeddings.shape[-1])
        self.embeddings = state.embeddings[None].expand(expand).clone().requires_grad_(True)
        self.constants: list[torch.Tensor] = []
        for layer in range(n_layers):
            skip = transcoders.skip(layer, state.mlp_inputs[layer])
            constant = state.mlp_outputs[layer] if skip is None else state.mlp_outputs[layer] - skip
            self.constants.append(constant[None].expand(expand).clone().requires_grad_(True))
        self.mlp_inputs: list[torch.Tensor] = [state.embeddings] * n_layers
        self.final: list[torch.Tensor] = []

        def on_mlp_input(layer: int, x: torch.Tensor) -> None:
            self.mlp_inputs[layer] = x

        def on_mlp_output(layer: int, _out: torch.Tensor) -> torch.Tensor:
            skip = transcoders.skip(layer, self.mlp_inputs[layer])
            return self.constants[layer] if skip is None else self.constants[layer] + skip

        device = state.embeddings.device
        ids = state.input_ids.to(device)[None].expand(batch_size, n_pos)
        with (
            torch.enable_grad(),
            state.freezer.replay(),
            mlps_bypassed(adapter),
            hooked(
                adapter,
                on_embeddings=lambda _h: self.embeddings,
                on_mlp_input=on_mlp_input,
                on_mlp_output=on_mlp_output,
                on_unembed_input=self.final.append,
            ),
        ):
            model(ids)

    def rows(self, seeds: list[tuple[str, int, int, torch.Tensor]]) -> torch.Tensor:
        """Edge weights into each seeded target from every source: [len(seeds), n_sources].

        A seed is (kind, layer, position, vector) with kind "feature" (seeded at the layer's MLP input)
        or "logit" (seeded at the final normed residual; layer ignored).
        """
        if len(seeds) > self.batch_size:
            raise ValueError(f"{len(seeds)} targets exceed the batch size {self.batch_size}")
        n_layers = self.adapter.n_layers
        outputs = [*self.mlp_inputs, self.final[0]]
        grads_out = [torch.zeros_like(t) for t in outputs]
        for row, (kind, layer, position, vector) in enumerate(seeds):
            slot = n_layers if kind == "logit" else layer
            grads_out[slot][row, position] = vector.to(grads_out[slot].dtype)
        self.backward_passes += 1
        grads = torch.autograd.grad(
            outputs, [self.embeddings, *self.constants], grads_out, retain_graph=True, allow_unused=True
        )
        d_embed = grads[0] if grads[0] is not None else torch.zeros_like(self.embeddings)
        d_const = [
            g if g is not None else torch.zeros_like(c)
            for g, c in zip(grads[1:], self.constants, strict=True)
        ]
        return self._edge_weights(d_embed, d_const)[: len(seeds)]

    def _edge_weights(self, d_embed: torch.Tensor, d_const: list[torch.Tensor]) -> torch.Tensor:
        state, src = self.state, self.sources
        feature_part = torch.zeros(self.batch_size, src.n_active, dtype=d_embed.dtype, device=d_embed.device)
        cross_layer = self.transcoders.cross_layer
        for layer in range(src.n_layers):
            idx = torch.nonzero(src.features[:, 0] == layer, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            positions, features = src.features[idx, 1], src.features[idx, 2]
            total = torch.zeros(self.batch_size, idx.numel(), dtype=d_embed.dtype, device=d_embed.device)
            out_layers = range(layer, src.n_layers) if cross_layer else range(layer, layer + 1)
            chunk = max(1, _GATHER_ELEMENTS // (self.batch_size * d_embed.shape[-1]))
            for start in range(0, idx.numel(), chunk):
                part = slice(start, start + chunk)
                decoders = self.transcoders.decoder_vectors(layer, features[part])  # [chunk, n_out, d]
                for offset, out_layer in enumerate(out_layers):
                    grad_at = d_const[out_layer][:, positions[part]]  # [B, chunk, d]
                    decoder = decoders[:, offset].to(grad_at.dtype)
                    total[:, part] += torch.einsum("bnd,nd->bn", grad_at, decoder)
            feature_part[:, idx] = total * src.activations[idx].to(total.dtype)
        zeroed = state.zeroed_positions
        error_part = torch.stack(
            [(d_const[layer] * state.errors[layer][None]).sum(-1) for layer in range(src.n_layers)], dim=1
        )  # [B, L, T]
        error_part[:, :, :zeroed] = 0
        token_part = (d_embed * state.embeddings[None]).sum(-1)  # [B, T]
        return torch.cat([feature_part, error_part.flatten(1), token_part], dim=1)


def _affordable_batch(config: AttributionConfig, *, n_positions: int, d_model: int, n_layers: int) -> int:
    """Copies per backward pass: `batch_size`, fewer when the copies' tensors would pass the memory cap.

    Each copy holds about four [positions, d_model] float32 tensors per layer (the constant leaves,
    their gradients, the seeds and what the forward keeps for the backward pass).
    """
    per_copy = 4 * n_positions * d_model * (n_layers + 1) * 4
    return max(1, min(config.batch_size, config.max_batch_memory_mb * 2**20 // per_copy))


def _feature_seeds(
    transcoders: TranscoderSet, targets: torch.Tensor
) -> list[tuple[str, int, int, torch.Tensor]]:
    """Seeds for feature targets [n, 3] (layer, position, feature): their encoder rows at their MLP inputs."""
    vectors = torch.empty(
        targets.shape[0], transcoders.d_model, dtype=transcoders.dtype, device=targets.device
    )
    for layer in targets[:, 0].unique().tolist():
        here = targets[:, 0] == layer
        vectors[here] = transcoders.encoder_vectors(layer, targets[here, 2])
    return [("feature", int(t[0]), int(t[1]), v) for t, v in zip(targets.tolist(), vectors, strict=True)]


def _push(weights: torch.Tensor, rows: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """weights @ normalize_rows(rows), a block of rows at a time (no full-size normalised copy)."""
    out = rows.new_zeros(rows.shape[1])
    for start in range(0, rows.shape[0], chunk):
        block = rows[start : start + chunk].abs()
        sums = block.sum(dim=1).clamp(min=1e-12)
        out += (weights[start : start + chunk] / sums) @ block
    return out


def _influence_order(
    logit_rows: torch.Tensor,
    feature_rows: torch.Tensor,
    visited: torch.Tensor,
    logit_probs: torch.Tensor,
    n_layers: int,
) -> torch.Tensor:
    """Estimated influence on the logits of every source, from the rows computed so far.

    Credit starts on the logits, flows down their rows, and keeps flowing down the rows of visited
    features (the graph is acyclic, so it vanishes after at most n_layers + 1 steps).
    """
    current = _push(logit_probs.to(logit_rows.dtype), logit_rows)
    total = current.clone()
    rows = feature_rows[: visited.numel()]
    for _ in range(n_layers + 1):
        current = _push(current[visited], rows)
        if float(current.abs().sum()) <= 1e-12:
            break
        total += current
    return total


def attribute(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    input_ids: torch.Tensor,
    *,
    config: AttributionConfig | None = None,
    model_name: str = "",
    token_strings: list[str] | None = None,
    prompt: str = "",
    prompt_meta: dict | None = None,
) -> AttributionGraph:
    """Attribution graph of one tokenised prompt (1-D `input_ids`)."""
    config = config or AttributionConfig()
    model.requires_grad_(False)
    state = build_replacement_state(model, adapter, transcoders, input_ids)
    sources = active_sources(state)
    n_layers, n_pos = adapter.n_layers, state.n_positions
    logit_ids, logit_probs = select_logits(
        state.logits[-1], max_logits=config.max_logits, probability=config.logit_probability
    )
    batch_size = _affordable_batch(config, n_positions=n_pos, d_model=adapter.d_model, n_layers=n_layers)
    linear = LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=batch_size)

    unembed = adapter.unembedding()
    centered = unembed[logit_ids] - unembed.mean(dim=0, keepdim=True)
    logit_rows = torch.cat(
        [
            linear.rows([("logit", 0, n_pos - 1, vec) for vec in centered[start : start + batch_size]])
            for start in range(0, logit_ids.numel(), batch_size)
        ]
    )

    budget = (
        sources.n_active
        if config.max_feature_nodes is None
        else min(config.max_feature_nodes, sources.n_active)
    )
    row_bytes = sources.n_sources * logit_rows.element_size()
    affordable = max(batch_size, config.max_row_memory_mb * 2**20 // row_bytes)
    capped = budget > affordable
    budget = min(budget, affordable)
    feature_rows = logit_rows.new_zeros(budget, sources.n_sources)
    visited = torch.zeros(0, dtype=torch.long, device=logit_rows.device)
    is_visited = torch.zeros(sources.n_active, dtype=torch.bool, device=logit_rows.device)
    while visited.numel() < budget:
        influence = _influence_order(logit_rows, feature_rows, visited, logit_probs, n_layers)
        influence = influence[: sources.n_active]
        influence[is_visited] = -1.0
        take = min(batch_size, budget - visited.numel())
        batch = torch.argsort(influence, descending=True, stable=True)[:take]
        seeds = _feature_seeds(transcoders, sources.features[batch])
        feature_rows[visited.numel() : visited.numel() + take] = linear.rows(seeds)
        visited = torch.cat([visited, batch])
        is_visited[batch] = True

    graph = _package(
        state=state,
        sources=sources,
        visited=visited,
        feature_rows=feature_rows,
        logit_rows=logit_rows,
        logit_ids=logit_ids,
        logit_probs=logit_probs,
        config=config,
        model_name=model_name,
        transcoder_name=transcoders.name,
        token_strings=token_strings,
        prompt=prompt,
        prompt_meta=prompt_meta or {},
    )
    graph.params["backward_passes"] = linear.backward_passes
    graph.params["feature_nodes_capped_by_memory"] = capped
    graph.params["effective_batch_size"] = batch_size
    return graph


def _package(
    *,
    state: ReplacementState,
    sources: Sources,
    visited: torch.Tensor,
    feature_rows: torch.Tensor,
    logit_rows: torch.Tensor,
    logit_ids: torch.Tensor,
    logit_probs: torch.Tensor,
    config: AttributionConfig,
    model_name: str,
    transcoder_name: str,
    token_strings: list[str] | None,
    prompt: str,
    prompt_meta: dict,
) -> AttributionGraph:
    """Map source columns onto the node order [selected features | errors | tokens | logits] and prune."""
    order = torch.argsort(visited)
    selected = visited[order]
    n_sel, n_active = selected.numel(), sources.n_active
    n_err, n_tok, n_logit = sources.n_layers * sources.n_positions, sources.n_positions, logit_ids.numel()
    kinds = NodeKinds(n_features=n_sel, n_errors=n_err, n_tokens=n_tok, n_logits=n_logit)
    # column map: active feature -> node (or dropped), errors and tokens shift down to follow the selection
    rows_src = torch.cat([feature_rows[: visited.numel()][order], logit_rows], dim=0)
    rows = rows_src.new_zeros(rows_src.shape[0], kinds.n_nodes)
    rows[:, :n_sel] = rows_src[:, selected]
    rows[:, n_sel : n_sel + n_err + n_tok] = rows_src[:, n_active:]
    row_nodes = torch.cat([torch.arange(n_sel), torch.arange(kinds.n_nodes - n_logit, kinds.n_nodes)]).to(
        rows.device
    )
    result = prune(
        rows,
        row_nodes,
        kinds,
        logit_probs.to(rows.device),
        n_layers=sources.n_layers,
        node_threshold=config.node_threshold,
        edge_threshold=config.edge_threshold,
    )
    nonzero = rows != 0
    row_idx, col_idx = torch.nonzero(nonzero, as_tuple=True)
    indices = torch.stack([row_nodes[row_idx], col_idx])
    adjacency = torch.sparse_coo_tensor(
        indices, rows[row_idx, col_idx], (kinds.n_nodes, kinds.n_nodes), check_invariants=True
    )
    adjacency = adjacency.coalesce()  # row-major order is already sorted, so masks stay aligned
    edge_mask = result.edge_mask[row_idx, col_idx]
    ids = state.input_ids.tolist()
    return AttributionGraph(
        prompt=prompt,
        input_ids=ids,
        input_tokens=token_strings or [str(i) for i in ids],
        model_name=model_name,
        transcoder_name=transcoder_name,
        n_layers=sources.n_layers,
        active_features=sources.features.cpu(),
        activations=sources.activations.detach().float().cpu(),
        selected_features=selected.cpu(),
        logit_tokens=logit_ids.cpu(),
        logit_probs=logit_probs.float().cpu(),
        adjacency=adjacency.cpu(),
        node_influence=result.node_influence.float().cpu(),
        node_mask=result.node_mask.cpu(),
        edge_mask=edge_mask.cpu(),
        replacement_score=result.replacement_score,
        completeness_score=result.completeness_score,
        prompt_meta=prompt_meta,
        params=asdict(config),
    )
