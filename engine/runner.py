"""Attribution for many prompts: one graph file per prompt, resumable, with a progress bar.

1. Prompts whose graph file already exists in the output directory are skipped (re-runs resume).
2. The remaining prompts go to the engine 16 at a time (short ones share backward passes), each
   tokenised as circuit-tracer does (`prompts.prompt_token_ids`); every graph is marked with the model's
   top prediction and whether it matches the expected answer (and, with `check_faithfulness`, checked
   against the real model: `faithfulness`), and written atomically, so a crash loses at most the graphs
   in flight.
3. Graphs are also yielded as they are written, so a consumer (the ingest pipeline) can load them
   into the database while the next one is being computed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitbase.engine.attribution import AttributionConfig, PromptInput, attribute_many, memory_note
from circuitbase.engine.faithfulness import measure_faithfulness
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.models import LoadedModel
from circuitbase.engine.neuronpedia import write_neuronpedia
from circuitbase.engine.prompts import Prompt, prompt_token_ids
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.progress import Progress

_PROMPTS_PER_CALL = 16  # prompts handed to the engine at once, so short ones can share backward passes


@dataclass
class RunSummary:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def graphs_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class GraphFiles:
    """What is written per graph: its file (the pruned graph exactly), plus its Neuronpedia JSON beside it
    with `neuronpedia` (default False) and its unpruned remainder, compactly, with `keep_full` (default
    False; `graph_file`)."""

    neuronpedia: bool = False
    keep_full: bool = False


GRAPH_FILE_ONLY = GraphFiles()


def graph_path(out_dir: Path, prompt: Prompt) -> Path:
    return out_dir / f"{prompt.id}.safetensors"


def is_correct(top_token: str, answer: str | None) -> bool | None:
    """Whether the model's top next token starts the expected answer (None without an answer)."""
    if answer is None:
        return None
    top, expected = top_token.strip(), answer.strip()
    return bool(top) and expected.startswith(top)


def attribute_prompts(
    loaded: LoadedModel, transcoders: TranscoderSet, prompts: Sequence[Prompt], *, config: AttributionConfig
) -> list[AttributionGraph]:
    """Tokenise and attribute prompts (short ones share backward passes: `attribution.attribute_many`);
    each graph carries its prompt's metadata, the model's top prediction and whether it is correct, and
    with `config.check_faithfulness` its faithfulness scores in `params["faithfulness"]`
    (`faithfulness.measure_faithfulness` with its default settings)."""
    tokenizer = loaded.tokenizer
    device = loaded.adapter.unembedding().device
    inputs = []
    for prompt in prompts:
        ids = prompt_token_ids(tokenizer, prompt.text)
        inputs.append(
            PromptInput(
                torch.tensor(ids, dtype=torch.long, device=device),
                prompt=prompt.text,
                token_strings=[tokenizer.decode([i]) for i in ids],
                meta=prompt.meta(),
            )
        )
    graphs = attribute_many(
        loaded.model, loaded.adapter, transcoders, inputs, config=config, model_name=loaded.name
    )
    for prompt, graph in zip(prompts, graphs, strict=True):
        graph.logit_token_strs = [tokenizer.decode([i]) for i in graph.logit_tokens.tolist()]
        top = graph.logit_token_strs[0] if graph.logit_token_strs else ""
        graph.prompt_meta.update({"top_token": top, "correct": is_correct(top, prompt.answer)})
        if config.check_faithfulness:
            check = measure_faithfulness(loaded.model, loaded.adapter, transcoders, graph)
            graph.params["faithfulness"] = check.summary()
    return graphs


def attribute_prompt(
    loaded: LoadedModel, transcoders: TranscoderSet, prompt: Prompt, *, config: AttributionConfig
) -> AttributionGraph:
    """`attribute_prompts` for one prompt."""
    return attribute_prompts(loaded, transcoders, [prompt], config=config)[0]


def save_graph(
    graph: AttributionGraph,
    path: Path,
    *,
    prompt: Prompt,
    progress: Progress,
    summary: RunSummary,
    files: GraphFiles,
) -> Path:
    """Save one prompt's graph to `path` as `files` says and count it in `summary`; its memory note (if
    any) goes on the progress line."""
    note = memory_note(graph)
    if note is not None:
        progress.note(f"{prompt.id}: {note}")
    path = graph.save(path, keep_full=files.keep_full)
    if files.neuronpedia:
        write_neuronpedia(graph, path.with_suffix(".json"), slug=prompt.id)
    summary.written += 1
    return path


def iter_attribute(
    loaded: LoadedModel,
    transcoders: TranscoderSet,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    config: AttributionConfig | None = None,
    files: GraphFiles = GRAPH_FILE_ONLY,
    show_progress: bool = True,
    summary: RunSummary | None = None,
) -> Iterator[tuple[Prompt, Path]]:
    """Attribute every prompt that has no graph file yet; yield (prompt, graph file) as each is written.

    files: what is written per graph (default: the graph file alone).
    """
    config = config or AttributionConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else RunSummary()
    start = time.perf_counter()
    with Progress("attribute", total=len(prompts), unit="graphs", enabled=show_progress) as progress:
        pending: list[tuple[Prompt, Path]] = []

        def done(prompt: Prompt, path: Path) -> tuple[Prompt, Path]:
            summary.seconds = time.perf_counter() - start
            progress.advance()
            return prompt, path

        def run_pending() -> Iterator[tuple[Prompt, Path]]:
            graphs = attribute_prompts(loaded, transcoders, [prompt for prompt, _ in pending], config=config)
            for (prompt, path), graph in zip(pending, graphs, strict=True):
                save_graph(graph, path, prompt=prompt, progress=progress, summary=summary, files=files)
                yield done(prompt, path)
            pending.clear()

        for prompt in prompts:
            path = graph_path(out_dir, prompt)
            if path.exists():
                summary.skipped += 1
                progress.skip()
                yield prompt, path
                continue
            pending.append((prompt, path))
            if len(pending) == _PROMPTS_PER_CALL:
                yield from run_pending()
        yield from run_pending()
