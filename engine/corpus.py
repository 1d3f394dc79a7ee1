"""Training text for transcoders: a JSONL or plain-text file, or a directory of them, read lazily.

- `.jsonl`: one JSON object per line; its text is the first of the fields "text", "prompt", "content".
- any other file: plain text, one document per non-empty line.
- a directory: every `.jsonl`, `.txt` and `.md` file below it, in sorted path order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

TEXT_FIELDS = ("text", "prompt", "content")
DIRECTORY_SUFFIXES = (".jsonl", ".txt", ".md")


class CorpusError(ValueError):
    """A corpus path is missing, empty or has a malformed line."""


def corpus_files(path: str | Path) -> list[Path]:
    """The files a corpus path stands for; raises CorpusError when there are none."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DIRECTORY_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus directory {path} has no {', '.join(DIRECTORY_SUFFIXES)} files")
        return files
    raise CorpusError(f"corpus {path} does not exist")


def _file_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield line.strip()
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            text = next((record[f] for f in TEXT_FIELDS if isinstance(record, dict) and f in record), None)
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{number}: needs a string field, one of {', '.join(TEXT_FIELDS)}")
            if text.strip():
                yield text


def iter_texts(path: str | Path) -> Iterator[str]:
    """Every non-empty document of the corpus, in file order; raises CorpusError for an empty corpus."""
    files = corpus_files(path)
    empty = True
    for file in files:
        for text in _file_texts(file):
            empty = False
            yield text
    if empty:
        raise CorpusError(f"corpus {path} contains no text ({len(files)} file(s), all empty)")
