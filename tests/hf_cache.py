"""A Hugging Face cache built inside a test, read with HF_HUB_OFFLINE=1.

`add_repo` writes what huggingface_hub itself writes for a downloaded repo:
`models--{org}--{name}/blobs/<sha256>`, `snapshots/<commit>/<path>` (relative symlinks to the blobs) and
`refs/<revision>` (the commit), so the real loading code finds it by repo id, `hf://` URI or preset.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import huggingface_hub
import pytest


def use_offline_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make `cache` the Hugging Face cache and switch the Hub off for the rest of the test."""
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def add_repo(cache: Path, repo_id: str, files: dict[str, Path | bytes], *, revision: str = "main") -> str:
    """Put `files` (path in the repo -> a local file or bytes) into the cache as `repo_id` at `revision`;
    returns the commit hash."""
    contents = {name: src.read_bytes() if isinstance(src, Path) else src for name, src in files.items()}
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(contents):
        digest.update(name.encode() + hashlib.sha256(contents[name]).digest())
    commit = digest.hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under `folder`, keyed by its path relative to it (after `prefix`)."""
    return {prefix + str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
