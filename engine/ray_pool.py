"""Attribution on a Ray cluster: connect, start long-lived worker actors, stream prompts through them.

1. `connect(address)`: 'auto' (the cluster `ray start` runs on this machine, or RAY_ADDRESS), 'local'
   (a Ray started inside this process) or HOST:PORT / ray://HOST:PORT, checked with a TCP connect
   first (Ray itself keeps retrying an unreachable address for minutes). A Ray already initialised in
   this process is used as it is.
2. `WorkerPool.start`: checks that the cluster has the GPUs (or CPUs) the actors ask for, starts one
   `ray_worker.AttributionWorker` actor per GPU (or per share of a GPU, or on CPU cores) and waits until
   every actor has loaded the model and transcoders. Each failure is one `ClusterError` line, raised
   before the caller writes anything.
3. `WorkerPool.attribute`: keeps at most `in_flight` prompts queued on each actor and yields graphs in
   completion order. An actor that dies (killed, out of memory, node lost) is dropped and its prompts
   go back to the front of the queue for the others; a prompt that raised in the worker, or that was
   in flight on `max_attempts` actors that died, is yielded with its error. With every actor gone the
   stream stops with a ClusterError.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.ray_worker import AttributionWorker, WorkerInfo

INSTALL_HINT = "pip install 'circuitbase[ray]'"


class ClusterError(ValueError):
    """The Ray cluster cannot run the job: not installed, unreachable, too small, or the workers failed."""


def require_ray() -> ModuleType:
    """The `ray` module, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"Ray is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_reachable(address: str, *, timeout_s: float) -> None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not 'auto', 'local', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); "
            "start one with `ray start --head` or check the address"
        ) from None


