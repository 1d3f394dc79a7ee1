"""Tiny Llama models trained on synthetic tasks whose mechanisms are known by construction.

A `ToyWorld` says what a model is taught; its defaults are the shipped toy. Tasks (every prompt starts
with <bos>; the answer is the next token):
- two_hop: "capital of city_i is" -> cap_s with s = state_of(city_i). The state is not in the prompt:
  the model must look it up (taught by the one-hop facts "city_i is in" -> state_s) and map it to the
  capital (taught by "capital of state_s is" -> cap_s). Two-hop questions of `compose_cities` are never
  trained (the model must compose); facts of `unknown_cities` are never trained (answers are wrong).
- copy: induction over four distinct names, "name_a name_b name_c name_d name_x" -> the name that followed
  name_x the first time.
- arithmetic: "a plus b is" -> a + b (a, b < 10); sums listed in `arithmetic_held_out` are never trained.
With `n_regions` > 0 (the harder world, `HARD_WORLD`), every state lies in region_of(s) and every region
has a language: "state_s is in" -> region_r, "language of region_r is" -> lang_r, and the three-hop
question "language of city_i is" -> lang_r (city -> state -> region -> language; never trained for
`compose_cities`). With `n_sizes` > 0 every city has a size ("size of city_i is" -> size_v), a distractor:
what the model learns of a city's size is read wherever the city appears, in every task. With
`paraphrase`, questions also come as "the capital of city_i is" and "city_i capital is" (likewise for
language); with `fillers`, each gap before a word of a prompt (not the copy task) holds a random filler
word with chance `filler_rate`, in training and in the prompts drawn.

Build (`build_toy`):
1. train the model on the tasks (answer-token cross-entropy, AdamW) from a seed;
2. write the task text as a corpus and train per-layer transcoders with skip on it (`training`);
3. save the model (HF format, word-level tokenizer), transcoders, ground_truth.json and metrics.json.
"""

from __future__ import annotations

import json
import random
import re
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
SPECIALS = ("<bos>", "<pad>", "<unk>", "<eos>")
WORDS = ("capital", "of", "is", "in", "plus")


class ToyError(ValueError):
    """A toy artifact is missing or a prompt is not one of the toy tasks."""


@dataclass(frozen=True)
class ToyWorld:
    """What a toy model is taught (module docstring); the defaults are the shipped toy's. `name` is the
    model directory's name (the model name graphs record) and the prompts' dataset."""

    name: str = "toy"
    n_cities: int = 96
    n_states: int = 8
    n_names: int = 40
    n_digits: int = 10
    unknown_cities: tuple[int, ...] = tuple(range(88, 96))  # no fact about them is ever trained
    compose_cities: tuple[int, ...] = tuple(range(72, 88))  # facts trained, chained questions never
    arithmetic_held_out: tuple[tuple[int, int], ...] = ((7, 8), (8, 7), (9, 9), (6, 9), (9, 6))
    n_regions: int = 0
    n_sizes: int = 0
    paraphrase: bool = False
    fillers: tuple[str, ...] = ()
    filler_rate: float = 0.0

    @property
    def noisy(self) -> bool:
        """Whether prompts get filler words."""
        return bool(self.fillers) and self.filler_rate > 0.0


TOY = ToyWorld()
HARD_WORLD = ToyWorld(
    name="toy_hard",
    n_regions=4,
    n_sizes=3,
    paraphrase=True,
    fillers=("um", "so", "well", "please"),
    filler_rate=0.15,
)
N_CITIES, N_STATES = TOY.n_cities, TOY.n_states  # the shipped toy's world, as its tests read it
UNKNOWN_CITIES, COMPOSE_CITIES = TOY.unknown_cities, TOY.compose_cities


def _rank(n: int, seed: int, item: int) -> int:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order.index(item)


def state_of(city: int, *, world: ToyWorld = TOY) -> int:
    """The state city `city` lies in (fixed by construction: a seeded permutation, equally many cities
    per state)."""
    return _rank(world.n_cities, 1234, city) % world.n_states


