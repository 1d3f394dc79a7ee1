"""Attribution graphs by batched backward passes through the frozen replacement model.

1. Clean recorded forward (`build_replacement_state`): activations a, errors e, embeddings E.
2. Linear forward: B copies of the prompt under `Freezer.replay()`, through the model's body only (no
   logits). The residual stream entering the first block is a leaf E; each MLP output becomes
   skip(x_l) + C_l, where the leaf C_l holds the recorded constant m_l - skip(x_l). With attention
   patterns, norm scales and MLP outputs fixed, every MLP input x_l and the final normed residual z
   are linear in (E, C).
3. A target is a dot product with a hook point: a feature's pre-activation is W_enc[f] . x_l[p] (+ b_enc),
   a logit's value is (W_U[t] - mean_v W_U[v]) . z[T-1] (before any final soft-capping). One backward
   pass per batch of B targets, each seeded in its own copy, gives d target / d(E, C).
4. Edge weight = source vector . gradient: feature s at (i, q) -> a_s * sum_o W_dec_i[s, o - i] . dC_o[q]
   (o = i only for per-layer transcoders), one batched matmul per layer over positions (`FeatureSources`);
   error at (l, q) -> e_l[q] . dC_l[q]; token at q -> E[q] . dE[q].
5. Logits are visited first. When every active feature is a target they follow in index order;
   otherwise in order of their estimated influence on the logits, re-estimated every
   `influence_refresh_batches` batches (`RowStore`, which also keeps the rows within the memory cap).
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
from circuitbase.engine.row_store import RowStore
from circuitbase.engine.transcoders import TranscoderSet

_DECODER_CACHE_BYTES = 1 << 30  # activation-scaled decoder vectors kept between passes up to this size


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of one attribution run; every threshold is recorded in the graph's params."""

    max_logits: int = 10  # at most this many logit nodes
    logit_probability: float = 0.95  # logit nodes cover this much of the next-token probability
    batch_size: int = 64  # targets per backward pass (copies of the prompt in the linear forward)
    max_feature_nodes: int | None = 4096  # feature targets visited; None = every active feature
    node_threshold: float = 0.8  # pruning keeps features/errors covering this share of influence
    edge_threshold: float = 0.98  # pruning keeps edges covering this share of edge influence
    # Batches visited between two estimates of the influence order (circuit-tracer's update_interval).
    # Each estimate reads every stored row, so estimating before every batch makes a graph's cost grow
    # with the square of the rows visited; 4 keeps that term small while the order still follows
    # what the last few batches revealed.
    influence_refresh_batches: int = 4
    max_row_memory_mb: int = 4096  # cap on the stored feature rows; past it, fewer columns are kept
    max_batch_memory_mb: int = 4096  # cap on the copies' residual tensors; long prompts use smaller batches


@dataclass
class Sources:
    """Every source node of a prompt: active features, error nodes (layer-major), tokens."""

    features: torch.Tensor  # [n_active, 3] long (layer, position, feature), sorted by layer then position
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
    reached = torch.cumsum(top_probs, 0) >= probability
    needed = int(torch.argmax(reached.int())) + 1 if bool(reached.any()) else top_ids.numel()
    return top_ids[:needed], top_probs[:needed]


