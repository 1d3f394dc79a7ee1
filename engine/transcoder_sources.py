"""Where a transcoder set's files come from: a preset name, a local folder or config file, or a Hub repo.

Specs (what circuit-tracer 0.5.0's `load_transcoder_from_hub` accepts, plus local paths):
- a preset name (`PRESETS`): `gemma` (GemmaScope transcoders of Gemma-2-2B), `llama` (Llama-3.2-1B);
- a local folder holding `config.yaml`, or a local `.yaml` config file;
- `hf://org/name[/folder][?revision=R]` or `org/name[/folder][@R]`: the `config.yaml` of that repo folder.

A Hub set's `config.yaml` is fetched first and its weight files one layer at a time as they are read
(`TranscoderSource.fetch`), so a set that does not fit the model fails before its weights are
downloaded. Entries of a `transcoders:` list may be `hf://` URIs (any repo), absolute paths, or paths
relative to the config's folder (in the same repo for a Hub set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitbase.engine import hub
from circuitbase.engine.transcoder_errors import TranscoderError

# circuit-tracer 0.5.0's preset names (its `load_transcoder_from_hub`), as Hub repos.
PRESETS = {"gemma": "mwhanna/gemma-scope-transcoders", "llama": "mntss/transcoder-Llama-3.2-1B"}
ACCEPTED = (
    f"a preset ({', '.join(PRESETS)}), a folder with config.yaml, a .yaml config file, "
    "an hf://org/name[/folder] URI or a Hugging Face repo id org/name[/folder][@revision]"
)


@dataclass(frozen=True)
class TranscoderSource:
    """A set's config file (local, or cached from the Hub) and where its other files are found.

    hub: the repo folder of a Hub set, else None. name: circuit-tracer's `scan` for a Hub set
    (repo[//folder][@revision]), else "" (the config's `scan` or the folder name is used).
    """

    config_path: Path
    hub: hub.HubRef | None = None
    name: str = ""

    @property
    def folder(self) -> Path:
        """The local folder of the config file (for a Hub set, inside the Hugging Face cache)."""
        return self.config_path.parent

    def names(self) -> list[str]:
        """Names of the files next to the config file (a Hub set: listed on the Hub when online)."""
        if self.hub is None:
            return sorted(p.name for p in self.folder.iterdir() if p.is_file())
        try:
            return [n for n in hub.list_files(self.hub, cached=self.folder) if "/" not in n]
        except hub.HubError as err:
            raise TranscoderError(f"{self.hub}: {err}") from err

    def fetch(self, entry: str, *, where: str) -> Path:
        """The local path of `entry` (a file name or a `transcoders:` entry), downloaded when on the Hub."""
        try:
            if entry.startswith("hf://"):
                return hub.download_file(hub.parse_hf_uri(entry))
            if Path(entry).is_absolute():
                return Path(entry)
            if self.hub is not None:
                return hub.download_file(self.hub.child(entry))
        except hub.HubError as err:
            raise TranscoderError(f"{where}: {err}") from err
        return self.folder / entry


def resolve_source(spec: str | Path | TranscoderSource) -> TranscoderSource:
    """The source of a transcoder spec (see the module docstring; a source is returned as it is); a Hub
    set's config.yaml is fetched."""
    if isinstance(spec, TranscoderSource):
        return spec
    text = str(spec)
    ref = hub.HubRef(PRESETS[text]) if text in PRESETS else None
    if ref is None:
        path = Path(text).expanduser()
        if path.is_dir():
            return TranscoderSource(path / "config.yaml")
        if path.is_file():
            if path.suffix not in (".yaml", ".yml"):
                raise TranscoderError(
                    f"transcoders {text!r} is a file but not a .yaml config; accepted: {ACCEPTED}"
                )
            return TranscoderSource(path)
        ref = hub.parse_spec(text)
        if ref is None:
            raise TranscoderError(f"transcoders {text!r}: no such folder or file; accepted: {ACCEPTED}")
    try:
        config = hub.download_file(ref.child("config.yaml"))
    except hub.HubError as err:
        raise TranscoderError(f"transcoders {text!r}: {err}") from err
    where = ref.repo_id + (f"//{ref.path}" if ref.path else "")
    return TranscoderSource(config, ref, f"{where}@{ref.revision}" if ref.revision else where)
