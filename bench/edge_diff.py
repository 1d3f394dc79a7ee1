"""Max edge difference between two attribution graphs on the nodes both contain (torch only).

Imported by the bench in the project's interpreter and by `circuit_tracer_case.py` in circuit-tracer's,
so it depends on nothing but torch. Both tools order nodes [selected features | errors (layer-major) |
tokens | logits] and store the edge source -> target at adjacency[target, source]; nodes are matched by
key, not by index: a feature by (layer, position, feature), an error by (layer, position), a token by its
position, a logit by its token id.

A graph travels between interpreters as a `torch.save`d dict (`graph_record`): `features` [n, 3] of the
selected features, `logit_tokens`, `n_layers`, `input_ids`, and the adjacency as COO `indices` [2, nnz]
and `values` (or dense `adjacency` from circuit-tracer, compared where it was computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_KIND, _LAYER, _POSITION = 56, 44, 24  # bit offsets of a node key: kind | layer | position | feature/token
_BLOCK_BYTES = 256 * 2**20  # dense rows compared at a time


def node_keys(
    features: torch.Tensor, logit_tokens: torch.Tensor, *, n_layers: int, n_positions: int
) -> torch.Tensor:
    """One int64 key per node of a graph ordered [features | errors | tokens | logits]."""
    device = features.device
    features = features.long()
    feature_keys = (features[:, 0] << _LAYER) | (features[:, 1] << _POSITION) | features[:, 2]
    layers = torch.arange(n_layers, device=device).repeat_interleave(n_positions)
    positions = torch.arange(n_positions, device=device)
    error_keys = (1 << _KIND) | (layers << _LAYER) | (positions.repeat(n_layers) << _POSITION)
    token_keys = (2 << _KIND) | (positions << _POSITION)
    logit_keys = (3 << _KIND) | logit_tokens.to(device).long()
    return torch.cat([feature_keys, error_keys, token_keys, logit_keys])


@dataclass
class Edges:
    """A graph's node keys and its adjacency (dense [n, n], or sparse COO of that shape)."""

    keys: torch.Tensor
    adjacency: torch.Tensor
    n_features: int  # rows of selected features come first, rows of logits last

    def dense_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.adjacency.is_sparse:
            return self.adjacency.index_select(0, rows).to_dense().float()
        return self.adjacency[rows].float()

    def target_rows(self) -> torch.Tensor:
        """Indices of the rows that hold edges: selected features and logits."""
        n_logits = int(((self.keys >> _KIND) == 3).sum())
        n = int(self.keys.numel())
        return torch.cat([torch.arange(self.n_features), torch.arange(n - n_logits, n)])


def edges_of(record: dict) -> Edges:
    """`Edges` of a graph record (see the module docstring)."""
    n_positions = len(record["input_ids"])
    keys = node_keys(
        record["features"], record["logit_tokens"], n_layers=record["n_layers"], n_positions=n_positions
    )
    if "adjacency" in record:
        adjacency = record["adjacency"]
    else:
        size = (keys.numel(), keys.numel())
        adjacency = torch.sparse_coo_tensor(
            record["indices"], record["values"], size, check_invariants=True
        ).coalesce()
    return Edges(keys=keys, adjacency=adjacency, n_features=int(record["features"].shape[0]))


def max_edge_difference(reference: Edges, other: Edges) -> dict:
    """Largest |edge difference| on the nodes both graphs hold, absolute and relative to the reference's
    largest edge there; also how many feature nodes the graphs share."""
    common = reference.keys[torch.isin(reference.keys, other.keys)]
    ref_order, other_order = torch.argsort(reference.keys), torch.argsort(other.keys)
    ref_index = ref_order[torch.searchsorted(reference.keys[ref_order], common)]
    other_index = other_order[torch.searchsorted(other.keys[other_order], common)]
    is_target = torch.isin(ref_index, reference.target_rows())
    block = max(1, _BLOCK_BYTES // (4 * max(1, common.numel())))
    largest, difference = 0.0, 0.0
    target_ref, target_other = ref_index[is_target], other_index[is_target]
    for start in range(0, target_ref.numel(), block):
        ref_rows = reference.dense_rows(target_ref[start : start + block])[:, ref_index]
        other_rows = other.dense_rows(target_other[start : start + block])[:, other_index]
        largest = max(largest, float(ref_rows.abs().max()))
        difference = max(difference, float((ref_rows - other_rows).abs().max()))
    shared_features = int(((common >> _KIND) == 0).sum())
    return {
        "max_abs": difference,
        "max_rel": difference / largest if largest else 0.0,
        "shared_features": shared_features,
        "reference_features": reference.n_features,
    }
