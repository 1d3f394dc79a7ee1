"""One bench case under circuit-tracer 0.5.0 (run by circuit-tracer's interpreter, not the project's).

    python circuit_tracer_case.py --spec SPEC.json

SPEC names the model folder and transcoder folder the circuitbase case used, the token ids file (a list of
1-D tensors, BOS first; the first is the warm-up graph and the rest are timed), `max_feature_nodes`
(null = all), `batch_size`, `device`, and `compare_to`: the circuitbase graph record of the first prompt.
Prints one JSON line: s/graph, peak memory (read before the comparison), and the max edge difference
with circuit-tracer's graph as the reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_diff import edges_of, max_edge_difference
from timing import median_seconds, timed


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from circuit_tracer import ReplacementModel, attribute

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, required=True)
    spec = json.loads(parser.parse_args().spec.read_text())
    device = spec["device"]
    model = ReplacementModel.from_pretrained(
        spec["model_dir"], spec["transcoder_dir"], backend="nnsight",
        device=torch.device(device), dtype=torch.float32,
    )  # fmt: skip
    prompts = torch.load(spec["ids"])
    settings = {
        "max_feature_nodes": spec["max_feature_nodes"],
        "batch_size": spec["batch_size"],
        "verbose": False,
    }
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one(ids: torch.Tensor):
        return attribute(ids.to(device), model, **settings)

    first, graph = timed(one, prompts[0], device=device)
    seconds = median_seconds(one, prompts[1:], device=device) or first
    peak = _peak_mib(device)
    ours = torch.load(spec["compare_to"])
    n_logits = len(graph.logit_targets)
    theirs = {
        "features": graph.active_features[graph.selected_features].cpu(),
        "logit_tokens": torch.tensor([t.vocab_idx for t in graph.logit_targets]),
        "n_layers": int(graph.cfg.n_layers),
        "input_ids": graph.input_tokens.tolist(),
        "adjacency": graph.adjacency_matrix.cpu(),
    }
    same_ids = list(ours["input_ids"]) == theirs["input_ids"]
    difference = max_edge_difference(edges_of(theirs), edges_of(ours)) if same_ids else {}
    print(
        json.dumps(
            {
                "s_per_graph": seconds,
                "first_graph_s": first,
                "peak_mib": peak,
                "active_features": int(graph.active_features.shape[0]),
                "feature_nodes": int(graph.selected_features.numel()),
                "logits": n_logits,
                "same_ids": same_ids,
                **{f"edge_{k}": v for k, v in difference.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
