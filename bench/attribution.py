"""Attribution speed, memory and exactness per case, with circuit-tracer side by side (`--compare`).

Each case (a model, a prompt length, a feature-node budget) runs in its own subprocess, so its peak
memory (max RSS on CPU, `torch.cuda.max_memory_allocated` on GPU) is its own. Both tools load the same
model folder and the same transcoder folder (written once by `bench_models.prepare`) and attribute the
same token ids (BOS first): windows of a fixed English paragraph cut to exactly N tokens. The first
graph of a case is a warm-up, and the one whose edges are compared; the next `--repeats` are timed, and
s/graph is their median (`timing`).

Cases (`bench_models` describes the models; transcoders fire ~32-100 features per token per layer):
- tiny-llama and tiny-gemma2 (2 layers, d_model 64) at 16/32/64/128 tokens, every feature visited
  (tiny-gemma2 at 128 tokens: 512 feature nodes);
- smollm2 (SmolLM2-135M, 4,096 calibrated features per layer) at 16 tokens with 512 and 4,096 feature
  nodes, and a 1,024-token prompt (`smollm2-long`, by name only on a CPU);
- gemma2-2b-shape at 64 and 256 tokens with 2,048 feature nodes and at 2,048 tokens with 8,192 (GPU only).

Columns: circuitbase and circuit-tracer s/graph, their ratio (circuit-tracer / circuitbase), peak memory
of each, the max edge difference on the nodes both selected (features by (layer, position, feature),
errors and tokens by position, logits by token; relative to the largest such edge of circuit-tracer's
graph), achieved TFLOP/s against the card's dense peak on a GPU (`flops`); with `--dtype bfloat16`,
circuitbase again with bfloat16 weights and transcoders, and its max edge error against its float32 graph.
`file KB` / `--keep-full KB`: bytes of the warm-up graph's file as written by default (the pruned graph)
and with the unpruned remainder (`--keep-full`).

    python bench/attribution.py --quick                     # a small CPU subset, circuitbase only
    python bench/attribution.py --compare --dtype bfloat16 --json rows.json
    python bench/attribution.py --compare --device cuda --cases gemma2-2b-shape
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CIRCUIT_TRACER_CASE = Path(__file__).resolve().parent / "circuit_tracer_case.py"
SIDE_VENV = (
    Path(os.environ.get("CIRCUITBASE_HOME", "~/.cache/circuitbase")).expanduser() / "circuit-tracer-venv"
)


@dataclass(frozen=True)
class Case:
    """One bench row: `family` (bench_models.FAMILIES) at `length` tokens, `max_feature_nodes` (None =
    every active feature) and `batch_size` targets per backward pass for both tools."""

    family: str
    length: int
    max_feature_nodes: int | None
    batch_size: int = 64
    quick: bool = False  # in the --quick subset
    by_name_on_cpu: bool = False  # too slow for a 2-core CPU unless named with --cases

    @property
    def name(self) -> str:
        nodes = "all" if self.max_feature_nodes is None else str(self.max_feature_nodes)
        return f"{self.family}-{self.length}-{nodes}"


CASES = (
    Case("tiny-llama", 16, None, quick=True),
    Case("tiny-llama", 32, None, quick=True),
    Case("tiny-llama", 64, None),
    Case("tiny-llama", 128, None),
    Case("tiny-gemma2", 16, None, quick=True),
    Case("tiny-gemma2", 32, None),
    Case("tiny-gemma2", 64, None),
    Case("tiny-gemma2", 128, 512),
    Case("smollm2", 16, 512, quick=True),
    Case("smollm2", 16, 4096),
    Case("smollm2", 1024, 64, batch_size=16, by_name_on_cpu=True),
    Case("gemma2-2b-shape", 64, 2048, batch_size=256),
    Case("gemma2-2b-shape", 256, 2048),
    Case("gemma2-2b-shape", 2048, 8192),
)


# -- one case in this process ---------------------------------------------------------------------------


def _prompts(tokenizer, length: int, count: int) -> list:
    """`count` windows of the paragraph, each exactly `length` ids with the start token first."""
    import torch
    from bench_models import PARAGRAPH

    from circuitbase.engine.prompts import start_token_id

    ids = tokenizer(PARAGRAPH * (2 + length // 40), add_special_tokens=False).input_ids
    start = start_token_id(tokenizer)
    return [torch.tensor([start, *ids[offset:][: length - 1]]) for offset in range(count)]


def _graph_record(graph) -> dict:
    """The graph in the plain form `edge_diff` reads in either interpreter."""
    adjacency = graph.adjacency.coalesce()
    return {
        "features": graph.active_features[graph.selected_features],
        "logit_tokens": graph.logit_tokens,
        "n_layers": graph.n_layers,
        "input_ids": list(graph.input_ids),
        "indices": adjacency.indices(),
        "values": adjacency.values(),
    }


def _file_bytes(graph) -> dict:
    """Bytes of the graph's file as written by default (pruned graph only) and with --keep-full."""
    with tempfile.TemporaryDirectory() as folder:
        return {
            "file_bytes": graph.save(Path(folder) / "g.safetensors").stat().st_size,
            "keep_full_bytes": graph.save(Path(folder) / "f.safetensors", keep_full=True).stat().st_size,
        }


