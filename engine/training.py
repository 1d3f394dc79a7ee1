"""Train per-layer (with optional skip) or cross-layer transcoders on a model's MLP activations.

1. Stream texts from a corpus (every `eval_every`-th text is held out), tokenise, run the model and
   capture each layer's MLP input x_l and output m_l at every real token (BOS excluded).
2. Mix the captured tokens in an in-memory shuffle buffer (fill, shuffle, emit half, refill). With a
   skip connection, start it at the ridge least-squares linear map of the first batch (`skip_ridge`).
3. Per batch: reconstruct every layer's m_l; loss = sum over layers of MSE / Var(m_l) (so each layer's
   term is its fraction of variance unexplained) + a sparsity term (ReLU: L1 of acts * decoder norms;
   JumpReLU: L0 with a straight-through threshold gradient; TopK: none) + AuxK: features that have not
   fired for `dead_after_tokens` tokens reconstruct the residual error with their top `aux_k`
   pre-activations, which pulls dead features back into use. TopK stays sparse past the encoder's
   forward product: only the selected features' encoder rows get gradients, and k decoder rows per token
   and layer decode. Activations are captured without running the model past its last MLP.
4. Checkpoint every `checkpoint_every` steps (atomically, into `<out_dir>.checkpoints`); `resume`
   restores weights, optimiser and counters and fast-forwards the deterministic stream, so a resumed
   run is bit-identical.
5. Save with `TranscoderSet.save` and write metrics.json: per layer FVU, L0 and dead fraction on
   held-out tokens, and the replacement model's next-token loss increase and KL on held-out text.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter, adapter_for
from circuitbase.engine.corpus import iter_texts
from circuitbase.engine.models import resolve_device
from circuitbase.engine.replacement import hooked
from circuitbase.engine.transcoder_io import TranscoderConfig, TranscoderWeights
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.progress import Progress

KINDS = {"plt": "per_layer", "clt": "cross_layer"}


class TrainingError(ValueError):
    """Bad training settings, an unusable corpus or checkpoint, or a diverging run."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one transcoder training run (defaults: PLT with skip, TopK k=32, 8192 features)."""

    kind: str = "plt"  # "plt" (per-layer) or "clt" (cross-layer)
    activation: str = "topk"  # "topk" | "jumprelu" | "relu"
    d_transcoder: int = 8192
    k: int = 32  # active features per token (topk)
    skip: bool = True  # linear skip connection (plt only)
    skip_ridge: float = 0.1  # > 0: start the skip at the ridge least-squares fit on the first batch
    total_tokens: int = 10_000_000
    batch_tokens: int = 4096
    lr: float = 2e-4
    warmup_steps: int = 100
    decay_share: float = 0.2  # the last share of steps decays the learning rate linearly to 0
    l1_coefficient: float = 1e-3  # relu: weight of sum(acts * |W_dec|)
    l0_coefficient: float = 1e-2  # jumprelu: weight of the number of active features
    jumprelu_bandwidth: float = 0.05  # width of the straight-through kernel for the threshold gradient
    initial_threshold: float = 0.5  # jumprelu
    aux_k: int = 64  # dead features used by the AuxK loss
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 200_000  # a feature is dead once it has not fired for this many tokens
    context_length: int = 128
    texts_per_forward: int = 32
    buffer_tokens: int = 32_768  # float32 memory: tokens x n_layers x 2 x d_model x 4 bytes
    eval_every: int = 20  # every n-th corpus text is held out for metrics
    eval_tokens: int = 20_000
    checkpoint_every: int = 1000  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when present, else cpu
    name: str = "transcoders"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TrainingError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.activation not in ("topk", "jumprelu", "relu"):
            raise TrainingError(f"activation must be topk, jumprelu or relu, got {self.activation!r}")
        if self.activation == "topk" and not 0 < self.k <= self.d_transcoder:
            raise TrainingError(f"k must be in 1..d_transcoder ({self.d_transcoder}), got {self.k}")
        if min(self.batch_tokens, self.total_tokens, self.d_transcoder) <= 0:
            raise TrainingError("batch_tokens, total_tokens and d_transcoder must be positive")
        if self.buffer_tokens < 2 * self.batch_tokens:
            raise TrainingError("buffer_tokens must hold at least two batches")

    @property
    def steps(self) -> int:
        return math.ceil(self.total_tokens / self.batch_tokens)

    @property
    def has_skip(self) -> bool:
        return self.skip and self.kind == "plt"


# ---- activations -----------------------------------------------------------------------------------


class _Captured(Exception):
    """Raised from the last MLP's hook to end a capturing forward pass early."""


