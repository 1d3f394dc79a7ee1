"""Attribution speed and memory: seconds per graph, backward passes, peak memory, graph sizes.

Each (model, prompt length) case runs in its own subprocess so its peak memory (max RSS on CPU,
`torch.cuda.max_memory_allocated` on GPU) is its own. Cases:

- `tiny-llama`: the 2-layer, d_model 64 fixture model with its public-format JumpReLU+skip transcoders;
  with `--compare`, circuit-tracer (if importable in the interpreter given by `--circuit-tracer-python`)
  attributes the same prompts with the same files, and the table shows the speed ratio.
- `smollm2`: SmolLM2-135M (offline GGUF) with random JumpReLU per-layer transcoders of `--d-transcoder`
  features (trained ones replace them once they exist; the work per graph depends on the number of
  active features, which `--max-feature-nodes` caps).
- `gemma2-2b-shape`: a randomly initialised Gemma-2 2B-shaped model with 16K-feature transcoders (GPU only).

Prompts are windows of a fixed English paragraph cut to exactly N tokens. Throughput for a batch of
prompts is measured as graphs/s over `--batch` prompts after one warm-up graph.

    python bench/attribution.py                       # CPU defaults
    python bench/attribution.py --models smollm2 --lengths 16 64 256 1024 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PARAGRAPH = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange "
    "grain, salt and cloth. Over the centuries the town grew into a busy port, and its people built "
    "bridges, markets, churches and schools. Today the old quarter keeps its narrow streets, while new "
    "districts stretch along the water with parks, offices and homes for families who arrive every year. "
)
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "circuit-tracer-format"


def _token_ids(tokenizer, length: int, offset: int):
    import torch

    ids = tokenizer(PARAGRAPH * (2 + length // 40), add_special_tokens=False).input_ids
    body = ids[offset % 20 :][: length - 1]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]
    return torch.tensor([bos, *body])


def _load(name: str, device: str, d_transcoder: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitbase.engine.adapters import adapter_for
    from circuitbase.engine.models import load_model
    from circuitbase.engine.transcoders import TranscoderSet

    if name == "tiny-llama":
        model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama").to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tiny-llama")
        transcoders = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip", device=device)
        return model, adapter_for(model), tokenizer, transcoders
    if name == "smollm2":
        loaded = load_model("smollm2", device=device)
        adapter = loaded.adapter
        transcoders = TranscoderSet.random(
            n_layers=adapter.n_layers, d_model=adapter.d_model, d_transcoder=d_transcoder, skip=True, seed=0
        ).to(device)
        return loaded.model, adapter, loaded.tokenizer, transcoders
    if name == "gemma2-2b-shape":
        from transformers import Gemma2Config

        config = Gemma2Config(
            vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).eval()
        adapter = adapter_for(model)
        transcoders = TranscoderSet.random(
            n_layers=26, d_model=2304, d_transcoder=16384, skip=True, seed=0
        ).to(device)
        tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tiny-llama")  # token ids only
        return model, adapter, tokenizer, transcoders
    raise SystemExit(f"unknown model {name!r}")


def run_case(args: argparse.Namespace) -> dict:
    """One (model, length) case in this process; returns the measured row."""
    import torch

    from circuitbase.engine.attribution import AttributionConfig, attribute

    torch.manual_seed(0)
    model, adapter, tokenizer, transcoders = _load(args.model, args.device, args.d_transcoder)
    config = AttributionConfig(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size)
    prompts = [_token_ids(tokenizer, args.length, offset).to(args.device) for offset in range(args.batch + 1)]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    graph = attribute(model, adapter, transcoders, prompts[0], config=config)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for ids in prompts[1:]:
        attribute(model, adapter, transcoders, ids, config=config)
    batch_seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "engine": "circuitbase",
        "model": args.model,
        "length": args.length,
        "s_per_graph": batch_seconds / max(args.batch, 1) if args.batch else first,
        "first_graph_s": first,
        "backward_passes": graph.params["backward_passes"],
        "peak_mib": peak,
        "active_features": int(graph.active_features.shape[0]),
        "nodes": graph.n_nodes,
        "edges": int(graph.adjacency._nnz()),
        "nodes_pruned": int(graph.node_mask.sum()),
        "edges_pruned": int(graph.edge_mask.sum()),
        "graphs_per_s": args.batch / batch_seconds if args.batch else 1 / first,
    }


CIRCUIT_TRACER_CASE = r"""
import json, resource, sys, time, torch
from circuit_tracer import ReplacementModel, attribute
from transformers import AutoTokenizer
fixtures, length, batch, paragraph = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
settings = dict(max_feature_nodes=int(sys.argv[5]), batch_size=int(sys.argv[6]), verbose=False)
model = ReplacementModel.from_pretrained(fixtures + "/tiny-llama", fixtures + "/plt-jumprelu-skip",
                                         backend="nnsight", device=torch.device("cpu"), dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(fixtures + "/tiny-llama")
def ids(offset):
    body = tok(paragraph * (2 + length // 40), add_special_tokens=False).input_ids[offset % 20:][: length - 1]
    return torch.tensor([tok.bos_token_id, *body])
start = time.perf_counter(); attribute(ids(0), model, **settings); first = time.perf_counter() - start
start = time.perf_counter()
for offset in range(1, batch + 1):
    attribute(ids(offset), model, **settings)
seconds = time.perf_counter() - start
print(json.dumps({"s_per_graph": seconds / batch if batch else first, "first_graph_s": first,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_circuit_tracer(
    python: str, length: int, batch: int, max_feature_nodes: int, batch_size: int
) -> dict | None:
    proc = subprocess.run(
        [python, "-c", CIRCUIT_TRACER_CASE, str(FIXTURES), str(length), str(batch), PARAGRAPH,
         str(max_feature_nodes), str(batch_size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        print(f"circuit-tracer case failed (length {length}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny-llama", "smollm2"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[16, 64, 256, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="prompts timed for graphs/s")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--d-transcoder", type=int, default=2048)
    parser.add_argument("--max-seconds-per-case", type=float, default=300)
    parser.add_argument("--compare", action="store_true", help="also time circuit-tracer on tiny-llama")
    parser.add_argument("--circuit-tracer-python", default=os.environ.get("CIRCUIT_TRACER_PYTHON", ""))
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    rows = []
    for model in args.models:
        for length in args.lengths:
            batch = args.batch if length <= 256 else max(1, args.batch // 8)
            command = [
                sys.executable, __file__, "--case", "--model", model, "--length", str(length),
                "--device", args.device, "--batch", str(batch), "--batch-size", str(args.batch_size),
                "--max-feature-nodes", str(args.max_feature_nodes), "--d-transcoder", str(args.d_transcoder),
            ]  # fmt: skip
            try:
                proc = subprocess.run(
                    command, capture_output=True, text=True, timeout=args.max_seconds_per_case, check=False
                )
            except subprocess.TimeoutExpired:
                print(f"{model} @ {length}: over {args.max_seconds_per_case:.0f} s, skipped")
                continue
            if proc.returncode != 0:
                print(f"{model} @ {length} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            if args.compare and model == "tiny-llama" and args.circuit_tracer_python:
                reference = run_circuit_tracer(
                    args.circuit_tracer_python, length, batch, args.max_feature_nodes, args.batch_size
                )
                if reference:
                    row["circuit_tracer_s"] = reference["s_per_graph"]
                    row["speedup_vs_circuit_tracer"] = reference["s_per_graph"] / row["s_per_graph"]
    header = (
        f"{'model':<16}{'len':>6}{'s/graph':>10}{'bwd':>6}{'peak MiB':>10}{'active':>8}{'nodes':>8}"
        f"{'edges':>10}{'nodes*':>8}{'edges*':>8}{'graphs/s':>10}{'vs c-t':>8}"
    )
    print(f"\ndevice: {args.device}   (* = after pruning; vs c-t = circuit-tracer time / ours)")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['speedup_vs_circuit_tracer']:.2f}x" if "speedup_vs_circuit_tracer" in r else "-"
        print(
            f"{r['model']:<16}{r['length']:>6}{r['s_per_graph']:>10.3f}{r['backward_passes']:>6}"
            f"{r['peak_mib']:>10.0f}{r['active_features']:>8}{r['nodes']:>8}{r['edges']:>10}"
            f"{r['nodes_pruned']:>8}{r['edges_pruned']:>8}{r['graphs_per_s']:>10.2f}{ratio:>8}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
