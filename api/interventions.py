"""Interventions for the API: the models graphs were made with, loaded once per process and kept, and
one intervention (`engine.interventions.run_with_interventions`) run through the cache and the rate limit.

1. A graph records the names of its model and transcoder set (`:Graph.model`, `.transcoder_set`: the names
   the engine gives them when it loads them). The server loads them from its `ModelSource`s: the ones it
   was given, then the ingest model, then the toy model shipped in the package. Sources are loaded in that
   order, on the first request needing names not loaded yet, until one's names match; every source loaded
   is kept for the life of the process, so no request loads a model twice.
2. A request is checked against the loaded set and the limits (prompt tokens, layers, positions, features)
   before it counts against the rate limit (`RateLimiter`): only model runs count.
3. Answers are cached by request in a `ResultCache` of their own: an answer depends on the model and the
   request, never on the database, so loading graphs keeps them. A failed request is not kept.
4. A run hooks the model's modules, so the runs of one model take turns (a lock per model).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuitbase.api.cache import ResultCache
from circuitbase.api.errors import BAD_USER_INPUT, NOT_FOUND, ApiError
from circuitbase.api.limits import Limits, RateLimiter
from circuitbase.engine.shelf import ModelShelf, ModelSource, with_shipped_toy

_ONE_STATE = "interventions"  # the cache's state token: answers never go stale


@dataclass(frozen=True)
class FeatureChange:
    """One feature at one position: `value` sets its activation, `scale` multiplies it, neither zeroes it.
    `position` counts tokens from 0 as the graph's nodes do (BOS included), negative from the end."""

    layer: int
    position: int
    feature: int
    value: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class InterventionRequest:
    """Run `prompt` on a model and transcoder set (by the names graphs record) with `changes`; attention
    frozen unless `free_attention`; the `top` next tokens before and after."""

    model: str
    transcoder_set: str
    prompt: str
    changes: tuple[FeatureChange, ...]
    free_attention: bool = False
    top: int = 5


@dataclass
class _Held:
    """A loaded source: model, transcoder set and the lock its runs take turns on."""

    loaded: Any
    transcoders: Any
    lock: threading.Lock


def default_sources(*, given: Sequence[ModelSource], ingest: ModelSource | None) -> list[ModelSource]:
    """`given`, then the `ingest` source, then the shipped toy model (when the package holds it)."""
    return with_shipped_toy([*given, *([ingest] if ingest else [])])


class InterventionService:
    """Loads models on demand and keeps them; answers `InterventionRequest`s (module docstring)."""

    def __init__(
        self, *, sources: Sequence[ModelSource], device: str, limits: Limits, max_entries: int = 1024
    ) -> None:
        """device: 'auto', 'cpu' or 'cuda'. max_entries: answers cached (default 1024)."""
        self.device, self.limits = device, limits
        self._shelf = ModelShelf(sources=sources, device=device)  # loads in order, keeps what it loaded
        self._run_locks: dict[tuple[str, str], threading.Lock] = {}
        self._load_lock = threading.Lock()
        self._cache = ResultCache(max_entries=max_entries)
        self._rate = RateLimiter(
            per_minute=limits.interventions_per_minute, max_waiting=limits.max_interventions_waiting
        )

    async def run(self, request: InterventionRequest) -> dict[str, Any]:
        """The answer to `request` (`_compute`), cached."""
        return await self._cache.get(request, lambda: self._compute(request), state=_ONE_STATE)

    def _model(self, model: str, transcoder_set: str) -> _Held:
        """The loaded source named (`model`, `transcoder_set`), loading sources in order until one is."""
        with self._load_lock:
            found = self._shelf.find(model, transcoder_set)
            held = self._shelf.names
            lock = self._run_locks.setdefault((model, transcoder_set), threading.Lock())
        if found is None:
            runs = ", ".join(f"{m} with {s}" for m, s in held) or "none"
            raise ApiError(
                NOT_FOUND,
                f"this server cannot run model {model!r} with transcoder set {transcoder_set!r} (it runs: "
                f"{runs}); start it with --intervention-model and --intervention-transcoders for them",
            )
        return _Held(*found, lock)

    def _compute(self, request: InterventionRequest) -> dict[str, Any]:
        """Check `request`, run it (rate limited, one run per model at a time) and report it."""
        import torch

        from circuitbase.engine.interventions import intervention_report, run_with_interventions
        from circuitbase.engine.prompts import prompt_token_ids
        from circuitbase.engine.replacement import build_replacement_state

        held = self._model(request.model, request.transcoder_set)
        tokenizer, adapter = held.loaded.tokenizer, held.loaded.adapter
        ids = prompt_token_ids(tokenizer, request.prompt)
        if not 1 <= len(ids) <= self.limits.max_intervention_tokens:
            raise ApiError(
                BAD_USER_INPUT,
                f"the prompt has {len(ids)} tokens; interventions take 1 to "
                f"{self.limits.max_intervention_tokens}",
            )
        interventions = [
            _resolve(i, change, transcoders=held.transcoders, n_positions=len(ids))
            for i, change in enumerate(request.changes)
        ]
        with self._rate.take("interventions"), held.lock:
            input_ids = torch.tensor(ids, dtype=torch.long, device=adapter.unembedding().device)
            state = build_replacement_state(held.loaded.model, adapter, held.transcoders, input_ids)
            result = run_with_interventions(
                held.loaded.model,
                adapter,
                held.transcoders,
                state,
                interventions,
                freeze_attention=not request.free_attention,
            )
        report = intervention_report(
            state.logits[-1], result.logits[-1], decode=lambda i: tokenizer.decode([i]), top=request.top
        )
        report["tokens"] = [tokenizer.decode([i]) for i in ids]
        report["changes"] = [
            {
                "layer": item.layer,
                "position": item.position,
                "feature": item.feature,
                "activation_before": float(state.activations[item.layer][item.position, item.feature]),
                "activation_after": float(result.activations[item.layer][item.position, item.feature]),
            }
            for item in interventions
        ]
        return report


def _resolve(index: int, change: FeatureChange, *, transcoders: Any, n_positions: int) -> Any:
    """The engine's intervention for `features[index]`; BAD_USER_INPUT naming what is out of range."""
    from circuitbase.engine.interventions import InterventionError, resolve_intervention

    try:
        return resolve_intervention(
            change.layer,
            change.position,
            change.feature,
            value=change.value,
            scale=change.scale,
            n_layers=transcoders.n_layers,
            n_positions=n_positions,
            d_transcoder=transcoders.d_transcoder,
        )
    except InterventionError as exc:
        raise ApiError(BAD_USER_INPUT, f"features[{index}]: {exc}") from None
