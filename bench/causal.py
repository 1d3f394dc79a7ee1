"""Cost of the causal-support step's ablations (`engine.ablation.ablation_drops`) per graph and occurrence.

For each case and each of `--prompts` prompts, `--occurrences` groups of `--features` active features
each (drawn with a fixed seed from the clean run's active features) are ablated on the
real model: one recorded forward of the prompt, the clean run, then one forward per group, as the causal
step (`analysis/causal.py`) does for a graph and its subcircuits' occurrences. The table gives seconds per
graph (all of it), per occurrence (one ablated forward) and for the rest (recorded and clean forwards).

Cases: `toy` (the shipped toy model and its transcoders, two-hop prompts; the toy study averages 8.7
occurrences of 1 to 5 features per graph) and `smollm2` (SmolLM2-135M-Instruct with a random set of its
default set's shape: per-layer TopK with skip, 2,048 features, k = 16; `engine.study_prompts`).

    python bench/causal.py
    python bench/causal.py --cases toy --threads 1 --prompts 20
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from rich.console import Console
from rich.table import Table

from circuitbase.engine import toy
from circuitbase.engine.ablation import ablation_drops
from circuitbase.engine.loading import load_model_and_transcoders
from circuitbase.engine.models import load_model, resolve_device
from circuitbase.engine.prompts import prompt_token_ids
from circuitbase.engine.replacement import build_replacement_state, hooks_of
from circuitbase.engine.study_prompts import study_prompts
from circuitbase.engine.transcoders import TranscoderSet

CASES = ("toy", "smollm2")


def load_case(case: str, device: str):
    """(loaded model, transcoder set, prompt texts) of a case."""
    if case == "toy":
        model_dir, transcoder_dir = toy.shipped_paths()
        loaded, transcoders, _ = load_model_and_transcoders(
            str(model_dir), str(transcoder_dir), device=device
        )
        texts = [e["prompt"] for e in toy.fixed_examples() if e["tags"][0] == "two_hop"]
        return loaded, transcoders, texts
    loaded = load_model("smollm2", device=resolve_device(device))
    adapter = loaded.adapter
    transcoders = TranscoderSet.random(
        n_layers=adapter.n_layers, d_model=adapter.d_model, d_transcoder=2048, activation="topk", k=16,
        skip=True, device=resolve_device(device),
    )  # fmt: skip
    loaded.adapter = adapter.with_hooks(hooks_of(transcoders))
    return loaded, transcoders, [p["prompt"] for p in study_prompts()]


def groups_of(loaded, transcoders, ids: list[int], *, occurrences: int, features: int, rng: random.Random):
    """`occurrences` groups of `features` (layer, position, feature) active in the clean run."""
    device = loaded.adapter.unembedding().device
    state = build_replacement_state(
        loaded.model, loaded.adapter, transcoders, torch.tensor(ids, dtype=torch.long, device=device)
    )
    active = [
        (layer, position, feature)
        for layer, acts in enumerate(state.activations)
        for position, feature in torch.nonzero(acts).tolist()  # a start token's features are zeroed
    ]
    return [rng.sample(active, features) for _ in range(occurrences)]


def run_case(case: str, args: argparse.Namespace) -> dict[str, float | str]:
    loaded, transcoders, texts = load_case(case, args.device)
    rng = random.Random(0)
    graph_s, rest_s, occurrences, tokens = 0.0, 0.0, 0, 0
    for text in rng.sample(texts, min(args.prompts, len(texts))):
        ids = prompt_token_ids(loaded.tokenizer, text)
        groups = groups_of(
            loaded, transcoders, ids, occurrences=args.occurrences, features=args.features, rng=rng
        )
        started = time.perf_counter()
        ablation_drops(loaded.model, loaded.adapter, transcoders, ids, [])
        rest = time.perf_counter() - started
        started = time.perf_counter()
        ablation_drops(loaded.model, loaded.adapter, transcoders, ids, groups)
        graph_s += time.perf_counter() - started
        rest_s += rest
        occurrences += len(groups)
        tokens += len(ids)
    n = min(args.prompts, len(texts))
    return {
        "case": case,
        "graphs": n,
        "tokens": tokens / n,
        "s / graph": graph_s / n,
        "s / occurrence": (graph_s - rest_s) / occurrences,
        "s recorded + clean": rest_s / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--prompts", type=int, default=4, help="graphs per case (default 4)")
    parser.add_argument("--occurrences", type=int, default=9, help="groups ablated per graph (default 9)")
    parser.add_argument("--features", type=int, default=3, help="features per group (default 3)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_case(case, args) for case in args.cases]
    table = Table(
        title=f"causal-step ablations: {args.occurrences} occurrences of {args.features} features per graph, "
        f"device {args.device}, {torch.get_num_threads()} CPU threads"
    )
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
