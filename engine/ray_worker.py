"""One attribution worker: loads a model and its transcoders once, then attributes prompt after prompt.

`engine.ray_pool` runs this class as a long-lived Ray actor (one per GPU, or on CPU cores); it is a
plain class, so it needs no Ray to import or to test. Each prompt is attributed alone
(`runner.attribute_prompt`), as the single-process ingest pipeline does, so a cluster run writes the
same graphs; the graph is returned with every tensor in CPU memory, for the driver to save and load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.labels import labels_path
from circuitbase.engine.loading import load_model_and_transcoders
from circuitbase.engine.models import LoadedModel
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import attribute_prompt
from circuitbase.engine.transcoders import TranscoderSet


@dataclass(frozen=True)
class WorkerInfo:
    """What a loaded worker holds: the names its graphs record, where it runs, its set's labels file text
    (None when the set has none), so the driver needs neither the model nor the set's files."""

    model: str
    transcoder_set: str
    device: str
    labels: str | None


def graph_on_cpu(graph: AttributionGraph) -> AttributionGraph:
    """`graph` with every tensor moved to CPU memory (a copy only where a tensor was elsewhere)."""
    moved = {
        f.name: value.cpu()
        for f in dataclasses.fields(graph)
        if isinstance(value := getattr(graph, f.name), torch.Tensor)
    }
    return dataclasses.replace(graph, **moved)


class AttributionWorker:
    """Holds one model and transcoder set; `load` first, then `attribute` any number of prompts."""

    def __init__(self) -> None:
        self._loaded: tuple[LoadedModel, TranscoderSet] | None = None

    def load(
        self, *, model: str, transcoders: str | None, device: str, precision: str, threads: int = 0
    ) -> WorkerInfo:
        """Load the model and set (`engine.loading`); device 'auto', 'cpu' or 'cuda'; threads: torch CPU
        threads (default 0: leave torch's choice)."""
        if threads > 0:
            torch.set_num_threads(threads)
        loaded, transcoders_set, folder = load_model_and_transcoders(
            model, transcoders, device=device, precision=precision
        )
        self._loaded = (loaded, transcoders_set)
        labels = labels_path(folder)
        return WorkerInfo(
            model=loaded.name,
            transcoder_set=transcoders_set.name,
            device=str(loaded.adapter.unembedding().device),
            labels=labels.read_text(encoding="utf-8") if labels.is_file() else None,
        )

    def attribute(self, prompt: Prompt, *, config: AttributionConfig) -> AttributionGraph:
        """The graph of one prompt, in CPU memory."""
        if self._loaded is None:
            raise RuntimeError("AttributionWorker.attribute called before load")
        loaded, transcoders = self._loaded
        return graph_on_cpu(attribute_prompt(loaded, transcoders, prompt, config=config))
