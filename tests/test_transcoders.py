"""Transcoder sets: circuit-tracer format compatibility, activations, decoding and save/load round trips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from circuitbase.engine.transcoders import TranscoderError, TranscoderSet
from tests.hf_cache import use_offline_cache

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
SETS = ("plt-jumprelu-skip", "plt-relu", "clt-jumprelu")
VALIDATION = json.loads((FIXTURES / "validation.json").read_text())


@pytest.fixture(scope="module")
def mlp_inputs() -> list[torch.Tensor]:
    """Input of each `model.model.layers[l].mlp` of tiny-llama on the validation prompt, [n_pos, d_model]."""
    model = LlamaForCausalLM.from_pretrained(
        FIXTURES / "tiny-llama", dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    captured: dict[int, torch.Tensor] = {}
    handles = [
        layer.mlp.register_forward_pre_hook(
            lambda _m, args, i=i: captured.__setitem__(i, args[0][0].detach())
        )
        for i, layer in enumerate(model.model.layers)
    ]
    ids = VALIDATION["variants"]["plt-relu"]["input_tokens"]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return [captured[i] for i in range(len(model.model.layers))]


def active_features(tc: TranscoderSet, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 3] (layer, position, feature) in circuit-tracer's order and [n] values; position 0 zeroed."""
    acts = torch.stack([tc.encode(layer, x) for layer, x in enumerate(inputs)])
    acts[:, 0] = 0
    index = acts.nonzero()
    return index, acts[index[:, 0], index[:, 1], index[:, 2]]


def copy_set(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit_config(folder: Path, **changes: object) -> None:
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw.update(changes)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))


# -- the fixtures reproduce circuit-tracer exactly ---------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_fixture_active_features_match_circuit_tracer(name: str, mlp_inputs: list[torch.Tensor]) -> None:
    recorded = VALIDATION["variants"][name]
    tc = TranscoderSet.load(FIXTURES / name)
    index, values = active_features(tc, mlp_inputs)

    expected = torch.tensor(recorded["active_features"], dtype=torch.float64)
    assert len(index) == recorded["n_active_features"] == len(expected)
    assert torch.equal(index, expected[:, :3].long())
    # validation.json rounds to 6 decimals (error <= 5e-7). Layer 0, positions 1-2 agree to that rounding;
    # deeper into the forward the MLP inputs drift by float32 op-order differences in attention between
    # transformers versions (not the transcoders), far below the >= 9e-4 threshold margins.
    diff = (values.double() - expected[:, 3]).abs()
    assert diff[(index[:, 0] == 0) & (index[:, 1] <= 2)].max().item() <= 5.1e-7
    assert diff.max().item() < 2.5e-6
    counts = torch.zeros(tc.n_layers, len(mlp_inputs[0]), dtype=torch.long)
    counts.index_put_((index[:, 0], index[:, 1]), torch.ones(len(index), dtype=torch.long), accumulate=True)
    assert counts.tolist() == recorded["active_per_layer_position"]


def test_fixture_configs_load_as_described() -> None:
    plt_skip = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip")
    plt_relu = TranscoderSet.load(FIXTURES / "plt-relu")
    clt = TranscoderSet.load(FIXTURES / "clt-jumprelu")
    assert (plt_skip.config.activation, plt_skip.has_skip, plt_skip.cross_layer) == ("jumprelu", True, False)
    assert (plt_relu.config.activation, plt_relu.has_skip, plt_relu.cross_layer) == ("relu", False, False)
    assert (clt.config.activation, clt.has_skip, clt.cross_layer) == ("jumprelu", False, True)
    for tc in (plt_skip, plt_relu, clt):
        assert (tc.n_layers, tc.d_model, tc.d_transcoder) == (2, 64, 256)
        assert (tc.config.input_hook, tc.config.output_hook) == ("mlp.hook_in", "mlp.hook_out")
        assert tc.config.model_name == "tiny-llama"
    assert clt.name == "fixtures/clt-jumprelu"


def test_jumprelu_threshold_is_strict() -> None:
    tc = TranscoderSet.random(n_layers=1, d_model=4, d_transcoder=3)
    threshold = tc.threshold[0]
    pre = torch.stack([threshold, threshold + 1e-3, threshold - 1e-3])
    acts = tc.activate(0, pre)
    assert acts[0].abs().sum().item() == 0.0
    assert torch.equal(acts[1], threshold + 1e-3)
    assert acts[2].abs().sum().item() == 0.0


