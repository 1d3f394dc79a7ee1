"""Transcoders that replace a model's MLPs: per-layer (PLT, optional linear skip) and cross-layer (CLT).

A feature of layer i reads the MLP input x_i (after the pre-MLP norm):
    pre_i  = x_i @ W_enc_i.T + b_enc_i;  acts_i = activation(pre_i)   (ReLU, JumpReLU or TopK)
It writes to the MLP output of layer i (PLT) or of every layer l >= i (CLT):
    PLT: out_l = acts_l @ W_dec_l + b_dec_l (+ x_l @ W_skip_l.T)
    CLT: out_l = sum_{i <= l} acts_i @ W_dec_i[:, l - i] + b_dec_l
Weights load from every layout circuit-tracer reads (folders, presets, the Hub: see `transcoder_io`)
and save to its own folder layout.

Memory: weights may be stored in bfloat16 (or float16); computation then runs in float32 (`dtype`), each
weight converted as it is used (a layer's encoder, or only the decoder rows of active features). With
`offload_decoders`, decoders stay in CPU memory (pinned when CUDA is present) and only the rows in use
are moved to the set's device.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from circuitbase.engine import activations
from circuitbase.engine.transcoder_io import (
    ModelFit,
    TranscoderConfig,
    TranscoderError,
    TranscoderWeights,
    read_transcoders,
    write_transcoders,
)
from circuitbase.engine.transcoder_sources import TranscoderSource

__all__ = ["ModelFit", "TranscoderConfig", "TranscoderError", "TranscoderSet"]
_HALF = (torch.bfloat16, torch.float16)


def _frozen(tensors: list[torch.Tensor]) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(t, requires_grad=False) for t in tensors)


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in CPU memory, pinned when CUDA is present (so copies to the GPU can overlap)."""
    tensor = tensor.detach().cpu()
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


