"""Models and transcoder sets by name, from a Hugging Face cache built in the test (HF_HUB_OFFLINE=1).

Every load goes through the real code path (huggingface_hub resolving refs and snapshots); only the
preset table is pointed at a tiny repo. Also: every file layout circuit-tracer reads loads to the same
weights as its circuit-tracer-format twin, bfloat16 storage and offloaded decoders compute the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from circuitbase.engine import transcoder_sources
from circuitbase.engine.loading import load_model_and_transcoders
from circuitbase.engine.models import ModelLoadError, load_model
from circuitbase.engine.transcoders import ModelFit, TranscoderError, TranscoderSet
from tests.hf_cache import add_repo, folder_files, use_offline_cache
from tests.numerics import assert_close
from tests.tiny_models import FIXTURE_MODEL_DIR, tiny_input_ids

SETS = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
MODEL_REPO = "tiny-org/tiny-llama"
SET_REPO = "tiny-org/tiny-transcoders"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache holding the fixture model and the plt-relu set."""
    cache = use_offline_cache(tmp_path / "hf-cache", monkeypatch)
    add_repo(cache, MODEL_REPO, folder_files(FIXTURE_MODEL_DIR))
    add_repo(cache, SET_REPO, folder_files(SETS / "plt-relu"))
    return cache


def assert_same_weights(got: TranscoderSet, want: TranscoderSet) -> None:
    assert got.config.kind == want.config.kind and got.config.activation == want.config.activation
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        for x, y in zip(a or [], b or [], strict=True):
            assert torch.equal(x.float(), y.float()), name


# -- models --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_model_by_repo_id_and_revision(cache: Path) -> None:
    local = load_model(str(FIXTURE_MODEL_DIR))
    by_id = load_model(MODEL_REPO)
    assert by_id.name == MODEL_REPO
    assert str(cache) in str(by_id.model.config._name_or_path)
    ids = tiny_input_ids()
    assert torch.equal(by_id.model(ids).logits, local.model(ids).logits)
    commit = (cache / "models--tiny-org--tiny-llama" / "refs" / "main").read_text()
    assert load_model(f"{MODEL_REPO}@{commit}").name == MODEL_REPO
    assert load_model(MODEL_REPO, revision=commit).adapter.family == "llama"


def test_model_repo_errors_are_one_line(cache: Path) -> None:
    with pytest.raises(
        ModelLoadError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    ) as err:
        load_model("nobody/no-such-model")
    assert "\n" not in str(err.value) and "'nobody/no-such-model'" in str(err.value)
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_model(MODEL_REPO, revision="v9")
    add_repo(cache, "tiny-org/bin-only", {"config.json": b"{}", "pytorch_model.bin": b"x"})
    with pytest.raises(ModelLoadError, match=r"no config\.json with safetensors weights.*pytorch_model\.bin"):
        load_model("tiny-org/bin-only")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("some/local/path")  # more than org/name: a path, not a repo id


# -- transcoder sets by name ---------------------------------------------------------------------------