def region_of(state: int, *, world: ToyWorld = TOY) -> int:
    """The region state `state` lies in (`world.n_regions` > 0): states spread over regions in turn."""
    return state % world.n_regions


def size_of(city: int, *, world: ToyWorld = TOY) -> int:
    """City `city`'s size (`world.n_sizes` > 0): a seeded permutation of its own, unrelated to states."""
    return _rank(world.n_cities, 4321, city) % world.n_sizes


def vocabulary(*, world: ToyWorld = TOY) -> list[str]:
    """Every token of the world's model, specials first (ids are list positions)."""
    regions = [
        "language",
        *(f"region_{i}" for i in range(world.n_regions)),
        *(f"lang_{i}" for i in range(world.n_regions)),
    ]
    sizes = ["size", *(f"size_{i}" for i in range(world.n_sizes))]
    return [
        *SPECIALS,
        *WORDS,
        *(f"city_{i}" for i in range(world.n_cities)),
        *(f"state_{i}" for i in range(world.n_states)),
        *(f"cap_{i}" for i in range(world.n_states)),
        *(f"name_{i}" for i in range(world.n_names)),
        *(str(i) for i in range(2 * world.n_digits - 1)),
        *(regions if world.n_regions else []),
        *(sizes if world.n_sizes else []),
        *(["the"] if world.paraphrase else []),
        *world.fillers,
    ]


def build_tokenizer(*, world: ToyWorld = TOY) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `vocabulary(world=world)` that prepends <bos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(vocabulary(world=world))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


# ---- tasks and ground truth -----------------------------------------------------------------------

# Question templates per task: {x} is the entity, {a} and {b} the operands. The first is the canonical
# one; the others are paraphrases (`ToyWorld.paraphrase`).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "two_hop": ("capital of {x} is", "the capital of {x} is", "{x} capital is"),
    "three_hop": ("language of {x} is", "the language of {x} is", "{x} language is"),
    "one_hop": ("{x} is in",),
    "capital": ("capital of {x} is",),
    "region": ("{x} is in",),
    "language": ("language of {x} is",),
    "size": ("size of {x} is",),
    "arithmetic": ("{a} plus {b} is",),
}
_ENTITY = {  # task -> the entity kind its {x} takes
    "two_hop": "city",
    "three_hop": "city",
    "one_hop": "city",
    "size": "city",
    "capital": "state",
    "region": "state",
    "language": "region",
}


def _templates(task: str, world: ToyWorld) -> tuple[str, ...]:
    return TEMPLATES[task] if world.paraphrase else TEMPLATES[task][:1]


def _split(world: ToyWorld, city: int, *, chained: bool) -> str:
    if city in world.unknown_cities:
        return "unknown"
    return "compose" if chained and city in world.compose_cities else "trained"


def _question(task: str, entity: int, template: str, world: ToyWorld) -> dict[str, Any]:
    """The example of `task` about `entity` (a city, state or region index) worded by `template`."""
    kind = _ENTITY[task]
    if kind == "city":
        state = state_of(entity, world=world)
        answer = {
            "two_hop": lambda: f"cap_{state}",
            "three_hop": lambda: f"lang_{region_of(state, world=world)}",
            "one_hop": lambda: f"state_{state}",
            "size": lambda: f"size_{size_of(entity, world=world)}",
        }[task]()
        split = _split(world, entity, chained=task in ("two_hop", "three_hop"))
    else:
        answer = {
            "capital": lambda: f"cap_{entity}",
            "region": lambda: f"region_{region_of(entity, world=world)}",
            "language": lambda: f"lang_{entity}",
        }[task]()
        split = "trained"
    return {
        "prompt": template.format(x=f"{kind}_{entity}"),
        "answer": answer,
        "tags": [task, split],
        "dataset": world.name,
    }


def _arithmetic(a: int, b: int, world: ToyWorld) -> dict[str, Any]:
    split = "held_out" if (a, b) in world.arithmetic_held_out else "trained"
    return {
        "prompt": f"{a} plus {b} is",
        "answer": str(a + b),
        "tags": ["arithmetic", split],
        "dataset": world.name,
    }


