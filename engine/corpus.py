"""Training text for transcoders: a JSONL or plain-text file, or a directory of them, read lazily.

- `.jsonl`: one JSON object per line; its text is the first of the fields "text", "prompt", "content".
- any other file: plain text, one document per non-empty line.
- a directory: every `.jsonl`, `.txt` and `.md` file below it, in sorted path order.

Without a corpus, `generated_corpus` samples one from the model itself (offline, seeded, cached): texts
that start at BOS and follow the model's own distribution, written as JSONL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

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


@torch.no_grad()
def generated_corpus(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    n_texts: int = 2000,
    length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """Sample `n_texts` texts of `length` tokens from `model` (temperature 1, starting at BOS or, without
    one, EOS) into JSONL `path`, unless it exists already (defaults: 2000 x 128 tokens, batches of 32,
    seed 0). Written to a temporary name and renamed, so a finished file is always complete."""
    path = Path(path)
    if path.is_file():
        return path
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise CorpusError("cannot generate a corpus: the tokenizer has neither a BOS nor an EOS token")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as sink:
        for first in range(0, n_texts, batch_size):
            rows = min(batch_size, n_texts - first)
            prefix = torch.full((rows, 1), start, dtype=torch.long, device=device)
            out = model.generate(
                prefix,
                attention_mask=torch.ones_like(prefix),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=length,
                min_new_tokens=length,
                pad_token_id=start,
            )
            for row in out[:, 1:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                if text.strip():
                    sink.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, path)
    return path
