"""Faithfulness of loaded graphs that have no score yet: their graph files checked on the real model.

1. Graphs without a `faithfulness` score (every graph, with `recheck`) that record the file they were
   loaded from (`Graph.path`) are read back from it, remainder included where the file holds one.
2. Each is checked on the model and transcoder set it was made with, found by the names it records
   (`engine.shelf.ModelShelf`, as the causal step finds them), by `engine.faithfulness.measure_faithfulness`
   with its default settings: the check `attribute --faithfulness` runs. Graphs of a model no source has,
   or whose file is missing or unreadable, are skipped and counted.
3. The scores are written on the Graph under the names ingest gives them
   (`ingest.model.faithfulness_properties`), so a graph checked at attribution and one checked here read
   alike. Parameters and counts are recorded on `(:AnalysisRun {id: 'faithfulness'})`.
   Cost: one recorded forward plus 13 intervened forwards of the model per graph.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import neo4j

from circuitbase.analysis.gds import AnalysisError, finish_run, record_run
from circuitbase.engine.shelf import ModelShelf
from circuitbase.ingest.model import faithfulness_properties
from circuitbase.progress import Progress

if TYPE_CHECKING:
    from circuitbase.engine.models import LoadedModel
    from circuitbase.engine.transcoders import TranscoderSet

STEP = "faithfulness"

# keys and properties(g), not g.faithfulness / g.path: where no graph has the key yet, Neo4j warns of it
_TO_CHECK = """
MATCH (g:Graph) WHERE g.complete AND ($recheck OR NOT 'faithfulness' IN keys(g))
RETURN g.id AS graph, g.model AS model, g.transcoder_set AS transcoder_set, properties(g)['path'] AS path
ORDER BY model, transcoder_set, graph
"""
_WRITE = "UNWIND $rows AS r MATCH (g:Graph {id: r.graph}) SET g += r.scores"


@dataclass(frozen=True)
class FaithfulnessStepConfig:
    """recheck: measure every graph with a file again, not only those without a score (default False).
    batch: graphs per write (default 50)."""

    recheck: bool = False
    batch: int = 50

    def check(self) -> None:
        """AnalysisError naming the first setting out of range."""
        if self.batch < 1:
            raise AnalysisError(f"faithfulness batch must be >= 1, got {self.batch}")


def _check_graph(path: Path, model: tuple[LoadedModel, TranscoderSet]) -> dict[str, float | None]:
    """The Graph properties of one graph file's faithfulness check on `model` (loaded model, transcoders)."""
    from circuitbase.engine.faithfulness import measure_faithfulness
    from circuitbase.engine.graph import AttributionGraph

    loaded, transcoders = model
    graph = AttributionGraph.load(path)
    return faithfulness_properties(
        measure_faithfulness(loaded.model, loaded.adapter, transcoders, graph).summary()
    )


def check_faithfulness(
    driver: neo4j.Driver,
    *,
    models: ModelShelf,
    config: FaithfulnessStepConfig | None = None,
    database: str = "neo4j",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole step (module docstring); returns the counts and the median agreement written.

    models: where the graphs' models are found. config: default FaithfulnessStepConfig().
    progress: shows the graphs done (default none)."""
    config = config or FaithfulnessStepConfig()
    config.check()
    record_run(driver, STEP, asdict(config), database=database)
    graphs = [
        r.data() for r in driver.execute_query(_TO_CHECK, recheck=config.recheck, database_=database).records
    ]
    counts = {"checked": 0, "no_model": 0, "no_file": 0, "unreadable": 0}
    agreements: list[float] = []
    rows: list[dict[str, Any]] = []
    for done, graph in enumerate(graphs, start=1):
        model = models.find(graph["model"], graph["transcoder_set"])
        path = Path(graph["path"]) if graph["path"] else None
        if model is None:
            counts["no_model"] += 1
        elif path is None or not path.is_file():
            counts["no_file"] += 1
        else:
            try:
                scores = _check_graph(path, model)
            except ValueError:  # GraphFileError: a damaged or foreign file
                counts["unreadable"] += 1
            else:
                counts["checked"] += 1
                rows.append({"graph": graph["graph"], "scores": scores})
                if scores["faithfulness"] is not None:
                    agreements.append(scores["faithfulness"])
        if len(rows) >= config.batch:
            driver.execute_query(_WRITE, rows=rows, database_=database)
            rows = []
        if progress is not None:
            progress.update(info=f"faithfulness: {done}/{len(graphs)} graphs, {counts['checked']} checked")
    if rows:
        driver.execute_query(_WRITE, rows=rows, database_=database)
    result = {
        "graphs": len(graphs),
        "graphs_checked": counts["checked"],
        "graphs_without_model": counts["no_model"],
        "graphs_without_file": counts["no_file"],
        "graphs_unreadable": counts["unreadable"],
        "median_agreement": statistics.median(agreements) if agreements else None,
    }
    finish_run(driver, STEP, result, database=database)
    return result