def run_case(spec: dict) -> dict:
    """Time circuitbase on one case (spec written by `main`); returns the measured row."""
    import torch
    from edge_diff import edges_of, max_edge_difference
    from flops import model_dims
    from timing import median_seconds, timed

    from circuitbase.engine.attribution import AttributionConfig, attribute
    from circuitbase.engine.loading import load_model_and_transcoders

    device = spec["device"]
    loaded, transcoders, _ = load_model_and_transcoders(
        spec["model_dir"], spec["transcoder_dir"], device=device, precision=spec["precision"]
    )
    ids_file = Path(spec["ids"])
    if not ids_file.exists():
        torch.save(_prompts(loaded.tokenizer, spec["length"], spec["repeats"] + 1), ids_file)
    prompts = torch.load(ids_file)
    config = AttributionConfig(max_feature_nodes=spec["max_feature_nodes"], batch_size=spec["batch_size"])

    def one(ids):
        return attribute(loaded.model, loaded.adapter, transcoders, ids.to(device), config=config)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, graph = timed(one, prompts[0], device=device)
    seconds = median_seconds(one, prompts[1:], device=device) or first
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    record = _graph_record(graph)
    row = _file_bytes(graph) | {
        "s_per_graph": seconds,
        "first_graph_s": first,
        "peak_mib": peak,
        "backward_passes": graph.params["backward_passes"],
        "effective_batch_size": graph.params["effective_batch_size"],
        "capped_by_memory": graph.params["feature_nodes_capped_by_memory"],
        "candidate_features": graph.params["candidate_features"],
        "active_features": int(graph.active_features.shape[0]),
        "feature_nodes": int(graph.selected_features.numel()),
        "logits": int(graph.logit_tokens.numel()),
        "n_layers": graph.n_layers,
        "dims": model_dims(loaded.model.config),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    if spec.get("graph_out"):
        torch.save(record, spec["graph_out"])
    if spec.get("compare_to"):
        reference = edges_of(torch.load(spec["compare_to"]))
        difference = max_edge_difference(reference, edges_of(record))
        row |= {f"edge_{k}": v for k, v in difference.items()}
    return row


# -- the driver -----------------------------------------------------------------------------------------


def _subprocess(command: list[str], *, timeout: float) -> dict | str:
    """The JSON row a case prints, or a short reason it gave none."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        if any("out of memory" in line.lower() for line in lines[-5:]):
            return "out of memory"
        return f"failed: {lines[-1] if lines else proc.returncode}"[:100]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _selected(args: argparse.Namespace) -> list[Case]:
    from bench_models import FAMILIES

    if args.cases:
        chosen = [c for c in CASES if c.name in args.cases or c.family in args.cases]
        unknown = set(args.cases) - {c.name for c in CASES} - {c.family for c in CASES}
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in CASES]}")
        return chosen
    on_gpu = args.device == "cuda"
    return [
        c
        for c in CASES
        if (c.quick or not args.quick) and (on_gpu or not (c.by_name_on_cpu or FAMILIES[c.family].gpu_only))
    ]


def _case_row(case: Case, args: argparse.Namespace, work: Path, files: dict) -> dict:
    """Run circuitbase (float32), circuit-tracer and circuitbase in --dtype for one case."""
    folder = work / "cases" / case.name
    folder.mkdir(parents=True, exist_ok=True)
    ids, graph = folder / "ids.pt", folder / "circuitbase-float32.pt"
    ids.unlink(missing_ok=True)
    spec = {
        **files, "ids": str(ids), "length": case.length, "repeats": args.repeats, "device": args.device,
        "max_feature_nodes": case.max_feature_nodes, "batch_size": case.batch_size,
    }  # fmt: skip
    row: dict = {"case": case.name, **asdict(case)}

    def run(name: str, python: str, script: str, extra: dict) -> dict | str:
        path = folder / f"{name}.json"
        path.write_text(json.dumps(spec | extra))
        return _subprocess([python, script, "--spec", str(path)], timeout=args.max_seconds_per_case)

    row["circuitbase"] = run(
        "circuitbase", sys.executable, __file__, {"precision": "float32", "graph_out": str(graph)}
    )
    if not isinstance(row["circuitbase"], dict):
        return row
    if args.compare:
        row["circuit_tracer"] = run(
            "circuit-tracer", args.circuit_tracer_python, str(CIRCUIT_TRACER_CASE), {"compare_to": str(graph)}
        )
    if args.dtype != "float32":
        row[args.dtype] = run(
            args.dtype, sys.executable, __file__, {"precision": args.dtype, "compare_to": str(graph)}
        )
    return row


def _tflops(row: dict, tool: str, dtype: str) -> str:
    """'achieved (share of peak)' for one tool's run of a row, 'n/a' on a CPU."""
    from flops import graph_flops, peak_tflops

    ours, run = row["circuitbase"], row.get(tool)
    if not isinstance(run, dict) or ours["device_name"] == "cpu":
        return "n/a"
    if tool == "circuit_tracer":
        copies = row["batch_size"]
        passes = math.ceil(run["logits"] / copies) + math.ceil(run["feature_nodes"] / copies)
    else:
        copies, passes = run["effective_batch_size"], run["backward_passes"]
    flops = graph_flops(
        ours["dims"], tokens=row["length"], copies=copies, passes=passes,
        active_features=ours["active_features"], with_qk=tool == "circuit_tracer",
    )  # fmt: skip
    achieved = flops / run["s_per_graph"] / 1e12
    peak = peak_tflops(ours["device_name"], dtype)
    return f"{achieved:.1f}" + (f" ({achieved / peak:.0%})" if peak else "")


def _cell(run: dict | str | None, key: str, fmt: str, *, reason: bool = False) -> str:
    """`run[key]` formatted; for a run that failed, its reason (where `reason`) or '-'."""
    if not isinstance(run, dict):
        return run if reason and run else "-"
    return format(run[key], fmt) if run.get(key) is not None else "-"


def _table(rows: list[dict], args: argparse.Namespace) -> list[str]:
    columns = [
        "case", "tokens", "feature nodes", "act/tok/layer", "circuitbase s", "circuit-tracer s", "ratio",
        "cb peak MiB", "ct peak MiB", "edge diff", "cb TFLOP/s", "ct TFLOP/s", "file KB", "--keep-full KB",
    ]  # fmt: skip
    if args.dtype != "float32":
        columns += [f"{args.dtype} s", f"{args.dtype} err"]
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    for row in rows:
        ours, theirs, low = row["circuitbase"], row.get("circuit_tracer"), row.get(args.dtype)
        if not isinstance(ours, dict):
            lines.append(" | ".join([row["case"], str(row["length"]), ours, *["-"] * (len(columns) - 3)]))
            continue
        nodes = (
            f"all {ours['feature_nodes']:,}"
            if row["max_feature_nodes"] is None
            else f"{ours['feature_nodes']:,} of {ours['active_features']:,}"
        )
        if ours["capped_by_memory"]:
            nodes += " (capped)"
        per_token = ours["active_features"] / (ours["n_layers"] * max(1, row["length"] - 1))
        ratio = f"{theirs['s_per_graph'] / ours['s_per_graph']:.2f}x" if isinstance(theirs, dict) else "-"
        cells = [
            row["case"], str(row["length"]), nodes, f"{per_token:.0f}", _cell(ours, "s_per_graph", ".3f"),
            _cell(theirs, "s_per_graph", ".3f", reason=True), ratio, _cell(ours, "peak_mib", ".0f"),
            _cell(theirs, "peak_mib", ".0f"), _cell(theirs, "edge_max_rel", ".1e"),
            _tflops(row, "circuitbase", "float32"), _tflops(row, "circuit_tracer", "float32"),
            f"{ours['file_bytes'] / 1e3:,.0f}", f"{ours['keep_full_bytes'] / 1e3:,.0f}",
        ]  # fmt: skip
        if args.dtype != "float32":
            cells += [_cell(low, "s_per_graph", ".3f", reason=True), _cell(low, "edge_max_rel", ".1e")]
        lines.append(" | ".join(cells))
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; no plot written to {path}")
        return
    done = [r for r in rows if isinstance(r["circuitbase"], dict)]
    names = [r["case"] for r in done]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.8), 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [r["circuitbase"]["s_per_graph"] for r in done], 0.4, label="circuitbase")
    ct = [
        r["circuit_tracer"]["s_per_graph"] if isinstance(r.get("circuit_tracer"), dict) else 0 for r in done
    ]
    ax.bar([i + 0.2 for i in x], ct, 0.4, label="circuit-tracer")
    ax.set_xticks(list(x), names, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("s / graph")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", help="case or family names (default: all this device runs)")
    parser.add_argument("--quick", action="store_true", help="a small subset (4 cases)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2, help="timed graphs per case after the warm-up")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="also run circuitbase in this precision and compare its edges to float32",
    )
    parser.add_argument("--compare", action="store_true", help="time circuit-tracer on the same cases")
    parser.add_argument(
        "--circuit-tracer-python",
        default=os.environ.get("CIRCUIT_TRACER_PYTHON", str(SIDE_VENV / "bin" / "python")),
        help="an interpreter that imports circuit_tracer (tests/fixtures/parity/make_side_env.sh builds one)",
    )
    parser.add_argument("--max-seconds-per-case", type=float, default=900)
    parser.add_argument("--work-dir", type=Path, help="keep the prepared models here (default: temporary)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--plot", type=Path, help="bar chart of s/graph per case (needs matplotlib)")
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spec:
        print(json.dumps(run_case(json.loads(args.spec.read_text()))))
        return
    if args.prepare:
        from bench_models import prepare

        print(json.dumps(prepare(args.prepare, work_dir=args.work_dir, device=args.device)))
        return
    if args.compare and not Path(args.circuit_tracer_python).exists():
        raise SystemExit(f"no circuit-tracer interpreter at {args.circuit_tracer_python}")

    cases = _selected(args)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work_dir or Path(scratch)
        rows, prepared = [], {}
        for case in cases:
            if case.family not in prepared:
                command = [sys.executable, __file__, "--prepare", case.family, "--work-dir", str(work),
                           "--device", args.device]  # fmt: skip
                prepared[case.family] = _subprocess(command, timeout=args.max_seconds_per_case)
            files = prepared[case.family]
            row = (
                _case_row(case, args, work, files)
                if isinstance(files, dict)
                else {"case": case.name, **asdict(case), "circuitbase": f"prepare {files}"}
            )
            rows.append(row)
            print(f"{case.name}: done", file=sys.stderr, flush=True)
    print(
        f"\ndevice: {args.device}; ratio = circuit-tracer s / circuitbase s; edge diff relative to the "
        "largest edge on the shared nodes; act/tok/layer = active features per token per layer"
    )
    print("\n".join(_table(rows, args)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        _plot(rows, args.plot)


if __name__ == "__main__":
    main()