class TranscoderSet(nn.Module):
    """All transcoder weights of one model, one entry per layer, as (frozen) parameters of this module.

    offload_decoders: keep W_dec in CPU memory, outside the module's parameters (`.to()` leaves it
    there), and move only the rows in use (default False).
    """

    W_dec: nn.ParameterList | list[torch.Tensor]

    def __init__(
        self, config: TranscoderConfig, weights: TranscoderWeights, *, offload_decoders: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        _check_weights(config, weights)
        self.offload_decoders = offload_decoders
        self.W_enc = _frozen(weights.W_enc)
        self.b_enc = _frozen(weights.b_enc)
        self.W_dec = [_host(w) for w in weights.W_dec] if offload_decoders else _frozen(weights.W_dec)
        self.b_dec = _frozen(weights.b_dec)
        self.threshold = _frozen(weights.threshold) if weights.threshold is not None else None
        self.W_skip = _frozen(weights.W_skip) if weights.W_skip is not None else None

    # -- shape of the set ---------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def d_transcoder(self) -> int:
        return self.config.d_transcoder

    @property
    def cross_layer(self) -> bool:
        return self.config.kind == "cross_layer"

    @property
    def has_skip(self) -> bool:
        return self.config.skip

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the computation: float32 for weights stored in 16 bits, else the weights' own."""
        stored = self.storage_dtype
        return torch.float32 if stored in _HALF else stored

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the weights are held in."""
        return self.b_enc[0].dtype

    @property
    def _paged(self) -> bool:
        """Whether decoders are used row by row (offloaded, or stored in another dtype than computed)."""
        return self.offload_decoders or self.storage_dtype != self.dtype

    def _weight(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the set's device in the computation dtype (no copy when it already is)."""
        return tensor.to(device=self.device, dtype=self.dtype, non_blocking=True)

    @property
    def device(self) -> torch.device:
        return self.b_enc[0].device

    def extra_repr(self) -> str:
        c = self.config
        k = f", k={c.k}" if c.k is not None else ""
        return (
            f"{c.kind}, {c.activation}{k}, n_layers={c.n_layers}, d_model={c.d_model}, "
            f"d_transcoder={c.d_transcoder}, skip={c.skip}, name={c.name!r}, "
            f"storage={self.storage_dtype}, offload_decoders={self.offload_decoders}"
        )

    # -- computation ---------------------------------------------------------------------------------

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> [..., d_transcoder]: x @ W_enc[layer].T + b_enc[layer]."""
        return nn.functional.linear(
            x.to(self.dtype), self._weight(self.W_enc[layer]), self._weight(self.b_enc[layer])
        )

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """The set's nonlinearity along the last dimension (JumpReLU uses layer `layer`'s thresholds)."""
        threshold = self._weight(self.threshold[layer]) if self.threshold is not None else None
        return activations.activate(self.config.activation, pre, threshold=threshold, k=self.config.k)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of layer `layer`: activate(pre_activations(x)), [..., d_transcoder]."""
        return self.activate(layer, self.pre_activations(layer, x))

    def encoder_vectors(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """[n] feature ids -> [n, d_model] W_enc rows, so pre = x . row + b_enc."""
        return self._weight(self.W_enc[layer][features])

    def decoder_vectors(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """[n] feature ids -> [n, n_out, d_model]; n_out = n_layers - layer (CLT: layers layer..), 1 (PLT)."""
        decoder = self.W_dec[layer]
        rows = self._weight(decoder[features.to(decoder.device)])
        return rows if self.cross_layer else rows.unsqueeze(1)

    def _written(self, layer: int, acts: torch.Tensor, output: int | None = None) -> torch.Tensor:
        """What layer `layer`'s features write, acts [..., d_tc] -> [..., n_out, d_model] (n_out: as in
        `decoder_vectors`), or [..., d_model] for one output offset `output` of a CLT; no decoder bias.
        Paged sets multiply by the decoder rows of the features active somewhere in `acts` only."""
        acts = acts.to(self.dtype)
        decoder = self.W_dec[layer]
        if self._paged:
            active = (acts != 0).flatten(0, -2).any(0).nonzero().squeeze(1)
            acts, decoder = acts[..., active], self._weight(decoder[active.to(decoder.device)])
        if not self.cross_layer:
            return (acts @ decoder).unsqueeze(-2)
        if output is not None:
            return acts @ decoder[:, output]
        return (acts @ decoder.flatten(1)).unflatten(-1, (self.n_layers - layer, self.d_model))

    def decode(self, acts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer activations [..., d_transcoder] -> per-layer outputs [..., d_model] (no skip term)."""
        self._check_layers("acts", acts)
        if not self.cross_layer:
            return [self._written(i, a)[..., 0, :] + self._weight(self.b_dec[i]) for i, a in enumerate(acts)]
        outputs: list[torch.Tensor] = [self._weight(b) for b in self.b_dec]
        for i, a in enumerate(acts):
            written = self._written(
                i, a
            )  # one matmul per source layer: [..., d_tc] @ [d_tc, n_out * d_model]
            for offset in range(self.n_layers - i):
                outputs[i + offset] = outputs[i + offset] + written[..., offset, :]
        return outputs

    def decode_layer(self, acts: list[torch.Tensor], layer: int) -> torch.Tensor:
        """Layer `layer`'s output [..., d_model] (no skip term) from the activations of layers 0..layer
        (`acts` may stop there): what `decode(acts)[layer]` gives, without decoding the other layers."""
        if len(acts) <= layer:
            raise TranscoderError(f"layer {layer} needs activations of layers 0-{layer}, got {len(acts)}")
        out = self._weight(self.b_dec[layer])
        if not self.cross_layer:
            return self._written(layer, acts[layer])[..., 0, :] + out
        for i in range(layer + 1):
            out = out + self._written(i, acts[i], output=layer - i)
        return out

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """x @ W_skip[layer].T, or None for a set without skip connection."""
        if self.W_skip is None:
            return None
        return x.to(self.dtype) @ self._weight(self.W_skip[layer]).T

    def reconstruct(self, mlp_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Full replacement MLP output per layer: decode(encode each layer) + skip."""
        self._check_layers("mlp_inputs", mlp_inputs)
        outputs = self.decode([self.encode(i, x) for i, x in enumerate(mlp_inputs)])
        if self.W_skip is not None:
            outputs = [
                out + self.skip(i, x) for i, (out, x) in enumerate(zip(outputs, mlp_inputs, strict=True))
            ]
        return outputs

    def _check_layers(self, what: str, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != self.n_layers:
            raise TranscoderError(
                f"{what}: expected one tensor per layer ({self.n_layers}), found {len(tensors)}"
            )

    def validate_for(self, *, n_layers: int, d_model: int, model_name: str = "") -> None:
        """Raise TranscoderError unless the set fits a model with `n_layers` layers of width `d_model`."""
        fit = ModelFit(n_layers=n_layers, d_model=d_model, model_name=model_name)
        fit.check(self.name, n_layers=self.n_layers, d_model=self.d_model)

    # -- files ---------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        spec: str | Path | TranscoderSource,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload_decoders: bool = False,
        fit: ModelFit | None = None,
    ) -> TranscoderSet:
        """Load a set: a folder or config file, a preset name, an hf:// URI or a Hub repo id (see
        `transcoder_io`), fetching Hub files into the Hugging Face cache layer by layer.

        device: where the weights live (default cpu). dtype: how they are stored (default float32;
        bfloat16 halves the memory, computation stays float32). offload_decoders: keep W_dec in CPU
        memory and move only the rows in use to `device` (default False). fit: the model's shape,
        checked before weights are read or downloaded (default: not checked; see `validate_for`).
        """
        decoder_device = "cpu" if offload_decoders else None
        config, weights = read_transcoders(
            spec, device=device, dtype=dtype, decoder_device=decoder_device, fit=fit
        )
        return cls(config, weights, offload_decoders=offload_decoders)

    def weights(self, *, dtype: torch.dtype | None = None) -> TranscoderWeights:
        """The set's tensors per layer, as stored (or converted to `dtype`; default: as stored)."""

        def plain(params: nn.ParameterList | list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            return None if params is None else [p.data if dtype is None else p.data.to(dtype) for p in params]

        return TranscoderWeights(
            W_enc=plain(self.W_enc),
            b_enc=plain(self.b_enc),
            W_dec=plain(self.W_dec),
            b_dec=plain(self.b_dec),
            threshold=plain(self.threshold),
            W_skip=plain(self.W_skip),
        )

    def save(self, path: str | Path) -> Path:
        """Write config.yaml + safetensors in circuit-tracer's format, atomically; returns the folder."""
        return write_transcoders(path, self.config, self.weights())

    @classmethod
    def random(
        cls,
        *,
        n_layers: int,
        d_model: int,
        d_transcoder: int,
        cross_layer: bool = False,
        activation: str = "jumprelu",
        skip: bool = False,
        k: int = 32,
        seed: int = 0,
        name: str = "random",
        device: str | torch.device = "cpu",
    ) -> TranscoderSet:
        """A random float32 set for tests and demos (defaults: PLT, jumprelu, no skip, k=32 for topk, seed 0,
        on the CPU). The weights are drawn on the CPU from `seed` and then moved to `device`, so a seed gives
        the same set on every device.

        Encoder rows are unit vectors, so for inputs with unit variance per dimension each pre-activation is
        ~N(0, 1): thresholds (positive, ~1.15) and the ReLU bias (-1.15) leave ~12% of features active.
        """
        config = TranscoderConfig(
            kind="cross_layer" if cross_layer else "per_layer",
            activation=activation,
            k=k if activation == "topk" else None,
            n_layers=n_layers,
            d_model=d_model,
            d_transcoder=d_transcoder,
            skip=skip,
            name=name,
        )
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen)

        directions = [randn(d_transcoder, d_model) for _ in range(n_layers)]
        cut = 1.15
        weights = TranscoderWeights(
            W_enc=[d / d.norm(dim=1, keepdim=True) for d in directions],
            b_enc=[
                0.1 * randn(d_transcoder) - (cut if activation == "relu" else 0.0) for _ in range(n_layers)
            ],
            W_dec=[
                randn(d_transcoder, n_layers - i, d_model) if cross_layer else randn(d_transcoder, d_model)
                for i in range(n_layers)
            ],
            b_dec=[0.01 * randn(d_model) for _ in range(n_layers)],
        )
        weights.W_dec = [w / math.sqrt(d_transcoder) for w in weights.W_dec]
        if activation == "jumprelu":
            weights.threshold = [cut + 0.1 * torch.rand(d_transcoder, generator=gen) for _ in range(n_layers)]
        if skip:
            weights.W_skip = [randn(d_model, d_model) * (0.05 / math.sqrt(d_model)) for _ in range(n_layers)]
        return cls(config, weights).to(device)


def _check_weights(config: TranscoderConfig, weights: TranscoderWeights) -> None:
    """Raise TranscoderError unless every tensor has the shape `config` implies."""
    n, d_tc, d_model = config.n_layers, config.d_transcoder, config.d_model
    expected: dict[str, tuple[list[torch.Tensor] | None, list[tuple[int, ...]] | None]] = {
        "W_enc": (weights.W_enc, [(d_tc, d_model)] * n),
        "b_enc": (weights.b_enc, [(d_tc,)] * n),
        "W_dec": (
            weights.W_dec,
            [(d_tc, n - i, d_model) for i in range(n)]
            if config.kind == "cross_layer"
            else [(d_tc, d_model)] * n,
        ),
        "b_dec": (weights.b_dec, [(d_model,)] * n),
        "threshold": (weights.threshold, [(d_tc,)] * n if config.activation == "jumprelu" else None),
        "W_skip": (weights.W_skip, [(d_model, d_model)] * n if config.skip else None),
    }
    for name, (tensors, shapes) in expected.items():
        found = None if tensors is None else [tuple(t.shape) for t in tensors]
        if found != shapes:
            raise TranscoderError(f"{name}: expected per-layer shapes {shapes}, found {found} ({config})")
