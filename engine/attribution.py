"""Attribution graphs by batched backward passes through the frozen replacement model.

1. Clean recorded forward (`build_replacement_state`): activations a, errors e, embeddings E, the last
   position's logits.
2. Linear forward (`linear_forward.LinearizedPrompt`): B copies of the prompt under the recorded
   attention patterns and norm scales, through the model's body only (no logits). The residual stream
   entering the first block is a leaf E; each MLP output becomes skip(x_l) + C_l, where the leaf C_l
   holds the recorded constant m_l - skip(x_l). Every transcoder input x_l and the final normed
   residual z are then linear in (E, C).
3. A target is a dot product with a hook point: a feature's pre-activation is W_enc[f] . x_l[p] (+ b_enc),
   a logit's value is (W_U[t] - mean_v W_U[v]) . z[T-1] (before any final soft-capping). One backward
   pass per batch of B targets, each seeded in its own copy, gives d target / d(E, C).
4. Edge weight = source vector . gradient: feature s at (i, q) -> a_s * sum_o W_dec_i[s, o - i] . dC_o[q]
   (o = i only for per-layer transcoders), one batched matmul per layer over positions; error at
   (l, q) -> e_l[q] . dC_l[q]; token at q -> E[q] . dE[q].
5. Logits are visited first. When every active feature is a target they follow in index order;
   otherwise in order of their estimated influence on the logits, re-estimated every
   `influence_refresh_batches` batches (`row_store.RowStore`, which also keeps the rows within the
   memory cap). Targets are taken layer by layer, so a pass runs back only from its highest layer.
6. Prune by influence (`pruning.prune`) and package an `AttributionGraph`.

`attribute_many` does the same for several prompts; those whose whole graph is one pass share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.linear_forward import LinearizedPrompt, Sources, active_sources
from circuitbase.engine.pruning import NodeKinds, prune
from circuitbase.engine.replacement import ReplacementState, build_replacement_state
from circuitbase.engine.row_store import RowStore
from circuitbase.engine.transcoders import TranscoderSet

_PACKED_MAX_POSITIONS = 256  # prompts sharing a forward are at most this long (their patterns are stacked)


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
    # cap on the copies' tensors, so long prompts use smaller batches; None = 10,240 MiB on a CPU and half
    # the memory PyTorch can still get on a GPU when the graph starts
    max_batch_memory_mb: int | None = None
    # runner.attribute_prompts then also checks each graph on the real model (engine/faithfulness.py)
    check_faithfulness: bool = False


def select_logits(
    logits: torch.Tensor, *, max_logits: int, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top next tokens until their probability reaches `probability` (at most `max_logits`)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_probs, top_ids = torch.topk(probs, k=min(max_logits, probs.numel()))
    reached = torch.cumsum(top_probs, 0) >= probability
    needed = int(torch.argmax(reached.int())) + 1 if bool(reached.any()) else top_ids.numel()
    return top_ids[:needed], top_probs[:needed]


_CPU_BATCH_MEMORY_MB = 10240


def _batch_memory_bytes(config: AttributionConfig, device: torch.device) -> int:
    """The copies' memory cap: the configured one, else 10,240 MiB on a CPU and on a GPU half of what
    PyTorch can still get there (free device memory plus what its allocator holds unused)."""
    if config.max_batch_memory_mb is not None:
        return config.max_batch_memory_mb * 2**20
    if device.type != "cuda":
        return _CPU_BATCH_MEMORY_MB * 2**20
    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) // 2


def _affordable_batch(
    config: AttributionConfig, *, n_positions: int, d_model: int, n_layers: int, device: torch.device
) -> int:
    """Copies per backward pass: `batch_size`, fewer when the copies' tensors would pass the memory cap.

    Each copy holds about ten [positions, d_model] float32 tensors per layer (the constant leaves, their
    gradients, the seeds and what the forward keeps for the backward pass: norm inputs, values, the
    attention output); measured on a Gemma-2-2B shape on a GPU, 6 to 11.
    """
    per_copy = 10 * n_positions * d_model * (n_layers + 1) * 4
    return max(1, min(config.batch_size, _batch_memory_bytes(config, device) // per_copy))


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


@dataclass(frozen=True)
class PromptInput:
    """One prompt to attribute: its token ids (1-D) and what its graph records about it."""

    input_ids: torch.Tensor
    prompt: str = ""
    token_strings: list[str] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class _Prepared:
    """A prompt after its recorded forward: sources, logit targets and how many features to visit."""

    prompt: PromptInput
    state: ReplacementState
    sources: Sources
    logit_ids: torch.Tensor
    logit_probs: torch.Tensor
    logit_vectors: torch.Tensor  # [n_logits, d_model] unembedding rows minus their vocabulary mean
    budget: int

    @property
    def n_targets(self) -> int:
        return int(self.logit_ids.numel()) + self.budget


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
    entry = PromptInput(input_ids, prompt=prompt, token_strings=token_strings, meta=prompt_meta or {})
    return _single(
        model, adapter, transcoders, _prepare(model, adapter, transcoders, entry, config), config, model_name
    )


def attribute_many(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    prompts: Sequence[PromptInput],
    *,
    config: AttributionConfig | None = None,
    model_name: str = "",
) -> list[AttributionGraph]:
    """Attribution graphs of several prompts, in order: the same graphs as `attribute` gives each.

    A prompt whose whole graph is one backward pass (every active feature visited, its logits and
    features within `batch_size` targets, at most `_PACKED_MAX_POSITIONS` tokens) shares that pass with
    the prompts next to it that also fit, so many short prompts need few passes; others run alone.
    """
    config = config or AttributionConfig()
    model.requires_grad_(False)
    prepared = (_prepare(model, adapter, transcoders, entry, config) for entry in prompts)  # one at a time
    # copies of a shared pass: the batch size, or fewer where the longest prompt allowed would pass the cap
    copies = _affordable_batch(
        config, n_positions=_PACKED_MAX_POSITIONS, d_model=adapter.d_model, n_layers=adapter.n_layers,
        device=adapter.unembedding().device,
    )  # fmt: skip
    graphs: list[AttributionGraph] = []
    pack: list[_Prepared] = []

    def flush() -> None:
        if len(pack) == 1:
            graphs.append(_single(model, adapter, transcoders, pack[0], config, model_name))
        elif pack:
            graphs.extend(_packed(model, adapter, transcoders, pack, config, model_name))
        pack.clear()

    for entry in prepared:
        if not _packable(entry, config, copies):
            flush()
            graphs.append(_single(model, adapter, transcoders, entry, config, model_name))
            continue
        if sum(p.n_targets for p in pack) + entry.n_targets > copies:
            flush()
        pack.append(entry)
    flush()
    return graphs


def _prepare(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    entry: PromptInput,
    config: AttributionConfig,
) -> _Prepared:
    state = build_replacement_state(model, adapter, transcoders, entry.input_ids)
    sources = active_sources(state)
    logit_ids, logit_probs = select_logits(
        state.logits[-1], max_logits=config.max_logits, probability=config.logit_probability
    )
    unembed = adapter.unembedding()
    budget = (
        sources.n_active
        if config.max_feature_nodes is None
        else min(config.max_feature_nodes, sources.n_active)
    )
    return _Prepared(
        prompt=entry,
        state=state,
        sources=sources,
        logit_ids=logit_ids,
        logit_probs=logit_probs,
        logit_vectors=unembed[logit_ids] - unembed.mean(dim=0, keepdim=True),
        budget=budget,
    )


def _packable(entry: _Prepared, config: AttributionConfig, copies: int) -> bool:
    """Whether a prompt's graph is one pass of at most `copies` targets, short enough to share it."""
    full_rows = entry.n_targets * entry.sources.n_sources * 4
    return (
        entry.budget == entry.sources.n_active
        and entry.n_targets <= copies
        and entry.state.n_positions <= _PACKED_MAX_POSITIONS
        and full_rows <= config.max_row_memory_mb * 2**20
    )


def _store(entry: _Prepared, logit_rows: torch.Tensor, config: AttributionConfig, n_layers: int) -> RowStore:
    return RowStore(
        logit_rows=logit_rows,
        logit_probs=entry.logit_probs,
        n_active=entry.sources.n_active,
        budget=entry.budget,
        max_bytes=config.max_row_memory_mb * 2**20,
        n_layers=n_layers,
        refresh_batches=config.influence_refresh_batches,
    )


def _single(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    entry: _Prepared,
    config: AttributionConfig,
    model_name: str,
) -> AttributionGraph:
    """One prompt's graph from its own linear forward, visiting features batch by batch."""
    state, sources, n_layers = entry.state, entry.sources, adapter.n_layers
    batch_size = _affordable_batch(
        config, n_positions=state.n_positions, d_model=adapter.d_model, n_layers=n_layers,
        device=adapter.unembedding().device,
    )  # fmt: skip
    batch_size = min(batch_size, max(entry.n_targets, 1))  # no more copies than the prompt has targets
    linear = LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=batch_size)
    logit_rows = torch.cat(
        [
            linear.rows(*_logit_targets(entry, part, n_layers))
            for part in entry.logit_vectors.split(batch_size)
        ]
    )
    store = _store(entry, logit_rows, config, n_layers)
    while store.n_visited < store.budget:
        batch = store.next_batch(batch_size)
        store.add(batch, linear.rows(*_feature_targets(transcoders, sources.features[batch])))
    return _package(entry, store, config=config, model_name=model_name, transcoder_name=transcoders.name,
                    backward_passes=linear.backward_passes, batch_size=batch_size)  # fmt: skip