@torch.no_grad()
def capture(
    model: nn.Module, adapter: ModelAdapter, ids: list[list[int]], *, bos_id: int | None
) -> torch.Tensor:
    """MLP inputs and outputs of every real token: [n_tokens, n_layers, 2, d_model] (BOS left out)."""
    device = adapter.unembedding().device
    width = max(len(seq) for seq in ids)
    batch = torch.tensor(
        [list(seq) + [0] * (width - len(seq)) for seq in ids], dtype=torch.long, device=device
    )
    positions = torch.arange(width, device=device)
    mask = positions < torch.tensor([len(seq) for seq in ids], device=device)[:, None]
    keep = mask & ~((batch == bos_id) & (positions == 0)) if bos_id is not None else mask
    inputs: list[torch.Tensor] = [torch.empty(0, device=device)] * adapter.n_layers
    outputs: list[torch.Tensor] = [torch.empty(0, device=device)] * adapter.n_layers

    def on_in(layer: int, x: torch.Tensor) -> None:
        inputs[layer] = x

    def on_out(layer: int, m: torch.Tensor) -> None:
        outputs[layer] = m
        if layer == adapter.n_layers - 1:
            raise _Captured  # nothing after the last MLP is needed (the unembedding alone is ~20% of it)

    with hooked(adapter, on_mlp_input=on_in, on_mlp_output=on_out), contextlib.suppress(_Captured):
        model(batch, attention_mask=mask)
    per_layer = [torch.stack([x[keep], m[keep]], dim=1) for x, m in zip(inputs, outputs, strict=True)]
    return torch.stack(per_layer, dim=1).float()