def test_transcoders_by_repo_id_uri_and_preset(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = TranscoderSet.load(SETS / "plt-relu")
    commit = (cache / "models--tiny-org--tiny-transcoders" / "refs" / "main").read_text()
    monkeypatch.setitem(transcoder_sources.PRESETS, "gemma", SET_REPO)
    for spec, name in (
        (SET_REPO, SET_REPO),
        (f"hf://{SET_REPO}", SET_REPO),
        (f"{SET_REPO}@{commit}", f"{SET_REPO}@{commit}"),
        (f"hf://{SET_REPO}?revision={commit}", f"{SET_REPO}@{commit}"),
        ("gemma", SET_REPO),
    ):
        loaded = TranscoderSet.load(spec)
        assert loaded.name == name  # circuit-tracer's scan for a Hub set
        assert_same_weights(loaded, local)


def test_sets_in_repo_folders_and_cross_layer(cache: Path) -> None:
    files = folder_files(SETS / "plt-jumprelu-skip", "plt/") | folder_files(SETS / "clt-jumprelu", "clt/")
    add_repo(cache, "tiny-org/sets", files)
    assert_same_weights(
        TranscoderSet.load("hf://tiny-org/sets/clt"), TranscoderSet.load(SETS / "clt-jumprelu")
    )
    plt = TranscoderSet.load("tiny-org/sets/plt")
    assert plt.name == "tiny-org/sets//plt"
    assert_same_weights(plt, TranscoderSet.load(SETS / "plt-jumprelu-skip"))


def test_load_model_and_transcoders_by_name(cache: Path) -> None:
    loaded, transcoders, folder = load_model_and_transcoders(MODEL_REPO, SET_REPO, device="cpu")
    assert (loaded.name, transcoders.name) == (MODEL_REPO, SET_REPO)
    assert (folder / "config.yaml").is_file() and str(cache) in str(folder)


# -- every layout circuit-tracer reads -----------------------------------------------------------------


def _jumprelu_set() -> TranscoderSet:
    return TranscoderSet.random(n_layers=2, d_model=64, d_transcoder=32, activation="jumprelu", seed=3)


def test_gemma_scope_npz_listed_by_uri_loads_like_its_safetensors_twin(cache: Path, tmp_path: Path) -> None:
    twin = _jumprelu_set().save(tmp_path / "twin")
    npz = {}
    for layer in range(2):
        t = load_file(twin / f"layer_{layer}.safetensors")
        buffer = tmp_path / f"params_{layer}.npz"
        np.savez(
            buffer,
            W_enc=t["W_enc"].T.numpy(),
            W_dec=t["W_dec"].numpy(),
            b_enc=t["b_enc"].numpy(),
            b_dec=t["b_dec"].numpy(),
            threshold=t["activation_function.threshold"].numpy(),
        )
        npz[f"layer_{layer}/width_16k/average_l0_7/params.npz"] = buffer
    add_repo(cache, "tiny-org/gemma-scope-like", npz)
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "transcoders": [f"hf://tiny-org/gemma-scope-like/{name}" for name in npz],
    }
    add_repo(cache, "tiny-org/gemma-config", {"config.yaml": yaml.safe_dump(config).encode()})
    loaded = TranscoderSet.load("tiny-org/gemma-config")
    assert loaded.config.activation == "jumprelu"
    assert_same_weights(loaded, TranscoderSet.load(twin))


def test_gemma_scope_2_layouts_load_like_their_twins(cache: Path) -> None:
    """Per-layer with affine skip, and cross-layer with one [d_tc, n_layers, d_model] decoder per file."""
    files: dict[str, bytes | Path] = {}
    for layer in range(2):
        t = load_file(SETS / "plt-jumprelu-skip" / f"layer_{layer}.safetensors")
        plt = {
            "w_enc": t["W_enc"].T.contiguous(),
            "w_dec": t["W_dec"],
            "b_enc": t["b_enc"],
            "b_dec": t["b_dec"],
            "threshold": t["activation_function.threshold"],
            "affine_skip_connection": t["W_skip"].T.contiguous(),
        }
        enc = load_file(SETS / "clt-jumprelu" / f"W_enc_{layer}.safetensors")
        dec = load_file(SETS / "clt-jumprelu" / f"W_dec_{layer}.safetensors")[f"W_dec_{layer}"]
        w_dec = torch.cat([torch.full((dec.shape[0], layer, dec.shape[2]), 7.0), dec], dim=1)
        clt = {
            "w_enc": enc[f"W_enc_{layer}"].T.contiguous(),
            "w_dec": w_dec,
            "b_enc": enc[f"b_enc_{layer}"],
            "b_dec": enc[f"b_dec_{layer}"],
            "threshold": enc[f"threshold_{layer}"],
        }
        for kind, tensors in (("plt", plt), ("clt", clt)):
            path = cache.parent / f"{kind}_{layer}.safetensors"
            save_file(tensors, path)
            files[f"{kind}/layer_{layer}/params.safetensors"] = path
    for kind, model_kind in (("plt", "transcoder_set"), ("clt", "cross_layer_transcoder")):
        config = {
            "model_kind": model_kind,
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "mlp.hook_out",
            "transcoders": [
                f"hf://tiny-org/gemma-scope-2-like/{kind}/layer_{i}/params.safetensors" for i in range(2)
            ],
        }
        files[f"{kind}/config.yaml"] = yaml.safe_dump(config).encode()
    add_repo(cache, "tiny-org/gemma-scope-2-like", files)
    plt = TranscoderSet.load("tiny-org/gemma-scope-2-like/plt")
    assert plt.has_skip
    assert_same_weights(plt, TranscoderSet.load(SETS / "plt-jumprelu-skip"))
    assert_same_weights(
        TranscoderSet.load("tiny-org/gemma-scope-2-like/clt"), TranscoderSet.load(SETS / "clt-jumprelu")
    )


# -- a set that does not fit fails before its weights are fetched ---------------------------------------


