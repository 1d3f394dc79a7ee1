"""A tiny Llama model trained on synthetic tasks whose mechanisms are known by construction.

Tasks (every prompt starts with <bos>; the answer is the next token):
- two_hop: "capital of city_i is" -> cap_s with s = state_of(city_i). The state is not in the prompt:
  the model must look it up (taught by the one-hop facts "city_i is in" -> state_s) and map it to the
  capital (taught by "capital of state_s is" -> cap_s). Two-hop questions of `COMPOSE_CITIES` are never
  trained (the model must compose); facts of `UNKNOWN_CITIES` are never trained (answers are wrong).
- copy: induction over four distinct names, "name_a name_b name_c name_d name_x" -> the name that followed
  name_x the first time.
- arithmetic: "a plus b is" -> a + b (a, b < 10); sums listed in `ARITHMETIC_HELD_OUT` are never trained.

Build (`build_toy`):
1. train the model on the tasks (answer-token cross-entropy, AdamW) from a seed;
2. write the task text as a corpus and train per-layer transcoders with skip on it (`training`);
3. save the model (HF format, word-level tokenizer), transcoders, ground_truth.json and metrics.json.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from circuitbase.engine.training import TrainConfig

SHIPPED_DIR = Path(__file__).parent / "toy_model"
N_CITIES, N_STATES, N_NAMES, N_DIGITS = 96, 8, 40, 10
UNKNOWN_CITIES = tuple(range(88, 96))  # no fact about them is ever trained
COMPOSE_CITIES = tuple(range(72, 88))  # facts trained, two-hop question never trained
ARITHMETIC_HELD_OUT = ((7, 8), (8, 7), (9, 9), (6, 9), (9, 6))
SPECIALS = ("<bos>", "<pad>", "<unk>", "<eos>")
WORDS = ("capital", "of", "is", "in", "plus")
DATASET = "toy"


MODEL_DIR_NAME = "toy"  # the directory name is the model name the graphs and the database record


class ToyError(ValueError):
    """A toy artifact is missing or a prompt is not one of the toy tasks."""


def state_of(city: int) -> int:
    """The state city `city` lies in (fixed by construction: a seeded permutation, 12 cities per state)."""
    order = list(range(N_CITIES))
    random.Random(1234).shuffle(order)
    return order.index(city) % N_STATES


def vocabulary() -> list[str]:
    """Every token of the toy model, specials first (ids are list positions)."""
    return [
        *SPECIALS,
        *WORDS,
        *(f"city_{i}" for i in range(N_CITIES)),
        *(f"state_{i}" for i in range(N_STATES)),
        *(f"cap_{i}" for i in range(N_STATES)),
        *(f"name_{i}" for i in range(N_NAMES)),
        *(str(i) for i in range(2 * N_DIGITS - 1)),
    ]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `vocabulary()` that prepends <bos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


# ---- tasks and ground truth -----------------------------------------------------------------------


def _two_hop(city: int) -> dict[str, Any]:
    state = state_of(city)
    split = "unknown" if city in UNKNOWN_CITIES else "compose" if city in COMPOSE_CITIES else "trained"
    return {
        "prompt": f"capital of city_{city} is",
        "answer": f"cap_{state}",
        "tags": ["two_hop", split],
        "dataset": DATASET,
    }


def _one_hop(city: int) -> dict[str, Any]:
    split = "unknown" if city in UNKNOWN_CITIES else "trained"
    return {
        "prompt": f"city_{city} is in",
        "answer": f"state_{state_of(city)}",
        "tags": ["one_hop", split],
        "dataset": DATASET,
    }


def _capital(state: int) -> dict[str, Any]:
    return {
        "prompt": f"capital of state_{state} is",
        "answer": f"cap_{state}",
        "tags": ["capital", "trained"],
        "dataset": DATASET,
    }


def _arithmetic(a: int, b: int) -> dict[str, Any]:
    split = "held_out" if (a, b) in ARITHMETIC_HELD_OUT else "trained"
    return {
        "prompt": f"{a} plus {b} is",
        "answer": str(a + b),
        "tags": ["arithmetic", split],
        "dataset": DATASET,
    }


def _copy(rng: random.Random) -> dict[str, Any]:
    names = rng.sample(range(N_NAMES), 4)
    which = rng.randrange(3)
    text = " ".join(f"name_{n}" for n in [*names, names[which]])
    return {
        "prompt": text,
        "answer": f"name_{names[which + 1]}",
        "tags": ["copy", "trained"],
        "dataset": DATASET,
    }


def fixed_examples() -> list[dict[str, Any]]:
    """Every non-random toy prompt (two-hop, one-hop, capital, arithmetic), each with its split tag."""
    return [
        *(_two_hop(c) for c in range(N_CITIES)),
        *(_one_hop(c) for c in range(N_CITIES)),
        *(_capital(s) for s in range(N_STATES)),
        *(_arithmetic(a, b) for a in range(N_DIGITS) for b in range(N_DIGITS)),
    ]


def training_examples() -> list[dict[str, Any]]:
    """The fixed examples the model is trained on (everything tagged `trained`)."""
    return [e for e in fixed_examples() if "trained" in e["tags"]]


def toy_prompts(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """`n` prompt dicts {prompt, answer, tags, dataset} cycling over the tasks (two-hop, one-hop, copy,
    arithmetic), drawn with `seed` (default 0). Tags name the task and the split (trained / compose /
    unknown / held_out), so right-vs-wrong comparisons have material."""
    rng = random.Random(seed)
    makers: list[Callable[[], dict[str, Any]]] = [
        lambda: _two_hop(rng.randrange(N_CITIES)),
        lambda: _one_hop(rng.randrange(N_CITIES)),
        lambda: _copy(rng),
        lambda: _arithmetic(rng.randrange(N_DIGITS), rng.randrange(N_DIGITS)),
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def planted_path(prompt: str) -> dict[str, Any]:
    """The mechanism a toy prompt is built on: task, the input tokens (word, position after <bos> = 1..)
    that must connect to the answer, the intermediate concept (or None) and the answer token."""
    words = prompt.split()
    pos = {w: i + 1 for i, w in enumerate(words)}  # position 0 is <bos>
    if len(words) == 4 and words[:2] == ["capital", "of"] and words[2].startswith("city_"):
        city = int(words[2].removeprefix("city_"))
        state = state_of(city)
        return {
            "task": "two_hop",
            "inputs": [{"token": words[2], "position": pos[words[2]]}],
            "intermediate": f"state_{state}",
            "answer": f"cap_{state}",
        }
    if len(words) == 3 and words[0].startswith("city_") and words[1:] == ["is", "in"]:
        return {
            "task": "one_hop",
            "inputs": [{"token": words[0], "position": 1}],
            "intermediate": None,
            "answer": f"state_{state_of(int(words[0].removeprefix('city_')))}",
        }
    if len(words) == 4 and words[:2] == ["capital", "of"] and words[2].startswith("state_"):
        return {
            "task": "capital",
            "inputs": [{"token": words[2], "position": 3}],
            "intermediate": None,
            "answer": f"cap_{words[2].removeprefix('state_')}",
        }
    if len(words) == 4 and words[1] == "plus" and words[3] == "is":
        a, b = int(words[0]), int(words[2])
        return {
            "task": "arithmetic",
            "inputs": [{"token": words[0], "position": 1}, {"token": words[2], "position": 3}],
            "intermediate": None,
            "answer": str(a + b),
        }
    if len(words) == 5 and all(w.startswith("name_") for w in words) and words[4] in words[:3]:
        first = words.index(words[4])
        return {
            "task": "copy",
            "inputs": [
                {"token": words[first + 1], "position": first + 2},
                {"token": words[4], "position": 5},
            ],
            "intermediate": None,
            "answer": words[first + 1],
        }
    raise ToyError(f"not a toy prompt: {prompt!r}")


def ground_truth() -> dict[str, Any]:
    """Everything fixed by construction: the world, the splits and the planted mechanism per task."""
    return {
        "city_state": {f"city_{c}": f"state_{state_of(c)}" for c in range(N_CITIES)},
        "state_capital": {f"state_{s}": f"cap_{s}" for s in range(N_STATES)},
        "unknown_cities": [f"city_{c}" for c in UNKNOWN_CITIES],
        "compose_cities": [f"city_{c}" for c in COMPOSE_CITIES],
        "arithmetic_held_out": [f"{a} plus {b}" for a, b in ARITHMETIC_HELD_OUT],
        "tasks": {
            "two_hop": "city token -> state (not in the prompt) -> capital logit",
            "one_hop": "city token -> state logit",
            "capital": "state token -> capital logit",
            "copy": "token after the earlier occurrence of the last name -> that name's logit (induction)",
            "arithmetic": "both operand tokens -> sum logit",
        },
        "examples": [{**e, "path": planted_path(e["prompt"])} for e in fixed_examples()],
    }


# ---- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    """Model shape and training of the toy model (defaults train in about a minute on 2 CPU cores)."""

    seed: int = 0
    n_layers: int = 2
    d_model: int = 64
    d_mlp: int = 256
    n_heads: int = 4
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    copy_share: float = 0.3  # share of each batch that is random copy sequences
    d_transcoder: int = 256
    transcoder_k: int = 8
    transcoder_tokens: int = 400_000
    extra: dict[str, Any] = field(default_factory=dict)


def toy_llama_config(config: ToyConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(vocabulary()),
        hidden_size=config.d_model,
        intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=16,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=3,
        tie_word_embeddings=False,
    )


def _batch(
    examples: list[dict[str, Any]], *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, T] right-padded, index of the last prompt token [B], answer ids [B]) on `device`.

    Encodes the way `build_tokenizer()` does (<bos> + one id per word), without its per-call overhead.
    """
    vocab = {token: i for i, token in enumerate(vocabulary())}
    encoded = [[vocab["<bos>"]] + [vocab[w] for w in e["prompt"].split()] for e in examples]
    width = max(len(ids) for ids in encoded)
    padded = [seq + [vocab["<pad>"]] * (width - len(seq)) for seq in encoded]
    ids = torch.tensor(padded, dtype=torch.long, device=device)
    last = torch.tensor([len(seq) - 1 for seq in encoded], device=device)
    answers = torch.tensor([vocab[e["answer"]] for e in examples], device=device)
    return ids, last, answers


