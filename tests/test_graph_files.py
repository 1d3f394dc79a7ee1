"""Graph files: the pruned graph exact, the unpruned remainder optional and within its stated error,
format-1 files (tests/fixtures/graph-v1) still read and ingested like their format-2 twins."""

from __future__ import annotations

import shutil
from pathlib import Path

import neo4j
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from circuitbase.cli import app
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.graph import AttributionGraph, GraphFileError
from circuitbase.engine.graph_file import compact_values, decode_positions, encode_positions, expand_values
from circuitbase.engine.models import load_model
from circuitbase.engine.neuronpedia import to_neuronpedia
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import attribute_prompt
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import ingest_files
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.verify import content_checksum
from tests.numerics import assert_close

FIXTURES = Path(__file__).parent / "fixtures"
MODEL, SET = (
    FIXTURES / "circuit-tracer-format" / "tiny-llama",
    FIXTURES / "circuit-tracer-format" / "plt-relu",
)
V1 = FIXTURES / "graph-v1" / "v1.safetensors"  # format 1, written before format 2 existed (see README)
V1_NODES, V1_KEPT_NODES, V1_EDGES, V1_KEPT = 95, 53, 2239, 675  # what that file holds
NODE_TABLES = ("active_features", "activations", "selected_features", "logit_tokens", "logit_probs",
               "node_influence", "node_mask")  # fmt: skip
REL, TAIL, TAIL_ABS = 2.0**-11, 2.0**-28, 2.0**-39  # the remainder's stated error (graph_file)


def _graph(device: torch.device) -> AttributionGraph:
    """A real graph of the tiny fixture model on `device`, every active feature visited."""
    loaded = load_model(str(MODEL), device=device)
    transcoders = TranscoderSet.load(SET, device=device)
    prompt = Prompt(text="the cat sat on the mat", answer=" the", id="g")
    return attribute_prompt(loaded, transcoders, prompt, config=AttributionConfig(max_feature_nodes=None))


def _assert_within_stated_error(actual: torch.Tensor, exact: torch.Tensor, rows: torch.Tensor) -> None:
    """Each value within REL of itself or, under TAIL of its row's largest magnitude, within TAIL_ABS."""
    actual, exact = actual.double(), exact.double()
    peak = torch.zeros(int(rows.max()) + 1, dtype=torch.float64).scatter_reduce(0, rows, exact.abs(), "amax")
    error, row_peak = (actual - exact).abs(), peak[rows]
    tail = exact.abs() < TAIL * row_peak
    assert bool((error[~tail] <= REL * exact[~tail].abs()).all())
    assert bool((error[tail] <= TAIL_ABS * row_peak[tail]).all())
    assert_close(actual, exact, rel=REL)


def test_default_file_holds_the_pruned_graph_exactly(tmp_path: Path, device: torch.device) -> None:
    graph = _graph(device)
    path = graph.save(tmp_path / "g.safetensors")
    loaded = AttributionGraph.load(path)
    for name in NODE_TABLES:
        assert torch.equal(getattr(loaded, name), getattr(graph, name).cpu()), name
    for a, b in zip(loaded.edges(pruned=True), graph.edges(pruned=True), strict=True):
        assert torch.equal(a, b.cpu())
    assert (loaded.params, loaded.prompt_meta) == (graph.params, graph.prompt_meta)
    assert (loaded.replacement_score, loaded.completeness_score) == (
        graph.replacement_score,
        graph.completeness_score,
    )
    kept = int(graph.edge_mask.sum())
    assert 0 < kept < graph.n_edges_full
    assert (loaded.remainder, loaded.n_dropped, loaded.n_edges_full) == (
        "dropped",
        graph.n_edges_full - kept,
        graph.n_edges_full,
    )
    assert to_neuronpedia(loaded, slug="g") == to_neuronpedia(graph, slug="g")
    with pytest.raises(ValueError, match="holds only its pruned edges"):
        loaded.edges(pruned=False)
    with pytest.raises(ValueError, match="--keep-full"):
        loaded.dense_adjacency()
    with pytest.raises(ValueError, match="no unpruned remainder to keep"):
        loaded.save(tmp_path / "again.safetensors", keep_full=True)
    again = loaded.save(tmp_path / "again.safetensors")  # a read graph writes the same file again
    assert again.read_bytes() == path.read_bytes()


def test_keep_full_remainder_is_within_its_stated_error(tmp_path: Path, device: torch.device) -> None:
    graph = _graph(device)
    default, full = (
        graph.save(tmp_path / "d.safetensors"),
        graph.save(tmp_path / "f.safetensors", keep_full=True),
    )
    loaded = AttributionGraph.load(full)
    assert loaded.remainder == "float16"
    assert torch.equal(loaded.edge_mask, graph.edge_mask.cpu())
    (indices, values), (exact_indices, exact_values) = loaded.edges(pruned=False), graph.edges(pruned=False)
    assert torch.equal(indices, exact_indices.cpu())
    exact_values, mask = exact_values.cpu(), graph.edge_mask.cpu()
    assert torch.equal(values[mask], exact_values[mask])  # the pruned graph stays exact
    _assert_within_stated_error(values[~mask], exact_values[~mask], indices[0][~mask])
    assert (
        float(((values - exact_values).abs() / exact_values.abs()).max()) > 2.0**-13
    )  # float16, not float32
    pruned_only = AttributionGraph.load(full, unpruned=False)
    assert pruned_only.remainder == "dropped"
    for a, b in zip(pruned_only.edges(), AttributionGraph.load(default).edges(), strict=True):
        assert torch.equal(a, b)
    assert default.stat().st_size < full.stat().st_size