def _copy(rng: random.Random, world: ToyWorld = TOY) -> dict[str, Any]:
    names = rng.sample(range(world.n_names), 4)
    which = rng.randrange(3)
    text = " ".join(f"name_{n}" for n in [*names, names[which]])
    return {
        "prompt": text,
        "answer": f"name_{names[which + 1]}",
        "tags": ["copy", "trained"],
        "dataset": world.name,
    }


def with_fillers(example: dict[str, Any], rng: random.Random, *, world: ToyWorld) -> dict[str, Any]:
    """`example` with a random filler before each of its words with chance `world.filler_rate` (the
    copy task and worlds without fillers: unchanged, drawing nothing from `rng`)."""
    if not world.noisy or example["tags"][0] == "copy":
        return example
    words: list[str] = []
    for word in example["prompt"].split():
        if rng.random() < world.filler_rate:
            words.append(rng.choice(world.fillers))
        words.append(word)
    return {**example, "prompt": " ".join(words)}


def _tasks(world: ToyWorld) -> list[str]:
    """The question tasks of `world`, in the order the examples list them."""
    tasks = ["two_hop", "one_hop", "capital"]
    if world.n_regions:
        tasks += ["three_hop", "region", "language"]
    if world.n_sizes:
        tasks.append("size")
    return tasks


def _entities(task: str, world: ToyWorld) -> range:
    kind = _ENTITY[task]
    return range(world.n_cities if kind == "city" else world.n_states if kind == "state" else world.n_regions)


def fixed_examples(*, world: ToyWorld = TOY) -> list[dict[str, Any]]:
    """Every non-random prompt of `world` (questions in every wording, arithmetic), with split tags."""
    return [
        *(
            _question(task, entity, template, world)
            for task in _tasks(world)
            for template in _templates(task, world)
            for entity in _entities(task, world)
        ),
        *(_arithmetic(a, b, world) for a in range(world.n_digits) for b in range(world.n_digits)),
    ]


def training_examples(*, world: ToyWorld = TOY) -> list[dict[str, Any]]:
    """The fixed examples the model is trained on (everything tagged `trained`)."""
    return [e for e in fixed_examples(world=world) if "trained" in e["tags"]]


def toy_prompts(n: int, *, seed: int = 0, world: ToyWorld = TOY) -> list[dict[str, Any]]:
    """`n` prompt dicts {prompt, answer, tags, dataset} cycling over the tasks (two-hop, one-hop, copy,
    arithmetic, then the world's three-hop and size questions), drawn with `seed` (default 0) in a random
    wording, with fillers where the world has them. Tags name the task and the split (trained / compose /
    unknown / held_out), so right-vs-wrong comparisons have material."""
    rng = random.Random(seed)

    def question(task: str) -> Callable[[], dict[str, Any]]:
        def make() -> dict[str, Any]:
            entity = rng.randrange(len(_entities(task, world)))
            templates = _templates(task, world)
            template = templates[rng.randrange(len(templates))] if len(templates) > 1 else templates[0]
            return _question(task, entity, template, world)

        return make

    makers: list[Callable[[], dict[str, Any]]] = [
        question("two_hop"),
        question("one_hop"),
        lambda: _copy(rng, world),
        lambda: _arithmetic(rng.randrange(world.n_digits), rng.randrange(world.n_digits), world),
        *(question(task) for task in ("three_hop", "size") if task in _tasks(world)),
    ]
    return [with_fillers(makers[i % len(makers)](), rng, world=world) for i in range(n)]


def _entity(word: str, kind: str) -> int | None:
    match = re.fullmatch(rf"{kind}_(\d+)", word)
    return int(match.group(1)) if match else None