class ActivationStream:
    """Deterministic shuffled batches [batch_tokens, n_layers, 2, d_model] of MLP activations."""

    def __init__(self, model: nn.Module, tokenizer: Any, corpus: str | Path, config: TrainConfig) -> None:
        self.model, self.tokenizer, self.corpus, self.config = model, tokenizer, corpus, config
        self.adapter = adapter_for(model)
        self.bos_id = getattr(tokenizer, "bos_token_id", None)

    def _texts(self, *, held_out: bool) -> Iterator[str]:
        every = self.config.eval_every
        for index, text in enumerate(iter_texts(self.corpus)):
            if (index % every == every - 1) == held_out:
                yield text

    def _tokenised(self, *, held_out: bool) -> Iterator[list[int]]:
        """Every text's token ids (cut at `context_length`), tokenised `texts_per_forward` texts per call."""
        group: list[str] = []
        for text in self._texts(held_out=held_out):
            group.append(text)
            if len(group) == self.config.texts_per_forward:
                yield from self.tokenizer(
                    group, truncation=True, max_length=self.config.context_length
                ).input_ids
                group = []
        if group:
            yield from self.tokenizer(group, truncation=True, max_length=self.config.context_length).input_ids

    def token_ids(self, *, held_out: bool, repeat: bool) -> Iterator[list[list[int]]]:
        """Chunks of `texts_per_forward` tokenised texts; the training stream cycles over the corpus."""
        while True:
            chunk: list[list[int]] = []
            seen, produced = 0, False
            for ids in self._tokenised(held_out=held_out):
                seen += 1
                if len(ids) > 1:
                    chunk.append(ids)
                if len(chunk) == self.config.texts_per_forward:
                    produced = True
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            if seen == 0:
                raise TrainingError(
                    f"corpus {self.corpus} has no {'held-out' if held_out else 'training'} texts "
                    f"(every {self.config.eval_every}th text is held out); add more text"
                )
            if not produced and not chunk:
                raise TrainingError(f"corpus {self.corpus}: no text has more than one token")
            if not repeat:
                return

    def held_out_ids(self, n_tokens: int) -> list[list[int]]:
        """Held-out tokenised texts holding about `n_tokens` tokens."""
        texts: list[list[int]] = []
        total = 0
        for chunk in self.token_ids(held_out=True, repeat=False):
            for ids in chunk:
                if total >= n_tokens:
                    return texts
                texts.append(ids)
                total += len(ids)
        return texts

    def batches(self) -> Iterator[torch.Tensor]:
        """Endless training batches; the same seed gives the same sequence of batches. Texts are captured
        in forwards of similar lengths (sorted within groups of `LENGTH_GROUP` forwards), which cuts the
        padding the model runs on; the shuffle buffer mixes them again."""
        cfg = self.config
        cpu = torch.device("cpu")  # the buffer lives in host memory; its shuffle is the same on every device
        gen = torch.Generator(device=cpu).manual_seed(cfg.seed)
        buffer: list[torch.Tensor] = []
        held = 0
        for chunk in _by_length(self.token_ids(held_out=False, repeat=True), group=LENGTH_GROUP):
            acts = capture(self.model, self.adapter, chunk, bos_id=self.bos_id).to(cpu)
            buffer.append(acts)
            held += acts.shape[0]
            if held < cfg.buffer_tokens:
                continue
            pool = torch.cat(buffer)
            buffer.clear()
            # batches gather through the permutation, so no shuffled copy of the pool is made
            order = torch.randperm(pool.shape[0], generator=gen, device=cpu)
            n_out = (pool.shape[0] // 2) // cfg.batch_tokens * cfg.batch_tokens
            for start in range(0, n_out, cfg.batch_tokens):
                yield pool[order[start : start + cfg.batch_tokens]]
            buffer, held = [pool[order[n_out:]]], pool.shape[0] - n_out
            del pool


LENGTH_GROUP = 8  # forwards whose texts `ActivationStream.batches` sorts by length together


def _by_length(chunks: Iterator[list[list[int]]], *, group: int) -> Iterator[list[list[int]]]:
    """The same chunks' texts, `group` chunks at a time sorted by length (stable) and cut into chunks of
    the first chunk's size again."""
    pending: list[list[list[int]]] = []
    for chunk in chunks:
        pending.append(chunk)
        if len(pending) == group:
            texts = sorted((text for part in pending for text in part), key=len)
            size = len(pending[0])
            yield from (texts[i : i + size] for i in range(0, len(texts), size))
            pending = []
    for chunk in pending:
        yield chunk


# ---- the trainable transcoders ---------------------------------------------------------------------


class _JumpReLU(torch.autograd.Function):
    """pre * (pre > theta); the threshold gets the straight-through (rectangle kernel) gradient."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.bandwidth / 2).to(grad.dtype)
        d_theta = -(theta / ctx.bandwidth) * near * grad
        return grad * (pre > theta), d_theta.sum_to_size(theta.shape), None


class _Step(torch.autograd.Function):
    """(pre > theta) as a number; straight-through gradient for theta only (for the L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return None, (-(1 / ctx.bandwidth) * near * grad).sum_to_size(theta.shape), None


class _TopKEncoder(torch.autograd.Function):
    """TopK encoding of inputs x [N, L, d], one layer at a time so each [N, F] block of pre-activations
    stays in cache and is never kept: per layer, pre = x W_enc^T + b_enc, the k largest entries
    (indices, values) and, given a `dead` [L, F] mask, the `n_aux` largest among dead features (for
    AuxK; entries past a layer's dead count come back as -inf). The backward writes only the selected
    encoder rows (O(N L (k + n_aux) d) rather than the dense O(N L F d)); x gets no gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,
        dead: torch.Tensor | None,
        n_aux: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        top: list[tuple[torch.Tensor, torch.Tensor]] = []
        aux: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in range(W_enc.shape[0]):
            pre = torch.addmm(b_enc[layer], x[:, layer], W_enc[layer].T)
            top.append(pre.topk(k, dim=-1))
            if dead is not None and n_aux > 0:
                aux.append(pre.masked_fill_(~dead[layer], -torch.inf).topk(n_aux, dim=-1))
        values, indices = (torch.stack(t, dim=1) for t in zip(*top, strict=True))
        if aux:
            aux_values, aux_indices = (torch.stack(t, dim=1) for t in zip(*aux, strict=True))
        else:
            aux_values, aux_indices = values[..., :0], indices[..., :0]
        ctx.save_for_backward(x, indices, aux_indices)
        ctx.shape = W_enc.shape
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor, _: None, aux_grad: torch.Tensor, __: None
    ) -> tuple[None, torch.Tensor, torch.Tensor, None, None, None]:
        x, indices, aux_indices = ctx.saved_tensors
        n_layers, n_features, _ = ctx.shape
        rows, grads = torch.cat([indices, aux_indices], dim=-1), torch.cat([grad, aux_grad], dim=-1)
        tokens = torch.arange(x.shape[0], device=x.device).repeat_interleave(rows.shape[-1])
        grad_W = torch.empty(ctx.shape, device=grad.device, dtype=grad.dtype)
        grad_b = torch.zeros(n_layers, n_features, device=grad.device, dtype=grad.dtype)
        for layer in range(n_layers):
            layer_rows, layer_grads = rows[:, layer].reshape(-1), grads[:, layer].reshape(-1)
            # d pre[n, f] / d W_enc[f] = x[n]: a sparse [F, N] matrix of the selected gradients times x
            selected = torch.sparse_coo_tensor(
                torch.stack([layer_rows, tokens]),
                layer_grads,
                (n_features, x.shape[0]),
                check_invariants=False,
            )
            grad_W[layer] = torch.sparse.mm(selected, x[:, layer])
            grad_b[layer].index_add_(0, layer_rows, layer_grads)
        return None, grad_W, grad_b, None, None, None


class Reconstruction(NamedTuple):
    """One forward pass of `TrainableTranscoders` on [N, L, d] inputs."""

    out: torch.Tensor  # [N, L, d] reconstruction, skip included
    fired: torch.Tensor  # [L, F] features active on some token
    l0: torch.Tensor  # mean active features per token and layer
    pre: torch.Tensor | None  # [N, L, F] pre-activations (ReLU, JumpReLU); TopK keeps none
    acts: torch.Tensor | None  # [N, L, F] activations (ReLU, JumpReLU); TopK keeps them sparse
    aux: tuple[torch.Tensor, torch.Tensor] | None  # AuxK (indices, values) [N, L, n_aux], if asked for


class TrainableTranscoders(nn.Module):
    """All layers' encoders and decoders as trainable parameters (layer-stacked where shapes allow)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        n_layers: int,
        d_model: int,
        out_mean: torch.Tensor,
        in_mean: torch.Tensor | None = None,
    ) -> None:
        """out_mean [L, d]: the MLP outputs' mean, b_dec's start; the parameters live on its device.
        in_mean [L, d]: the MLP inputs' mean; given, b_enc starts at -W_enc in_mean so pre-activations
        start centred (default: b_enc = 0). Random weights are drawn on the CPU from `config.seed`, so a
        seed starts from the same weights on every device."""
        super().__init__()
        self.config, self.n_layers, self.d_model = config, n_layers, d_model
        device, cpu = out_mean.device, torch.device("cpu")
        gen = torch.Generator(device=cpu).manual_seed(config.seed)
        f = config.d_transcoder
        enc = torch.randn(n_layers, f, d_model, generator=gen, device=cpu).to(device)
        enc = enc / enc.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(enc)
        start = (
            torch.zeros(n_layers, f, device=device)
            if in_mean is None
            else -torch.einsum("lfd,ld->lf", enc, in_mean.to(device))
        )
        self.b_enc = nn.Parameter(start)
        dec_scale = 0.1 / math.sqrt(d_model)
        if config.kind == "plt":
            self.W_dec = nn.ParameterList([nn.Parameter(enc[i].clone() * dec_scale) for i in range(n_layers)])
        else:
            self.W_dec = nn.ParameterList(
                nn.Parameter(
                    torch.randn(f, n_layers - i, d_model, generator=gen, device=cpu).to(device)
                    * dec_scale
                    / math.sqrt(n_layers)
                )
                for i in range(n_layers)
            )
        self.b_dec = nn.Parameter(out_mean.clone())
        self.log_threshold = (
            nn.Parameter(torch.full((n_layers, f), math.log(config.initial_threshold), device=device))
            if config.activation == "jumprelu"
            else None
        )
        self.W_skip = (
            nn.Parameter(torch.zeros(n_layers, d_model, d_model, device=device)) if config.has_skip else None
        )

    @torch.no_grad()
    def fit_skip(self, batch: torch.Tensor, *, ridge: float) -> None:
        """Start the skip connection and b_dec at each layer's ridge least-squares linear map from MLP
        input to MLP output on `batch` [N, L, 2, d] (penalty `ridge` x the mean input variance), so the
        features begin by learning what a linear map misses rather than the whole output."""
        assert self.W_skip is not None
        x, m = batch[:, :, 0].double(), batch[:, :, 1].double()
        x_mean, m_mean = x.mean(0), m.mean(0)
        xc, mc = x - x_mean, m - m_mean
        gram = torch.einsum("nld,nle->lde", xc, xc)
        penalty = ridge * gram.diagonal(dim1=1, dim2=2).mean(-1)
        gram = gram + penalty[:, None, None] * torch.eye(self.d_model, dtype=gram.dtype, device=gram.device)
        linear = torch.linalg.solve(gram, torch.einsum("nld,nle->lde", xc, mc))  # m ~ xc @ linear
        self.W_skip.copy_(linear.transpose(1, 2).float())
        self.b_dec.copy_((m_mean - torch.einsum("ld,lde->le", x_mean, linear)).float())

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, d] -> [N, L, F], a view of one layer-major [L, N, F] batched product (no permuting copy)."""
        return torch.baddbmm(
            self.b_enc.unsqueeze(1), x.transpose(0, 1), self.W_enc.transpose(1, 2)
        ).transpose(0, 1)

    def layer_index(self, indices: torch.Tensor) -> torch.Tensor:
        """The layer of each entry of per-layer feature `indices` [N, L, m], broadcast to their shape."""
        return torch.arange(self.n_layers, device=indices.device).view(1, -1, 1).expand_as(indices)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU or JumpReLU activations (TopK is handled sparsely in forward)."""
        if self.config.activation == "relu":
            return torch.relu(pre)
        assert self.log_threshold is not None
        return _JumpReLU.apply(pre, self.log_threshold.exp(), self.config.jumprelu_bandwidth)

    def decode_sparse(
        self, indices: torch.Tensor, values: torch.Tensor, *, bias: bool = True
    ) -> torch.Tensor:
        """decode() of activations given by their non-zero entries, `indices` and `values` [N, L, k]: a
        weighted sum of k decoder rows per token and layer (an embedding bag), so TopK training decodes
        in O(k) rather than O(F) per token, forward and backward."""
        n = indices.shape[0]
        written = [
            nn.functional.embedding_bag(
                indices[:, i], self.W_dec[i].flatten(1), per_sample_weights=values[:, i], mode="sum"
            ).view(n, -1, self.d_model)
            for i in range(self.n_layers)
        ]  # layer i writes to layer i (PLT) or to layers i.. (CLT)
        if self.config.kind == "plt":
            out = torch.cat(written, dim=1)
        else:
            out = torch.zeros(n, self.n_layers, self.d_model, device=values.device, dtype=values.dtype)
            for i, w in enumerate(written):
                out = out.clone()
                out[:, i:] += w
        return out + self.b_dec if bias else out

    def decode(self, acts: torch.Tensor, *, bias: bool = True) -> torch.Tensor:
        """[N, L, F] -> [N, L, d] (without the skip term)."""
        if self.config.kind == "plt":
            out = torch.stack([acts[:, i] @ self.W_dec[i] for i in range(self.n_layers)], dim=1)
        else:
            out = torch.zeros(acts.shape[0], self.n_layers, self.d_model, device=acts.device)
            for i in range(self.n_layers):
                out = out.clone()
                out[:, i:] += torch.einsum("nf,fod->nod", acts[:, i], self.W_dec[i])
        return out + self.b_dec if bias else out

    def forward(self, x: torch.Tensor, *, dead: torch.Tensor | None = None, n_aux: int = 0) -> Reconstruction:
        """Encode and reconstruct MLP inputs [N, L, d]; with a `dead` [L, F] mask, also select each
        token's `n_aux` dead features of largest pre-activation for the AuxK loss (default: none). TopK
        stays sparse (`_TopKEncoder`, then a decode of k rows per token and layer)."""
        aux: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.config.activation == "topk":
            values, indices, aux_values, aux_indices = _TopKEncoder.apply(
                x, self.W_enc, self.b_enc, self.config.k, dead, n_aux
            )
            values = torch.relu(values)
            out = self.decode_sparse(indices, values)
            on = values.detach() > 0
            fired = torch.zeros(self.n_layers, self.config.d_transcoder, dtype=torch.bool, device=x.device)
            fired[self.layer_index(indices)[on], indices[on]] = True
            pre = acts = None
            if dead is not None:
                aux = aux_indices, aux_values
        else:
            pre = self.pre_activations(x)
            acts = self.activate(pre)
            out = self.decode(acts)
            on = acts.detach() > 0
            fired = on.any(0)
            if dead is not None:  # as `_TopKEncoder`: live features masked to -inf, gradients to dead ones
                aux_values, aux_indices = torch.where(dead, pre, -torch.inf).topk(n_aux, dim=-1)
                aux = aux_indices, aux_values
        if self.W_skip is not None:
            out = out + torch.einsum("nld,led->nle", x, self.W_skip)
        return Reconstruction(out, fired, on.sum(-1).float().mean(), pre, acts, aux)

    def decoder_norms(self) -> torch.Tensor:
        """[L, F]: norm of each feature's decoder (all output layers together for a CLT)."""
        return torch.stack([w.flatten(1).norm(dim=1) for w in self.W_dec])

    def to_transcoder_set(self, *, model_name: str = "") -> TranscoderSet:
        cfg = self.config
        config = TranscoderConfig(
            kind=KINDS[cfg.kind],
            activation=cfg.activation,
            n_layers=self.n_layers,
            d_model=self.d_model,
            d_transcoder=cfg.d_transcoder,
            skip=cfg.has_skip,
            k=cfg.k if cfg.activation == "topk" else None,
            name=cfg.name,
            model_name=model_name,
        )
        weights = TranscoderWeights(
            W_enc=[w.detach().clone() for w in self.W_enc],
            b_enc=[b.detach().clone() for b in self.b_enc],
            W_dec=[w.detach().clone() for w in self.W_dec],
            b_dec=[b.detach().clone() for b in self.b_dec],
            threshold=None if self.log_threshold is None else [t.detach().exp() for t in self.log_threshold],
            W_skip=None if self.W_skip is None else [w.detach().clone() for w in self.W_skip],
        )
        return TranscoderSet(config, weights)


