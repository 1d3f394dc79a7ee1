"""The Hugging Face Hub in one place: repo ids and ``hf://`` URIs become local files in the standard cache.

Specs, as circuit-tracer 0.5.0 reads them:
- ``org/name[/path][@revision]``: a repo id, optionally a folder or file inside it and a revision;
- ``hf://org/name[/path][?revision=R]``: the same as a URI.

Files are fetched with ``huggingface_hub`` (its progress bars, its cache, ``HF_TOKEN`` or ``hf auth login``
for private and gated repos). With ``HF_HUB_OFFLINE=1`` only the cache is read. Every failure is raised as
a ``HubError`` whose message is one line saying what to do (gated repo, missing token, unknown id or
revision, missing file, not cached while offline, Hub unreachable).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from huggingface_hub import HfApi, constants, get_token, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

_REPO_SPEC = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?P<path>(?:/[\w.-]+)*)(?:@(?P<rev>[\w./-]+))?")
_LOGIN = "run `hf auth login` or set HF_TOKEN"


class HubError(ValueError):
    """A Hub spec cannot be turned into local files (the message says why and what to do)."""


@dataclass(frozen=True)
class HubRef:
    """A repo on the Hub, optionally a path inside it (a folder or a file) and a revision (default main)."""

    repo_id: str
    path: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        revision = f"?revision={self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}{path}{revision}"

    def child(self, name: str) -> HubRef:
        """The ref of `name` inside this ref's folder."""
        return HubRef(self.repo_id, f"{self.path}/{name}" if self.path else name, self.revision)


def parse_hf_uri(uri: str) -> HubRef:
    """``hf://org/name[/path][?revision=R]`` -> HubRef; HubError for anything else."""
    parsed = urlparse(uri)
    parts = parsed.path.strip("/").split("/", 1)
    if parsed.scheme != "hf" or not parsed.netloc or not parts[0]:
        raise HubError(f"{uri!r} is not a Hugging Face URI (expected hf://org/name[/path][?revision=R])")
    revision = parse_qs(parsed.query).get("revision", [None])[0] or None
    return HubRef(f"{parsed.netloc}/{parts[0]}", parts[1] if len(parts) > 1 and parts[1] else None, revision)


def parse_repo_spec(spec: str) -> HubRef | None:
    """``org/name[/path][@revision]`` -> HubRef, or None when `spec` does not have that shape."""
    match = _REPO_SPEC.fullmatch(spec)
    if match is None:
        return None
    return HubRef(match["repo"], match["path"].strip("/") or None, match["rev"])


def parse_spec(spec: str) -> HubRef | None:
    """A ``hf://`` URI or a repo spec as a HubRef; None when `spec` is neither."""
    return parse_hf_uri(spec) if spec.startswith("hf://") else parse_repo_spec(spec)


def offline() -> bool:
    """Whether only the cache may be read: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, read now."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any(
        (flag or "").strip().lower() in {"1", "on", "yes", "true"} for flag in flags
    )


def download_file(ref: HubRef) -> Path:
    """The local path of the file `ref` names, downloaded into the cache unless it is there already."""
    if not ref.path:
        raise HubError(f"{ref} names a repo, not a file in it")
    try:
        path = hf_hub_download(
            ref.repo_id, ref.path, revision=ref.revision, local_files_only=offline(), token=get_token()
        )
    except Exception as error:  # translated into one line; the original stays attached
        raise explain(error, ref) from error
    return Path(path)


def download_snapshot(
    ref: HubRef, *, allow_patterns: Sequence[str], ignore_patterns: Sequence[str] = ()
) -> Path:
    """The local snapshot folder of `ref`'s repo holding the files that match `allow_patterns`."""
    try:
        folder = snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=list(allow_patterns),
            ignore_patterns=list(ignore_patterns) or None,
            local_files_only=offline(),
            token=get_token(),
        )
    except Exception as error:  # translated into one line; the original stays attached
        raise explain(error, ref) from error
    return Path(folder)


def list_files(ref: HubRef, *, cached: Path) -> list[str]:
    """Names of the files under `ref`'s folder (relative to it): from the Hub when online, else from
    `cached`, the local folder of that path in the cache (all a cache-only run can read anyway)."""
    if not offline():
        prefix = f"{ref.path}/" if ref.path else ""
        try:
            names = HfApi().list_repo_files(ref.repo_id, revision=ref.revision, token=get_token())
        except (HfHubHTTPError, HFValidationError) as error:
            raise explain(error, ref) from error
        except Exception:  # Hub unreachable: what the cache holds is what can be used
            names = None
        if names is not None:
            return sorted(name[len(prefix) :] for name in names if name.startswith(prefix))
    return sorted(str(p.relative_to(cached)) for p in cached.rglob("*") if p.is_file())


def explain(error: Exception, ref: HubRef) -> HubError:
    """One line saying what went wrong fetching `ref` and what to do about it."""
    repo = ref.repo_id + (f"@{ref.revision}" if ref.revision else "")
    token = get_token()
    if isinstance(error, GatedRepoError):
        page = f"{constants.ENDPOINT}/{ref.repo_id}"
        if token is None:
            return HubError(
                f"{repo} is a gated repo and no Hugging Face token is set: accept its terms at {page}, "
                f"then {_LOGIN}"
            )
        return HubError(
            f"{repo} is a gated repo your token cannot read yet: accept its terms at {page} with the "
            "account of that token (approval can take a while)"
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = (
            f"if it is private, {_LOGIN}" if token is None else "your token cannot read it if it is private"
        )
        return HubError(f"no repo {ref.repo_id!r} on the Hugging Face Hub: check the id ({hint})")
    if isinstance(error, RevisionNotFoundError):
        return HubError(
            f"repo {ref.repo_id!r} has no revision {ref.revision!r}: check the branch, tag or commit"
        )
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if offline():
            return HubError(
                f"{ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run once with network "
                "access (HF_HUB_OFFLINE unset) to download it"
            )
        return HubError(
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to fetch {ref} and it is not in the "
            "cache: connect to the network (check any proxy), or download it once where the Hub is "
            "reachable and point HF_HUB_CACHE at that cache"
        )
    if isinstance(error, EntryNotFoundError):
        return HubError(f"repo {repo} has no file {ref.path!r}")
    if isinstance(error, HFValidationError):
        return HubError(f"{str(ref)!r} is not a valid Hugging Face repo id: {error}")
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        if error.response.status_code == 401:
            return HubError(f"the Hugging Face Hub rejected the token for {repo}: {_LOGIN} with a valid one")
        return HubError(f"the Hugging Face Hub answered HTTP {error.response.status_code} for {ref}")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return HubError(f"cannot fetch {ref}: {first_line}")
