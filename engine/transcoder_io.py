"""The on-disk transcoder format read by circuit-tracer 0.5.0 (a folder with config.yaml + safetensors).

Per-layer set (`model_kind: transcoder_set`): `layer_{i}.safetensors` for i = 0..n_layers-1, or a
`transcoders:` list in config.yaml (one local file per layer, in layer order). Tensors per file:
`W_enc` [d_tc, d_model], `b_enc` [d_tc], `W_dec` [d_tc, d_model], `b_dec` [d_model], optional
`activation_function.threshold` [d_tc] (JumpReLU) and `W_skip` [d_model_out, d_model_in].

Cross-layer set (`model_kind: cross_layer_transcoder`): `W_enc_{i}.safetensors` with `W_enc_{i}`,
`b_enc_{i}`, `b_dec_{i}`, optional `threshold_{i}`; `W_dec_{i}.safetensors` with `W_dec_{i}`
[d_tc, n_layers - i, d_model]. No skip tensor exists in this format.

Reading:
1. parse config.yaml; check model kind and hook names;
2. find the files (hf:// paths are refused: nothing is downloaded), load them, reject `log_thresholds`
   and unknown tensors, check every shape against d_transcoder/d_model taken from the first file;
3. pick the activation the way circuit-tracer does (threshold tensors present -> JumpReLU, else ReLU),
   except that our own `activation: topk` + `k: N` keys select TopK (circuit-tracer would load such a
   set as ReLU);
4. check dimensions that config.yaml declares (`n_layers`, `d_model`, `d_transcoder`) against the files.

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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitbase.engine.activations import ACTIVATIONS

INPUT_HOOKS = ("mlp.hook_in", "ln2.hook_normalized")  # MLP input, after the pre-MLP norm
OUTPUT_HOOKS = ("mlp.hook_out", "hook_mlp_out")  # MLP output
KINDS = {"per_layer": "transcoder_set", "cross_layer": "cross_layer_transcoder"}
_KIND_OF_MODEL_KIND = {v: k for k, v in KINDS.items()}
_PLT_THRESHOLD = "activation_function.threshold"


class TranscoderError(ValueError):
    """Transcoder files, shapes, hooks or settings that cannot be used (the message names which)."""


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


def _offline_error(where: str, uri: str) -> TranscoderError:
    return TranscoderError(
        f"{where}: {uri!r} is a Hugging Face Hub path; circuitbase loads transcoders offline only. "
        "Download the files and give a local folder (or list local file paths under `transcoders:`)."
    )


def read_transcoders(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[TranscoderConfig, TranscoderWeights]:
    """Read a transcoder folder (see the module docstring) onto `device` as `dtype` (default cpu, float32)."""
    if str(path).startswith("hf://"):
        raise _offline_error("transcoder path", str(path))
    root = Path(path)
    config_path = root / "config.yaml"
    if not config_path.is_file():
        raise TranscoderError(
            f"{root}: no config.yaml (expected a transcoder folder in circuit-tracer format)"
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

    loader = _Loader(device=device, dtype=dtype)
    kind = _KIND_OF_MODEL_KIND[model_kind]
    if kind == "per_layer":
        weights = _read_per_layer(root, raw, config_path, loader)
    else:
        weights = _read_cross_layer(root, raw, config_path, loader)

    d_transcoder, d_model = weights.W_enc[0].shape
    declared = {"n_layers": len(weights.W_enc), "d_model": d_model, "d_transcoder": d_transcoder}
    for key, found in declared.items():
        if key in raw and raw[key] != found:
            raise TranscoderError(
                f"{config_path}: declares {key}={raw[key]} but the tensor files give {found}"
            )

    activation, k = _activation(raw, has_threshold=weights.threshold is not None, config_path=config_path)
    scan = raw.get("scan")
    config = TranscoderConfig(
        kind=kind,
        activation=activation,
        k=k,
        n_layers=len(weights.W_enc),
        d_model=d_model,
        d_transcoder=d_transcoder,
        skip=weights.W_skip is not None,
        input_hook=str(raw["feature_input_hook"]),
        output_hook=str(raw["feature_output_hook"]),
        name=scan if isinstance(scan, str) else root.name,
        model_name=str(raw.get("model_name", "")),
    )
    return config, weights


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


class _Loader:
    """Loads safetensors files, converting to one device/dtype, and checks tensor names and shapes."""

    def __init__(self, *, device: str | torch.device, dtype: torch.dtype) -> None:
        self.device = str(device)
        self.dtype = dtype

    def load(
        self, file: Path, *, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()
    ) -> dict[str, torch.Tensor]:
        if not file.is_file():
            raise TranscoderError(f"missing transcoder file {file}")
        try:
            tensors = load_file(file, device=self.device)
        except (SafetensorError, OSError) as err:
            raise TranscoderError(f"{file}: not a readable safetensors file ({err})") from err
        names = set(tensors)
        log_thresholds = sorted(n for n in names if n.startswith("log_threshold"))
        if log_thresholds:
            raise TranscoderError(
                f"{file}: tensor {log_thresholds[0]!r} is not supported (circuit-tracer rejects log "
                f"thresholds); store the thresholds as {_PLT_THRESHOLD!r} (per-layer) or "
                "'threshold_{i}' (cross-layer)"
            )
        missing = sorted(required - names)
        if missing:
            raise TranscoderError(f"{file}: missing tensor(s) {missing}; found {sorted(names)}")
        unexpected = sorted(names - required - optional)
        if unexpected:
            raise TranscoderError(
                f"{file}: unexpected tensor(s) {unexpected}; expected {sorted(required | optional)}"
            )
        return {n: t.to(self.dtype).contiguous() for n, t in tensors.items()}

    @staticmethod
    def expect(file: Path, name: str, tensor: torch.Tensor, shape: tuple[int, ...], dims: str) -> None:
        if tuple(tensor.shape) != shape:
            raise TranscoderError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)} ({dims})"
            )


def _check_agrees(file: Path, name: str, present: bool, reference: str, reference_present: bool) -> None:
    """Optional tensors must be present in every layer or in none."""
    if present != reference_present:
        state = {True: "present", False: "absent"}
        raise TranscoderError(
            f"{file}: tensor {name} is {state[present]} but {reference} is {state[reference_present]}; "
            "all layers must agree"
        )


def _per_layer_files(root: Path, raw: dict[str, Any], config_path: Path) -> list[Path]:
    """Layer files in layer order: the `transcoders:` list of config.yaml, else layer_{i}.safetensors."""
    listed = raw.get("transcoders")
    if listed is not None:
        if not isinstance(listed, list) or not listed:
            raise TranscoderError(f"{config_path}: `transcoders` must be a non-empty list of file paths")
        files = []
        for layer, entry in enumerate(listed):
            entry = str(entry)
            if entry.startswith("hf://"):
                raise _offline_error(f"{config_path}: transcoders[{layer}]", entry)
            file = Path(entry) if Path(entry).is_absolute() else root / entry
            if file.suffix != ".safetensors":
                raise TranscoderError(
                    f"{config_path}: transcoders[{layer}] = {entry!r} is not a .safetensors file "
                    "(only circuit-tracer's safetensors layout is supported)"
                )
            files.append(file)
        return files
    by_layer: dict[int, Path] = {}
    for file in root.glob("layer_*.safetensors"):
        match = re.fullmatch(r"layer_(\d+)", file.stem)
        if match:
            by_layer[int(match.group(1))] = file
    if not by_layer:
        raise TranscoderError(
            f"{root}: no layer_{{i}}.safetensors files and no `transcoders:` list in config.yaml"
        )
    missing = [f"layer_{i}.safetensors" for i in range(max(by_layer) + 1) if i not in by_layer]
    if missing:
        raise TranscoderError(
            f"{root}: missing layer file(s) {missing} (layers 0..{max(by_layer)} are needed)"
        )
    return [by_layer[i] for i in range(len(by_layer))]


def _read_per_layer(root: Path, raw: dict[str, Any], config_path: Path, loader: _Loader) -> TranscoderWeights:
    files = _per_layer_files(root, raw, config_path)
    required = {"W_enc", "b_enc", "W_dec", "b_dec"}
    optional = {_PLT_THRESHOLD, "W_skip"}
    layers = [loader.load(file, required=required, optional=optional) for file in files]
    d_tc, d_model = layers[0]["b_enc"].shape[0], layers[0]["b_dec"].shape[0]
    dims = f"d_transcoder={d_tc}, d_model={d_model} from {files[0].name}"
    shapes = {
        "W_enc": (d_tc, d_model),
        "b_enc": (d_tc,),
        "W_dec": (d_tc, d_model),
        "b_dec": (d_model,),
        _PLT_THRESHOLD: (d_tc,),
        "W_skip": (d_model, d_model),
    }
    for file, tensors in zip(files, layers, strict=True):
        for name, tensor in tensors.items():
            loader.expect(file, name, tensor, shapes[name], dims)
        for name in optional:
            _check_agrees(file, name, name in tensors, f"{name} in {files[0].name}", name in layers[0])
    return TranscoderWeights(
        W_enc=[t["W_enc"] for t in layers],
        b_enc=[t["b_enc"] for t in layers],
        W_dec=[t["W_dec"] for t in layers],
        b_dec=[t["b_dec"] for t in layers],
        threshold=[t[_PLT_THRESHOLD] for t in layers] if _PLT_THRESHOLD in layers[0] else None,
        W_skip=[t["W_skip"] for t in layers] if "W_skip" in layers[0] else None,
    )


def _read_cross_layer(
    root: Path, raw: dict[str, Any], config_path: Path, loader: _Loader
) -> TranscoderWeights:
    if "transcoders" in raw:
        raise TranscoderError(
            f"{config_path}: a `transcoders:` list for a cross-layer transcoder (GemmaScope-2 layout) is not "
            "supported; expected W_enc_{i}.safetensors / W_dec_{i}.safetensors files"
        )
    indices = sorted(
        int(m.group(1))
        for f in root.glob("W_enc_*.safetensors")
        if (m := re.fullmatch(r"W_enc_(\d+)", f.stem))
    )
    if not indices:
        raise TranscoderError(f"{root}: no W_enc_{{i}}.safetensors files for a cross-layer transcoder")
    n_layers = indices[-1] + 1
    missing = [f"W_enc_{i}.safetensors" for i in range(n_layers) if i not in indices]
    missing += [
        f"W_dec_{i}.safetensors" for i in range(n_layers) if not (root / f"W_dec_{i}.safetensors").is_file()
    ]
    if missing:
        raise TranscoderError(
            f"{root}: missing layer file(s) {missing} (layers 0..{n_layers - 1} are needed)"
        )

    enc_files = [root / f"W_enc_{i}.safetensors" for i in range(n_layers)]
    encoders = [
        loader.load(file, required={f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"}, optional={f"threshold_{i}"})
        for i, file in enumerate(enc_files)
    ]
    first = encoders[0]["W_enc_0"]
    if first.dim() != 2:
        raise TranscoderError(
            f"{enc_files[0]}: tensor W_enc_0 has shape {list(first.shape)}, expected 2 dimensions"
        )
    d_tc, d_model = first.shape
    dims = f"d_transcoder={d_tc}, d_model={d_model} from W_enc_0, n_layers={n_layers}"
    has_threshold = "threshold_0" in encoders[0]
    decoders = []
    for i, (enc_file, enc) in enumerate(zip(enc_files, encoders, strict=True)):
        for name, shape in (
            (f"W_enc_{i}", (d_tc, d_model)),
            (f"b_enc_{i}", (d_tc,)),
            (f"b_dec_{i}", (d_model,)),
        ):
            loader.expect(enc_file, name, enc[name], shape, dims)
        _check_agrees(enc_file, f"threshold_{i}", f"threshold_{i}" in enc, "threshold_0", has_threshold)
        if has_threshold:
            loader.expect(enc_file, f"threshold_{i}", enc[f"threshold_{i}"], (d_tc,), dims)
        dec_file = root / f"W_dec_{i}.safetensors"
        dec = loader.load(dec_file, required={f"W_dec_{i}"})[f"W_dec_{i}"]
        loader.expect(dec_file, f"W_dec_{i}", dec, (d_tc, n_layers - i, d_model), dims)
        decoders.append(dec)
    return TranscoderWeights(
        W_enc=[enc[f"W_enc_{i}"] for i, enc in enumerate(encoders)],
        b_enc=[enc[f"b_enc_{i}"] for i, enc in enumerate(encoders)],
        W_dec=decoders,
        b_dec=[enc[f"b_dec_{i}"] for i, enc in enumerate(encoders)],
        threshold=[enc[f"threshold_{i}"] for i, enc in enumerate(encoders)] if has_threshold else None,
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