def planted_path(prompt: str, *, world: ToyWorld = TOY) -> dict[str, Any]:
    """The mechanism a prompt of `world` is built on: task, the input tokens (word, position after <bos>
    = 1..) that must connect to the answer, the hidden concepts in order (`intermediates`: a city's
    state, then for three-hop its region; `intermediate`: the first or None) and the answer token.
    Filler words are skipped."""
    words = prompt.split()
    kept = [(i + 1, w) for i, w in enumerate(words) if w not in world.fillers]  # position 0 is <bos>
    core = [w for _, w in kept]
    for task in _tasks(world):
        kind = _ENTITY[task]
        for template in _templates(task, world):
            pattern = template.split()
            if len(pattern) != len(core) or any(
                p != w for p, w in zip(pattern, core, strict=True) if p != "{x}"
            ):
                continue
            at = pattern.index("{x}")
            entity = _entity(core[at], kind)
            if entity is None or entity >= len(_entities(task, world)):
                continue
            example = _question(task, entity, template, world)
            hidden: list[str] = []
            if task in ("two_hop", "three_hop"):
                state = state_of(entity, world=world)
                hidden = [f"state_{state}"]
                if task == "three_hop":
                    hidden.append(f"region_{region_of(state, world=world)}")
            return {
                "task": task,
                "inputs": [{"token": core[at], "position": kept[at][0]}],
                "intermediates": hidden,
                "intermediate": hidden[0] if hidden else None,
                "answer": example["answer"],
            }
    if len(core) == 4 and core[1] == "plus" and core[3] == "is" and all(w.isdigit() for w in core[::2]):
        a, b = int(core[0]), int(core[2])
        return {
            "task": "arithmetic",
            "inputs": [
                {"token": core[0], "position": kept[0][0]},
                {"token": core[2], "position": kept[2][0]},
            ],
            "intermediates": [],
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
            "intermediates": [],
            "intermediate": None,
            "answer": words[first + 1],
        }
    raise ToyError(f"not a prompt of the {world.name} world: {prompt!r}")


def ground_truth(*, world: ToyWorld = TOY) -> dict[str, Any]:
    """Everything fixed by construction: the world, the splits and the planted mechanism per task."""
    truth: dict[str, Any] = {
        "city_state": {f"city_{c}": f"state_{state_of(c, world=world)}" for c in range(world.n_cities)},
        "state_capital": {f"state_{s}": f"cap_{s}" for s in range(world.n_states)},
        "unknown_cities": [f"city_{c}" for c in world.unknown_cities],
        "compose_cities": [f"city_{c}" for c in world.compose_cities],
        "arithmetic_held_out": [f"{a} plus {b}" for a, b in world.arithmetic_held_out],
        "tasks": {
            "two_hop": "city token -> state (not in the prompt) -> capital logit",
            "one_hop": "city token -> state logit",
            "capital": "state token -> capital logit",
            "copy": "token after the earlier occurrence of the last name -> that name's logit (induction)",
            "arithmetic": "both operand tokens -> sum logit",
        },
    }
    if world.n_regions:
        truth["state_region"] = {
            f"state_{s}": f"region_{region_of(s, world=world)}" for s in range(world.n_states)
        }
        truth["region_language"] = {f"region_{r}": f"lang_{r}" for r in range(world.n_regions)}
        truth["tasks"] |= {
            "three_hop": "city token -> state -> region (neither in the prompt) -> language logit",
            "region": "state token -> region logit",
            "language": "region token -> language logit",
        }
    if world.n_sizes:
        truth["city_size"] = {f"city_{c}": f"size_{size_of(c, world=world)}" for c in range(world.n_cities)}
        truth["tasks"]["size"] = "city token -> size logit (a distractor for every other city task)"
    if world.noisy:
        truth["fillers"] = list(world.fillers)
    truth["examples"] = [
        {**e, "path": planted_path(e["prompt"], world=world)} for e in fixed_examples(world=world)
    ]
    return truth


# ---- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    """The world taught, model shape and training (defaults: the shipped toy, which trains in about a
    minute on 2 CPU cores; `HARD_CONFIG` is the harder world's)."""

    world: ToyWorld = TOY
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
    max_positions: int = 16  # the model's context, <bos> included
    extra: dict[str, Any] = field(default_factory=dict)


HARD_CONFIG = ToyConfig(
    world=HARD_WORLD,
    n_layers=3,
    d_model=96,
    d_mlp=384,
    steps=4000,
    d_transcoder=384,
    transcoder_tokens=600_000,
    max_positions=24,
)


