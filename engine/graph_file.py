"""The graph file: one `.safetensors` file per attribution graph, its pruned graph exact, the rest optional.

Tensors plus a JSON header under the metadata key ``circuitbase`` (prompt, tokens, names, scores,
params). Writes go to a temporary name and are renamed into place, so a crash never leaves a
half-written graph behind.

Format 2 (written now):
- the node tables, exact: `active_features`, `selected_features`, `logit_tokens` (int16 when every value
  fits, else int32), `activations`, `logit_probs`, `node_influence` (float32) and `node_mask` (uint8);
- the pruned graph's edges, exact: each edge's position `target * n_nodes + source`, increasing and
  delta-coded (`kept_gaps` uint8, where 255 means "the next entry of `kept_long_gaps`", int64), and its
  float32 value (`kept_values`); the header's `n_edges_full` counts the unpruned graph's edges;
- with `keep_full` only, the unpruned remainder (`rest_gaps`, `rest_long_gaps`, `rest_values`,
  `rest_scales`): positions coded the same way, values as float16 after scaling each target row by a
  power of two (`rest_scales`) that puts its largest magnitude in [2^14, 2^15). This is the format's
  only loss: a value comes back within 2^-11 (4.9e-4) of itself, relatively, or, if it is under 2^-28
  of the largest edge in its row, within 2^-39 of that edge.

An edge costs about 5 bytes in the pruned graph and 3 in the remainder (21 in format 1).

Format 1 (before): every edge as int64 COO indices and a float32 value, and the pruned graph as an edge
mask. It is still read, as the exact full graph it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from circuitbase.engine.graph import AttributionGraph, GraphFileError

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
_META_KEY = "circuitbase"
_ESCAPE = 255  # a gap this long or longer is kept in the int64 side table
_TOP_EXPONENT = 15  # scaled rows peak in [2^14, 2^15): below float16's largest finite value, 65504
_MAX_SCALE_EXPONENT = 127  # the largest power of two a float32 scale can hold


# ---- codecs ------------------------------------------------------------------------------------------
def narrow_ints(table: torch.Tensor) -> torch.Tensor:
    """An integer table as int16 when every value fits, else int32 (node tables stay under 2^31)."""
    fits = table.numel() == 0 or int(table.abs().max()) <= torch.iinfo(torch.int16).max
    return table.to(torch.int16 if fits else torch.int32)


def encode_positions(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Strictly increasing int64 `positions` as (uint8 gaps with 255 = escape, int64 escaped gaps)."""
    gaps = torch.diff(positions, prepend=positions.new_tensor([-1]))
    escaped = gaps >= _ESCAPE
    return gaps.clamp(max=_ESCAPE).to(torch.uint8), gaps[escaped]


def decode_positions(gaps: torch.Tensor, long_gaps: torch.Tensor) -> torch.Tensor:
    """The int64 positions `encode_positions` coded; a GraphFileError if they are not increasing."""
    full = gaps.long()
    escaped = full == _ESCAPE
    if int(escaped.sum()) != long_gaps.numel() or bool((long_gaps < _ESCAPE).any()):
        raise GraphFileError("edge positions: escaped gaps do not match their table")
    full[escaped] = long_gaps
    if bool((full < 1).any()):
        raise GraphFileError("edge positions are not strictly increasing")
    return torch.cumsum(full, 0) - 1


def row_scales(values: torch.Tensor, rows: torch.Tensor, *, n_rows: int) -> torch.Tensor:
    """float32 power of two per row putting the row's largest |value| in [2^14, 2^15) (2^15 if all zero)."""
    peak = torch.zeros(n_rows, dtype=torch.float32, device=values.device)
    peak.scatter_reduce_(0, rows, values.abs().float(), "amax")
    _, exponent = torch.frexp(peak)  # peak = m * 2**exponent, m in [0.5, 1); exponent 0 for 0
    exponent = (_TOP_EXPONENT - exponent).clamp(max=_MAX_SCALE_EXPONENT)  # rows under 2^-112 keep less
    return torch.ldexp(torch.ones_like(peak), exponent)