# -- decoding ----------------------------------------------------------------------------------------------


def test_clt_decode_matches_readme_formula() -> None:
    tc = TranscoderSet.random(n_layers=3, d_model=8, d_transcoder=32, cross_layer=True, seed=3)
    inputs = [torch.randn(5, 8, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    acts = [tc.encode(layer, x) for layer, x in enumerate(inputs)]
    assert all(0 < int((a != 0).sum()) < a.numel() for a in acts)

    by_hand = []
    for out_layer in range(3):
        total = tc.b_dec[out_layer].double().clone()
        for src in range(out_layer + 1):
            total = total + acts[src].double() @ tc.W_dec[src][:, out_layer - src, :].double()
        by_hand.append(total)
    decoded = tc.decode(acts)
    reconstructed = tc.reconstruct(inputs)
    for layer in range(3):
        assert decoded[layer].shape == (5, 8)
        assert (decoded[layer].double() - by_hand[layer]).abs().max().item() < 1e-5
        assert torch.equal(reconstructed[layer], decoded[layer])
        assert (tc.decode_layer(acts[: layer + 1], layer).double() - by_hand[layer]).abs().max() < 1e-5
    with pytest.raises(TranscoderError, match="layer 2 needs activations of layers 0-2"):
        tc.decode_layer(acts[:2], 2)
    # layer 2 really receives writes from layers 0 and 1
    assert (by_hand[2] - (acts[2].double() @ tc.W_dec[2][:, 0].double() + tc.b_dec[2])).abs().max() > 1e-3


def test_clt_fixture_reconstruct_matches_formula(mlp_inputs: list[torch.Tensor]) -> None:
    tc = TranscoderSet.load(FIXTURES / "clt-jumprelu")
    w_enc = [load_file(FIXTURES / "clt-jumprelu" / f"W_enc_{i}.safetensors") for i in range(2)]
    w_dec = [load_file(FIXTURES / "clt-jumprelu" / f"W_dec_{i}.safetensors")[f"W_dec_{i}"] for i in range(2)]
    acts = []
    for i, x in enumerate(mlp_inputs):
        pre = x @ w_enc[i][f"W_enc_{i}"].T + w_enc[i][f"b_enc_{i}"]
        acts.append(pre * (pre > w_enc[i][f"threshold_{i}"]))
    expected = [
        acts[0] @ w_dec[0][:, 0] + w_enc[0]["b_dec_0"],
        acts[0] @ w_dec[0][:, 1] + acts[1] @ w_dec[1][:, 0] + w_enc[1]["b_dec_1"],
    ]
    for got, want in zip(tc.reconstruct(mlp_inputs), expected, strict=True):
        assert (got - want).abs().max().item() < 1e-5


def test_plt_skip_reconstruct_matches_formula(mlp_inputs: list[torch.Tensor]) -> None:
    tc = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip")
    for layer, x in enumerate(mlp_inputs):
        raw = load_file(FIXTURES / "plt-jumprelu-skip" / f"layer_{layer}.safetensors")
        pre = x @ raw["W_enc"].T + raw["b_enc"]
        acts = pre * (pre > raw["activation_function.threshold"])
        want = acts @ raw["W_dec"] + raw["b_dec"] + x @ raw["W_skip"].T
        got = tc.reconstruct(mlp_inputs)[layer]
        assert (got - want).abs().max().item() < 1e-5
        assert torch.equal(tc.skip(layer, x), x @ raw["W_skip"].T)
    assert TranscoderSet.load(FIXTURES / "plt-relu").skip(0, mlp_inputs[0]) is None


def test_encoder_and_decoder_vectors() -> None:
    clt = TranscoderSet.random(n_layers=3, d_model=8, d_transcoder=16, cross_layer=True)
    plt = TranscoderSet.random(n_layers=3, d_model=8, d_transcoder=16, skip=True)
    features = torch.tensor([3, 0, 15])
    x = torch.randn(8, generator=torch.Generator().manual_seed(1))
    for tc in (clt, plt):
        rows = tc.encoder_vectors(1, features)
        assert rows.shape == (3, 8)
        pre = tc.pre_activations(1, x)
        assert torch.allclose(rows @ x + tc.b_enc[1][features], pre[features], atol=1e-6)
    assert clt.decoder_vectors(1, features).shape == (3, 2, 8)
    assert torch.equal(clt.decoder_vectors(1, features)[:, 1], clt.W_dec[1][features, 1])
    assert plt.decoder_vectors(1, features).shape == (3, 1, 8)
    assert torch.equal(plt.decoder_vectors(1, features)[:, 0], plt.W_dec[1][features])


def test_decode_wants_one_tensor_per_layer() -> None:
    tc = TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8)
    with pytest.raises(TranscoderError, match=r"one tensor per layer \(2\), found 1"):
        tc.decode([torch.zeros(1, 8)])


# -- activations -------------------------------------------------------------------------------------------


def test_topk_keeps_exactly_k_largest() -> None:
    tc = TranscoderSet.random(n_layers=1, d_model=8, d_transcoder=64, activation="topk", k=5)
    pre = torch.rand(7, 64, generator=torch.Generator().manual_seed(2)) + 0.01
    acts = tc.activate(0, pre)
    assert ((acts != 0).sum(dim=-1) == 5).all()
    top = pre.topk(5, dim=-1)
    assert torch.equal(acts.gather(-1, top.indices), top.values)
    # negative pre-activations among the top k stay off (ReLU)
    assert (tc.activate(0, -pre) == 0).all()


def test_random_sets_are_sparse() -> None:
    x = torch.randn(200, 32, generator=torch.Generator().manual_seed(5))
    for activation in ("relu", "jumprelu"):
        tc = TranscoderSet.random(n_layers=1, d_model=32, d_transcoder=256, activation=activation)
        fraction = (tc.encode(0, x) != 0).float().mean().item()
        assert 0.05 < fraction < 0.25, (activation, fraction)
    assert (TranscoderSet.random(n_layers=1, d_model=32, d_transcoder=256).threshold[0] > 0).all()


def test_module_moves_with_to() -> None:
    tc = TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, skip=True).to(torch.float64)
    assert tc.dtype == torch.float64 and tc.W_skip[1].dtype == torch.float64
    assert tc.encode(0, torch.randn(3, 4)).dtype == torch.float64
    assert all(not p.requires_grad for p in tc.parameters())