def _packed(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    pack: list[_Prepared],
    config: AttributionConfig,
    model_name: str,
) -> list[AttributionGraph]:
    """Graphs of prompts that each fit one pass, from one shared linear forward and one backward pass."""
    n_layers = adapter.n_layers
    linear = LinearizedPrompt.packed(
        model, adapter, transcoders, [(entry.state, entry.sources, entry.n_targets) for entry in pack]
    )
    targets = []
    for entry in pack:
        logits = _logit_targets(entry, entry.logit_vectors, n_layers)
        features = _feature_targets(transcoders, entry.sources.features)
        targets.append(tuple(torch.cat([a.to(b.dtype), b]) for a, b in zip(logits, features, strict=True)))
    graphs = []
    for entry, rows in zip(pack, linear.packed_rows(targets), strict=True):
        n_logits = int(entry.logit_ids.numel())
        store = _store(entry, rows[:n_logits], config, n_layers)
        store.add(torch.arange(entry.sources.n_active, device=rows.device), rows[n_logits:])
        graph = _package(entry, store, config=config, model_name=model_name, transcoder_name=transcoders.name,
                         backward_passes=1, batch_size=linear.batch_size)  # fmt: skip
        graph.params["prompts_sharing_the_pass"] = len(pack)
        graphs.append(graph)
    return graphs


def _logit_targets(
    entry: _Prepared, vectors: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slots, positions, vectors) seeding logit targets at the final normed residual's last position."""
    device = vectors.device
    n = vectors.shape[0]
    last = entry.state.n_positions - 1
    return torch.full((n,), n_layers, device=device), torch.full((n,), last, device=device), vectors


def _package(
    entry: _Prepared,
    store: RowStore,
    *,
    config: AttributionConfig,
    model_name: str,
    transcoder_name: str,
    backward_passes: int,
    batch_size: int,
) -> AttributionGraph:
    """Map stored columns onto the node order [selected features | errors | tokens | logits] and prune."""
    state, sources, logit_ids, logit_probs = entry.state, entry.sources, entry.logit_ids, entry.logit_probs
    visited = store.visited
    in_order = bool((visited[1:] > visited[:-1]).all())  # visited in index order: no row reordering
    order = None if in_order else torch.argsort(visited)
    selected = visited if order is None else visited[order]
    n_sel = selected.numel()
    n_err, n_tok, n_logit = sources.n_layers * sources.n_positions, sources.n_positions, logit_ids.numel()
    kinds = NodeKinds(n_features=n_sel, n_errors=n_err, n_tokens=n_tok, n_logits=n_logit)
    # rows over the source nodes: selected features (unselected columns dropped), then errors and tokens
    feature_rows = store.stored_rows() if order is None else store.stored_rows()[order]
    rows_src = torch.cat([feature_rows, store.kept_columns(store.logit_rows)], dim=0)
    n_stored = rows_src.shape[1] - n_err - n_tok
    # selected is sorted and lies in the stored columns, so as many of them means all of them, in order
    rows = (
        rows_src
        if n_sel == n_stored
        else torch.cat([rows_src[:, store.column_of(selected)], rows_src[:, n_stored:]], dim=1)
    )
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
    # row-major entries; row_nodes is increasing, so the node indices stay sorted
    entries = result.entries
    adjacency = torch.sparse_coo_tensor(
        torch.stack([row_nodes[entries.row], entries.col]),
        entries.value,
        (kinds.n_nodes, kinds.n_nodes),
        is_coalesced=True,
        check_invariants=False,  # sorted and unique by construction
    )
    ids = state.input_ids.tolist()
    return AttributionGraph(
        prompt=entry.prompt.prompt,
        input_ids=ids,
        input_tokens=entry.prompt.token_strings or [str(i) for i in ids],
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
        edge_mask=result.edge_mask.cpu(),
        replacement_score=result.replacement_score,
        completeness_score=result.completeness_score,
        prompt_meta=entry.prompt.meta,
        params={
            **asdict(config),
            "backward_passes": backward_passes,
            "feature_nodes_capped_by_memory": store.capped,
            "candidate_features": store.pool_size if store.pool_limited else None,
            "effective_batch_size": batch_size,
        },
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
