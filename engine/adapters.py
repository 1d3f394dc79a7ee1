"""Thin per-family views of a Hugging Face causal LM: where its blocks, MLPs, norms and unembedding live.

The base class describes the Llama layout (``model.model.layers[i].{input_layernorm, self_attn,
post_attention_layernorm, mlp}``, ``model.model.norm``, ``model.lm_head``); subclasses override only
what differs (Gemma's extra post-norms and softcap, GPT-2's ``transformer.h`` naming and LayerNorm).

An adapter is bound to the hook names of the transcoder set it serves (`FeatureHooks`, circuit-tracer's
``feature_input_hook`` / ``feature_output_hook``). Their meaning, as circuit-tracer 0.5.0 reads them
(its default TransformerLens backend maps every name below for every family here; its nnsight backend
maps a subset per architecture, always with the same meaning):

- ``mlp.hook_in``: the MLP module's input (after the pre-MLP norm, weight included);
- ``ln2.hook_normalized``: the pre-MLP norm's input times its normalisation factor, before the norm's
  weight (RMSNorm: ``x / rms(x)``, also for Gemma's ``(1 + w)`` norms; LayerNorm: ``(x - mean) / std``,
  before weight and bias);
- ``hook_resid_mid``: the residual stream entering the pre-MLP norm;
- ``mlp.hook_out``: the MLP module's output (for Gemma, before ``post_feedforward_layernorm``);
- ``hook_mlp_out``: what the MLP adds to the residual stream (for Gemma, after
  ``post_feedforward_layernorm``; elsewhere the MLP module's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

NormStyle = Literal["rms", "rms_one_plus", "layernorm"]
InputSite = Literal["input", "normalized"]  # a module's input, or a norm's input times its scale

INPUT_HOOKS = ("mlp.hook_in", "ln2.hook_normalized", "hook_resid_mid")  # the first is the default
OUTPUT_HOOKS = ("mlp.hook_out", "hook_mlp_out")  # the first is the default


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter, or the adapter has no mapping for a hook name."""


@dataclass(frozen=True)
class FeatureHooks:
    """Where a transcoder set reads (``input``) and writes (``output``), as circuit-tracer hook names.

    Defaults: ``mlp.hook_in`` and ``mlp.hook_out`` (the MLP module's input and output).
    """

    input: str = INPUT_HOOKS[0]
    output: str = OUTPUT_HOOKS[0]


class ModelAdapter:
    """Llama-layout adapter; also used as-is for SmolLM2, Qwen 2 and Qwen 3.

    ``norm_style`` tells the freezer the normalisation formula: ``rms`` is ``w * (x / rms(x))``,
    ``rms_one_plus`` is Gemma's ``(1 + w) * (x / rms(x))``, ``layernorm`` is ``w * (x - mean) / std + b``.
    ``input_hooks`` / ``output_hooks``: the hook names this family maps (see the module docstring);
    any other name raises UnsupportedModelError rather than being guessed.
    """

    family: ClassVar[str] = "llama"
    norm_style: ClassVar[NormStyle] = "rms"
    block_norm_names: ClassVar[tuple[str, ...]] = ("input_layernorm", "post_attention_layernorm")
    attention_name: ClassVar[str] = "self_attn"
    pre_mlp_norm_name: ClassVar[str] = "post_attention_layernorm"
    input_hooks: ClassVar[tuple[str, ...]] = INPUT_HOOKS
    output_hooks: ClassVar[tuple[str, ...]] = OUTPUT_HOOKS

    def __init__(self, model: PreTrainedModel, *, hooks: FeatureHooks = FeatureHooks()) -> None:
        self.model = model
        config = model.config
        self.n_layers: int = config.num_hidden_layers
        self.d_model: int = config.hidden_size
        self.vocab_size: int = config.vocab_size
        self.bos_token_id: int | None = getattr(config, "bos_token_id", None)
        for key, name, mapped in (
            ("feature_input_hook", hooks.input, self.input_hooks),
            ("feature_output_hook", hooks.output, self.output_hooks),
        ):
            if name not in mapped:
                raise UnsupportedModelError(
                    f"{key} {name!r} has no mapping for the {self.family} family; mapped: {', '.join(mapped)}"
                )
        self.hooks = hooks

    def with_hooks(self, hooks: FeatureHooks) -> ModelAdapter:
        """The same model's adapter bound to other hook names (self when they are already these)."""
        return self if hooks == self.hooks else type(self)(self.model, hooks=hooks)

    def _base(self) -> nn.Module:
        return self.model.model

    def blocks(self) -> list[nn.Module]:
        """The decoder layers, in order."""
        return list(self._base().layers)

    def first_block(self) -> nn.Module:
        """Layer 0; its input ``hidden_states`` is the residual stream right after the embeddings."""
        return self.blocks()[0]

    def attention_module(self, layer: int) -> nn.Module:
        """The attention module of ``layer`` (the one that calls the attention interface)."""
        return getattr(self.blocks()[layer], self.attention_name)

    def query_key_projections(self, layer: int) -> list[nn.Linear]:
        """The linear maps that make only queries and keys (unused while a pattern is replayed)."""
        attention = self.attention_module(layer)
        return [attention.q_proj, attention.k_proj]

    def mlp_in_module(self, layer: int) -> nn.Module:
        """The MLP module; its first forward input is the MLP input (after the pre-MLP norm)."""
        return self.blocks()[layer].mlp

    def mlp_out_module(self, layer: int) -> nn.Module:
        """Module whose forward output is the MLP's contribution to the residual stream."""
        return self.blocks()[layer].mlp

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        """The norm between the residual stream and the MLP; its input is ``hook_resid_mid``."""
        return getattr(self.blocks()[layer], self.pre_mlp_norm_name)

    def feature_input(self, layer: int) -> tuple[nn.Module, InputSite]:
        """Where the bound input hook reads: a module and whether it is that module's input or (for
        ``ln2.hook_normalized``) the norm's input times its normalisation factor."""
        if self.hooks.input == "mlp.hook_in":
            return self.mlp_in_module(layer), "input"
        return self.pre_mlp_norm(layer), "input" if self.hooks.input == "hook_resid_mid" else "normalized"

    def feature_output(self, layer: int) -> nn.Module:
        """Module whose forward output the bound output hook reads (and the replacement overwrites)."""
        if self.hooks.output == "hook_mlp_out":
            return self.mlp_out_module(layer)
        return self.mlp_in_module(layer)

    def final_norm(self) -> nn.Module:
        return self._base().norm

    def unembed_module(self) -> nn.Module:
        """The LM head; its forward input is the final normed residual stream."""
        return self.model.lm_head

    def unembedding(self) -> Tensor:
        """Unembedding matrix ``[vocab, d_model]`` (the tied embedding when weights are tied)."""
        return self.unembed_module().weight

    def norm_modules(self) -> list[nn.Module]:
        """Every normalisation on the residual path: per block in order, then the final norm."""
        per_block = [getattr(block, name) for block in self.blocks() for name in self.block_norm_names]
        return [*per_block, self.final_norm()]

    def final_logit_softcap(self) -> float | None:
        """Softcap applied to the logits after the LM head, if the family has one."""
        return None

    @staticmethod
    def hidden_states_from_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The ``hidden_states`` a block was called with; use in a ``with_kwargs=True`` forward pre-hook."""
        return args[0] if args else kwargs["hidden_states"]

    @staticmethod
    def with_hidden_states(
        args: tuple[Any, ...], kwargs: dict[str, Any], hidden_states: Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Block call arguments with ``hidden_states`` replaced; return this from a pre-hook."""
        if args:
            return (hidden_states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden_states}


