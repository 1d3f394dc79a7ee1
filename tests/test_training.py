"""Transcoder training on a tiny random Llama and a small word corpus (seconds each), on every device."""

from __future__ import annotations

import functools
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.corpus import CorpusError, iter_texts, python_docs_corpus
from circuitbase.engine.replacement import hooked
from circuitbase.engine.training import (
    TrainableTranscoders,
    TrainConfig,
    TrainingError,
    capture,
    checkpoint_dir,
    layer_metrics,
    train_transcoders,
    training_loss,
)
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close
from tests.tiny_models import tiny_model, tiny_tokenizer

BASE = TrainConfig(
    d_transcoder=128,
    k=8,
    total_tokens=40 * 256,
    batch_tokens=256,
    lr=3e-2,
    warmup_steps=5,
    context_length=24,
    texts_per_forward=16,
    buffer_tokens=2048,
    eval_tokens=1000,
    dead_after_tokens=2000,
    checkpoint_every=0,
    device="cpu",
)


@functools.cache
def _model_on(device: str) -> torch.nn.Module:
    return tiny_model("llama").to(device)


@pytest.fixture
def model(device: torch.device) -> torch.nn.Module:
    """The tiny Llama on `device` (built once per device)."""
    return _model_on(str(device))


@pytest.fixture
def cpu_model() -> torch.nn.Module:
    """The tiny Llama on the CPU, for tests whose subject does not depend on the device."""
    return _model_on("cpu")