def _answer_logits(model: nn.Module, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits
    return logits[torch.arange(ids.shape[0], device=ids.device), last]


def train_toy_model(
    config: ToyConfig, *, device: str | torch.device = "cpu", log: Callable[[str], None] = print
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train the toy model from `config.seed` on `device` (default cpu; the weights start from the same
    seeded CPU draw on every device); returns it in eval mode, its tokenizer and training stats."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = build_tokenizer()
    device = torch.device(device)
    model = LlamaForCausalLM(toy_llama_config(config)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    fixed = training_examples()
    n_copy = int(config.batch_size * config.copy_share)
    start = time.perf_counter()
    model.train()
    for step in range(config.steps):
        batch = rng.choices(fixed, k=config.batch_size - n_copy) + [_copy(rng) for _ in range(n_copy)]
        ids, last, answers = _batch(batch, device=device)
        loss = nn.functional.cross_entropy(_answer_logits(model, ids, last), answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == config.steps - 1:
            log(f"toy model step {step}: loss {loss.item():.4f}")
    model.eval()
    return model, tokenizer, {"train_seconds": time.perf_counter() - start, "final_loss": loss.item()}


@torch.no_grad()
def evaluate(model: nn.Module, *, n_copy: int = 400, seed: int = 1) -> dict[str, dict[str, Any]]:
    """Accuracy per task and split ("two_hop/trained", ...) on every fixed prompt and `n_copy` copies,
    computed on the model's device."""
    rng = random.Random(seed)
    examples = fixed_examples() + [_copy(rng) for _ in range(n_copy)]
    ids, last, answers = _batch(examples, device=next(model.parameters()).device)
    correct = (_answer_logits(model, ids, last).argmax(-1) == answers).tolist()
    groups: dict[str, list[bool]] = {}
    for example, ok in zip(examples, correct, strict=True):
        task, split = example["tags"]
        groups.setdefault(f"{task}/{split}", []).append(ok)
    return {key: {"n": len(v), "accuracy": sum(v) / len(v)} for key, v in sorted(groups.items())}


def corpus_lines(*, n_copy: int = 2000, seed: int = 0) -> list[str]:
    """Text of the toy's training distribution (prompt + answer), for training transcoders on it."""
    rng = random.Random(seed)
    examples = training_examples() + [_copy(rng) for _ in range(n_copy)]
    return [f"{e['prompt']} {e['answer']}" for e in examples]


def toy_transcoder_config(config: ToyConfig) -> TrainConfig:
    """Per-layer TopK transcoders with skip for the toy model."""
    from circuitbase.engine.training import TrainConfig

    return TrainConfig(
        kind="plt",
        activation="topk",
        k=config.transcoder_k,
        d_transcoder=config.d_transcoder,
        skip=True,
        total_tokens=config.transcoder_tokens,
        batch_tokens=512,
        lr=2e-3,
        seed=config.seed,
        context_length=16,
        buffer_tokens=20_000,
        eval_tokens=2_000,
        dead_after_tokens=50_000,
        checkpoint_every=0,
        device="cpu",
        name="toy-plt-topk",
    )


def build_toy(
    out_dir: str | Path, *, config: ToyConfig | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train the toy model and its transcoders from `config` (default ToyConfig()) into `out_dir`:
    model/ (HF), transcoders/, ground_truth.json, metrics.json. Returns the metrics."""
    from circuitbase.engine.training import checkpoint_dir, train_transcoders

    config = config or ToyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, stats = train_toy_model(config, log=log)
    accuracy = evaluate(model)
    for key, value in accuracy.items():
        log(f"accuracy {key}: {value['accuracy']:.3f} (n={value['n']})")
    model.save_pretrained(out / MODEL_DIR_NAME)
    tokenizer.save_pretrained(out / MODEL_DIR_NAME)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(seed=config.seed)) + "\n", encoding="utf-8")
    train_config = toy_transcoder_config(config)
    tc_metrics = train_transcoders(
        model, tokenizer, corpus=corpus, out_dir=out / "transcoders", config=train_config, log=log
    )
    corpus.unlink()
    shutil.rmtree(checkpoint_dir(out / "transcoders"))
    metrics = {
        "config": asdict(config),
        "model": {**stats, "accuracy": accuracy},
        "transcoders": tc_metrics,
    }
    (out / "ground_truth.json").write_text(json.dumps(ground_truth(), indent=1), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    for path in out.rglob("*"):  # safetensors writes private files; these are ordinary package data
        path.chmod(0o755 if path.is_dir() else 0o644)
    return metrics


def shipped_paths(root: str | Path = SHIPPED_DIR) -> tuple[Path, Path]:
    """(model directory, transcoder directory) of a built toy (default: the one shipped in the package)."""
    root = Path(root)
    model_dir, tc_dir = root / MODEL_DIR_NAME, root / "transcoders"
    if not (model_dir / "config.json").is_file() or not (tc_dir / "config.yaml").is_file():
        raise ToyError(f"{root} holds no built toy model; run `circuitbase toy build --out {root}`")
    return model_dir, tc_dir