# -- save / load -------------------------------------------------------------------------------------------

VARIANTS = [
    dict(cross_layer=False, activation="relu", skip=False),
    dict(cross_layer=False, activation="jumprelu", skip=True),
    dict(cross_layer=False, activation="topk", skip=True),
    dict(cross_layer=True, activation="relu", skip=False),
    dict(cross_layer=True, activation="jumprelu", skip=False),
    dict(cross_layer=True, activation="topk", skip=False),
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: f"{'clt' if v['cross_layer'] else 'plt'}-{v['activation']}"
)
def test_save_load_round_trip_is_bit_identical(variant: dict, tmp_path: Path) -> None:
    tc = TranscoderSet.random(n_layers=3, d_model=8, d_transcoder=16, k=4, seed=7, name="rt", **variant)
    folder = tc.save(tmp_path / "set")
    back = TranscoderSet.load(folder)
    assert back.config == tc.config
    assert tc.state_dict().keys() == back.state_dict().keys()
    for key, value in tc.state_dict().items():
        assert back.state_dict()[key].dtype == value.dtype
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(4, 8)
    assert all(
        torch.equal(a, b) for a, b in zip(tc.reconstruct([x] * 3), back.reconstruct([x] * 3), strict=True)
    )
    names = sorted(p.name for p in folder.iterdir())
    if variant["cross_layer"]:
        assert names == sorted(
            [f"W_enc_{i}.safetensors" for i in range(3)]
            + [f"W_dec_{i}.safetensors" for i in range(3)]
            + ["config.yaml"]
        )
    else:
        assert names == sorted([f"layer_{i}.safetensors" for i in range(3)] + ["config.yaml"])
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no staging folders left behind


@pytest.mark.parametrize("name", SETS)
def test_saved_fixture_files_equal_originals(name: str, tmp_path: Path) -> None:
    folder = TranscoderSet.load(FIXTURES / name).save(tmp_path / name)
    files = sorted(p.name for p in (FIXTURES / name).glob("*.safetensors"))
    assert files == sorted(p.name for p in folder.glob("*.safetensors"))
    for file in files:
        original, written = load_file(FIXTURES / name / file), load_file(folder / file)
        assert original.keys() == written.keys()
        assert all(torch.equal(original[k], written[k]) for k in original)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    assert raw["model_kind"] == yaml.safe_load((FIXTURES / name / "config.yaml").read_text())["model_kind"]
    assert raw["scan"] == f"fixtures/{name}"


