"""Attribution throughput on Ray actors: graphs/s with 1 and 2 CPU actors (and one actor per GPU), toy model.

Each row starts a `WorkerPool` on the Ray cluster (`--ray`, default: a local Ray with every core of this
machine), lets every actor attribute two prompts to warm up, then times `--prompts` toy prompts streamed
through it (`WorkerPool.attribute`, a bounded number in flight per actor; graphs come back to this
process but are not saved or loaded). The in-process row is the same attribution without Ray, one
torch thread, for the overhead. Speed-up is graphs/s over the 1-actor row of the same device; with
actors of one core each, 2 actors on a 2-core machine can reach at most 2x, less what this process
and the machine's other work take.

    python bench/scale.py                  # 1 and 2 CPU actors of 1 core each (+ GPUs when present)
    python bench/scale.py --prompts 200 --ray auto
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.ray_pool import ClusterSpec, WorkerPool, connect, require_ray
from circuitbase.engine.ray_worker import AttributionWorker
from circuitbase.engine.toy import shipped_paths, toy_prompts

WARMUP_PER_ACTOR = 2


def study(n: int) -> list[Prompt]:
    """`n` toy prompts (the demo's task mix), as prompt records."""
    return [
        Prompt(text=p["prompt"], answer=p["answer"], tags=tuple(p["tags"]), id=f"scale-{i}")
        for i, p in enumerate(toy_prompts(n, seed=0))
    ]


def timed(run: Callable[[], object], count: int) -> float:
    """Graphs/s of `run()`, which attributes `count` prompts."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def pool_rate(spec: ClusterSpec, prompts: list[Prompt], *, config: AttributionConfig, device: str) -> float:
    model, transcoders = (str(p) for p in shipped_paths())
    with WorkerPool.start(spec, model=model, transcoders=transcoders, device=device) as pool:

        def run(batch: list[Prompt]) -> None:
            for prompt, result in pool.attribute(batch, config=config):
                if isinstance(result, BaseException):
                    raise RuntimeError(f"prompt {prompt.id} failed") from result

        run(prompts[: WARMUP_PER_ACTOR * pool.size])
        return timed(lambda: run(prompts), len(prompts))


def in_process_rate(prompts: list[Prompt], *, config: AttributionConfig) -> float:
    model, transcoders = (str(p) for p in shipped_paths())
    worker = AttributionWorker()
    worker.load(model=model, transcoders=transcoders, device="cpu", precision="float32", threads=1)
    for prompt in prompts[:WARMUP_PER_ACTOR]:
        worker.attribute(prompt, config=config)
    return timed(lambda: [worker.attribute(p, config=config) for p in prompts], len(prompts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=96, help="timed prompts per row (default 96)")
    parser.add_argument("--ray", default="local", help="Ray address (default: local, every core here)")
    args = parser.parse_args()
    ray = require_ray()
    if args.ray == "local":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        connect(args.ray)
    config = AttributionConfig()
    prompts = study(args.prompts)
    cores = ray.cluster_resources().get("CPU", 0)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    print(
        f"toy model, {args.prompts} prompts a row; cluster: {cores:g} CPUs, {gpus} GPUs; "
        f"torch {torch.__version__}"
    )
    rows: list[tuple[str, int, str, float, float | None]] = []
    base = in_process_rate(prompts, config=config)
    rows.append(("in process (no Ray)", 1, "1 core", base, None))
    one = pool_rate(ClusterSpec(cpu_actors=1), prompts, config=config, device="cpu")
    rows.append(("CPU actors", 1, "1 core", one, 1.0))
    two = pool_rate(ClusterSpec(cpu_actors=2), prompts, config=config, device="cpu")
    rows.append(("CPU actors", 2, "1 core", two, two / one))
    if gpus:
        first = pool_rate(ClusterSpec(gpu_actors=1), prompts, config=config, device="cuda")
        rows.append(("GPU actors", 1, "1 GPU", first, 1.0))
        if gpus > 1:
            every = pool_rate(ClusterSpec(), prompts, config=config, device="cuda")
            rows.append(("GPU actors", gpus, "1 GPU", every, every / first))
    print(f"\n{'setup':<20} {'actors':>6} {'each':>7} {'graphs/s':>9} {'speed-up':>9}")
    for setup, actors, each, rate, speedup in rows:
        ratio = "" if speedup is None else f"{speedup:.2f}x"
        print(f"{setup:<20} {actors:>6} {each:>7} {rate:>9.2f} {ratio:>9}")
    ray.shutdown()


if __name__ == "__main__":
    main()