def training_loss(
    tc: TrainableTranscoders, batch: torch.Tensor, out_var: torch.Tensor, since_fired: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Total loss, its parts, and the [L, F] mask of features that fired in this batch."""
    cfg = tc.config
    x, target = batch[:, :, 0], batch[:, :, 1]
    dead = since_fired >= cfg.dead_after_tokens
    use_aux = cfg.aux_coefficient > 0 and bool(dead.any())
    n_aux = min(cfg.aux_k, int(dead.sum(-1).max())) if use_aux else 0
    out, fired, l0, pre, acts, aux_selected = tc(x, dead=dead if use_aux else None, n_aux=n_aux)
    error = target - out
    fvu = (error.pow(2).sum(-1).mean(0) / out_var).sum()
    loss = fvu
    parts = {"fvu": fvu.item() / tc.n_layers}
    if cfg.activation == "relu":
        assert acts is not None
        sparsity = (acts * tc.decoder_norms()).sum(-1).mean(0).sum()
        loss = loss + cfg.l1_coefficient * sparsity
    elif cfg.activation == "jumprelu":
        assert tc.log_threshold is not None
        penalty = _Step.apply(pre, tc.log_threshold.exp(), cfg.jumprelu_bandwidth).sum(-1).mean(0).sum()
        loss = loss + cfg.l0_coefficient * penalty
    if aux_selected is not None:
        indices, values = aux_selected
        values = torch.relu(values)  # -inf (past a layer's dead count) becomes 0
        aux_out = tc.decode_sparse(indices, values, bias=False)
        aux = ((error.detach() - aux_out).pow(2).sum(-1).mean(0) / out_var).sum()
        loss = loss + cfg.aux_coefficient * aux
        parts["aux"] = aux.item()
    parts["l0"] = l0.item()
    return loss, parts, fired


# ---- metrics ---------------------------------------------------------------------------------------


@torch.no_grad()
def layer_metrics(
    transcoders: TranscoderSet, batch: torch.Tensor, *, chunk: int = 2048
) -> list[dict[str, float]]:
    """Per layer on held-out activations [N, n_layers, 2, d_model]: fraction of variance unexplained, mean
    L0, and the share of features that never fire on these tokens (`unused_fraction`). Works `chunk`
    tokens at a time (default 2048), so dense activations of all layers never exist for the whole batch."""
    n_layers, device = transcoders.n_layers, transcoders.device
    residual = torch.zeros(n_layers, device=device, dtype=torch.float64)
    target_sum = torch.zeros(n_layers, transcoders.d_model, device=device, dtype=torch.float64)
    target_sq = torch.zeros(n_layers, device=device, dtype=torch.float64)
    active = torch.zeros(n_layers, device=device, dtype=torch.float64)
    fired = torch.zeros(n_layers, transcoders.d_transcoder, device=device, dtype=torch.bool)
    for part in batch.split(chunk):
        part = part.to(device)
        inputs = [part[:, layer, 0] for layer in range(n_layers)]
        acts = [transcoders.encode(layer, x) for layer, x in enumerate(inputs)]
        for layer, out in enumerate(transcoders.decode(acts)):  # one pass over all layers (O(L) for a CLT)
            skip = transcoders.skip(layer, inputs[layer])
            out = out if skip is None else out + skip
            target = part[:, layer, 1].double()
            residual[layer] += (target - out.double()).pow(2).sum()
            target_sum[layer] += target.sum(0)
            target_sq[layer] += target.pow(2).sum()
            on = acts[layer] > 0
            active[layer] += on.sum()
            fired[layer] |= on.any(0)
    n = batch.shape[0]
    total = target_sq - target_sum.pow(2).sum(-1) / n  # sum of squared deviations from the mean
    unused = 1.0 - fired.double().mean(-1)
    return [
        {
            "fvu": float(residual[i] / total[i]),
            "l0": float(active[i] / n),
            "unused_fraction": float(unused[i]),
        }
        for i in range(n_layers)
    ]


def evaluate_transcoders(
    model: nn.Module, tokenizer: Any, transcoders: TranscoderSet, *, corpus: str | Path, config: TrainConfig
) -> dict[str, Any]:
    """Held-out quality of any transcoder set for `model`: `layer_metrics` per layer and the
    `replacement_loss`, on the texts `config` holds out of `corpus` (every `eval_every`-th, about
    `eval_tokens` tokens), the same texts a `train_transcoders` run with `config` never trains on."""
    adapter = adapter_for(model)
    stream = ActivationStream(model, tokenizer, corpus, config)
    held_out = stream.held_out_ids(config.eval_tokens)
    step = config.texts_per_forward
    batch = torch.cat(
        [
            capture(model, adapter, held_out[i : i + step], bos_id=stream.bos_id)
            for i in range(0, len(held_out), step)
        ]
    )
    return {
        "layers": layer_metrics(transcoders, batch),
        "replacement": replacement_loss(model, transcoders, held_out, bos_id=stream.bos_id),
    }


@torch.no_grad()
def replacement_loss(
    model: nn.Module, transcoders: TranscoderSet, texts: list[list[int]], *, bos_id: int | None
) -> dict[str, float]:
    """Next-token loss of the model and of its replacement (every MLP output replaced by the transcoders'
    reconstruction, all layers at once; a leading BOS keeps its original MLP output), and KL(orig || repl)."""
    adapter = adapter_for(model)
    device = adapter.unembedding().device
    totals = {"loss": 0.0, "replacement_loss": 0.0, "kl": 0.0, "tokens": 0}
    for ids in texts:
        batch = torch.tensor(ids, device=device)[None]
        keep_first = bos_id is not None and ids[0] == bos_id
        acts: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []

        def on_in(layer: int, x: torch.Tensor, acts: list = acts, inputs: list = inputs) -> None:
            acts.append(transcoders.encode(layer, x))
            inputs.append(x)

        def on_out(
            layer: int,
            m: torch.Tensor,
            acts: list = acts,
            inputs: list = inputs,
            keep_first: bool = keep_first,
        ) -> torch.Tensor:
            out = transcoders.decode_layer(acts, layer)
            skip = transcoders.skip(layer, inputs[layer])
            out = (out if skip is None else out + skip).to(m.dtype)
            if keep_first:
                out[:, 0] = m[:, 0]
            return out

        clean = model(batch).logits[0, :-1].float().log_softmax(-1)
        with hooked(adapter, on_mlp_input=on_in, on_mlp_output=on_out):
            repl = model(batch).logits[0, :-1].float().log_softmax(-1)
        targets = batch[0, 1:]
        totals["loss"] += float(-clean.gather(-1, targets[:, None]).sum())
        totals["replacement_loss"] += float(-repl.gather(-1, targets[:, None]).sum())
        totals["kl"] += float((clean.exp() * (clean - repl)).sum())
        totals["tokens"] += int(targets.numel())
    n = max(totals["tokens"], 1)
    loss, repl_loss = totals["loss"] / n, totals["replacement_loss"] / n
    return {
        "loss": loss,
        "replacement_loss": repl_loss,
        "loss_increase": repl_loss - loss,
        "kl": totals["kl"] / n,
        "tokens": totals["tokens"],
    }


# ---- the training loop -----------------------------------------------------------------------------


def _lr_factor(step: int, config: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    decay_start = int(config.steps * (1 - config.decay_share))
    if step < decay_start:
        return warm
    return warm * max(0.0, (config.steps - step) / max(config.steps - decay_start, 1))


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where a run into `out_dir` keeps its checkpoints: the sibling folder `<out_dir>.checkpoints`
    (saving a transcoder set replaces its whole folder)."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.checkpoints")


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(checkpoint_dir(out_dir).glob("step_*.pt"))


def _save_checkpoint(out_dir: Path, state: dict[str, Any], keep: int) -> Path:
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:09d}.pt"
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in _checkpoints(out_dir)[:-keep]:
        old.unlink()
    return path


def train_transcoders(
    model: nn.Module,
    tokenizer: Any,
    *,
    corpus: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = False,
    model_name: str = "",
    log: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Train transcoders for `model` on `corpus`, save them with `TranscoderSet.save` into `out_dir` and
    write `out_dir/metrics.json`; returns the metrics.

    Args:
        config: settings (default TrainConfig()). resume: continue from the latest checkpoint in
        `checkpoint_dir(out_dir)` (default False: start afresh). progress: show progress on stderr
        (`circuitbase.progress`: a bar on a terminal, a line every 10 s in a log).
        model_name: recorded in the transcoder config. log: receives one-line status messages.
    Raises:
        TrainingError: bad settings, a corpus without text, a checkpoint of other settings, or a
        non-finite loss (the last checkpoint is left as it was).
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    stream = ActivationStream(model, tokenizer, corpus, cfg)
    stream.held_out_ids(1)  # fails early, before any training, when the corpus holds no held-out text
    batches = stream.batches()
    first = next(batches)
    out_mean, in_mean = first[:, :, 1].mean(0), first[:, :, 0].mean(0)
    out_var = first[:, :, 1].var(0).sum(-1).to(device)
    torch.manual_seed(cfg.seed)
    tc = TrainableTranscoders(
        cfg, n_layers=adapter.n_layers, d_model=adapter.d_model, out_mean=out_mean, in_mean=in_mean
    ).to(device)
    if cfg.has_skip and cfg.skip_ridge > 0:
        tc.fit_skip(first.to(device), ridge=cfg.skip_ridge)
    optimizer = torch.optim.Adam(tc.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    since_fired = torch.zeros(adapter.n_layers, cfg.d_transcoder, dtype=torch.long, device=device)
    step, elapsed = 0, 0.0
    history: list[list[float]] = []  # [step, mean training FVU] about 50 times per run
    existing = _checkpoints(out)
    if resume and existing:
        state = torch.load(existing[-1], map_location=device, weights_only=False)
        if state["config"] != asdict(cfg):
            raise TrainingError(f"checkpoint {existing[-1]} was made with other settings: {state['config']}")
        tc.load_state_dict(state["transcoders"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        since_fired, step, elapsed = state["since_fired"].to(device), state["step"], state["elapsed"]
        history = state["history"]
        out_var = state["out_var"].to(device)
        for _ in range(step - 1):  # the stream is deterministic: skip what the checkpoint has seen
            next(batches)
        log(f"resumed from {existing[-1]} at step {step}")
    elif existing:
        raise TrainingError(f"{checkpoint_dir(out)} already has checkpoints; pass resume or use a new folder")
    pending: torch.Tensor | None = first if step == 0 else None
    parts: dict[str, float] = {"fvu": float("nan"), "l0": 0.0}
    bar = Progress("training transcoders", total=cfg.steps, unit="steps", completed=step, enabled=progress)
    with bar:
        started = time.perf_counter() - elapsed
        while step < cfg.steps:
            batch = (pending if pending is not None else next(batches)).to(device)
            pending = None
            loss, parts, fired = training_loss(tc, batch, out_var, since_fired)
            if not torch.isfinite(loss):
                last = _checkpoints(out)
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at step {step}; lower the learning rate ({cfg.lr}). "
                    f"Last checkpoint left intact: {last[-1] if last else 'none written yet'}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            since_fired = torch.where(fired, 0, since_fired + batch.shape[0])
            step += 1
            if step % max(1, cfg.steps // 50) == 0 or step == 1:
                history.append([step, parts["fvu"]])
            elapsed = time.perf_counter() - started
            tok_s = step * cfg.batch_tokens / elapsed
            bar.update(
                completed=step, info=f"{tok_s:,.0f} tok/s, fvu {parts['fvu']:.3f}, l0 {parts['l0']:.1f}"
            )
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                state = {
                    "config": asdict(cfg),
                    "transcoders": tc.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "since_fired": since_fired.cpu(),
                    "out_var": out_var.cpu(),
                    "step": step,
                    "elapsed": elapsed,
                    "history": history,
                }
                _save_checkpoint(out, state, cfg.keep_checkpoints)
            if step % 500 == 0:
                log(f"transcoder step {step}/{cfg.steps}: fvu {parts['fvu']:.4f} l0 {parts['l0']:.1f}")
    transcoders = tc.to_transcoder_set(model_name=model_name)
    transcoders.save(out)
    held_out_quality = evaluate_transcoders(model, tokenizer, transcoders, corpus=corpus, config=cfg)
    dead = (since_fired >= cfg.dead_after_tokens).float().mean(-1)
    per_layer = [{**m, "dead_fraction": float(dead[i])} for i, m in enumerate(held_out_quality["layers"])]
    metrics = {
        "config": asdict(cfg),
        "device": str(device),
        "steps": step,
        "tokens": step * cfg.batch_tokens,
        "train_seconds": elapsed,
        "tokens_per_second": step * cfg.batch_tokens / max(elapsed, 1e-9),
        "final_train_loss": parts,
        "history": history,
        "layers": per_layer,
        "replacement": held_out_quality["replacement"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics
