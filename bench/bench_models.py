"""The models and transcoder sets of the attribution bench, written once as files both tools load.

Every family becomes a Hugging Face model folder (with its tokenizer) and a transcoder folder in
circuit-tracer's public per-layer format, so circuitbase and circuit-tracer read identical files:

- `tiny-llama`: the 2-layer, d_model 64 fixture model and its JumpReLU+skip set (256 features,
  ~32 active per token per layer), used as they are.
- `tiny-gemma2`: the 2-layer Gemma-2 parity model (d_model 64, `tests.tiny_models.parity_model`) with
  512 calibrated features per layer at ln2.hook_normalized -> hook_mlp_out.
- `smollm2`: SmolLM2-135M (the offline GGUF, dequantised to float32) with calibrated features at
  mlp.hook_in -> mlp.hook_out.
- `gemma2-2b-shape`: a randomly initialised Gemma-2 2B-shaped model (26 layers, d_model 2304, vocabulary
  256,000) with 16,384 calibrated features per layer (GPU only); token ids come from the tiny tokenizer.

Calibrated sets fire ~`per_token` features per token per layer (`calibrated_transcoders`), calibrated on
~512 tokens: the bench paragraph, then the standard library's docstrings (`corpus.python_docs_corpus`).
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "circuit-tracer-format"
PARAGRAPH = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange "
    "grain, salt and cloth. Over the centuries the town grew into a busy port, and its people built "
    "bridges, markets, churches and schools. Today the old quarter keeps its narrow streets, while new "
    "districts stretch along the water with parks, offices and homes for families who arrive every year. "
)  # the bench's prompts are windows of it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Family:
    """How a bench model's transcoders are made: features per layer, active per token, hook names."""

    d_transcoder: int
    per_token: float
    input_hook: str = "mlp.hook_in"
    output_hook: str = "mlp.hook_out"
    gpu_only: bool = False


FAMILIES = {
    "tiny-llama": Family(d_transcoder=256, per_token=32),  # the fixture set, not recalibrated
    "tiny-gemma2": Family(
        d_transcoder=512, per_token=32, input_hook="ln2.hook_normalized", output_hook="hook_mlp_out"
    ),
    "smollm2": Family(d_transcoder=4096, per_token=100),
    "gemma2-2b-shape": Family(  # calibrated to 50 on the corpus, it fires ~190 on the bench paragraph
        d_transcoder=16384,
        per_token=50,
        input_hook="ln2.hook_normalized",
        output_hook="hook_mlp_out",
        gpu_only=True,
    ),
}


def _save_hf_model(name: str, folder: Path, *, device: str) -> None:
    """Write the family's model and tokenizer as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    from circuitbase.engine.models import load_model

    if name == "smollm2":  # a GGUF-loaded model does not save: copy its dequantised weights into a plain one
        loaded = load_model("smollm2", device="cpu")
        config = copy.deepcopy(loaded.model.config)
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.model.state_dict())
        model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        _readable_by_older_transformers(folder)
        return
    if name == "tiny-gemma2":
        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import parity_model

        model = parity_model("gemma2", seed=7)
    else:  # gemma2-2b-shape
        config = Gemma2Config(
            vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256, bos_token_id=1, eos_token_id=2,
            pad_token_id=3,
        )  # fmt: skip
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    for file in TOKENIZER_FILES:
        shutil.copy(FIXTURES / "tiny-llama" / file, folder / file)
    _readable_by_older_transformers(folder)


def _readable_by_older_transformers(folder: Path) -> None:
    """Make a folder saved by transformers 5.x read the same under 4.x (circuit-tracer's pin): repeat the
    RoPE base at the top level of config.json (5.x nests it in `rope_parameters`; 4.x would fall back to
    its default base), and name the fast tokenizer class 4.x knows."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    path.write_text(json.dumps(config, indent=2))
    path = folder / "tokenizer_config.json"
    tokenizer = json.loads(path.read_text())
    if tokenizer.get("tokenizer_class") == "TokenizersBackend":
        tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(tokenizer, indent=2))


def prepare(name: str, *, work_dir: Path, device: str, d_transcoder: int | None = None) -> dict:
    """{"model_dir", "transcoder_dir", "per_token"} of family `name`, written under `work_dir` unless
    already there. d_transcoder: features per layer (default: the family's)."""
    from calibrated_transcoders import calibrated_transcoders, calibration_ids

    from circuitbase.engine.corpus import iter_texts, python_docs_corpus
    from circuitbase.engine.models import load_model

    family = FAMILIES[name]
    if name == "tiny-llama":
        return {
            "model_dir": str(FIXTURES / "tiny-llama"),
            "transcoder_dir": str(FIXTURES / "plt-jumprelu-skip"),
        }
    d_transcoder = d_transcoder or family.d_transcoder
    model_dir, set_dir = work_dir / name / "model", work_dir / name / f"transcoders-{d_transcoder}"
    if not (model_dir / "config.json").exists():
        _save_hf_model(name, model_dir, device=device)
    if not (set_dir / "config.yaml").exists():
        loaded = load_model(str(model_dir), device=device)
        texts = itertools.chain(
            [PARAGRAPH * 2], iter_texts(python_docs_corpus(work_dir / "python-docs.jsonl"))
        )
        sequences = calibration_ids(loaded.tokenizer, texts, vocab_size=loaded.adapter.vocab_size)
        transcoders = calibrated_transcoders(
            loaded.model, loaded.adapter, sequences, d_transcoder=d_transcoder, per_token=family.per_token,
            input_hook=family.input_hook, output_hook=family.output_hook, name=f"bench/{name}-calibrated",
        )  # fmt: skip
        transcoders.save(set_dir)
    return {"model_dir": str(model_dir), "transcoder_dir": str(set_dir)}