class FeatureSources:
    """One layer's active features laid out [position, slot] so their edges are one batched matmul.

    With positions as the batch dimension, the gradients at a layer [T, B, d] times the layer's
    activation-scaled decoder vectors [T, d, k] (k = most features active at one position) give every
    feature's edge into every target without gathering a [B, n, d] copy of the gradients.
    """

    def __init__(
        self, transcoders: TranscoderSet, sources: Sources, layer: int, *, dtype: torch.dtype
    ) -> None:
        self.transcoders, self.layer, self.dtype = transcoders, layer, dtype
        self.columns = torch.nonzero(sources.features[:, 0] == layer, as_tuple=True)[0]
        positions, self.features = sources.features[self.columns, 1], sources.features[self.columns, 2]
        self.activations = sources.activations[self.columns]
        counts = torch.bincount(positions, minlength=sources.n_positions)
        self.n_positions, self.width = sources.n_positions, int(counts.max()) if counts.numel() else 0
        rank = (
            torch.arange(positions.numel(), device=positions.device) - (counts.cumsum(0) - counts)[positions]
        )
        self.positions, self.rank = positions, rank
        self.slots = positions * self.width + rank  # flat index into [T, k]
        n_out = sources.n_layers - layer if transcoders.cross_layer else 1
        self.out_layers = range(layer, layer + n_out)
        self._decoders: torch.Tensor | None = None

    def padded_bytes(self) -> int:
        return len(self.out_layers) * self.n_positions * self.width * self.transcoders.d_model * 4

    def decoders(self, *, cache: bool) -> torch.Tensor:
        """[n_out, T, d, k] activation-scaled decoder vectors, zero in unused slots."""
        if self._decoders is not None:
            return self._decoders
        vectors = self.transcoders.decoder_vectors(self.layer, self.features)  # [n, n_out, d]
        vectors = (vectors * self.activations[:, None, None].to(vectors.dtype)).to(self.dtype)
        padded = torch.zeros(
            len(self.out_layers), self.n_positions, self.width, vectors.shape[-1],
            dtype=self.dtype, device=vectors.device,
        )  # fmt: skip
        padded[:, self.positions, self.rank] = vectors.transpose(0, 1)
        padded = padded.transpose(2, 3)
        if cache:
            self._decoders = padded
        return padded

    def edges(self, d_const: list[torch.Tensor | None], *, cache: bool) -> torch.Tensor | None:
        """[B, n] edges from this layer's features into each seeded target; None when all are zero."""
        if self.columns.numel() == 0:
            return None
        total = None
        decoders = None
        for offset, out_layer in enumerate(self.out_layers):
            grad = d_const[out_layer]
            if grad is None:  # no target downstream of this output layer
                continue
            decoders = self.decoders(cache=cache) if decoders is None else decoders
            part = torch.bmm(grad.transpose(0, 1), decoders[offset])  # [T, B, k]
            total = part if total is None else total + part
        if total is None:
            return None
        return total.transpose(0, 1).flatten(1)[:, self.slots]


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
            output = state.mlp_outputs[layer]
            constant = output if skip is None else output - skip.to(output.dtype)
            self.constants.append(constant[None].expand(expand).clone().requires_grad_(True))
        self.mlp_inputs: list[torch.Tensor] = [state.embeddings] * n_layers
        self.feature_sources = [
            FeatureSources(transcoders, sources, layer, dtype=state.embeddings.dtype)
            for layer in range(n_layers)
        ]
        self.cache_decoders = sum(f.padded_bytes() for f in self.feature_sources) <= _DECODER_CACHE_BYTES

        def on_mlp_input(layer: int, x: torch.Tensor) -> None:
            self.mlp_inputs[layer] = x

        def on_mlp_output(layer: int, _out: torch.Tensor) -> torch.Tensor:
            skip = transcoders.skip(layer, self.mlp_inputs[layer])
            constant = self.constants[layer]
            return constant if skip is None else constant + skip.to(constant.dtype)

        ids = state.input_ids.to(state.embeddings.device)[None].expand(batch_size, n_pos)
        with (
            torch.enable_grad(),
            state.freezer.replay(),
            mlps_bypassed(adapter),
            hooked(
                adapter,
                on_embeddings=lambda _h: self.embeddings,
                on_mlp_input=on_mlp_input,
                on_mlp_output=on_mlp_output,
            ),
        ):
            # the body only: its output is the final normed residual z, and no logits are computed
            self.final: torch.Tensor = model.base_model(input_ids=ids, use_cache=False).last_hidden_state

    def rows(self, slots: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Edge weights into each seeded target from every source: [n, n_sources] float32.

        Target i is `vectors[i]` . (the hook point `slots[i]` at position `positions[i]`): slot l < n_layers
        is layer l's MLP input (a feature's pre-activation), slot n_layers the final normed residual.
        """
        n = int(slots.numel())
        if n > self.batch_size:
            raise ValueError(f"{n} targets exceed the batch size {self.batch_size}")
        outputs = [*self.mlp_inputs, self.final]
        seeded, seeds = [], []
        copies = torch.arange(n, device=slots.device)
        for slot in slots.unique().tolist():
            here = slots == slot
            seed = torch.zeros_like(outputs[slot])
            seed[copies[here], positions[here]] = vectors[here].to(seed.dtype)
            seeded.append(outputs[slot])
            seeds.append(seed)
        self.backward_passes += 1
        grads = torch.autograd.grad(
            seeded, [self.embeddings, *self.constants], seeds, retain_graph=True, allow_unused=True
        )
        return self._edge_weights(grads[0], list(grads[1:]))[:n]

    def _edge_weights(self, d_embed: torch.Tensor | None, d_const: list[torch.Tensor | None]) -> torch.Tensor:
        state, src = self.state, self.sources
        device = self.embeddings.device
        rows = torch.zeros(self.batch_size, src.n_sources, dtype=torch.float32, device=device)
        for features in self.feature_sources:
            edges = features.edges(d_const, cache=self.cache_decoders)
            if edges is not None:
                rows[:, features.columns] = edges.float()
        n_pos, offset = src.n_positions, src.n_active
        for layer, grad in enumerate(d_const):
            if grad is not None:
                errors = torch.einsum("btd,td->bt", grad, state.errors[layer].to(grad.dtype)).float()
                errors[:, : state.zeroed_positions] = 0
                rows[:, offset + layer * n_pos : offset + (layer + 1) * n_pos] = errors
        if d_embed is not None:
            rows[:, offset + src.n_layers * n_pos :] = torch.einsum(
                "btd,td->bt", d_embed, state.embeddings
            ).float()
        return rows


def _affordable_batch(config: AttributionConfig, *, n_positions: int, d_model: int, n_layers: int) -> int:
    """Copies per backward pass: `batch_size`, fewer when the copies' tensors would pass the memory cap.

    Each copy holds about four [positions, d_model] float32 tensors per layer (the constant leaves,
    their gradients, the seeds and what the forward keeps for the backward pass).
    """
    per_copy = 4 * n_positions * d_model * (n_layers + 1) * 4
    return max(1, min(config.batch_size, config.max_batch_memory_mb * 2**20 // per_copy))


def _feature_targets(
    transcoders: TranscoderSet, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slots, positions, vectors) seeding feature targets [n, 3] (layer, position, feature): each
    feature's encoder row at its layer's MLP input."""
    vectors = torch.empty(
        targets.shape[0], transcoders.d_model, dtype=transcoders.dtype, device=targets.device
    )
    for layer in targets[:, 0].unique().tolist():
        here = targets[:, 0] == layer
        vectors[here] = transcoders.encoder_vectors(layer, targets[here, 2])
    return targets[:, 0], targets[:, 1], vectors


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
    budget = (
        sources.n_active
        if config.max_feature_nodes is None
        else min(config.max_feature_nodes, sources.n_active)
    )
    batch_size = _affordable_batch(config, n_positions=n_pos, d_model=adapter.d_model, n_layers=n_layers)
    batch_size = min(batch_size, max(budget, logit_ids.numel(), 1))  # no more copies than a pass seeds
    linear = LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=batch_size)

    unembed = adapter.unembedding()
    centered = unembed[logit_ids] - unembed.mean(dim=0, keepdim=True)
    logit_rows = torch.cat(
        [
            linear.rows(
                torch.full((len(part),), n_layers, device=centered.device),
                torch.full((len(part),), n_pos - 1, device=centered.device),
                part,
            )
            for part in centered.split(batch_size)
        ]
    )
    store = RowStore(
        logit_rows=logit_rows,
        logit_probs=logit_probs,
        n_active=sources.n_active,
        budget=budget,
        max_bytes=config.max_row_memory_mb * 2**20,
        n_layers=n_layers,
        refresh_batches=config.influence_refresh_batches,
    )
    while store.n_visited < store.budget:
        batch = store.next_batch(batch_size)
        store.add(batch, linear.rows(*_feature_targets(transcoders, sources.features[batch])))

    graph = _package(
        state=state,
        sources=sources,
        store=store,
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
    graph.params["feature_nodes_capped_by_memory"] = store.capped
    graph.params["candidate_features"] = store.pool_size if store.pool_limited else None
    graph.params["effective_batch_size"] = batch_size
    return graph


def _package(
    *,
    state: ReplacementState,
    sources: Sources,
    store: RowStore,
    logit_ids: torch.Tensor,
    logit_probs: torch.Tensor,
    config: AttributionConfig,
    model_name: str,
    transcoder_name: str,
    token_strings: list[str] | None,
    prompt: str,
    prompt_meta: dict,
) -> AttributionGraph:
    """Map stored columns onto the node order [selected features | errors | tokens | logits] and prune."""
    visited = store.visited
    order = torch.argsort(visited)
    selected = visited[order]
    n_sel = selected.numel()
    n_err, n_tok, n_logit = sources.n_layers * sources.n_positions, sources.n_positions, logit_ids.numel()
    kinds = NodeKinds(n_features=n_sel, n_errors=n_err, n_tokens=n_tok, n_logits=n_logit)
    # column map: selected feature -> node (unselected ones dropped); errors and tokens follow the selection
    rows_src = torch.cat([store.stored_rows()[order], store.kept_columns(store.logit_rows)], dim=0)
    rows = rows_src.new_zeros(rows_src.shape[0], kinds.n_nodes)
    rows[:, :n_sel] = rows_src[:, store.column_of(selected)]
    rows[:, n_sel : n_sel + n_err + n_tok] = rows_src[:, rows_src.shape[1] - n_err - n_tok :]
    device = rows.device
    row_nodes = torch.cat(
        [
            torch.arange(n_sel, device=device),
            torch.arange(kinds.n_nodes - n_logit, kinds.n_nodes, device=device),
        ]
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


def memory_note(graph: AttributionGraph) -> str | None:
    """One line saying how the row memory cap limited a graph's visit, or None when it did not."""
    params = graph.params
    asked = params["max_feature_nodes"]
    n_active = int(graph.active_features.shape[0])
    visited = int(graph.selected_features.numel())
    cap = f"--max-row-memory-mb {params['max_row_memory_mb']}"
    if params.get("feature_nodes_capped_by_memory"):
        wanted = n_active if asked is None else min(asked, n_active)
        return f"{visited} of {wanted} feature nodes visited: the rows hit {cap}; raise it to visit more"
    if params.get("candidate_features") is not None:
        return (
            f"nodes chosen among the {params['candidate_features']} most influential of {n_active} active "
            f"features ({cap}); edges between them are exact"
        )
    return None