def _randn(*shape: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A seeded normal draw made on the CPU (the same numbers for every device), placed on `device`."""
    return torch.randn(*shape, generator=gen, device=gen.device).to(device)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]  # a small vocabulary, so the activations have structure
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choices(words, k=20)) for _ in range(300)) + "\n")
    return path


def _train(model, tokenizer, corpus: Path, out: Path, config: TrainConfig, **kwargs) -> dict:
    return train_transcoders(model, tokenizer, corpus=corpus, out_dir=out, config=config, **kwargs)


def test_topk_training_reduces_loss_and_keeps_k_active(
    model, tokenizer, corpus: Path, tmp_path: Path, device: torch.device
) -> None:
    config = replace(BASE, skip_ridge=0.0, device=str(device))  # the skip starts at 0
    metrics = _train(model, tokenizer, corpus, tmp_path, config)
    assert metrics["device"] == str(device)
    history = metrics["history"]
    assert history[-1][1] < 0.8 * history[0][1]
    transcoders = TranscoderSet.load(tmp_path, device=device)
    assert transcoders.config.activation == "topk" and transcoders.config.k == 8 and transcoders.has_skip
    ids = [tokenizer(line).input_ids for line in list(iter_texts(corpus))[:8]]
    acts = capture(model, adapter_for(model), ids, bos_id=None)
    for layer in range(transcoders.n_layers):
        active = (transcoders.encode(layer, acts[:, layer, 0]) > 0).sum(-1)
        assert int(active.max()) == 8 and float(active.float().mean()) > 7.5
    for per_layer in metrics["layers"]:
        assert per_layer["fvu"] < 0.8 and per_layer["l0"] == pytest.approx(8, rel=1 / 16)
        assert 0.0 <= per_layer["dead_fraction"] <= 1.0
    replacement = metrics["replacement"]
    assert replacement["tokens"] > 0 and replacement["kl"] >= 0.0
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_sparse_topk_decode_equals_the_dense_decode_with_its_gradients(
    kind: str, device: torch.device
) -> None:
    config = replace(BASE, kind=kind, d_transcoder=64, k=5)
    gen = _seeded(1)
    tc = TrainableTranscoders(config, n_layers=3, d_model=16, out_mean=_randn(3, 16, gen=gen, device=device))
    with torch.no_grad():
        for w in tc.W_dec:
            w.copy_(_randn(*w.shape, gen=gen, device=device))
    pre = _randn(40, 3, 64, gen=gen, device=device)
    values, indices = pre.topk(5, dim=-1)
    values = values.relu()
    dense_acts = torch.zeros_like(pre).scatter(-1, indices, values)
    target = _randn(40, 3, 16, gen=gen, device=device)
    grads = []
    for out in (tc.decode(dense_acts), tc.decode_sparse(indices, values)):
        tc.zero_grad()
        (out - target).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in tc.W_dec])
        assert out.shape == (40, 3, 16)
    assert_close(tc.decode(dense_acts), tc.decode_sparse(indices, values), rel=1e-5)
    for dense, sparse in zip(*grads, strict=True):
        assert_close(dense, sparse, rel=1e-5)
        assert dense.abs().sum() > 0


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_sparse_topk_loss_equals_the_dense_loss_with_its_gradients(kind: str, device: torch.device) -> None:
    """The TopK training loss (sparse encoder gradients, sparse decode, AuxK on dead features) against
    the same loss computed densely by autograd: same value, same gradients for every parameter."""
    config = replace(BASE, kind=kind, d_transcoder=64, k=5, aux_k=8)
    gen = _seeded(3)
    tc = TrainableTranscoders(config, n_layers=3, d_model=16, out_mean=_randn(3, 16, gen=gen, device=device))
    with torch.no_grad():
        for w in tc.W_dec:
            w.copy_(_randn(*w.shape, gen=gen, device=device))
        tc.b_enc.copy_(_randn(*tc.b_enc.shape, gen=gen, device=device))
    x, target = _randn(40, 3, 16, gen=gen, device=device), _randn(40, 3, 16, gen=gen, device=device)
    out_var = target.var(0).sum(-1)
    since_fired = torch.zeros(3, 64, dtype=torch.long, device=device)
    since_fired[1:, ::2] = config.dead_after_tokens  # layers 1-2: 32 dead features
    since_fired[0, :3] = config.dead_after_tokens  # layer 0: 3 dead, fewer than aux_k
    params = [tc.W_enc, tc.b_enc, tc.b_dec, *tc.W_dec] + ([tc.W_skip] if tc.W_skip is not None else [])

    loss, parts, fired = training_loss(tc, torch.stack([x, target], dim=2), out_var, since_fired)
    sparse_grads = torch.autograd.grad(loss, params)

    pre = torch.einsum("nld,lfd->nlf", x, tc.W_enc) + tc.b_enc
    values, indices = pre.topk(5, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    out = tc.decode(acts) + (torch.einsum("nld,led->nle", x, tc.W_skip) if tc.W_skip is not None else 0)
    error = target - out
    dead = since_fired >= config.dead_after_tokens
    dead_values, dead_indices = torch.where(dead, pre, -torch.inf).topk(8, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter(-1, dead_indices, dead_values.nan_to_num(neginf=0.0).relu())
    aux_out = tc.decode(aux_acts, bias=False)
    dense = (error.pow(2).sum(-1).mean(0) / out_var).sum() + config.aux_coefficient * (
        (error.detach() - aux_out).pow(2).sum(-1).mean(0) / out_var
    ).sum()
    dense_grads = torch.autograd.grad(dense, params)

    assert loss.item() == pytest.approx(dense.item(), rel=1e-5) and parts["aux"] > 0
    assert torch.equal(fired, (acts > 0).any(0))
    assert parts["l0"] == pytest.approx(float((acts > 0).sum(-1).float().mean()))
    for name, s_grad, d_grad in zip(["W_enc", "b_enc", "b_dec", "W_dec", "W_dec", "W_dec", "W_skip"],
                                    sparse_grads, dense_grads, strict=False):  # fmt: skip
        assert_close(s_grad, d_grad, rel=1e-5), name
        assert d_grad.abs().sum() > 0, name


def test_skip_starts_at_the_least_squares_linear_map(device: torch.device) -> None:
    tc = TrainableTranscoders(BASE, n_layers=2, d_model=8, out_mean=torch.zeros(2, 8, device=device))
    gen = _seeded(2)
    x = _randn(500, 2, 8, gen=gen, device=device)
    linear = _randn(2, 8, 8, gen=gen, device=device)
    m = torch.einsum("nld,lde->nle", x, linear) + 0.5
    tc.fit_skip(torch.stack([x, m], dim=2), ridge=1e-6)
    assert tc.W_skip is not None and tc.W_skip.device.type == device.type
    assert_close(torch.einsum("nld,led->nle", x, tc.W_skip) + tc.b_dec, m, rel=1e-5)


def test_capture_stops_after_the_last_mlp_and_matches_a_full_forward(
    model, tokenizer, device: torch.device
) -> None:
    ids = [tokenizer("w1 w2 w3 w4").input_ids, tokenizer("w5 w6").input_ids]
    adapter = adapter_for(model)
    acts = capture(model, adapter, ids, bos_id=None)
    outputs: list[torch.Tensor] = []
    with hooked(adapter, on_mlp_output=lambda layer, m: outputs.append(m)):
        model(torch.tensor([ids[0]], device=device))
    assert acts.shape == (len(ids[0]) + len(ids[1]), adapter.n_layers, 2, adapter.d_model)
    for layer, m in enumerate(outputs):
        assert_close(acts[: len(ids[0]), layer, 1], m[0], rel=1e-5)


def test_python_docs_corpus_is_english_prose_written_once(tmp_path: Path) -> None:
    path = python_docs_corpus(tmp_path / "docs.jsonl")
    texts = list(iter_texts(path))
    assert len(texts) > 1000 and all(len(t) >= 200 for t in texts)
    words = " ".join(texts[:200]).split()
    assert sum(w.lower() in {"the", "a", "of", "is", "to"} for w in words) / len(words) > 0.08
    before = path.stat().st_mtime_ns
    assert python_docs_corpus(path) == path and path.stat().st_mtime_ns == before


@pytest.mark.parametrize(("kind", "activation"), [("plt", "jumprelu"), ("plt", "relu"), ("clt", "topk")])
def test_saved_set_reproduces_the_trained_reconstruction(
    model, tokenizer, corpus: Path, tmp_path: Path, kind: str, activation: str, device: torch.device
) -> None:
    config = replace(
        BASE, kind=kind, activation=activation, total_tokens=20 * 256, l1_coefficient=1e-4, device=str(device)
    )
    metrics = _train(model, tokenizer, corpus, tmp_path, config)
    transcoders = TranscoderSet.load(tmp_path, device=device)
    assert transcoders.cross_layer == (kind == "clt") and transcoders.config.activation == activation
    ids = [tokenizer(line).input_ids for line in list(iter_texts(corpus))[19::20][:30]]
    acts = capture(model, adapter_for(model), ids, bos_id=None)
    recon = transcoders.reconstruct([acts[:, i, 0] for i in range(transcoders.n_layers)])
    for layer, out in enumerate(recon):
        target = acts[:, layer, 1]
        fvu = float((target - out).pow(2).sum() / (target - target.mean(0)).pow(2).sum())
        assert fvu == pytest.approx(metrics["layers"][layer]["fvu"], rel=0.05)
        assert fvu < 1.0


def test_resume_is_bit_identical(cpu_model, tokenizer, corpus: Path, tmp_path: Path) -> None:
    """On the CPU: bit identity needs deterministic kernels (CUDA's index_add_ and sparse products add
    in no fixed order)."""
    model = cpu_model
    config = replace(BASE, total_tokens=20 * 256, checkpoint_every=10, keep_checkpoints=5)
    straight = tmp_path / "straight"
    _train(model, tokenizer, corpus, straight, config)
    checkpoints = sorted(checkpoint_dir(straight).glob("step_*.pt"))
    assert [p.name for p in checkpoints] == ["step_000000010.pt", "step_000000020.pt"]
    resumed = tmp_path / "resumed"
    checkpoint_dir(resumed).mkdir(parents=True)
    (checkpoint_dir(resumed) / checkpoints[0].name).write_bytes(checkpoints[0].read_bytes())
    _train(model, tokenizer, corpus, resumed, config, resume=True)
    a, b = TranscoderSet.load(straight), TranscoderSet.load(resumed)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    with pytest.raises(TrainingError, match="already has checkpoints"):
        _train(model, tokenizer, corpus, resumed, config)
    with pytest.raises(TrainingError, match="other settings"):
        _train(model, tokenizer, corpus, resumed, replace(config, lr=1e-3), resume=True)


def test_empty_corpus_is_a_clear_error(cpu_model, tokenizer, tmp_path: Path) -> None:
    model = cpu_model
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(CorpusError, match="contains no text"):
        _train(model, tokenizer, empty, tmp_path / "out", BASE)
    with pytest.raises(CorpusError, match="does not exist"):
        _train(model, tokenizer, tmp_path / "missing", tmp_path / "out", BASE)
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3\n" * 5)
    with pytest.raises(TrainingError, match="no held-out texts"):
        _train(model, tokenizer, short, tmp_path / "out", BASE)
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2"}\n{"body": 3}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: needs a string field"):
        list(iter_texts(bad))


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(
    model, tokenizer, corpus: Path, tmp_path: Path, device: torch.device
) -> None:
    config = replace(BASE, lr=1e30, warmup_steps=1, checkpoint_every=1, activation="relu", device=str(device))
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 1.*step_000000001\.pt"):
        _train(model, tokenizer, corpus, tmp_path / "out", config)
    (checkpoint,) = checkpoint_dir(tmp_path / "out").glob("step_*.pt")
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    assert state["step"] == 1
    assert all(torch.isfinite(t).all() for t in state["transcoders"].values())
    assert not (tmp_path / "out").exists()


def test_cli_trains_the_toy_model_transcoders(tmp_path: Path, device: torch.device) -> None:
    from typer.testing import CliRunner

    from circuitbase.cli import app
    from circuitbase.engine import toy

    corpus = tmp_path / "toy.jsonl"
    corpus.write_text("".join(f'{{"text": "{line}"}}\n' for line in toy.corpus_lines(n_copy=200)))
    out = tmp_path / "tc"
    model_dir, _ = toy.shipped_paths()
    options = ["--model", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--kind", "clt"]
    sizes = ["--activation", "jumprelu", "--d-transcoder", "64", "--tokens", "4096", "--batch-tokens", "512"]
    sizes += ["--buffer-tokens", "2048", "--context-length", "16"]
    result = CliRunner().invoke(app, ["train-transcoders", *options, *sizes, "--device", str(device)])
    assert result.exit_code == 0, result.output
    assert "layer 1: fvu" in result.output and "KL" in result.output
    transcoders = TranscoderSet.load(out)
    assert transcoders.cross_layer and transcoders.config.activation == "jumprelu"
    assert transcoders.config.model_name == "toy" and (out / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["train-transcoders", *options, "--activation", "gelu"])
    assert bad.exit_code == 1 and "activation must be topk, jumprelu or relu" in bad.output


def test_generated_corpus_is_seeded_and_readable(tmp_path: Path, device: torch.device) -> None:
    from circuitbase.engine import toy
    from circuitbase.engine.corpus import generated_corpus
    from circuitbase.engine.models import load_model

    loaded = load_model(str(toy.shipped_paths()[0]), device=device)
    paths = [
        generated_corpus(
            loaded.model, loaded.tokenizer, tmp_path / f"{i}.jsonl", n_texts=6, length=5, batch_size=4
        )
        for i in range(2)
    ]
    assert paths[0].read_text() == paths[1].read_text()
    texts = list(iter_texts(paths[0]))
    assert len(texts) == 6 and all(len(t.split()) == 5 for t in texts)
    assert set(" ".join(texts).split()) <= set(toy.vocabulary())


@pytest.mark.parametrize("cross_layer", [False, True])
def test_layer_metrics_in_chunks_equal_the_whole_batch_formulas(
    cross_layer: bool, device: torch.device
) -> None:
    transcoders = TranscoderSet.random(
        n_layers=3, d_model=16, d_transcoder=40, cross_layer=cross_layer, activation="topk", k=4,
        skip=not cross_layer,
    ).to(device)  # fmt: skip
    batch = _randn(300, 3, 2, 16, gen=_seeded(2), device=device)
    inputs = [batch[:, layer, 0] for layer in range(3)]
    outputs = transcoders.reconstruct(inputs)
    metrics = layer_metrics(transcoders, batch, chunk=64)  # 300 tokens: four full chunks and a part
    for layer, m in enumerate(metrics):
        target = batch[:, layer, 1]
        fvu = (target - outputs[layer]).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
        acts = transcoders.encode(layer, inputs[layer])
        assert m["fvu"] == pytest.approx(float(fvu), rel=1e-5)
        assert m["l0"] == pytest.approx(float((acts > 0).sum(-1).float().mean()))
        assert m["unused_fraction"] == pytest.approx(float(1 - (acts > 0).any(0).float().mean()))