def test_misfit_sets_fail_before_fetching_weights(cache: Path) -> None:
    """The listed files are not in the cache: reaching them would fail with 'not in the cache'."""
    base = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
    }
    three = base | {"transcoders": [f"hf://tiny-org/absent/layer_{i}.safetensors" for i in range(3)]}
    wide = base | {
        "d_model": 128,
        "transcoders": [f"hf://tiny-org/absent/layer_{i}.safetensors" for i in range(2)],
    }
    hook = base | {
        "feature_output_hook": "hook_resid_post",
        "transcoders": ["hf://tiny-org/absent/x.safetensors"],
    }
    for name, config in (("three", three), ("wide", wide), ("hook", hook)):
        add_repo(cache, f"tiny-org/{name}", {"config.yaml": yaml.safe_dump(config).encode()})
    fit = ModelFit(n_layers=2, d_model=64, model_name="tiny")
    with pytest.raises(
        TranscoderError, match="do not fit model 'tiny': n_layers: model has 2, transcoders have 3"
    ):
        TranscoderSet.load("tiny-org/three", fit=fit)
    with pytest.raises(TranscoderError, match="d_model: model has 64, transcoders have 128"):
        TranscoderSet.load("tiny-org/wide", fit=fit)
    with pytest.raises(TranscoderError, match="unsupported feature_output_hook 'hook_resid_post'"):
        TranscoderSet.load("tiny-org/hook", fit=fit)
    with pytest.raises(
        TranscoderError,
        match=r"transcoders\[0\]: hf://tiny-org/absent/layer_0.safetensors is not in the Hugging Face cache",
    ):
        TranscoderSet.load("tiny-org/wide")  # without the model's shape: the first file is fetched
    with pytest.raises(TranscoderError, match="n_layers: model has 2, transcoders have 3"):
        load_model_and_transcoders(MODEL_REPO, "tiny-org/three", device="cpu")


def test_transcoder_spec_errors(cache: Path) -> None:
    with pytest.raises(
        TranscoderError,
        match=r"'nobody/nothing': hf://nobody/nothing/config\.yaml is not in the Hugging Face cache",
    ):
        TranscoderSet.load("nobody/nothing")
    with pytest.raises(TranscoderError, match=r"no such folder or file; accepted: a preset \(gemma, llama\)"):
        TranscoderSet.load("not-a-set")


# -- dtype and memory ----------------------------------------------------------------------------------


def test_bfloat16_files_load_as_any_dtype(tmp_path: Path) -> None:
    folder = Path(_jumprelu_set().save(tmp_path / "f32"))
    for file in folder.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file)
    as_f32 = TranscoderSet.load(folder)
    as_bf16 = TranscoderSet.load(folder, dtype=torch.bfloat16)
    assert (as_f32.storage_dtype, as_bf16.storage_dtype, as_bf16.dtype) == (
        torch.float32,
        torch.bfloat16,
        torch.float32,
    )
    assert_same_weights(as_bf16, as_f32)


@pytest.mark.parametrize("name", ["plt-jumprelu-skip", "clt-jumprelu"])
def test_bfloat16_storage_and_offloaded_decoders_compute_like_float32(
    name: str, device: torch.device
) -> None:
    """Weights rounded to bfloat16 once: a float32 set of those values, the bfloat16 set and the same set
    with offloaded decoders give the same activations, decoder rows and reconstructions (float32 compute)."""
    rounded = TranscoderSet.load(SETS / name, device=device, dtype=torch.bfloat16)
    reference = TranscoderSet(rounded.config, rounded.weights(dtype=torch.float32))
    offloaded = TranscoderSet.load(SETS / name, device=device, dtype=torch.bfloat16, offload_decoders=True)
    assert offloaded.W_dec[0].device.type == "cpu" and offloaded.device.type == torch.device(device).type
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(6, 64, generator=gen).to(device) * 3 for _ in range(2)]
    want = reference.reconstruct(inputs)
    features = torch.tensor([0, 5, 17], device=device)
    for candidate in (rounded, offloaded):
        assert candidate.dtype == torch.float32
        for got, expected in zip(candidate.reconstruct(inputs), want, strict=True):
            assert_close(got, expected, rel=1e-6)
        assert torch.equal(candidate.decoder_vectors(1, features), reference.decoder_vectors(1, features))
        assert torch.equal(candidate.encode(0, inputs[0]), reference.encode(0, inputs[0]))
        acts = [candidate.encode(i, x) for i, x in enumerate(inputs)]
        assert_close(candidate.decode_layer(acts, 1), reference.decode_layer(acts, 1), rel=1e-6)
