"""What each transcoder feature means: top-activating contexts, logit lens, density and a short label.

1. Pass 1 streams the corpus (`corpus.iter_texts`) in chunks through the model, captures every layer's
   MLP input (`training.capture`, BOS left out), encodes it and keeps, per feature, a top-k "heap" of
   (activation, document, position, token) as fixed-size tensors [n_layers, d_transcoder, k] merged with
   each chunk's top-k (memory bounded by the set, not the corpus), and counts the tokens it fires on.
2. Pass 2 re-reads only the documents the heaps point to and renders each kept context as a token window
   (text pieces that join to the original text) with the max-activating token marked.
3. Logit lens: W_U @ W_dec[f] (a CLT feature: W_U @ the sum of its decoder rows over every layer it
   writes to, i.e. its whole direct write to the residual stream); top promoted / suppressed tokens.
4. Label (rule-based, offline): "→ 'a', 'b', 'c' | fires on 'x'" from the top promoted tokens and the
   most frequent max-activating token among the kept contexts.
Stored as `feature_labels.json` beside the transcoders (`FeatureLabels.save` / `load_labels`), compact:
one row per feature in FEATURE_COLUMNS order; a context is [token pieces, index of the marked token,
activation, document index, token position]; promoted/suppressed are [token, logit-lens value] pairs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter, adapter_for
from circuitbase.engine.corpus import iter_texts
from circuitbase.engine.replacement import hooks_of
from circuitbase.engine.training import capture
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.progress import Progress

LABELS_FILE = "feature_labels.json"
FORMAT = "circuitbase-feature-labels/1"
FEATURE_COLUMNS = ("layer", "index", "density", "label", "contexts", "promoted", "suppressed")
LOGIT_LENS = "W_U @ W_dec[f]; cross-layer sets: W_U @ sum of W_dec[f] over every output layer"


class LabelError(ValueError):
    """Bad labelling settings, a corpus without usable text, or an unreadable labels file."""


@dataclass(frozen=True)
class LabelConfig:
    """Settings of a labelling run (defaults: 5 contexts kept of a heap of 20, 8 + 3 tokens around the
    marked one, 10 promoted/suppressed tokens, at most 2M corpus tokens of texts cut at 128 tokens)."""

    top_contexts: int = 5  # contexts stored per feature
    heap_size: int = 20  # contexts tracked per feature (for the "fires on" token statistics)
    window_before: int = 8
    window_after: int = 3
    logit_tokens: int = 10
    max_tokens: int = 2_000_000
    context_length: int = 128
    texts_per_forward: int = 32
    lens_batch: int = 1024  # features per logit-lens matmul

    def __post_init__(self) -> None:
        if not 0 < self.top_contexts <= self.heap_size:
            raise LabelError(f"need 0 < top_contexts <= heap_size, got {self.top_contexts}, {self.heap_size}")
        if min(self.max_tokens, self.context_length, self.texts_per_forward, self.logit_tokens) <= 0:
            raise LabelError(
                "max_tokens, context_length, texts_per_forward and logit_tokens must be positive"
            )


@dataclass
class Context:
    """One top-activating context: `tokens` join to the corpus text, `tokens[at]` is the marked token."""

    tokens: list[str]
    at: int
    act: float
    doc: int  # document index in corpus order
    pos: int  # token position in the tokenised document (BOS = 0 when the tokenizer adds one)

    def render(self, *, mark: tuple[str, str] = ("«", "»")) -> str:
        """The window as text with the marked token between `mark` (default « »)."""
        pieces = list(self.tokens)
        token = pieces[self.at]
        space = token[: len(token) - len(token.lstrip())]
        pieces[self.at] = f"{space}{mark[0]}{token.lstrip()}{mark[1]}"
        return "".join(pieces).strip()


@dataclass
class FeatureLabel:
    """Everything stored about one feature; `promoted`/`suppressed` are (token, logit-lens value)."""

    layer: int
    index: int
    density: float
    label: str
    contexts: list[Context] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class FeatureLabels:
    """Labels of every feature of one transcoder set, with how they were computed."""

    transcoder_set: str
    model: str
    tokens: int  # corpus tokens seen (BOS excluded)
    documents: int
    config: LabelConfig
    features: list[FeatureLabel]
    logit_lens: str = LOGIT_LENS

    def feature(self, layer: int, index: int) -> FeatureLabel:
        """The label of feature `index` of `layer`."""
        found = next((f for f in self.features if (f.layer, f.index) == (layer, index)), None)
        if found is None:
            raise LabelError(f"no label for feature {layer}/{index} of {self.transcoder_set!r}")
        return found

    def save(self, path: str | Path) -> Path:
        """Write compact JSON to `path` (a transcoder folder gets LABELS_FILE), atomically; returns it."""
        path = Path(path)
        if path.is_dir():
            path = path / LABELS_FILE
        doc = {
            "format": FORMAT,
            **{k: v for k, v in asdict(self).items() if k != "features"},
            "columns": list(FEATURE_COLUMNS),
            "features": [_feature_row(f) for f in self.features],
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path


def _short(value: float) -> float:
    return float(f"{value:.4g}")


def _feature_row(f: FeatureLabel) -> list[Any]:
    return [
        f.layer,
        f.index,
        _short(f.density),
        f.label,
        [[c.tokens, c.at, _short(c.act), c.doc, c.pos] for c in f.contexts],
        [[t, _short(v)] for t, v in f.promoted],
        [[t, _short(v)] for t, v in f.suppressed],
    ]


def labels_path(transcoders_dir: str | Path) -> Path:
    """Where a transcoder folder keeps its labels."""
    return Path(transcoders_dir) / LABELS_FILE


def load_labels(path: str | Path) -> FeatureLabels:
    """Read a labels file, or the LABELS_FILE of a transcoder folder; raises LabelError when unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelError(f"cannot read feature labels {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LabelError(f"{path} is not a {FORMAT} file")
    try:
        if doc["columns"] != list(FEATURE_COLUMNS):
            raise ValueError(f"columns {doc['columns']} instead of {list(FEATURE_COLUMNS)}")
        features = [
            FeatureLabel(
                layer=layer,
                index=index,
                density=density,
                label=label,
                contexts=[Context(*c) for c in contexts],
                promoted=[(t, v) for t, v in promoted],
                suppressed=[(t, v) for t, v in suppressed],
            )
            for layer, index, density, label, contexts, promoted, suppressed in doc["features"]
        ]
        return FeatureLabels(
            transcoder_set=doc["transcoder_set"],
            model=doc["model"],
            tokens=doc["tokens"],
            documents=doc["documents"],
            config=LabelConfig(**doc["config"]),
            features=features,
            logit_lens=doc["logit_lens"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelError(f"{path}: malformed feature labels ({exc!r})") from None


# ---- logit lens ------------------------------------------------------------------------------------


@torch.no_grad()
def logit_lens(
    transcoders: TranscoderSet, unembedding: torch.Tensor, layer: int, features: torch.Tensor
) -> torch.Tensor:
    """[n, vocab] direct logit effect of features of `layer` (see LOGIT_LENS)."""
    directions = transcoders.decoder_vectors(layer, features).sum(1)
    return directions.to(unembedding.dtype) @ unembedding.T


# ---- pass 1: heaps and density ---------------------------------------------------------------------


@dataclass
class _Heaps:
    """Per-feature top-k as tensors [n_layers, d_transcoder, k], plus firing counts [n_layers, d_tc]."""

    act: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    token: torch.Tensor
    fired: torch.Tensor

    @classmethod
    def empty(cls, n_layers: int, d_tc: int, k: int, device: torch.device) -> _Heaps:
        def full(value: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((n_layers, d_tc, k), value, dtype=dtype, device=device)

        return cls(
            act=full(0, torch.float32),
            doc=full(-1, torch.long),
            pos=full(-1, torch.long),
            token=full(-1, torch.long),
            fired=torch.zeros(n_layers, d_tc, dtype=torch.long, device=device),
        )

    def add(self, layer: int, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor):
        """Merge a chunk's activations [n_tokens, d_tc] (with per-token doc, pos, token id)."""
        self.fired[layer] += (acts > 0).sum(0)
        k = min(self.act.shape[-1], acts.shape[0])
        values, rows = acts.float().topk(k, dim=0)  # [k, d_tc]
        merged = torch.cat([self.act[layer], values.T], dim=1)
        keep_vals, keep = merged.topk(self.act.shape[-1], dim=1)
        for name, per_token in (("doc", doc), ("pos", pos), ("token", tok)):
            store = getattr(self, name)
            store[layer] = torch.cat([store[layer], per_token[rows].T], dim=1).gather(1, keep)
        self.act[layer] = keep_vals


def _chunks(tokenizer: Any, corpus: str | Path, config: LabelConfig) -> Iterator[list[tuple[int, list[int]]]]:
    """(document index, token ids) of the corpus in chunks of `texts_per_forward`, up to max_tokens."""
    chunk: list[tuple[int, list[int]]] = []
    seen = 0
    for doc, text in enumerate(iter_texts(corpus)):
        ids = tokenizer(text, truncation=True, max_length=config.context_length).input_ids
        chunk.append((doc, ids))
        seen += len(ids)
        if len(chunk) == config.texts_per_forward or seen >= config.max_tokens:
            yield chunk
            chunk = []
        if seen >= config.max_tokens:
            return
    if chunk:
        yield chunk


def _scan(
    model: nn.Module,
    tokenizer: Any,
    transcoders: TranscoderSet,
    corpus: str | Path,
    config: LabelConfig,
    *,
    progress: bool,
) -> tuple[_Heaps, int, int]:
    """Pass 1: (heaps, tokens seen, documents read); `progress` counts tokens of at most max_tokens."""
    adapter = adapter_for(model, hooks=hooks_of(transcoders))
    bos = getattr(tokenizer, "bos_token_id", None)
    device = transcoders.device
    heaps = _Heaps.empty(transcoders.n_layers, transcoders.d_transcoder, config.heap_size, device)
    tokens = documents = 0
    bar = Progress("labelling: corpus", total=config.max_tokens, unit="tokens", enabled=progress)
    with bar:
        for chunk in _chunks(tokenizer, corpus, config):
            documents = chunk[-1][0] + 1
            real = [(doc, ids) for doc, ids in chunk if len(ids) > (1 if ids[0] == bos else 0)]
            if real:
                tokens += _scan_chunk(model, adapter, transcoders, heaps, real, bos=bos)
            bar.advance(sum(len(ids) for _, ids in chunk))
    if tokens == 0:
        raise LabelError(f"corpus {corpus} has no token to label features on")
    return heaps, tokens, documents


def _scan_chunk(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    heaps: _Heaps,
    real: list[tuple[int, list[int]]],
    *,
    bos: int | None,
) -> int:
    """Add one chunk of (document, token ids) to the heaps; returns its tokens (a leading BOS left out)."""
    device = transcoders.device
    # the token order of capture(): row-major over texts, a leading BOS left out
    meta = torch.tensor(
        [
            (doc, p, t)
            for doc, ids in real
            for p, t in enumerate(ids)
            if not (p == 0 and bos is not None and t == bos)
        ],
        device=device,
    )
    x = capture(model, adapter, [ids for _, ids in real], bos_id=bos)[:, :, 0].to(device)
    for layer in range(transcoders.n_layers):
        heaps.add(layer, transcoders.encode(layer, x[:, layer]), meta[:, 0], meta[:, 1], meta[:, 2])
    return x.shape[0]


# ---- pass 2: context windows -----------------------------------------------------------------------


def _pieces(tokenizer: Any, text: str, config: LabelConfig) -> list[str]:
    """Each token's text (with the whitespace before it), so the pieces join to the encoded text."""
    enc = tokenizer(text, truncation=True, max_length=config.context_length, return_offsets_mapping=True)
    pieces, end = [], 0
    for _, stop in enc["offset_mapping"]:
        pieces.append(text[end:stop] if stop > end else "")  # "" for BOS and repeated spans
        end = max(end, stop)
    return pieces


def _windows(
    tokenizer: Any, corpus: str | Path, wanted: set[int], config: LabelConfig
) -> dict[int, list[str]]:
    """Pass 2: token pieces of the wanted documents."""
    out: dict[int, list[str]] = {}
    for doc, text in enumerate(iter_texts(corpus)):
        if doc in wanted:
            out[doc] = _pieces(tokenizer, text, config)
        if len(out) == len(wanted):
            break
    return out


def _context(pieces: list[str], pos: int, act: float, doc: int, config: LabelConfig) -> Context:
    start = max(0, pos - config.window_before)
    while start < pos and not pieces[start]:  # leave out BOS
        start += 1
    stop = min(len(pieces), pos + config.window_after + 1)
    return Context(tokens=pieces[start:stop], at=pos - start, act=act, doc=doc, pos=pos)


def rule_label(promoted: list[tuple[str, float]], fires_on: str | None, *, n: int = 3) -> str:
    """ "→ 'a', 'b', 'c' | fires on 'x'" (`n` promoted tokens; "never fires" for a dead feature)."""
    arrow = "→ " + ", ".join(repr(t) for t, _ in promoted[:n])
    return f"{arrow} | fires on {fires_on!r}" if fires_on is not None else f"{arrow} | never fires"


def label_features(
    model: nn.Module,
    tokenizer: Any,
    transcoders: TranscoderSet,
    *,
    corpus: str | Path,
    config: LabelConfig | None = None,
    model_name: str = "",
    progress: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> FeatureLabels:
    """Labels of every feature of `transcoders` from `corpus` (see the module docstring).

    config: settings (default LabelConfig()). model_name: recorded in the result. progress: show the
    corpus scan and the per-feature labelling on stderr (`circuitbase.progress`; default False).
    log: status lines.
    Raises LabelError for a corpus without tokens; TranscoderError when the set does not fit the model.
    """
    cfg = config or LabelConfig()
    adapter = adapter_for(model, hooks=hooks_of(transcoders))
    transcoders.validate_for(n_layers=adapter.n_layers, d_model=adapter.d_model, model_name=model_name)
    heaps, n_tokens, n_docs = _scan(model, tokenizer, transcoders, corpus, cfg, progress=progress)
    log(f"feature labels: scanned {n_tokens:,} tokens of {n_docs:,} documents")
    act, doc, pos, tok = (t.cpu() for t in (heaps.act, heaps.doc, heaps.pos, heaps.token))
    density = (heaps.fired.double() / n_tokens).cpu()
    shown = act[..., : cfg.top_contexts] > 0
    windows = _windows(tokenizer, corpus, set(doc[..., : cfg.top_contexts][shown].tolist()), cfg)
    device = transcoders.device
    unembedding = adapter.unembedding().detach().float().to(device)
    decode: dict[int, str] = {}  # token id -> its text, decoded once

    def text_of(token: int) -> str:
        if token not in decode:
            decode[token] = tokenizer.decode([token])
        return decode[token]

    features: list[FeatureLabel] = []
    n = cfg.logit_tokens
    n_features = transcoders.n_layers * transcoders.d_transcoder
    with Progress("labelling: features", total=n_features, unit="features", enabled=progress) as bar:
        for layer in range(transcoders.n_layers):
            for first in range(0, transcoders.d_transcoder, cfg.lens_batch):
                ids = torch.arange(
                    first, min(first + cfg.lens_batch, transcoders.d_transcoder), device=device
                )
                lens = logit_lens(transcoders, unembedding, layer, ids)
                up_v, up_i = (t.cpu() for t in lens.topk(n, dim=-1))
                down_v, down_i = (t.cpu() for t in lens.topk(n, dim=-1, largest=False))
                for row, f in enumerate(ids.tolist()):
                    fired = act[layer, f] > 0
                    counts = Counter(tok[layer, f][fired].tolist())
                    fires_on = text_of(counts.most_common(1)[0][0]) if counts else None
                    promoted = [
                        (text_of(i), v) for i, v in zip(up_i[row].tolist(), up_v[row].tolist(), strict=True)
                    ]
                    contexts = [
                        _context(windows[d], p, a, d, cfg)
                        for a, d, p in zip(
                            act[layer, f, : cfg.top_contexts].tolist(),
                            doc[layer, f, : cfg.top_contexts].tolist(),
                            pos[layer, f, : cfg.top_contexts].tolist(),
                            strict=True,
                        )
                        if a > 0
                    ]
                    features.append(
                        FeatureLabel(
                            layer=layer,
                            index=f,
                            density=float(density[layer, f]),
                            label=rule_label(promoted, fires_on),
                            contexts=contexts,
                            promoted=promoted,
                            suppressed=[
                                (text_of(i), v)
                                for i, v in zip(down_i[row].tolist(), down_v[row].tolist(), strict=True)
                            ],
                        )
                    )
                bar.advance(len(ids))

    return FeatureLabels(
        transcoder_set=transcoders.name,
        model=model_name,
        tokens=n_tokens,
        documents=n_docs,
        config=cfg,
        features=features,
    )
