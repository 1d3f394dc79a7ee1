"""Model loading (offline) and the per-family adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, BertConfig, MptConfig

from circuitbase.engine.adapters import UnsupportedModelError, adapter_for
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.freezing import Freezer
from circuitbase.engine.models import ModelLoadError, load_model, models_dir
from circuitbase.engine.prompts import Prompt, prompt_token_ids, start_token_id
from circuitbase.engine.runner import attribute_prompt
from circuitbase.engine.transcoders import TranscoderSet
from tests.hf_cache import use_offline_cache
from tests.numerics import assert_close
from tests.tiny_models import FAMILIES, FIXTURE_MODEL_DIR, VOCAB, tiny_input_ids, tiny_model, tiny_tokenizer

NORMS_PER_BLOCK = {"gemma2": 4, "gemma3": 4}


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_shape_and_modules(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    assert adapter.family == family.removesuffix("_text")
    assert (adapter.n_layers, adapter.d_model, adapter.vocab_size, adapter.bos_token_id) == (2, 64, VOCAB, 1)
    assert len(adapter.blocks()) == 2
    assert adapter.first_block() is adapter.blocks()[0]
    assert adapter.unembedding().shape == (VOCAB, 64)
    assert adapter.unembed_module() is model.lm_head
    norms = adapter.norm_modules()
    assert len(norms) == 2 * NORMS_PER_BLOCK.get(adapter.family, 2) + 1
    assert len({id(norm) for norm in norms}) == len(norms)
    assert norms[-1] is adapter.final_norm()
    assert adapter.final_logit_softcap() == (3.0 if adapter.family.startswith("gemma") else None)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_mlp_hook_points_bracket_the_mlp(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    layer = 1
    seen: dict[str, Tensor] = {}
    handles = [
        adapter.mlp_in_module(layer).register_forward_pre_hook(
            lambda _m, args: seen.setdefault("in", args[0])
        ),
        adapter.mlp_out_module(layer).register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out)),
        adapter.unembed_module().register_forward_pre_hook(
            lambda _m, args: seen.setdefault("final", args[0])
        ),
    ]
    logits = model(tiny_input_ids()).logits
    for handle in handles:
        handle.remove()

    block = adapter.blocks()[layer]
    out = block.mlp(seen["in"])
    if adapter.mlp_out_module(layer) is not block.mlp:
        out = adapter.mlp_out_module(layer)(out)
    assert (out - seen["out"]).abs().max() < 1e-6
    assert seen["out"].abs().max() > 1e-2
    unembedded = seen["final"] @ adapter.unembedding().T
    if (cap := adapter.final_logit_softcap()) is not None:
        unembedded = torch.tanh(unembedded / cap) * cap
    assert (unembedded - logits).abs().max() < 1e-5


def test_first_block_hidden_states_helpers() -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model)
    hidden, other = torch.ones(1, 3, 64), torch.zeros(1, 3, 64)
    assert adapter.hidden_states_from_inputs((hidden,), {}) is hidden
    assert adapter.hidden_states_from_inputs((), {"hidden_states": hidden}) is hidden
    args, kwargs = adapter.with_hidden_states((hidden, "mask"), {"x": 1}, other)
    assert args[0] is other and args[1] == "mask" and kwargs == {"x": 1}
    args, kwargs = adapter.with_hidden_states((), {"hidden_states": hidden, "x": 1}, other)
    assert args == () and kwargs["hidden_states"] is other and kwargs["x"] == 1


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_load_local_directory_round_trip(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    ids = tiny_input_ids()
    assert loaded.name == tmp_path.name
    assert loaded.adapter.family == family.removesuffix("_text")
    assert not loaded.model.training
    assert loaded.model.config._attn_implementation == "eager"
    assert (loaded.model(ids).logits - model(ids).logits).abs().max() < 1e-6


def test_load_fixture_model_and_tokenize() -> None:
    loaded = load_model(str(FIXTURE_MODEL_DIR), dtype=torch.float64)
    assert loaded.adapter.family == "llama"
    assert loaded.model.lm_head.weight.dtype == torch.float64
    assert loaded.name == "tiny-llama"
    assert loaded.tokenizer.bos_token_id == 1


def test_load_rejects_missing_paths_and_offline_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as raised:
        load_model("/no/such/model")
    assert "a local Hugging Face model directory" in str(raised.value) and "repo id" in str(raised.value)
    use_offline_cache(tmp_path / "hf-cache", monkeypatch)
    with pytest.raises(ModelLoadError, match=r"'meta-llama/Llama-3\.2-1B': .* not in the Hugging Face cache"):
        load_model("meta-llama/Llama-3.2-1B")


def test_load_rejects_folders_and_files_that_are_no_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"directory without config\.json"):
        load_model(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"is not a \.gguf file"):
        load_model(str(weights))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not gguf")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(broken))


# -- prompts become token ids as circuit-tracer makes them ----------------------------------------------

TEXT = "near sets class turns over study quiet one"


def test_prompt_token_ids_put_a_special_token_first() -> None:
    tokenizer = tiny_tokenizer()
    words = tokenizer(TEXT, add_special_tokens=False).input_ids
    ids = prompt_token_ids(tokenizer, TEXT)
    assert ids == [1, *words] and len(ids) == 9 and tokenizer.decode(ids[:1]) == "<s>"
    assert prompt_token_ids(tokenizer, "</s> near") == [
        2,
        *tokenizer("near", add_special_tokens=False).input_ids,
    ]
    tokenizer.bos_token = None  # no BOS: PAD goes first, as in Qwen tokenizers
    assert (start_token_id(tokenizer), prompt_token_ids(tokenizer, TEXT)) == (3, [3, *words])


@torch.no_grad()
def test_attributed_prompts_start_with_the_left_out_special_token(device: torch.device) -> None:
    loaded = load_model(str(FIXTURE_MODEL_DIR), device=device)
    transcoders = TranscoderSet.load(FIXTURE_MODEL_DIR.parent / "plt-relu", device=device)
    config = AttributionConfig(batch_size=16, max_feature_nodes=8)
    graph = attribute_prompt(loaded, transcoders, Prompt(text=TEXT, id="p"), config=config)
    assert graph.input_ids == prompt_token_ids(loaded.tokenizer, TEXT) and graph.input_tokens[0] == "<s>"
    assert graph.active_features.shape[0] > 0 and int(graph.active_features[:, 1].min()) >= 1
    ids = torch.tensor([graph.input_ids], device=device)
    assert_close(graph.logit_probs, loaded.model(ids).logits[0, -1].softmax(-1)[graph.logit_tokens], rel=1e-5)


def test_unsupported_architectures_name_the_supported_families(tmp_path: Path) -> None:
    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"'bert'.*Llama .*Gemma 2.*Qwen 3, GPT-2"):
        load_model(str(tmp_path))
    mpt = AutoModelForCausalLM.from_config(MptConfig(d_model=32, n_heads=2, n_layers=1, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="'mpt'"):
        adapter_for(mpt)


def test_models_dir_follows_circuitbase_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITBASE_HOME", str(tmp_path))
    assert models_dir() == tmp_path / "models"
    monkeypatch.delenv("CIRCUITBASE_HOME")
    assert models_dir() == Path.home() / ".cache" / "circuitbase" / "models"


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_loads_from_its_gguf_and_predicts_paris() -> None:
    loaded = load_model("smollm2")
    adapter = loaded.adapter
    assert (loaded.name, adapter.family, adapter.n_layers, adapter.d_model) == ("smollm2", "llama", 30, 576)
    assert adapter.vocab_size == 49152
    assert adapter.unembedding().data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()  # tied

    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    logits = loaded.model(ids).logits
    top5 = [loaded.tokenizer.decode(token) for token in logits[0, -1].topk(5).indices]
    assert " Paris" in top5

    freezer = Freezer(loaded.model, adapter)
    with freezer.record():
        recorded = loaded.model(ids).logits
    with freezer.replay():
        replayed = loaded.model(ids.expand(2, -1)).logits
    assert (recorded - logits).abs().max() < 1e-4
    assert (replayed - logits).abs().max() < 1e-4