def test_compact_values_bound_over_sixty_orders_of_magnitude() -> None:
    generator = torch.Generator().manual_seed(0)
    n_rows, n = 64, 200_000
    rows = torch.randint(0, n_rows, (n,), generator=generator)
    magnitude = torch.pow(10.0, torch.empty(n, dtype=torch.float64).uniform_(-30, 30, generator=generator))
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    values = (sign * magnitude).float()
    values[::97] = 0.0
    compact, scales = compact_values(values, rows, n_rows=n_rows)
    assert compact.dtype == torch.float16 and bool(torch.isfinite(compact).all())
    _assert_within_stated_error(expand_values(compact, scales, rows), values, rows)


def test_positions_round_trip_through_long_gaps() -> None:
    gaps = torch.tensor([1, 1, 254, 255, 256, 3, 2**40, 7, 2**20], dtype=torch.long)
    positions = torch.cumsum(gaps, 0) + 4
    small, long = encode_positions(positions)
    assert small.dtype == torch.uint8 and long.tolist() == [255, 256, 2**40, 2**20]
    assert torch.equal(decode_positions(small, long), positions)
    assert decode_positions(*encode_positions(torch.zeros(0, dtype=torch.long))).numel() == 0
    with pytest.raises(GraphFileError, match="not strictly increasing"):
        decode_positions(torch.tensor([3, 0], dtype=torch.uint8), torch.zeros(0, dtype=torch.long))


def test_format_1_file_reads_and_rewrites_smaller(tmp_path: Path) -> None:
    old = AttributionGraph.load(V1)
    assert (old.remainder, old.n_nodes, old.n_edges_full, int(old.edge_mask.sum())) == (
        "exact",
        V1_NODES,
        V1_EDGES,
        V1_KEPT,
    )
    stored = load_file(V1)
    assert torch.equal(old.adjacency.indices(), stored["adjacency_indices"])
    assert torch.equal(old.adjacency.values(), stored["adjacency_values"])
    default = old.save(tmp_path / "d.safetensors")
    full = old.save(tmp_path / "f.safetensors", keep_full=True)
    for path in (default, full):
        new = AttributionGraph.load(path)
        assert new.n_edges_full == V1_EDGES
        for a, b in zip(new.edges(), old.edges(), strict=True):
            assert torch.equal(a, b)
    size = V1.stat().st_size
    assert default.stat().st_size < full.stat().st_size < size / 3


def test_unreadable_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(GraphFileError, match="no such graph file"):
        AttributionGraph.load(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(V1.read_bytes()[:5000])
    with pytest.raises(GraphFileError, match=r"truncated\.safetensors: not a readable circuitbase graph"):
        AttributionGraph.load(truncated)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(1)}, str(future), metadata={"circuitbase": '{"format_version": 99}'})
    with pytest.raises(GraphFileError, match=r"future\.safetensors: graph format 99 is not one"):
        AttributionGraph.load(future)


def test_attribute_keeps_the_remainder_only_with_keep_full(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\n")
    for flag, remainder in (([], "dropped"), (["--keep-full"], "float16")):
        out = tmp_path / remainder
        base = [
            "attribute",
            str(prompts),
            "--model",
            str(MODEL),
            "--transcoders",
            str(SET),
            "--out",
            str(out),
        ]
        result = CliRunner().invoke(app, [*base, "--device", "cpu", "--no-neuronpedia", *flag])
        assert result.exit_code == 0, result.output
        (path,) = out.glob("*.safetensors")
        assert AttributionGraph.load(path).remainder == remainder


@pytest.mark.neo4j
def test_format_1_file_ingests_like_its_format_2_twins(clean_db: neo4j.Driver, tmp_path: Path) -> None:
    apply_schema(clean_db)
    path = tmp_path / "v1.safetensors"  # one path for every version: the Graph node records it
    shutil.copy(V1, path)
    checksums = []
    for keep_full in (None, False, True):
        if keep_full is not None:
            AttributionGraph.load(V1).save(path, keep_full=keep_full)
        assert ingest_files(clean_db, [path]).loaded == 1
        records, _, _ = clean_db.execute_query(
            "MATCH (g:Graph) RETURN g.n_nodes AS nodes, g.n_edges AS edges, g.n_edges_full AS full"
        )
        assert [r.data() for r in records] == [{"nodes": V1_KEPT_NODES, "edges": V1_KEPT, "full": V1_EDGES}]
        checksums.append(content_checksum(clean_db))
        clean_db.execute_query("MATCH (n) DETACH DELETE n")
    assert checksums[0] == checksums[1] == checksums[2]
