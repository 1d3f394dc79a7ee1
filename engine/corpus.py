"""Training text for transcoders: a JSONL or plain-text file, or a directory of them, read lazily.

- `.jsonl`: one JSON object per line; its text is the first of the fields "text", "prompt", "content".
- any other file: plain text, one document per non-empty line.
- a directory: every `.jsonl`, `.txt` and `.md` file below it, in sorted path order.

Two corpora need nothing but what is installed (both written once as JSONL and cached):
- `python_docs_corpus`, the default: the English docstrings of the running Python's standard library
  (CPython 3.11: about 2,200 docstrings of >= 200 characters, 1.2 MB, about 300K SmolLM2 tokens);
  technical prose with some code, the same for everyone on the same Python version.
- `generated_corpus`: texts sampled from the model itself (seeded), starting at BOS and following the
  model's own distribution; slow on a CPU (one token at a time).
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
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


PYTHON_DOCS_SKIP = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"})


def python_docs_corpus(path: str | Path, *, min_chars: int = 200) -> Path:
    """Write every docstring of at least `min_chars` characters (default 200) of the standard library's
    modules, classes and functions (in sorted file order; tests, IDLE, lib2to3 and third-party packages
    left out) to JSONL `path`, unless it exists already. Written to a temporary name and renamed."""
    path = Path(path)
    if path.is_file():
        return path
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as sink:
        for source in sorted(stdlib.rglob("*.py")):
            if PYTHON_DOCS_SKIP.intersection(source.relative_to(stdlib).parts):
                continue
            try:
                tree = ast.parse(source.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are templates or deliberately invalid
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    text = ast.get_docstring(node)
                    if text and len(text) >= min_chars:
                        sink.write(json.dumps({"text": text}) + "\n")
                        documents += 1
    if not documents:
        tmp.unlink()
        raise CorpusError(f"no docstrings found in the standard library at {stdlib}")
    os.replace(tmp, path)
    return path


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