def compact_values(values: torch.Tensor, rows: torch.Tensor, *, n_rows: int) -> tuple[torch.Tensor, ...]:
    """(float16 values, float32 scales per row): `values * scales[rows]`, rounded to float16."""
    scales = row_scales(values, rows, n_rows=n_rows)
    return (values.float() * scales[rows]).to(torch.float16), scales


def expand_values(compact: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 values back from `compact_values` (dividing by a power of two is exact)."""
    return compact.float() / scales[rows]


# ---- writing -----------------------------------------------------------------------------------------
def _header(graph: AttributionGraph) -> dict[str, Any]:
    return {
        "prompt": graph.prompt,
        "input_ids": list(map(int, graph.input_ids)),
        "input_tokens": graph.input_tokens,
        "model_name": graph.model_name,
        "transcoder_name": graph.transcoder_name,
        "n_layers": graph.n_layers,
        "replacement_score": graph.replacement_score,
        "completeness_score": graph.completeness_score,
        "logit_token_strs": graph.logit_token_strs,
        "prompt_meta": graph.prompt_meta,
        "params": graph.params,
    }


def write_graph(graph: AttributionGraph, path: str | Path, *, keep_full: bool = False) -> Path:
    """Write `graph` atomically to `path` in format 2 (see the module docstring).

    keep_full: also store the unpruned remainder, compactly (default False: only the pruned graph).
    """
    if keep_full and graph.remainder == "dropped":
        raise ValueError(
            f"graph of {graph.prompt[:40]!r} holds only its pruned edges (its file was saved without "
            "--keep-full), so there is no unpruned remainder to keep"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_nodes = graph.n_nodes
    adjacency = graph.adjacency.coalesce().cpu()
    targets, sources = adjacency.indices()
    positions, values = targets * n_nodes + sources, adjacency.values().float()
    kept = graph.edge_mask.cpu()
    kept_gaps, kept_long = encode_positions(positions[kept])
    tensors = {
        "active_features": narrow_ints(graph.active_features),
        "activations": graph.activations.float(),
        "selected_features": narrow_ints(graph.selected_features),
        "logit_tokens": narrow_ints(graph.logit_tokens),
        "logit_probs": graph.logit_probs.float(),
        "node_influence": graph.node_influence.float(),
        "node_mask": graph.node_mask.to(torch.uint8),
        "kept_gaps": kept_gaps,
        "kept_long_gaps": kept_long,
        "kept_values": values[kept],
    }
    if keep_full:
        rest = ~kept
        rest_gaps, rest_long = encode_positions(positions[rest])
        rest_values, scales = compact_values(values[rest], targets[rest], n_rows=n_nodes)
        tensors |= {
            "rest_gaps": rest_gaps,
            "rest_long_gaps": rest_long,
            "rest_values": rest_values,
            "rest_scales": scales,
        }
    header = {
        "format_version": FORMAT_VERSION,
        **_header(graph),
        "n_edges_full": graph.n_edges_full,
        "remainder": "float16" if keep_full else "dropped",
    }
    tensors = {name: tensor.contiguous().cpu() for name, tensor in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates files private; graph files are ordinary data
    os.replace(tmp, path)
    return path


# ---- reading -----------------------------------------------------------------------------------------
def _coo(positions: torch.Tensor, values: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """The coalesced [n_nodes, n_nodes] COO tensor of increasing `positions` (target * n_nodes + source)."""
    if positions.numel() and int(positions[-1]) >= n_nodes * n_nodes:
        raise GraphFileError(f"an edge position lies outside the {n_nodes} nodes")
    indices = torch.stack([positions // n_nodes, positions % n_nodes])
    return torch.sparse_coo_tensor(  # sorted, unique and in bounds: checked above and when decoding
        indices, values, (n_nodes, n_nodes), is_coalesced=True, check_invariants=False
    )


def _edges_v1(tensors: dict[str, torch.Tensor], n_nodes: int) -> dict[str, Any]:
    adjacency = torch.sparse_coo_tensor(
        tensors["adjacency_indices"],
        tensors["adjacency_values"],
        (n_nodes, n_nodes),
        check_invariants=True,
    ).coalesce()
    return {"adjacency": adjacency, "edge_mask": tensors["edge_mask"].bool()}


def _edges_v2(tensors: dict[str, torch.Tensor], header: dict[str, Any], n_nodes: int) -> dict[str, Any]:
    positions = decode_positions(tensors["kept_gaps"], tensors["kept_long_gaps"])
    values = tensors["kept_values"]
    if values.numel() != positions.numel():
        raise GraphFileError("kept edges: positions and values differ in number")
    n_dropped = int(header["n_edges_full"]) - positions.numel()
    if "rest_values" not in tensors:
        kept = torch.ones(positions.numel(), dtype=torch.bool)
        remainder = "dropped" if n_dropped else "exact"
        return {"adjacency": _coo(positions, values, n_nodes), "edge_mask": kept, "remainder": remainder,
                "n_dropped": n_dropped}  # fmt: skip
    rest = decode_positions(tensors["rest_gaps"], tensors["rest_long_gaps"])
    if rest.numel() != n_dropped or tensors["rest_values"].numel() != n_dropped:
        raise GraphFileError(f"the unpruned remainder does not hold the {n_dropped} edges the header counts")
    rest_values = expand_values(tensors["rest_values"], tensors["rest_scales"], rest // n_nodes)
    all_positions, order = torch.sort(torch.cat([positions, rest]))
    if bool((all_positions[1:] == all_positions[:-1]).any()):
        raise GraphFileError("an edge is both in the pruned graph and in the remainder")
    kept = torch.cat([torch.ones_like(positions, dtype=torch.bool), torch.zeros_like(rest, dtype=torch.bool)])
    adjacency = _coo(all_positions, torch.cat([values, rest_values])[order], n_nodes)
    return {"adjacency": adjacency, "edge_mask": kept[order], "remainder": "float16"}


def _read(path: Path, *, unpruned: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads((handle.metadata() or {})[_META_KEY])
        version = header.get("format_version")
        if version not in READ_VERSIONS:
            raise GraphFileError(
                f"{path}: graph format {version} is not one this version reads {READ_VERSIONS}"
            )
        stored = handle.keys()  # a safetensors handle is not iterable
        names = [name for name in stored if unpruned or not name.startswith("rest_")]
        return header, {name: handle.get_tensor(name) for name in names}


def read_graph(path: str | Path, *, unpruned: bool = True) -> AttributionGraph:
    """The graph in file `path` (format 1 or 2); a GraphFileError naming the file if it cannot be read.

    unpruned: also read the unpruned remainder when the file holds one (default True); False reads the
    pruned graph only, all that ingest needs.
    """
    path = Path(path)
    try:
        header, tensors = _read(path, unpruned=unpruned)
        n_positions = len(header["input_ids"])
        n_nodes = (
            tensors["selected_features"].numel()
            + (header["n_layers"] + 1) * n_positions
            + tensors["logit_tokens"].numel()
        )
        edges = (
            _edges_v1(tensors, n_nodes)
            if header["format_version"] == 1
            else _edges_v2(tensors, header, n_nodes)
        )
    except FileNotFoundError:
        raise GraphFileError(f"{path}: no such graph file") from None
    except GraphFileError as exc:
        message = str(exc)
        raise GraphFileError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except Exception as exc:  # safetensors and json raise their own types; a missing key is a KeyError
        raise GraphFileError(f"{path}: not a readable circuitbase graph file ({exc!r})") from exc
    return AttributionGraph(
        prompt=header["prompt"],
        input_ids=header["input_ids"],
        input_tokens=header["input_tokens"],
        model_name=header["model_name"],
        transcoder_name=header["transcoder_name"],
        n_layers=header["n_layers"],
        active_features=tensors["active_features"].long(),
        activations=tensors["activations"],
        selected_features=tensors["selected_features"].long(),
        logit_tokens=tensors["logit_tokens"].long(),
        logit_probs=tensors["logit_probs"],
        node_influence=tensors["node_influence"],
        node_mask=tensors["node_mask"].bool(),
        replacement_score=header["replacement_score"],
        completeness_score=header["completeness_score"],
        logit_token_strs=header.get("logit_token_strs", []),
        prompt_meta=header.get("prompt_meta", {}),
        params=header.get("params", {}),
        **edges,
    )
