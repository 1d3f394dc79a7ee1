"""One attribution graph and its portable on-disk form.

Node order follows circuit-tracer, so exports line up with the tools researchers know:

    [selected features | error nodes (layer-major: layer * n_pos + pos) | token nodes (pos) | logit nodes]

`adjacency[target, source]` is the direct effect of `source` on `target`. It is stored sparse (only
non-zero entries), so a graph file grows with the edges it has, not with the square of its node count.

A graph file is one `.safetensors` file: tensors plus a JSON header under the metadata key
``circuitbase``. Writes go to a temporary name and are renamed into place, so a crash never leaves
a half-written graph behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
_META_KEY = "circuitbase"


class GraphFileError(ValueError):
    """A graph file is missing, truncated or not a circuitbase graph."""


@dataclass
class AttributionGraph:
    """Nodes, edges and scores of one prompt's attribution graph."""

    prompt: str
    input_ids: list[int]
    input_tokens: list[str]
    model_name: str
    transcoder_name: str
    n_layers: int
    active_features: torch.Tensor  # [n_active, 3] long: (layer, position, feature index)
    activations: torch.Tensor  # [n_active] float
    selected_features: torch.Tensor  # [n_selected] long, indices into active_features (graph nodes)
    logit_tokens: torch.Tensor  # [n_logits] long, vocabulary ids
    logit_probs: torch.Tensor  # [n_logits] float, model probabilities
    adjacency: torch.Tensor  # [n_nodes, n_nodes] float, coalesced sparse COO; rows = targets
    node_influence: torch.Tensor  # [n_nodes] float, indirect influence on the logits
    node_mask: torch.Tensor  # [n_nodes] bool, nodes kept by pruning
    edge_mask: torch.Tensor  # [nnz] bool, aligned with adjacency.coalesce().values(): edges kept by pruning
    replacement_score: float
    completeness_score: float
    logit_token_strs: list[str] = field(default_factory=list)
    prompt_meta: dict[str, Any] = field(default_factory=dict)  # expected answer, tags, dataset, id
    params: dict[str, Any] = field(default_factory=dict)  # thresholds and settings used

    # ---- node layout -------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return int(self.selected_features.numel())

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_positions

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_positions + self.n_logits

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_positions

    def error_node(self, layer: int, position: int) -> int:
        return self.error_offset + layer * self.n_positions + position

    def token_node(self, position: int) -> int:
        return self.token_offset + position

    def logit_node(self, rank: int) -> int:
        return self.logit_offset + rank

    def dense_adjacency(self) -> torch.Tensor:
        return self.adjacency.to_dense()

    def edges(self, *, pruned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [2, n] as (target, source), weights [n]): the kept edges, or all with `pruned=False`."""
        adj = self.adjacency.coalesce()
        idx, val = adj.indices(), adj.values()
        if not pruned:
            return idx, val
        return idx[:, self.edge_mask], val[self.edge_mask]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically to `path` (a `.safetensors` file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        adj = self.adjacency.coalesce()
        tensors = {
            "active_features": self.active_features.long().contiguous().cpu(),
            "activations": self.activations.float().contiguous().cpu(),
            "selected_features": self.selected_features.long().contiguous().cpu(),
            "logit_tokens": self.logit_tokens.long().contiguous().cpu(),
            "logit_probs": self.logit_probs.float().contiguous().cpu(),
            "adjacency_indices": adj.indices().long().contiguous().cpu(),
            "adjacency_values": adj.values().float().contiguous().cpu(),
            "node_influence": self.node_influence.float().contiguous().cpu(),
            "node_mask": self.node_mask.to(torch.uint8).contiguous().cpu(),
            "edge_mask": self.edge_mask.to(torch.uint8).contiguous().cpu(),
        }
        header = {
            "format_version": FORMAT_VERSION,
            "prompt": self.prompt,
            "input_ids": list(map(int, self.input_ids)),
            "input_tokens": self.input_tokens,
            "model_name": self.model_name,
            "transcoder_name": self.transcoder_name,
            "n_layers": self.n_layers,
            "replacement_score": self.replacement_score,
            "completeness_score": self.completeness_score,
            "logit_token_strs": self.logit_token_strs,
            "prompt_meta": self.prompt_meta,
            "params": self.params,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates files private; graph files are ordinary data
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        path = Path(path)
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            header = json.loads(meta[_META_KEY])
        except FileNotFoundError:
            raise GraphFileError(f"{path}: no such graph file") from None
        except (
            KeyError,
            json.JSONDecodeError,
            OSError,
            Exception,
        ) as exc:  # safetensors raises its own types
            raise GraphFileError(f"{path}: not a readable circuitbase graph file ({exc})") from exc
        if header.get("format_version") != FORMAT_VERSION:
            raise GraphFileError(
                f"{path}: graph format {header.get('format_version')} is not {FORMAT_VERSION}"
            )
        n_nodes = (
            tensors["selected_features"].numel()
            + header["n_layers"] * len(header["input_ids"])
            + len(header["input_ids"])
            + tensors["logit_tokens"].numel()
        )
        adjacency = torch.sparse_coo_tensor(
            tensors["adjacency_indices"],
            tensors["adjacency_values"],
            (n_nodes, n_nodes),
            check_invariants=True,
        ).coalesce()
        return cls(
            prompt=header["prompt"],
            input_ids=header["input_ids"],
            input_tokens=header["input_tokens"],
            model_name=header["model_name"],
            transcoder_name=header["transcoder_name"],
            n_layers=header["n_layers"],
            active_features=tensors["active_features"],
            activations=tensors["activations"],
            selected_features=tensors["selected_features"],
            logit_tokens=tensors["logit_tokens"],
            logit_probs=tensors["logit_probs"],
            adjacency=adjacency,
            node_influence=tensors["node_influence"],
            node_mask=tensors["node_mask"].bool(),
            edge_mask=tensors["edge_mask"].bool(),
            replacement_score=header["replacement_score"],
            completeness_score=header["completeness_score"],
            logit_token_strs=header.get("logit_token_strs", []),
            prompt_meta=header.get("prompt_meta", {}),
            params=header.get("params", {}),
        )