def connect(address: str, *, timeout_s: float = 5.0) -> None:
    """Join the Ray cluster at `address` (see the module docstring); timeout_s bounds the reachability
    check of a HOST:PORT address (default 5)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    if address != "auto":
        _check_reachable(address, timeout_s=timeout_s)
    elif os.environ.get("RAY_ADDRESS"):
        _check_reachable(os.environ["RAY_ADDRESS"], timeout_s=timeout_s)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot join a Ray cluster at {address!r} ({_first_line(exc)}); start one with "
            "`ray start --head`, or use --ray local for a Ray inside this process"
        ) from None


@dataclass(frozen=True)
class ClusterSpec:
    """The actors of a pool.

    gpu_actors: actors holding GPUs (default 0: as many as the cluster's GPUs allow). gpus_per_actor:
    the GPU share of each (default 1.0; 0.5 puts two actors on a GPU). cpu_actors: attribute on this many
    CPU actors instead of GPUs (default 0: GPUs). cpus_per_actor: cores and torch threads of a CPU actor
    (default 1). in_flight: prompts queued on each actor at once (default 2). max_attempts: actors that
    may die holding one prompt before it counts as failed (default 3).
    """

    gpu_actors: int = 0
    gpus_per_actor: float = 1.0
    cpu_actors: int = 0
    cpus_per_actor: int = 1
    in_flight: int = 2
    max_attempts: int = 3

    def actor_options(self, resources: dict[str, float]) -> tuple[int, dict[str, Any]]:
        """(actors, Ray actor options) for a cluster with `resources`; ClusterError when it is too small."""
        if min(self.gpu_actors, self.cpu_actors, self.in_flight - 1, self.max_attempts - 1) < 0:
            raise ClusterError("actor counts must be >= 0, in_flight and max_attempts >= 1")
        if self.cpu_actors:
            cpus, need = resources.get("CPU", 0.0), self.cpu_actors * self.cpus_per_actor
            if self.cpus_per_actor < 1 or need > cpus:
                raise ClusterError(
                    f"the Ray cluster has {cpus:g} CPUs; {self.cpu_actors} actors x "
                    f"{self.cpus_per_actor} CPUs need {need}"
                )
            return self.cpu_actors, {"num_cpus": self.cpus_per_actor, "num_gpus": 0}
        gpus = resources.get("GPU", 0.0)
        if not 0 < self.gpus_per_actor <= 1:
            raise ClusterError(f"GPUs per actor must be in (0, 1], got {self.gpus_per_actor:g}")
        actors = self.gpu_actors or math.floor(gpus / self.gpus_per_actor + 1e-9)
        if actors == 0 or actors * self.gpus_per_actor > gpus + 1e-9:
            asked = max(actors, 1)
            raise ClusterError(
                f"the Ray cluster has {gpus:g} GPUs; {asked} actors x {self.gpus_per_actor:g} GPU need "
                f"{asked * self.gpus_per_actor:g} (add GPU nodes, or attribute on CPU actors: "
                "--ray-cpu-actors N)"
            )
        return actors, {"num_gpus": self.gpus_per_actor}


@dataclass
class PoolStats:
    """Per-actor graph counts, actors lost and prompts sent again."""

    graphs: list[int] = field(default_factory=list)
    alive: list[bool] = field(default_factory=list)
    retried: int = 0

    @property
    def lost(self) -> int:
        return self.alive.count(False)

    def line(self) -> str:
        """e.g. `actors 12 11 4(lost), 3 retried`."""
        counts = " ".join(
            f"{n}" if up else f"{n}(lost)" for n, up in zip(self.graphs, self.alive, strict=True)
        )
        return f"actors {counts}" + (f", {self.retried} retried" if self.retried else "")


class WorkerPool:
    """Long-lived attribution actors on a Ray cluster (see the module docstring); `close` ends them."""

    def __init__(self, actors: list[Any], info: WorkerInfo, spec: ClusterSpec) -> None:
        self.actors, self.info, self.spec = actors, info, spec
        self.stats = PoolStats(graphs=[0] * len(actors), alive=[True] * len(actors))

    @classmethod
    def start(
        cls,
        spec: ClusterSpec,
        *,
        model: str,
        transcoders: str | None,
        device: str = "auto",
        precision: str = "float32",
    ) -> WorkerPool:
        """Start the actors on the connected cluster and load the model into each (`AttributionWorker.load`;
        device: 'auto', 'cpu' or 'cuda' for GPU actors, CPU actors always use 'cpu'; precision as there)."""
        ray = require_ray()
        count, options = spec.actor_options(ray.cluster_resources())
        worker = ray.remote(AttributionWorker).options(max_restarts=0, **options)
        actors = [worker.remote() for _ in range(count)]
        on_cpu = spec.cpu_actors > 0
        loads = [
            actor.load.remote(
                model=model,
                transcoders=transcoders,
                device="cpu" if on_cpu else device,
                precision=precision,
                threads=spec.cpus_per_actor if on_cpu else 0,
            )
            for actor in actors
        ]
        try:
            infos = ray.get(loads)
        except ray.exceptions.RayTaskError as exc:
            cls._end(actors)
            raise ClusterError(
                f"the Ray workers could not load the model: {_first_line(exc.cause or exc)}"
            ) from None
        except ray.exceptions.RayError as exc:
            cls._end(actors)
            raise ClusterError(f"a Ray worker died while loading the model: {_first_line(exc)}") from None
        return cls(actors, infos[0], spec)

    @staticmethod
    def _end(actors: list[Any]) -> None:
        ray = require_ray()
        for actor in actors:
            ray.kill(actor)

    @property
    def size(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        """End the actors still alive (the stats keep what the pool did)."""
        self._end([a for a, up in zip(self.actors, self.stats.alive, strict=True) if up])

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attribute(
        self, prompts: Iterable[Prompt], *, config: AttributionConfig
    ) -> Iterator[tuple[Prompt, AttributionGraph | BaseException]]:
        """(prompt, graph or the prompt's error) for every prompt, in completion order (module docstring)."""
        ray = require_ray()
        queue = deque(prompts)
        pending: dict[Any, tuple[int, Prompt]] = {}  # object ref -> (actor index, prompt)
        attempts: Counter[int] = Counter()  # id(prompt) -> actors lost while holding it
        last_loss = ""

        def fill() -> None:
            for index, actor in enumerate(self.actors):
                held = sum(1 for a, _ in pending.values() if a == index)
                while self.stats.alive[index] and held < self.spec.in_flight and queue:
                    prompt = queue.popleft()
                    pending[actor.attribute.remote(prompt, config=config)] = (index, prompt)
                    held += 1

        while queue or pending:
            fill()
            if not pending:
                raise ClusterError(
                    f"every Ray actor was lost (last: {last_loss}); {len(queue)} prompts not attributed"
                )
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, prompt = pending.pop(ref)
            try:
                graph = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the prompt failed in a healthy worker
                yield prompt, exc.cause if exc.cause is not None else exc
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
                last_loss = _first_line(exc)
                yield from self._lose(index, prompt, pending, queue, attempts, reason=last_loss)
                continue
            fill()  # keep the actor busy while the caller saves and writes this graph
            self.stats.graphs[index] += 1
            yield prompt, graph

    def _lose(
        self,
        index: int,
        prompt: Prompt,
        pending: dict[Any, tuple[int, Prompt]],
        queue: deque[Prompt],
        attempts: Counter[int],
        *,
        reason: str,
    ) -> Iterator[tuple[Prompt, BaseException]]:
        """Drop actor `index`; its prompts go back to the front of the queue, or fail after max_attempts."""
        self.stats.alive[index] = False
        require_ray().kill(self.actors[index])  # a half-dead actor (e.g. out of memory) is ended for good
        refs = [ref for ref, (a, _) in pending.items() if a == index]
        held = [prompt, *(pending.pop(ref)[1] for ref in refs)]
        again = []
        for lost in held:
            attempts[id(lost)] += 1
            if attempts[id(lost)] >= self.spec.max_attempts:
                yield (
                    lost,
                    ClusterError(f"lost {attempts[id(lost)]} Ray actors while attributing it ({reason})"),
                )
            else:
                again.append(lost)
        self.stats.retried += len(again)
        queue.extendleft(reversed(again))