def test_topk_config_keys(tmp_path: Path) -> None:
    folder = TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, activation="topk", k=3).save(
        tmp_path / "t"
    )
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    assert (raw["activation"], raw["k"], raw["model_kind"]) == ("topk", 3, "transcoder_set")
    edit_config(folder, k="three")
    with pytest.raises(TranscoderError, match="integer `k`"):
        TranscoderSet.load(folder)


def test_save_replaces_existing_folder(tmp_path: Path) -> None:
    TranscoderSet.random(n_layers=3, d_model=4, d_transcoder=8, cross_layer=True).save(tmp_path / "s")
    TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, seed=1).save(tmp_path / "s")
    back = TranscoderSet.load(tmp_path / "s")
    assert (back.cross_layer, back.n_layers) == (False, 2)
    assert not list((tmp_path / "s").glob("W_enc_*"))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


# -- config.yaml variants ----------------------------------------------------------------------------------


def test_transcoders_list_with_local_paths(tmp_path: Path, mlp_inputs: list[torch.Tensor]) -> None:
    folder = tmp_path / "listed"
    (folder / "weights").mkdir(parents=True)
    shutil.copy(
        FIXTURES / "plt-jumprelu-skip" / "layer_0.safetensors", folder / "weights" / "first.safetensors"
    )
    edit_path = folder / "config.yaml"
    edit_path.write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "ln2.hook_normalized",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": [
                    "weights/first.safetensors",
                    str((FIXTURES / "plt-jumprelu-skip" / "layer_1.safetensors").resolve()),
                ],
            }
        )
    )
    listed = TranscoderSet.load(folder)
    reference = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip")
    assert (listed.config.input_hook, listed.config.output_hook) == ("ln2.hook_normalized", "hook_mlp_out")
    assert listed.name == "listed"  # no scan key: the folder name
    for got, want in zip(
        active_features(listed, mlp_inputs), active_features(reference, mlp_inputs), strict=True
    ):
        assert torch.equal(got, want)


