"""`circuitbase intervene`: set, scale or zero transcoder features of one prompt and show what the model
predicts before and after (`engine.interventions.run_with_interventions`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from circuitbase.commands.common import (
    MODEL_HELP,
    TRANSCODERS_HELP,
    Device,
    Precision,
    fail_on,
    load_model_and_transcoders,
)

if TYPE_CHECKING:
    from circuitbase.engine.interventions import FeatureIntervention

console = Console(stderr=True)
out = Console(soft_wrap=True)

_SPEC = re.compile(r"(-?\d+):(-?\d+):(-?\d+)(?:(=|\*)([-+0-9.eE]+|[-+]?inf|nan))?")
FEATURE_HELP = (
    "A feature to change, LAYER:POSITION:FEATURE (zero it), LAYER:POSITION:FEATURE=VALUE (set its "
    "activation) or LAYER:POSITION:FEATURE*FACTOR (scale it); POSITION counts tokens from 0 (BOS "
    "included), negative from the end. Repeat for several."
)


class SpecError(ValueError):
    """A --feature spec that is malformed or names a layer, position or feature the run does not have."""


@dataclass(frozen=True)
class FeatureSpec:
    """One parsed --feature: the text given, and value (set) or factor (scale); neither: zero."""

    text: str
    layer: int
    position: int
    feature: int
    value: float | None = None
    factor: float | None = None

    def resolve(self, *, n_layers: int, n_positions: int, d_transcoder: int) -> FeatureIntervention:
        """The intervention for a prompt of `n_positions` tokens; SpecError when out of range."""
        from circuitbase.engine.interventions import InterventionError, resolve_intervention

        try:
            return resolve_intervention(
                self.layer,
                self.position,
                self.feature,
                value=self.value,
                scale=self.factor,
                n_layers=n_layers,
                n_positions=n_positions,
                d_transcoder=d_transcoder,
            )
        except InterventionError as exc:
            raise SpecError(f"--feature {self.text}: {exc}") from None


def parse_feature_spec(text: str) -> FeatureSpec:
    """LAYER:POSITION:FEATURE[=VALUE|*FACTOR] -> FeatureSpec; SpecError when malformed."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise SpecError(
            f"--feature {text!r}: expected LAYER:POSITION:FEATURE, optionally followed by =VALUE or *FACTOR "
            "(e.g. 3:-1:1207, 3:-1:1207=5.0, 3:-1:1207*2)"
        )
    layer, position, feature, op, number = match.groups()
    try:
        amount = None if number is None else float(number)
    except ValueError:
        raise SpecError(f"--feature {text!r}: {number!r} is not a number") from None
    if layer.startswith("-") or feature.startswith("-"):
        raise SpecError(f"--feature {text!r}: layer and feature are counted from 0")
    return FeatureSpec(
        text=text,
        layer=int(layer),
        position=int(position),
        feature=int(feature),
        value=amount if op == "=" else None,
        factor=amount if op == "*" else None,
    )


def _print(report: dict[str, list[dict[str, Any]]]) -> None:
    tops = Table(title="top next tokens")
    for column in ("#", "before", "p", "after", "p"):
        tops.add_column(column, justify="right" if column in ("#", "p") else "left")
    for rank, (b, a) in enumerate(zip(report["before"], report["after"], strict=True), start=1):
        tops.add_row(str(rank), repr(b["token"]), f"{b['prob']:.4f}", repr(a["token"]), f"{a['prob']:.4f}")
    out.print(tops)
    changes = Table(title="logit changes")
    for column in ("token", "id", "before", "after", "change"):
        changes.add_column(column, justify="left" if column == "token" else "right")
    for row in report["logit_changes"]:
        changes.add_row(
            repr(row["token"]),
            str(row["id"]),
            f"{row['before']:.4f}",
            f"{row['after']:.4f}",
            f"{row['change']:+.4f}",
        )
    out.print(changes)


def intervene_command(
    prompt: str = typer.Argument(..., help="Prompt text (tokenised as `attribute` does)."),
    feature: list[str] = typer.Option(..., "--feature", "-f", help=FEATURE_HELP),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    transcoders: str | None = typer.Option(
        None, help=f"{TRANSCODERS_HELP} Default: MODEL's own set, trained on first use and cached."
    ),
    free_attention: bool = typer.Option(
        False,
        help="Let attention respond to the change (default: attention patterns frozen as in the prompt).",
    ),
    top: int = typer.Option(5, min=1, help="Top next tokens shown before and after."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
    device: Device = "auto",
    dtype: Precision = "float32",
) -> None:
    """Change features of PROMPT and print the top next tokens before and after, with the logit changes.

    Bad --feature specs (malformed, or a layer, position or feature the run lacks) exit with status 2.
    """
    try:
        specs = [parse_feature_spec(text) for text in feature]
    except SpecError as exc:
        _bad_spec(exc)
    with fail_on(console):
        loaded, transcoder_set, _folder = load_model_and_transcoders(
            model, transcoders, device=device, precision=dtype
        )
        report = run_intervention(
            loaded, transcoder_set, prompt, specs, free_attention=free_attention, top=top
        )
    if as_json:
        out.print_json(json.dumps(report))
    else:
        _print(report)


def run_intervention(
    loaded: Any, transcoders: Any, prompt: str, specs: list[FeatureSpec], *, free_attention: bool, top: int
) -> dict[str, list[dict[str, Any]]]:
    """Tokenise `prompt` (`prompts.prompt_token_ids`), apply `specs` (attention frozen unless
    `free_attention`) and report `intervention_report`; exits 2 on a spec the run does not have."""
    import torch

    from circuitbase.engine.interventions import intervention_report, run_with_interventions
    from circuitbase.engine.prompts import prompt_token_ids
    from circuitbase.engine.replacement import build_replacement_state, hooks_of

    tokenizer = loaded.tokenizer
    ids = prompt_token_ids(tokenizer, prompt)
    try:
        interventions = [
            spec.resolve(
                n_layers=transcoders.n_layers, n_positions=len(ids), d_transcoder=transcoders.d_transcoder
            )
            for spec in specs
        ]
    except SpecError as exc:
        _bad_spec(exc)
    adapter = loaded.adapter.with_hooks(hooks_of(transcoders))
    input_ids = torch.tensor(ids, dtype=torch.long, device=adapter.unembedding().device)
    state = build_replacement_state(loaded.model, adapter, transcoders, input_ids)
    result = run_with_interventions(
        loaded.model, adapter, transcoders, state, interventions, freeze_attention=not free_attention
    )
    return intervention_report(
        state.logits[-1], result.logits[-1], decode=lambda i: tokenizer.decode([i]), top=top
    )


def _bad_spec(exc: SpecError) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)
