"""The frozen linear forward of one or several prompts, and the edges one backward pass through it gives.

1. Copies of each prompt run side by side in one batch under the recorded attention patterns and norm
   scales (`Freezer.stacked` when several prompts share it; shorter prompts are right-padded, and
   causal attention keeps padding out of every real position), through the model's body only.
2. Leaves: the residual stream entering the first block (E) and, per layer, the constant part of the
   MLP output C_l = m_l - skip(x_l); the MLP output becomes skip(x_l) + C_l.
3. A backward pass from seeds at the transcoder inputs or the final normed residual gives d target /
   d(E, C) per copy; `_edge_weights` turns them into one row of edges per target over the prompt's
   sources [active features | errors (layer-major) | tokens].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.freezing import Freezer
from circuitbase.engine.replacement import ReplacementState, hooked, mlps_bypassed
from circuitbase.engine.transcoders import TranscoderSet

_DECODER_CACHE_BYTES = 1 << 30  # activation-scaled decoder vectors kept between passes up to this size


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
        first = counts.cumsum(0) - counts
        self.positions, self.rank = (
            positions,
            torch.arange(positions.numel(), device=positions.device) - first[positions],
        )
        self.slots = positions * self.width + self.rank  # flat index into [T, k]
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
        total, decoders = None, None
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


@dataclass
class PromptCopies:
    """One prompt in a linear forward: its recorded state, its sources and the batch rows it owns."""

    state: ReplacementState
    sources: Sources
    copies: slice
    feature_sources: list[FeatureSources]


class LinearizedPrompt:
    """The frozen linear forward of one prompt (or several side by side), ready for repeated backward passes.

    `LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=B)` holds B copies of one
    prompt; `LinearizedPrompt.packed(...)` holds a given number of copies of each of several prompts.
    """

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
        self._build(model, adapter, transcoders, [(state, sources, batch_size)])

    @classmethod
    def packed(
        cls,
        model: nn.Module,
        adapter: ModelAdapter,
        transcoders: TranscoderSet,
        prompts: list[tuple[ReplacementState, Sources, int]],
    ) -> LinearizedPrompt:
        """(state, sources, copies) per prompt, the prompts' copies side by side in one batch."""
        linear = cls.__new__(cls)
        linear._build(model, adapter, transcoders, prompts)
        return linear

    def _build(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        transcoders: TranscoderSet,
        prompts: list[tuple[ReplacementState, Sources, int]],
    ) -> None:
        self.adapter, self.transcoders = adapter, transcoders
        self.backward_passes = 0
        first = prompts[0][0]
        device, dtype, d_model = first.embeddings.device, first.embeddings.dtype, first.embeddings.shape[-1]
        self.batch_size = sum(count for _, _, count in prompts)
        n_pos = max(state.n_positions for state, _, _ in prompts)
        self.parts: list[PromptCopies] = []
        start = 0
        for state, sources, count in prompts:
            features = [
                FeatureSources(transcoders, sources, layer, dtype=dtype) for layer in range(adapter.n_layers)
            ]
            self.parts.append(PromptCopies(state, sources, slice(start, start + count), features))
            start += count
        self.cache_decoders = (
            sum(f.padded_bytes() for part in self.parts for f in part.feature_sources) <= _DECODER_CACHE_BYTES
        )
        shape = (self.batch_size, n_pos, d_model)
        ids = torch.zeros(self.batch_size, n_pos, dtype=torch.long, device=device)
        self.embeddings = torch.zeros(shape, dtype=dtype, device=device)
        self.constants = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(adapter.n_layers)]
        for part in self.parts:
            state, rows, length = part.state, part.copies, part.state.n_positions
            ids[rows, :length] = state.input_ids.to(device)
            self.embeddings[rows, :length] = state.embeddings
            for layer, constant in enumerate(self.constants):
                skip = transcoders.skip(layer, state.mlp_inputs[layer])
                output = state.mlp_outputs[layer]
                constant[rows, :length] = output if skip is None else output - skip.to(output.dtype)
        for leaf in (self.embeddings, *self.constants):
            leaf.requires_grad_(True)
        self.mlp_inputs: list[torch.Tensor] = [self.embeddings] * adapter.n_layers

        def on_mlp_input(layer: int, x: torch.Tensor) -> None:
            self.mlp_inputs[layer] = x

        def on_mlp_output(layer: int, _out: torch.Tensor) -> torch.Tensor:
            skip = transcoders.skip(layer, self.mlp_inputs[layer])
            constant = self.constants[layer]
            return constant if skip is None else constant + skip.to(constant.dtype)

        freezer = (
            first.freezer
            if len(self.parts) == 1
            else Freezer.stacked(
                [part.state.freezer for part in self.parts],
                [count for *_, count in prompts],
                n_positions=n_pos,
            )
        )
        with (
            torch.enable_grad(),
            freezer.replay(),
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
        """Edge weights into each seeded target of a one-prompt forward from every source: [n, n_sources].

        Target i is `vectors[i]` . (the hook point `slots[i]` at position `positions[i]`): slot l < n_layers
        is layer l's MLP input (a feature's pre-activation), slot n_layers the final normed residual.
        """
        n = int(slots.numel())
        if n > self.batch_size:
            raise ValueError(f"{n} targets exceed the batch size {self.batch_size}")
        return self.packed_rows([(slots, positions, vectors)])[0]

    def packed_rows(
        self, targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """`rows` for every prompt of the forward at once: (slots, positions, vectors) per prompt, each
        at most its number of copies; one backward pass; [n_p, n_sources_p] float32 per prompt."""
        outputs = [*self.mlp_inputs, self.final]
        seeds: dict[int, torch.Tensor] = {}
        for part, (slots, positions, vectors) in zip(self.parts, targets, strict=True):
            copies = torch.arange(part.copies.start, part.copies.start + slots.numel(), device=slots.device)
            for slot in slots.unique().tolist():
                here = slots == slot
                if slot not in seeds:
                    seeds[slot] = torch.zeros_like(outputs[slot])
                seed = seeds[slot]
                seed[copies[here], positions[here]] = vectors[here].to(seed.dtype)
        self.backward_passes += 1
        grads = torch.autograd.grad(
            [outputs[slot] for slot in seeds],
            [self.embeddings, *self.constants],
            list(seeds.values()),
            retain_graph=True,
            allow_unused=True,
        )
        rows = []
        for part, (slots, _, _) in zip(self.parts, targets, strict=True):
            used = slice(part.copies.start, part.copies.start + slots.numel())
            own = [None if g is None else g[used, : part.state.n_positions] for g in grads]
            rows.append(_edge_weights(part, slots.numel(), own[0], own[1:], cache=self.cache_decoders))
        return rows


def _edge_weights(
    part: PromptCopies,
    n: int,
    d_embed: torch.Tensor | None,
    d_const: list[torch.Tensor | None],
    *,
    cache: bool,
) -> torch.Tensor:
    """[n, n_sources] float32 edges from the gradients of a prompt's n seeded copies (None: all zero)."""
    state, src = part.state, part.sources
    rows = torch.zeros(n, src.n_sources, dtype=torch.float32, device=state.embeddings.device)
    for features in part.feature_sources:
        edges = features.edges(d_const, cache=cache)
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