def test_hf_paths_outside_the_cache_fail_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_cache(tmp_path / "hf-cache", monkeypatch)
    with pytest.raises(TranscoderError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        TranscoderSet.load("hf://mntss/transcoder-Llama-3.2-1B")
    folder = copy_set("plt-relu", tmp_path)
    edit_config(folder, transcoders=["layer_0.safetensors", "hf://someone/transcoders/layer_1.safetensors"])
    with pytest.raises(
        TranscoderError, match=r"transcoders\[1\]: hf://someone/transcoders/layer_1.* not in the"
    ):
        TranscoderSet.load(folder)


@pytest.mark.parametrize(
    ("key", "hook"),
    [("feature_input_hook", "hook_resid_pre"), ("feature_output_hook", "hook_resid_post")],
)
def test_unknown_hook_is_rejected(key: str, hook: str, tmp_path: Path) -> None:
    folder = copy_set("plt-relu", tmp_path)
    edit_config(folder, **{key: hook})
    supported = (
        "mlp.hook_in, ln2.hook_normalized, hook_resid_mid"
        if key == "feature_input_hook"
        else "mlp.hook_out, hook_mlp_out"
    )
    with pytest.raises(TranscoderError, match=f"unsupported {key} '{hook}'; supported: {supported}"):
        TranscoderSet.load(folder)


def test_missing_layer_files(tmp_path: Path) -> None:
    first = copy_set("plt-relu", tmp_path / "a")
    (first / "layer_0.safetensors").unlink()
    with pytest.raises(TranscoderError, match=r"missing layer file\(s\) \['layer_0.safetensors'\]"):
        TranscoderSet.load(first)
    last = copy_set("plt-relu", tmp_path / "b")
    (last / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderError, match="declares n_layers=2 but the tensor files give 1"):
        TranscoderSet.load(last)
    clt = copy_set("clt-jumprelu", tmp_path / "c")
    (clt / "W_dec_1.safetensors").unlink()
    with pytest.raises(TranscoderError, match=r"missing layer file\(s\) \['W_dec_1.safetensors'\]"):
        TranscoderSet.load(clt)
    listed = copy_set("plt-relu", tmp_path / "d")
    edit_config(listed, transcoders=["layer_0.safetensors", "nowhere.safetensors"])
    with pytest.raises(TranscoderError, match=r"missing transcoder file .*nowhere\.safetensors"):
        TranscoderSet.load(listed)


@pytest.mark.parametrize(("name", "file"), [("plt-jumprelu-skip", "layer_1"), ("clt-jumprelu", "W_enc_0")])
def test_log_thresholds_are_rejected(name: str, file: str, tmp_path: Path) -> None:
    folder = copy_set(name, tmp_path)
    tensors = load_file(folder / f"{file}.safetensors")
    tensors["log_thresholds"] = torch.zeros(256)
    save_file(tensors, folder / f"{file}.safetensors")
    with pytest.raises(
        TranscoderError, match=f"{file}.safetensors: tensor 'log_thresholds' is not supported"
    ):
        TranscoderSet.load(folder)


def test_wrong_tensor_shape_and_unknown_tensor(tmp_path: Path) -> None:
    folder = copy_set("plt-jumprelu-skip", tmp_path / "a")
    tensors = load_file(folder / "layer_1.safetensors")
    tensors["W_dec"] = tensors["W_dec"][:, :32].contiguous()
    save_file(tensors, folder / "layer_1.safetensors")
    with pytest.raises(
        TranscoderError,
        match=r"layer_1.safetensors: tensor W_dec has shape \[256, 32\], expected \[256, 64\]",
    ):
        TranscoderSet.load(folder)
    clt = copy_set("clt-jumprelu", tmp_path / "b")
    save_file({"W_dec_1": torch.zeros(256, 2, 64)}, clt / "W_dec_1.safetensors")
    with pytest.raises(
        TranscoderError,
        match=r"W_dec_1.safetensors: tensor W_dec has shape \[256, 2, 64\], expected \[256, 1, 64\]",
    ):
        TranscoderSet.load(clt)
    extra = copy_set("plt-relu", tmp_path / "c")
    tensors = load_file(extra / "layer_0.safetensors")
    tensors["W_gate"] = torch.zeros(3)
    save_file(tensors, extra / "layer_0.safetensors")
    with pytest.raises(TranscoderError, match=r"unexpected tensor\(s\) \['W_gate'\]"):
        TranscoderSet.load(extra)


def test_layers_must_agree_on_threshold(tmp_path: Path) -> None:
    folder = copy_set("plt-jumprelu-skip", tmp_path)
    tensors = load_file(folder / "layer_1.safetensors")
    del tensors["activation_function.threshold"]
    save_file(tensors, folder / "layer_1.safetensors")
    with pytest.raises(
        TranscoderError, match=r"layer_1.safetensors: tensor threshold is absent but .* is present"
    ):
        TranscoderSet.load(folder)


def test_unknown_model_kind_and_missing_config(tmp_path: Path) -> None:
    folder = copy_set("plt-relu", tmp_path)
    edit_config(folder, model_kind="sae")
    with pytest.raises(TranscoderError, match="model_kind 'sae' is not supported"):
        TranscoderSet.load(folder)
    with pytest.raises(TranscoderError, match=r"no config\.yaml"):
        TranscoderSet.load(tmp_path)
    with pytest.raises(TranscoderError, match="no such folder or file"):
        TranscoderSet.load(tmp_path / "nothing")


def test_validate_for_names_expected_and_found() -> None:
    tc = TranscoderSet.load(FIXTURES / "clt-jumprelu")
    tc.validate_for(n_layers=2, d_model=64, model_name="tiny-llama")
    with pytest.raises(TranscoderError, match="model 'other': d_model: model has 32, transcoders have 64"):
        tc.validate_for(n_layers=2, d_model=32, model_name="other")
    with pytest.raises(TranscoderError, match="n_layers: model has 3, transcoders have 2"):
        tc.validate_for(n_layers=3, d_model=64)


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(TranscoderError, match="cross-layer transcoder with a skip connection"):
        TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, cross_layer=True, skip=True)
    with pytest.raises(TranscoderError, match="k <= d_transcoder=8, found k=9"):
        TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, activation="topk", k=9)
    with pytest.raises(TranscoderError, match="unknown activation 'gelu'"):
        TranscoderSet.random(n_layers=2, d_model=4, d_transcoder=8, activation="gelu")