def toy_llama_config(config: ToyConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(vocabulary(world=config.world)),
        hidden_size=config.d_model,
        intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_positions,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=3,
        tie_word_embeddings=False,
    )


def _batch(
    examples: list[dict[str, Any]], *, device: torch.device, world: ToyWorld
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, T] right-padded, index of the last prompt token [B], answer ids [B]) on `device`.

    Encodes the way `build_tokenizer()` does (<bos> + one id per word), without its per-call overhead.
    """
    vocab = {token: i for i, token in enumerate(vocabulary(world=world))}
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
    world = config.world
    tokenizer = build_tokenizer(world=world)
    device = torch.device(device)
    model = LlamaForCausalLM(toy_llama_config(config)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    fixed = training_examples(world=world)
    n_copy = int(config.batch_size * config.copy_share)
    start = time.perf_counter()
    model.train()
    for step in range(config.steps):
        drawn = [with_fillers(e, rng, world=world) for e in rng.choices(fixed, k=config.batch_size - n_copy)]
        batch = drawn + [_copy(rng, world) for _ in range(n_copy)]
        ids, last, answers = _batch(batch, device=device, world=world)
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
def evaluate(
    model: nn.Module, *, n_copy: int = 400, seed: int = 1, world: ToyWorld = TOY
) -> dict[str, dict[str, Any]]:
    """Accuracy per task and split ("two_hop/trained", ...) on every fixed prompt of `world` (with
    fillers drawn from `seed` where it has them) and `n_copy` copies, computed on the model's device."""
    rng = random.Random(seed)
    fixed = [with_fillers(e, rng, world=world) for e in fixed_examples(world=world)]
    examples = fixed + [_copy(rng, world) for _ in range(n_copy)]
    ids, last, answers = _batch(examples, device=next(model.parameters()).device, world=world)
    correct = (_answer_logits(model, ids, last).argmax(-1) == answers).tolist()
    groups: dict[str, list[bool]] = {}
    for example, ok in zip(examples, correct, strict=True):
        task, split = example["tags"]
        groups.setdefault(f"{task}/{split}", []).append(ok)
    return {key: {"n": len(v), "accuracy": sum(v) / len(v)} for key, v in sorted(groups.items())}


def corpus_lines(*, n_copy: int = 2000, seed: int = 0, world: ToyWorld = TOY) -> list[str]:
    """Text of `world`'s training distribution (prompt + answer, fillers drawn from `seed` where the world
    has them), for training transcoders on it."""
    rng = random.Random(seed)
    trained = [with_fillers(e, rng, world=world) for e in training_examples(world=world)]
    examples = trained + [_copy(rng, world) for _ in range(n_copy)]
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
        context_length=config.max_positions,
        buffer_tokens=20_000,
        eval_tokens=2_000,
        dead_after_tokens=50_000,
        checkpoint_every=0,
        device="cpu",
        name=f"{config.world.name}-plt-topk",
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
    world = config.world
    model, tokenizer, stats = train_toy_model(config, log=log)
    accuracy = evaluate(model, world=world)
    for key, value in accuracy.items():
        log(f"accuracy {key}: {value['accuracy']:.3f} (n={value['n']})")
    model.save_pretrained(out / world.name)
    tokenizer.save_pretrained(out / world.name)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(seed=config.seed, world=world)) + "\n", encoding="utf-8")
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
    truth = ground_truth(world=world)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    for path in out.rglob("*"):  # safetensors writes private files; these are ordinary package data
        path.chmod(0o755 if path.is_dir() else 0o644)
    return metrics


def shipped_paths(root: str | Path = SHIPPED_DIR, *, world: ToyWorld = TOY) -> tuple[Path, Path]:
    """(model directory, transcoder directory) of a built toy of `world` under `root` (default: the toy
    shipped in the package)."""
    root = Path(root)
    model_dir, tc_dir = root / world.name, root / "transcoders"
    if not (model_dir / "config.json").is_file() or not (tc_dir / "config.yaml").is_file():
        raise ToyError(f"{root} holds no built toy model; run `circuitbase toy build --out {root}`")
    return model_dir, tc_dir