class Qwen2Adapter(ModelAdapter):
    family = "qwen2"


class Qwen3Adapter(ModelAdapter):
    family = "qwen3"


class Gemma2Adapter(ModelAdapter):
    """Gemma 2: ``(1 + w)`` RMSNorms around both attention and MLP, and a final logit softcap."""

    family = "gemma2"
    norm_style = "rms_one_plus"
    pre_mlp_norm_name = "pre_feedforward_layernorm"
    block_norm_names = (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )

    def mlp_out_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].post_feedforward_layernorm

    def final_logit_softcap(self) -> float | None:
        return self.model.config.final_logit_softcapping


class Gemma3Adapter(Gemma2Adapter):
    family = "gemma3"


class GPT2Adapter(ModelAdapter):
    """GPT-2: ``transformer.h[i].{ln_1, attn, ln_2, mlp}``, ``transformer.ln_f``, LayerNorm."""

    family = "gpt2"
    norm_style = "layernorm"
    block_norm_names = ("ln_1", "ln_2")
    attention_name = "attn"
    pre_mlp_norm_name = "ln_2"

    def _base(self) -> nn.Module:
        return self.model.transformer

    def blocks(self) -> list[nn.Module]:
        return list(self._base().h)

    def final_norm(self) -> nn.Module:
        return self._base().ln_f

    def query_key_projections(self, layer: int) -> list[nn.Linear]:
        return []  # c_attn makes queries, keys and values in one product


_ADAPTERS: dict[str, type[ModelAdapter]] = {
    "llama": ModelAdapter,
    "qwen2": Qwen2Adapter,
    "qwen3": Qwen3Adapter,
    "gemma2": Gemma2Adapter,
    "gemma3_text": Gemma3Adapter,
    "gpt2": GPT2Adapter,
}
SUPPORTED_FAMILIES = "Llama (incl. SmolLM2), Gemma 2, Gemma 3 (text-only), Qwen 2, Qwen 3, GPT-2"


def adapter_class_for_config(config: PretrainedConfig) -> type[ModelAdapter]:
    """The adapter class for a model config; raises UnsupportedModelError for other architectures."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        hint = " (load the text-only Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise UnsupportedModelError(
            f"unsupported model type {model_type!r}{hint}; supported families: {SUPPORTED_FAMILIES}"
        )
    return _ADAPTERS[model_type]


def adapter_for(model: PreTrainedModel, *, hooks: FeatureHooks = FeatureHooks()) -> ModelAdapter:
    """The adapter for a loaded causal LM bound to `hooks` (default: MLP input and output); raises
    UnsupportedModelError for other architectures and for hook names the family does not map."""
    adapter_class = adapter_class_for_config(model.config)
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no linear lm_head; load the model as a causal LM "
            f"(supported families: {SUPPORTED_FAMILIES})"
        )
    return adapter_class(model, hooks=hooks)
