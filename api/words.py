"""Nodes and subcircuits in words: token text, feature labels (or logit-lens tokens), layer and position.

Pure functions over the rows the repository returns (a Feature row: `layer`, `index`, `label`,
`promoted_tokens`; a Token row: `text`); the schema loads those rows in batches and calls these.

- A token reads as its text in JSON quotes (`" Paris"`: spaces and newlines stay visible); as an output it
  reads `logit " Paris"`.
- A feature reads `L1 #208 “France-ish”` with its label, else `L1 #208 (promotes " Paris", " Rome")` with
  its top logit-lens (promoted) tokens, else `L1 #208`.
- A node of one graph adds where it sits: `L1 #208 “France-ish” @5 " Dallas"` (position 5, whose input
  token is " Dallas"); an error node reads `error L1 @5 " Dallas"`.
- A subcircuit (a set of edges between Features and Tokens) reads as its paths from inputs to outputs,
  `"capital" → L1 #208 “France-ish” → logit " Paris"`, joined by "; ", each edge in at least one path; a
  large one shows its first few paths (those covering most edges) and how many more there are.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

LENS_TOKENS = 3  # logit-lens tokens shown for a feature without a label
MAX_PATHS = 1000  # paths enumerated per subcircuit before the cover is chosen
ARROW = " → "


def token_words(text: str | None, *, logit: bool = False) -> str:
    """A token's text in JSON quotes, prefixed by 'logit ' for an output (`logit` default False)."""
    quoted = json.dumps(text if text is not None else "?", ensure_ascii=False)
    return f"logit {quoted}" if logit else quoted


def feature_words(row: Mapping[str, Any]) -> str:
    """A Feature row in words: layer, index and its label, else its top logit-lens tokens."""
    head = f"L{row['layer']} #{row['index']}"
    label = (row.get("label") or "").strip()
    if label:
        return f"{head} “{label}”"
    promoted = [t for t in row.get("promoted_tokens") or [] if t is not None][:LENS_TOKENS]
    if promoted:
        return f"{head} (promotes {', '.join(token_words(t) for t in promoted)})"
    return head


def ref_words(row: Mapping[str, Any] | None, *, key: str, logit: bool) -> str:
    """A global node (a Feature or Token row with `kind`) in words; its key when it is not stored."""
    if row is None:
        return key
    if row["kind"] == "Feature":
        return feature_words(row)
    return token_words(row.get("text"), logit=logit)


def node_words(
    *,
    kind: str,
    layer: int,
    position: int,
    feature: Mapping[str, Any] | None,
    token_text: str | None,
    input_text: str | None,
) -> str:
    """A node of one graph in words. `kind` is the node label (FeatureNode, ErrorNode, TokenNode,
    LogitNode); `feature` its Feature row, `token_text` its own token's text (tokens and logits),
    `input_text` the input token at its position (None: not known)."""
    if kind == "TokenNode":
        return f"{token_words(token_text)} @{position}"
    if kind == "LogitNode":
        return token_words(token_text, logit=True)
    where = f"@{position}" + (f" {token_words(input_text)}" if input_text is not None else "")
    if kind == "ErrorNode":
        return f"error L{layer} {where}"
    what = feature_words(feature) if feature else f"L{layer} #?"
    return f"{what} {where}"


def _paths(sources: Sequence[str], targets: Sequence[str]) -> list[list[str]]:
    """Paths from nodes without an incoming edge to nodes without an outgoing one (at most MAX_PATHS)."""
    out_of: dict[str, list[str]] = defaultdict(list)
    for s, t in zip(sources, targets, strict=True):
        out_of[s].append(t)
    heads = sorted(set(sources) - set(targets)) or sorted(set(sources))  # a cycle has no head: start anywhere
    found: list[list[str]] = []
    stack = [[h] for h in reversed(heads)]
    while stack and len(found) < MAX_PATHS:
        path = stack.pop()
        nexts = [t for t in out_of.get(path[-1], []) if t not in path]
        if not nexts:
            found.append(path)
        stack.extend([*path, t] for t in reversed(nexts))
    return found


def subcircuit_paths(sources: Sequence[str], targets: Sequence[str]) -> list[list[str]]:
    """Few paths covering every edge (greedily: the path with the most uncovered edges first); an edge the
    enumerated paths miss becomes a path of its own."""
    edges = set(zip(sources, targets, strict=True))
    candidates = _paths(sources, targets)
    chosen: list[list[str]] = []
    uncovered = set(edges)
    while uncovered and candidates:
        best = max(candidates, key=lambda p: len(set(itertools.pairwise(p)) & uncovered))
        gained = set(itertools.pairwise(best)) & uncovered
        if not gained:
            break
        chosen.append(best)
        uncovered -= gained
    chosen += [[s, t] for s, t in sorted(uncovered)]
    return chosen


def subcircuit_sentence(
    sources: Sequence[str],
    targets: Sequence[str],
    rows: Mapping[str, Mapping[str, Any] | None],
    *,
    max_paths: int = 5,
) -> str:
    """The subcircuit's paths in words (module docstring), the `max_paths` (default 5) covering most edges
    first, then '… (+N more paths)'; `rows` maps member keys to their rows. A Token that an edge ends at
    reads as a logit, one an edge starts from as an input token."""
    logits = set(targets) - set(sources)
    paths = subcircuit_paths(sources, targets)
    words = [
        ARROW.join(ref_words(rows.get(k), key=k, logit=k in logits) for k in p) for p in paths[:max_paths]
    ]
    if len(paths) > max_paths:
        words.append(f"… (+{len(paths) - max_paths} more paths)")
    return "; ".join(words)
