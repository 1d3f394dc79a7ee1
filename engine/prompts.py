"""Prompt files: JSONL, CSV or plain text, one prompt per line.

- JSONL: {"prompt": str, "answer"?: str, "tags"?: [str], "dataset"?: str, "id"?: str}
  ("text" is accepted for "prompt" and "expected" for "answer").
- CSV: a header row with a `prompt` column and optional `answer`, `tags` (separated by `;`),
  `dataset`, `id` columns.
- Anything else: plain text, one prompt per non-empty line.

Each prompt gets a stable id (given, or a hash of its text and answer), so re-runs find their graphs.
A malformed line raises `PromptFileError` naming the file and line; with `skip_bad=True` bad lines are
collected in `PromptSet.rejected` instead.

`prompt_token_ids` is the one place a prompt string becomes token ids, exactly as circuit-tracer 0.5.0
does it (`ensure_tokenized`): the text is tokenised without the tokenizer's own special tokens, then a
special token is put first unless the first token already is one. Position 0 is an attention sink with
atypical activations; attribution leaves that position out of the graph. Token ids given directly to
`engine.attribution.attribute` are used as given.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PromptFileError(ValueError):
    """A prompt file is missing or has a malformed line."""


@dataclass(frozen=True)
class Prompt:
    text: str
    answer: str | None = None
    tags: tuple[str, ...] = ()
    dataset: str = ""
    id: str = ""

    def meta(self) -> dict:
        return {"id": self.id, "answer": self.answer, "tags": list(self.tags), "dataset": self.dataset}


@dataclass
class PromptSet:
    prompts: list[Prompt]
    rejected: list[str] = field(default_factory=list)  # "file:line: reason"


def start_token_id(tokenizer: Any) -> int | None:
    """The special token put before a prompt: BOS, else PAD, else EOS, else the tokenizer's first special
    token; None when it has none. (circuit-tracer picks the same, except that it also skips a candidate
    whose id is 0, a falsy-value slip: on such tokenizers it falls through to the next candidate.)"""
    candidates = (
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        *tokenizer.all_special_ids,
    )
    return next((int(c) for c in candidates if c is not None), None)


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of prompt `text` (see the module docstring): `start_token_id` first unless the text's
    first token is already a special token."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False).input_ids]
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return ids
    start = start_token_id(tokenizer)
    return ids if start is None else [start, *ids]


def prompt_id(text: str, answer: str | None) -> str:
    return hashlib.sha256(json.dumps([text, answer]).encode()).hexdigest()[:16]


def _make(record: dict, where: str, dataset: str) -> Prompt:
    text = record.get("prompt", record.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f"{where}: needs a non-empty string field 'prompt'")
    answer = record.get("answer", record.get("expected"))
    if answer is not None and not isinstance(answer, str):
        raise PromptFileError(f"{where}: 'answer' must be a string, got {type(answer).__name__}")
    tags = record.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(";") if t]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise PromptFileError(f"{where}: 'tags' must be a list of strings")
    return Prompt(
        text=text,
        answer=answer,
        tags=tuple(tags),
        dataset=str(record.get("dataset") or dataset),
        id=str(record.get("id") or prompt_id(text, answer)),
    )


def _records(path: Path) -> list[tuple[str, dict | Exception]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        out: list[tuple[str, dict | Exception]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append((where, PromptFileError(f"{where}: not valid JSON ({exc.msg})")))
                continue
            if not isinstance(record, dict):
                out.append((where, PromptFileError(f"{where}: expected a JSON object")))
                continue
            out.append((where, record))
        return out
    if path.suffix == ".csv":
        reader = csv.DictReader(lines)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise PromptFileError(f"{path}:1: CSV header needs a 'prompt' column (found {reader.fieldnames})")
        return [(f"{path}:{number}", dict(row)) for number, row in enumerate(reader, start=2)]
    return [(f"{path}:{n}", {"prompt": line}) for n, line in enumerate(lines, start=1) if line.strip()]


def read_prompts(path: str | Path, *, skip_bad: bool = False) -> PromptSet:
    """Read a prompt file (see the module docstring for formats)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    prompts: list[Prompt] = []
    rejected: list[str] = []
    for where, record in _records(path):
        try:
            if isinstance(record, Exception):
                raise record
            prompts.append(_make(record, where, dataset=path.stem))
        except PromptFileError as exc:
            if not skip_bad:
                raise
            rejected.append(str(exc))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts found")
    return PromptSet(prompts=prompts, rejected=rejected)
