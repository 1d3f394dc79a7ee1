"""The local replacement model of one prompt.

1. Run the model once on the prompt while the `Freezer` records attention patterns and norm scales.
   Hooks capture each layer's transcoder input x_l and output m_l at the transcoder set's hook points
   (`adapters.FeatureHooks`; "MLP input/output" below), the residual stream entering the first block
   (the token-embedding nodes' vectors) and the logits.
2. Encode every x_l with the transcoders: activations a_l (position 0 zeroed when it holds BOS, as
   circuit-tracer does: the attention sink is a constant, not an explanation).
3. Reconstruct r_l = decode(a)_l + b_dec_l + skip_l(x_l) and keep the error e_l = m_l - r_l, so that
   r_l + e_l = m_l and the replacement model's logits equal the original model's exactly.

Everything downstream (attribution, interventions, exactness tests) starts from this `ReplacementState`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitbase.engine.adapters import FeatureHooks, ModelAdapter
from circuitbase.engine.freezing import Freezer, normalized_input
from circuitbase.engine.transcoders import TranscoderSet


@dataclass
class ReplacementState:
    """What one clean, recorded forward pass of a prompt leaves behind (batch dimension dropped)."""

    input_ids: torch.Tensor  # [T]
    mlp_inputs: list[torch.Tensor]  # per layer [T, d]
    mlp_outputs: list[torch.Tensor]  # per layer [T, d]
    embeddings: torch.Tensor  # [T, d] residual stream entering the first block
    activations: list[torch.Tensor]  # per layer [T, d_tc], position 0 zeroed when it is BOS
    reconstructions: list[torch.Tensor]  # per layer [T, d] (decoder + b_dec + skip)
    errors: list[torch.Tensor]  # per layer [T, d] = mlp_outputs - reconstructions
    logits: torch.Tensor  # [1, vocab]: the last position's
    freezer: Freezer
    zeroed_positions: int  # leading positions whose features and errors are constants, not nodes

    @property
    def n_positions(self) -> int:
        return int(self.input_ids.numel())


def _hidden_states_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_hidden_states(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


@contextmanager
def hooked(
    adapter: ModelAdapter,
    *,
    on_embeddings: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    on_mlp_input: Callable[[int, torch.Tensor], None] | None = None,
    on_mlp_output: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    on_unembed_input: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[None]:
    """Install the hooks the replacement model needs for the duration of the block.

    `on_mlp_input` sees the transcoder input and `on_mlp_output` the transcoder output at the hook points
    `adapter` is bound to (`ModelAdapter.feature_input` / `feature_output`). `on_embeddings` and
    `on_mlp_output` may return a tensor that replaces the value in the forward.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []

    if on_embeddings is not None:

        def embed_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            new = on_embeddings(_hidden_states_arg(args, kwargs))
            return None if new is None else _replace_hidden_states(args, kwargs, new)

        handles.append(adapter.first_block().register_forward_pre_hook(embed_hook, with_kwargs=True))

    for layer in range(adapter.n_layers):
        if on_mlp_input is not None:
            module, site = adapter.feature_input(layer)

            def in_hook(
                module: nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                layer: int = layer,
                site: str = site,
            ) -> None:
                x = _hidden_states_arg(args, kwargs)
                on_mlp_input(layer, x if site == "input" else normalized_input(adapter, module, x))

            handles.append(module.register_forward_pre_hook(in_hook, with_kwargs=True))
        if on_mlp_output is not None:

            def out_hook(_m: nn.Module, _args: Any, output: torch.Tensor, layer: int = layer) -> Any:
                return on_mlp_output(layer, output)

            handles.append(adapter.feature_output(layer).register_forward_hook(out_hook))

    if on_unembed_input is not None:

        def unembed_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            on_unembed_input(args[0])

        handles.append(adapter.unembed_module().register_forward_pre_hook(unembed_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def mlps_bypassed(adapter: ModelAdapter) -> Iterator[None]:
    """Skip the real MLP computations (their output is replaced anyway): each MLP returns zeros.

    The hooks still see the MLP input, and `on_mlp_output` still replaces what reaches the residual
    stream; without this the linear forward would keep every MLP's activations for the backward pass.
    """
    modules = [adapter.mlp_in_module(layer) for layer in range(adapter.n_layers)]

    def zeros(x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(x)

    for module in modules:
        module.forward = zeros
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def hooks_of(transcoders: TranscoderSet) -> FeatureHooks:
    """The hook names a transcoder set reads from and writes to."""
    return FeatureHooks(input=transcoders.config.input_hook, output=transcoders.config.output_hook)


def zeroed_positions_for(input_ids: torch.Tensor, adapter: ModelAdapter) -> int:
    """1 when the prompt starts with the model's BOS token (its features become constants), else 0."""
    bos = adapter.bos_token_id
    return int(bos is not None and input_ids.numel() > 0 and int(input_ids[0]) == bos)


@torch.no_grad()
def build_replacement_state(
    model: nn.Module, adapter: ModelAdapter, transcoders: TranscoderSet, input_ids: torch.Tensor
) -> ReplacementState:
    """Run the clean, recorded forward pass of one prompt and derive activations and errors.

    `adapter` must be bound to the transcoder set's hooks (`adapter.with_hooks(hooks_of(transcoders))`).
    """
    if input_ids.dim() != 1:
        raise ValueError(
            f"expected one prompt's token ids as a 1-D tensor, got shape {tuple(input_ids.shape)}"
        )
    if adapter.hooks != hooks_of(transcoders):
        raise ValueError(
            f"the adapter reads/writes at {adapter.hooks.input}/{adapter.hooks.output} but the transcoder "
            f"set at {transcoders.config.input_hook}/{transcoders.config.output_hook}; "
            "use adapter.with_hooks(hooks_of(transcoders))"
        )
    n_layers = adapter.n_layers
    mlp_in: list[torch.Tensor | None] = [None] * n_layers
    mlp_out: list[torch.Tensor | None] = [None] * n_layers
    captured: dict[str, torch.Tensor] = {}

    def keep_embeddings(h: torch.Tensor) -> None:
        captured["embeddings"] = h[0].detach().clone()

    def keep_in(layer: int, x: torch.Tensor) -> None:
        mlp_in[layer] = x[0].detach().clone()

    def keep_out(layer: int, m: torch.Tensor) -> None:
        mlp_out[layer] = m[0].detach().clone()

    freezer = Freezer(model, adapter)
    device = adapter.unembedding().device
    with (
        freezer.record(),
        hooked(adapter, on_embeddings=keep_embeddings, on_mlp_input=keep_in, on_mlp_output=keep_out),
    ):
        # the last position's logits only: a [T, vocab] block is large and nothing reads the others
        logits = model(input_ids[None].to(device), logits_to_keep=1, use_cache=False).logits[0].detach()

    zeroed = zeroed_positions_for(input_ids, adapter)
    inputs = [x for x in mlp_in if x is not None]
    outputs = [m for m in mlp_out if m is not None]
    if len(inputs) != n_layers or len(outputs) != n_layers:
        raise RuntimeError("the model's forward did not pass through every MLP hook point")
    activations = []
    for layer, x in enumerate(inputs):
        acts = transcoders.encode(layer, x.to(transcoders.dtype))
        acts[:zeroed] = 0
        activations.append(acts)
    decoded = transcoders.decode(activations)
    reconstructions = []
    for layer, x in enumerate(inputs):
        skip = transcoders.skip(layer, x.to(transcoders.dtype))
        recon = decoded[layer] if skip is None else decoded[layer] + skip
        reconstructions.append(recon.to(x.dtype))
    errors = [m - r for m, r in zip(outputs, reconstructions, strict=True)]
    return ReplacementState(
        input_ids=input_ids.detach().cpu(),
        mlp_inputs=inputs,
        mlp_outputs=outputs,
        embeddings=captured["embeddings"],
        activations=activations,
        reconstructions=reconstructions,
        errors=errors,
        logits=logits,
        freezer=freezer,
        zeroed_positions=zeroed,
    )
