"""Transcoder sets in every layout circuit-tracer 0.5.0 reads, and writing circuit-tracer's own layout.

A set is a `config.yaml` (found by `transcoder_sources`: a local folder or file, a preset name, an
`hf://` URI or a Hub repo id) plus weight files:
- per-layer (`model_kind: transcoder_set`): `layer_{i}.safetensors` next to config.yaml, or a
  `transcoders:` list naming one file per layer (local paths or `hf://` URIs): circuit-tracer
  safetensors, GemmaScope `params.npz` or Gemma Scope 2 safetensors (`transcoder_formats`);
- cross-layer (`model_kind: cross_layer_transcoder`): `W_enc_{i}.safetensors` + `W_dec_{i}.safetensors`,
  or a `transcoders:` list of Gemma Scope 2 cross-layer files. No skip tensor exists for these.

Reading:
1. parse config.yaml; check model kind and hook names;
2. list the layers (a Hub set: one listing, no weights) and check the layer count (and a declared
   d_model) against config.yaml and the model (`ModelFit`), before any weights are read or downloaded;
3. read layer by layer, fetching each layer's files from the Hub just before reading them (cached in the
   Hugging Face cache); the first layer gives d_transcoder/d_model (checked against the model), every
   tensor is checked against them; `log_thresholds` and unknown tensors are rejected; tensors are
   converted to the requested dtype and device as they are read (bfloat16 and float32 files alike);
4. pick the activation the way circuit-tracer does (threshold tensors present -> JumpReLU, else ReLU),
   except that our own `activation: topk` + `k: N` keys select TopK (circuit-tracer would load such a
   set as ReLU);
5. check dimensions that config.yaml declares (`d_model`, `d_transcoder`) against the files.

A Hub set's name is circuit-tracer's `scan` for it (repo[//folder][@revision]); a local set's is the
config's `scan`, else the folder name.

Writing goes to a temporary folder next to the target, which is renamed into place at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from circuitbase.engine.activations import ACTIVATIONS
from circuitbase.engine.adapters import INPUT_HOOKS, OUTPUT_HOOKS  # circuit-tracer's names and meanings
from circuitbase.engine.transcoder_errors import TranscoderError
from circuitbase.engine.transcoder_formats import (
    Convert,
    read_cross_layer_files,
    read_gemma_scope_2_cross_layer_file,
    read_per_layer_file,
)
from circuitbase.engine.transcoder_sources import TranscoderSource, resolve_source

KINDS = {"per_layer": "transcoder_set", "cross_layer": "cross_layer_transcoder"}
_KIND_OF_MODEL_KIND = {v: k for k, v in KINDS.items()}
_PLT_THRESHOLD = "activation_function.threshold"


@dataclass(frozen=True)
class TranscoderConfig:
    """What a transcoder set is; checked on construction.

    kind: "per_layer" (PLT) or "cross_layer" (CLT). activation: "relu" | "jumprelu" | "topk";
    k: features kept per position (topk only). skip: linear skip connection (PLT only).
    input_hook/output_hook: circuit-tracer hook names. name: the set's identifier (`scan`).
    model_name: the model the set was trained for, informational (default "").
    """

    kind: str
    activation: str
    n_layers: int
    d_model: int
    d_transcoder: int
    skip: bool = False
    k: int | None = None
    input_hook: str = INPUT_HOOKS[0]
    output_hook: str = OUTPUT_HOOKS[0]
    name: str = ""
    model_name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TranscoderError(f"unknown transcoder kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(
                f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        for field_name in ("n_layers", "d_model", "d_transcoder"):
            if getattr(self, field_name) < 1:
                raise TranscoderError(f"{field_name} must be >= 1, found {getattr(self, field_name)}")
        if self.activation == "topk":
            if self.k is None or not 1 <= self.k <= self.d_transcoder:
                raise TranscoderError(
                    f"topk needs 1 <= k <= d_transcoder={self.d_transcoder}, found k={self.k}"
                )
        elif self.k is not None:
            raise TranscoderError(f"k is only meaningful for topk, found k={self.k} with {self.activation}")
        if self.skip and self.kind == "cross_layer":
            raise TranscoderError(
                "a cross-layer transcoder with a skip connection cannot be written in the circuit-tracer "
                "format (its CLT loader reads no skip weights)"
            )
        check_hook("feature_input_hook", self.input_hook, INPUT_HOOKS)
        check_hook("feature_output_hook", self.output_hook, OUTPUT_HOOKS)


@dataclass
class TranscoderWeights:
    """Per-layer tensors; W_dec[i] is [d_tc, d_model] (PLT) or [d_tc, n_layers - i, d_model] (CLT)."""

    W_enc: list[torch.Tensor]
    b_enc: list[torch.Tensor]
    W_dec: list[torch.Tensor]
    b_dec: list[torch.Tensor]
    threshold: list[torch.Tensor] | None = None
    W_skip: list[torch.Tensor] | None = None


def check_hook(key: str, hook: str, supported: tuple[str, ...], *, where: str = "") -> None:
    """Raise TranscoderError unless `hook` is one of the `supported` names (`where`: file, default none)."""
    if hook not in supported:
        prefix = f"{where}: " if where else ""
        raise TranscoderError(f"{prefix}unsupported {key} {hook!r}; supported: {', '.join(supported)}")


@dataclass(frozen=True)
class ModelFit:
    """The shape a set must have to replace a model's MLPs: `n_layers` layers of width `d_model`.

    model_name: named in the error (default none).
    """

    n_layers: int
    d_model: int
    model_name: str = ""

    def check(self, set_name: str, *, n_layers: int, d_model: int | None) -> None:
        """Raise TranscoderError naming each dimension where the set (`d_model` None: not known yet) and
        the model differ."""
        problems = [
            f"{what}: model has {expected}, transcoders have {found}"
            for what, expected, found in (
                ("n_layers", self.n_layers, n_layers),
                ("d_model", self.d_model, d_model),
            )
            if found is not None and expected != found
        ]
        if problems:
            model = f" {self.model_name!r}" if self.model_name else ""
            raise TranscoderError(f"transcoders {set_name!r} do not fit model{model}: {'; '.join(problems)}")


def read_transcoders(
    spec: str | Path | TranscoderSource,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    decoder_device: str | torch.device | None = None,
    fit: ModelFit | None = None,
) -> tuple[TranscoderConfig, TranscoderWeights]:
    """Read a transcoder set (see the module docstring) onto `device` as `dtype` (default cpu, float32),
    decoders onto `decoder_device` (default `device`). With `fit`, a set of the wrong layer count or
    width fails before reading (or downloading) weights it does not need."""
    source = resolve_source(spec)
    config_path = source.config_path
    raw = _parse_config(source)
    kind = _KIND_OF_MODEL_KIND[raw["model_kind"]]
    scan = raw.get("scan")
    name = source.name or (scan if isinstance(scan, str) else source.folder.name)
    layers = _layers(source, raw, kind)
    declared = {key: raw[key] for key in ("n_layers", "d_model", "d_transcoder") if key in raw}
    if "n_layers" in declared and declared["n_layers"] != len(layers):
        raise TranscoderError(
            f"{config_path}: declares n_layers={declared['n_layers']} but the tensor files give {len(layers)}"
        )
    if fit is not None:
        d_model = declared.get("d_model")
        fit.check(name, n_layers=len(layers), d_model=d_model if isinstance(d_model, int) else None)

    to_device, to_decoder = torch.device(device), torch.device(decoder_device or device)

    def convert(tensor_name: str, tensor: torch.Tensor) -> torch.Tensor:
        target = to_decoder if tensor_name.startswith("W_dec") else to_device
        return tensor.to(device=target, dtype=dtype).contiguous()

    tensors: list[dict[str, torch.Tensor]] = []
    for layer in layers:
        files, found = layer.read(convert)
        file = files[0]
        if not tensors:
            first_file, (d_tc, d_model) = file, _dims(file, found)
            if fit is not None:
                fit.check(name, n_layers=len(layers), d_model=d_model)
        _check_layer(files, found, layer=layer.index, kind=kind, dims=(len(layers), d_tc, d_model))
        for optional in ("threshold", "W_skip"):
            reference = tensors[0] if tensors else found
            _check_agrees(
                file, optional, optional in found, f"{optional} in {first_file.name}", optional in reference
            )
        tensors.append(found)

    for key, value in {"d_model": d_model, "d_transcoder": d_tc}.items():
        if key in declared and declared[key] != value:
            raise TranscoderError(
                f"{config_path}: declares {key}={declared[key]} but the tensor files give {value}"
            )
    weights = TranscoderWeights(
        W_enc=[t["W_enc"] for t in tensors],
        b_enc=[t["b_enc"] for t in tensors],
        W_dec=[t["W_dec"] for t in tensors],
        b_dec=[t["b_dec"] for t in tensors],
        threshold=[t["threshold"] for t in tensors] if "threshold" in tensors[0] else None,
        W_skip=[t["W_skip"] for t in tensors] if "W_skip" in tensors[0] else None,
    )
    activation, k = _activation(raw, has_threshold=weights.threshold is not None, config_path=config_path)
    config = TranscoderConfig(
        kind=kind,
        activation=activation,
        k=k,
        n_layers=len(tensors),
        d_model=d_model,
        d_transcoder=d_tc,
        skip=weights.W_skip is not None,
        input_hook=str(raw["feature_input_hook"]),
        output_hook=str(raw["feature_output_hook"]),
        name=name,
        model_name=str(raw.get("model_name", "")),
    )
    return config, weights


def _parse_config(source: TranscoderSource) -> dict[str, Any]:
    """config.yaml as a mapping, with a supported model kind and hook names."""
    config_path = source.config_path
    if not config_path.is_file():
        raise TranscoderError(
            f"{source.folder}: no config.yaml (expected a transcoder folder in circuit-tracer format)"
        )
    try:
        raw = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise TranscoderError(f"{config_path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise TranscoderError(f"{config_path}: expected a mapping of keys, found {type(raw).__name__}")
    model_kind = raw.get("model_kind")
    if model_kind not in _KIND_OF_MODEL_KIND:
        raise TranscoderError(
            f"{config_path}: model_kind {model_kind!r} is not supported; expected one of "
            f"{', '.join(_KIND_OF_MODEL_KIND)}"
        )
    for key, supported in (("feature_input_hook", INPUT_HOOKS), ("feature_output_hook", OUTPUT_HOOKS)):
        if key not in raw:
            raise TranscoderError(f"{config_path}: missing {key}; supported: {', '.join(supported)}")
        check_hook(key, str(raw[key]), supported, where=str(config_path))
    return raw


@dataclass(frozen=True)
class _Layer:
    """One layer's files (`transcoders:` entries or names next to config.yaml) and how to read them.

    layout: "per_layer" (any per-layer file), "cross_layer" (circuit-tracer's W_enc_i + W_dec_i) or
    "gemma_scope_2_cross_layer" (one Gemma Scope 2 file per layer).
    """

    source: TranscoderSource
    index: int
    files: tuple[str, ...]
    layout: str
    where: str

    def read(self, convert: Convert) -> tuple[list[Path], dict[str, torch.Tensor]]:
        """(the layer's local files, its tensors), fetching the files first when they are on the Hub."""
        paths = [self.source.fetch(file, where=self.where) for file in self.files]
        if self.layout == "per_layer":
            return paths, read_per_layer_file(paths[0], convert=convert)
        if self.layout == "cross_layer":
            return paths, read_cross_layer_files(*paths, layer=self.index, convert=convert)
        return paths, read_gemma_scope_2_cross_layer_file(paths[0], layer=self.index, convert=convert)


def _layers(source: TranscoderSource, raw: dict[str, Any], kind: str) -> list[_Layer]:
    """The set's layers in order. Nothing is fetched here beyond a Hub listing, so the layer count is
    known before any weights are."""
    config_path = source.config_path
    listed = raw.get("transcoders")
    if listed is not None:
        if not isinstance(listed, list) or not listed:
            raise TranscoderError(f"{config_path}: `transcoders` must be a non-empty list of file paths")
        layout = "per_layer" if kind == "per_layer" else "gemma_scope_2_cross_layer"
        for layer, entry in enumerate(map(str, listed)):
            if Path(entry.split("?")[0]).suffix not in (".safetensors", ".npz"):
                raise TranscoderError(
                    f"{config_path}: transcoders[{layer}] = {entry!r} is not a .safetensors or .npz file"
                )
        return [
            _Layer(source, i, (str(entry),), layout, f"{config_path}: transcoders[{i}]")
            for i, entry in enumerate(listed)
        ]
    names = set(source.names())
    if kind == "per_layer":
        indices = _indices(names, r"layer_(\d+)\.safetensors")
        if not indices:
            raise TranscoderError(
                f"{source.folder}: no layer_{{i}}.safetensors files and no `transcoders:` list in config.yaml"
            )
        files = [(f"layer_{i}.safetensors",) for i in range(max(indices) + 1)]
    else:
        indices = _indices(names, r"W_enc_(\d+)\.safetensors")
        if not indices:
            raise TranscoderError(
                f"{source.folder}: no W_enc_{{i}}.safetensors files for a cross-layer transcoder"
            )
        files = [(f"W_enc_{i}.safetensors", f"W_dec_{i}.safetensors") for i in range(max(indices) + 1)]
    missing = [f for pair in zip(*files, strict=True) for f in pair if f not in names]
    if missing:
        raise TranscoderError(
            f"{source.folder}: missing layer file(s) {missing} (layers 0..{len(files) - 1} are needed)"
        )
    return [_Layer(source, i, group, kind, str(config_path)) for i, group in enumerate(files)]


def _indices(names: AbstractSet[str], pattern: str) -> list[int]:
    return sorted(int(m.group(1)) for name in names if (m := re.fullmatch(pattern, name)))


def _dims(file: Path, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(d_transcoder, d_model) of a layer, from its biases."""
    b_enc, b_dec = tensors["b_enc"], tensors["b_dec"]
    if b_enc.dim() != 1 or b_dec.dim() != 1:
        raise TranscoderError(
            f"{file}: biases b_enc {list(b_enc.shape)} and b_dec {list(b_dec.shape)} must be vectors"
        )
    return b_enc.shape[0], b_dec.shape[0]


def _check_layer(
    files: list[Path], tensors: dict[str, torch.Tensor], *, layer: int, kind: str, dims: tuple[int, int, int]
) -> None:
    """Every tensor of layer `layer` has the shape (n_layers, d_transcoder, d_model) = `dims` implies;
    errors name the decoder's file (the last of `files`) for W_dec, else the first."""
    n_layers, d_tc, d_model = dims
    shapes = {
        "W_enc": (d_tc, d_model),
        "b_enc": (d_tc,),
        "W_dec": (d_tc, n_layers - layer, d_model) if kind == "cross_layer" else (d_tc, d_model),
        "b_dec": (d_model,),
        "threshold": (d_tc,),
        "W_skip": (d_model, d_model),
    }
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            file = files[-1] if name == "W_dec" else files[0]
            raise TranscoderError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, expected {list(shapes[name])} "
                f"(d_transcoder={d_tc}, d_model={d_model}, n_layers={n_layers})"
            )


def _activation(raw: dict[str, Any], *, has_threshold: bool, config_path: Path) -> tuple[str, int | None]:
    """Tensors decide JumpReLU vs ReLU (as in circuit-tracer); `activation: topk` + `k` selects TopK."""
    if raw.get("activation") != "topk":
        return ("jumprelu" if has_threshold else "relu"), None
    if has_threshold:
        raise TranscoderError(
            f"{config_path}: activation is topk but the files hold JumpReLU threshold tensors"
        )
    k = raw.get("k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise TranscoderError(f"{config_path}: activation topk needs an integer `k`, found {k!r}")
    return "topk", k


def _check_agrees(file: Path, name: str, present: bool, reference: str, reference_present: bool) -> None:
    """Optional tensors must be present in every layer or in none."""
    if present != reference_present:
        state = {True: "present", False: "absent"}
        raise TranscoderError(
            f"{file}: tensor {name} is {state[present]} but {reference} is {state[reference_present]}; "
            "all layers must agree"
        )


def write_transcoders(path: str | Path, config: TranscoderConfig, weights: TranscoderWeights) -> Path:
    """Write `weights` in the circuit-tracer layout to folder `path` (replaced if it exists); returns it.

    Files are written to a temporary sibling folder first and renamed into place, so readers never see
    a half-written set.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)
    try:
        _write_files(staging, config, weights)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _write_files(folder: Path, config: TranscoderConfig, weights: TranscoderWeights) -> None:
    for i in range(config.n_layers):
        if config.kind == "per_layer":
            tensors = {
                "W_enc": weights.W_enc[i],
                "b_enc": weights.b_enc[i],
                "W_dec": weights.W_dec[i],
                "b_dec": weights.b_dec[i],
            }
            if weights.threshold is not None:
                tensors[_PLT_THRESHOLD] = weights.threshold[i]
            if weights.W_skip is not None:
                tensors["W_skip"] = weights.W_skip[i]
            save_file({n: _cpu(t) for n, t in tensors.items()}, folder / f"layer_{i}.safetensors")
        else:
            tensors = {
                f"W_enc_{i}": weights.W_enc[i],
                f"b_enc_{i}": weights.b_enc[i],
                f"b_dec_{i}": weights.b_dec[i],
            }
            if weights.threshold is not None:
                tensors[f"threshold_{i}"] = weights.threshold[i]
            save_file({n: _cpu(t) for n, t in tensors.items()}, folder / f"W_enc_{i}.safetensors")
            save_file({f"W_dec_{i}": _cpu(weights.W_dec[i])}, folder / f"W_dec_{i}.safetensors")

    meta: dict[str, Any] = {
        "model_kind": KINDS[config.kind],
        "feature_input_hook": config.input_hook,
        "feature_output_hook": config.output_hook,
        "scan": config.name,
    }
    if config.model_name:
        meta["model_name"] = config.model_name
    meta |= {
        "n_layers": config.n_layers,
        "d_model": config.d_model,
        "d_transcoder": config.d_transcoder,
        "activation": config.activation,
    }
    if config.k is not None:
        meta["k"] = config.k
    meta["skip_connection"] = config.skip
    meta["dtype"] = str(weights.W_enc[0].dtype).removeprefix("torch.")
    (folder / "config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
