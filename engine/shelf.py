"""Models with their transcoder sets, found by the names graphs record, loaded on first need and kept.

A graph records the names the engine gave its model and transcoder set when they were loaded
(`LoadedModel.name`, `TranscoderSet.name`). A `ModelShelf` answers `find(model, transcoder_set)` with the
pair of those names: first among the pairs it holds, then by loading its `ModelSource`s in order until
one's names match. Every pair loaded is kept, so nothing loads twice; a name that no source has gives
None once every source is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitbase.engine.models import LoadedModel
    from circuitbase.engine.transcoders import TranscoderSet


@dataclass(frozen=True)
class ModelSource:
    """Where a model and its transcoder set load from: specs as `circuitbase attribute` takes them."""

    model: str
    transcoders: str | None = None  # None: the model's default set


def with_shipped_toy(sources: Sequence[ModelSource]) -> list[ModelSource]:
    """`sources`, then the toy model shipped in the package (when the package holds it)."""
    from circuitbase.engine.toy import ToyError, shipped_paths

    try:
        model_dir, transcoder_dir = shipped_paths()
    except ToyError:
        return list(sources)
    return [*sources, ModelSource(str(model_dir), str(transcoder_dir))]


class ModelShelf:
    """Loaded (model, transcoder set) pairs by name; see the module docstring.

    sources: loaded in order when a name is not held (default none). device: 'auto', 'cpu' or 'cuda'
    (default 'auto'). held: pairs already loaded (default none), found before any source is loaded.
    """

    def __init__(
        self,
        *,
        sources: Sequence[ModelSource] = (),
        device: str = "auto",
        held: Sequence[tuple[LoadedModel, TranscoderSet]] = (),
    ) -> None:
        self.device = device
        self._waiting = list(dict.fromkeys(sources))
        self._held = list(held)

    @property
    def names(self) -> list[tuple[str, str]]:
        """(model, transcoder set) names of the pairs loaded so far."""
        return [(loaded.name, transcoders.name) for loaded, transcoders in self._held]

    def find(self, model: str, transcoder_set: str) -> tuple[LoadedModel, TranscoderSet] | None:
        """The pair named (`model`, `transcoder_set`), loading sources until one matches (None: none)."""
        from circuitbase.engine.loading import load_model_and_transcoders

        while True:
            for loaded, transcoders in self._held:
                if (loaded.name, transcoders.name) == (model, transcoder_set):
                    return loaded, transcoders
            if not self._waiting:
                return None
            source = self._waiting.pop(0)
            loaded, transcoders, _folder = load_model_and_transcoders(
                source.model, source.transcoders, device=self.device
            )
            self._held.append((loaded, transcoders))
