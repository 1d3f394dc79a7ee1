"""`circuitbase intervene` on the tiny circuit-tracer fixture: its numbers are the Python function's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from circuitbase.cli import app
from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.interventions import FeatureIntervention, run_with_interventions
from circuitbase.engine.prompts import prompt_token_ids
from circuitbase.engine.replacement import build_replacement_state, hooks_of
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
MODEL, SET = FIXTURES / "tiny-llama", FIXTURES / "plt-jumprelu-skip"
PROMPT = "The capital of France is"
SPECS = ["1:-1:3", "0:2:5*2", "1:1:7=3"]


def _invoke(device: torch.device, *args: str):
    base = ["intervene", PROMPT, "--model", str(MODEL), "--transcoders", str(SET), "--device", device.type]
    return CliRunner().invoke(app, [*base, *args])


def _python_logits(device: torch.device, *, freeze_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, intervened) last-position logits straight from `run_with_interventions`."""
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).to(device).eval()
    transcoders = TranscoderSet.load(SET, device=device)
    adapter = adapter_for(model).with_hooks(hooks_of(transcoders))
    ids = prompt_token_ids(AutoTokenizer.from_pretrained(MODEL), PROMPT)
    state = build_replacement_state(model, adapter, transcoders, torch.tensor(ids, device=device))
    last = len(ids) - 1
    interventions = [
        FeatureIntervention(1, last, 3, value=0.0),
        FeatureIntervention(0, 2, 5, scale=2.0),
        FeatureIntervention(1, 1, 7, value=3.0),
    ]
    result = run_with_interventions(
        model, adapter, transcoders, state, interventions, freeze_attention=freeze_attention
    )
    return state.logits[-1], result.logits[-1]


@pytest.mark.parametrize("free", [False, True])
def test_numbers_equal_the_python_function(device, free):
    args = [arg for spec in SPECS for arg in ("-f", spec)] + ["--top", "4", "--json"]
    result = _invoke(device, *args, *(["--free-attention"] if free else []))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    before, after = _python_logits(device, freeze_attention=not free)
    assert not torch.allclose(before, after)  # the interventions change the prediction
    for key, logits in (("before", before), ("after", after)):
        probs = torch.softmax(logits.double(), dim=-1)
        top_p, top_i = torch.topk(probs, 4)
        assert [t["id"] for t in report[key]] == top_i.tolist()
        assert_close(torch.tensor([t["prob"] for t in report[key]]), top_p.float(), rel=1e-5)
    ids = [row["id"] for row in report["logit_changes"]]
    assert set(ids) == {t["id"] for t in report["before"] + report["after"]}
    assert_close(
        torch.tensor([row["before"] for row in report["logit_changes"]]), before[ids].cpu(), rel=1e-5
    )
    assert_close(
        torch.tensor([row["change"] for row in report["logit_changes"]]),
        (after - before)[ids].cpu(),
        rel=1e-4,
    )


def test_tables_show_the_same_numbers(device):
    result = _invoke(device, *[arg for spec in SPECS for arg in ("-f", spec)])
    assert result.exit_code == 0, result.output
    report = json.loads(_invoke(device, *[a for s in SPECS for a in ("-f", s)], "--json").stdout)
    assert "top next tokens" in result.stdout and "logit changes" in result.stdout
    for row in report["logit_changes"]:
        assert f"{row['change']:+.4f}" in result.stdout
    for token in report["after"]:
        assert f"{token['prob']:.4f}" in result.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2:0:1", "--feature 2:0:1: layer 2 is not one of 0..1"),
        ("1:6:1", "--feature 1:6:1: position 6 is past the prompt's 6 tokens (0..5, or -6..-1 from the end)"),
        ("1:-7:1", "--feature 1:-7:1: position -7 is past the prompt's 6 tokens"),
        ("0:0:9999", "--feature 0:0:9999: feature 9999 is not one of 0..255"),
        ("1:2", "--feature '1:2': expected LAYER:POSITION:FEATURE"),
        ("1:2:3=x", "--feature '1:2:3=x': expected LAYER:POSITION:FEATURE"),
        ("1:2:3*1.2.3", "--feature '1:2:3*1.2.3': '1.2.3' is not a number"),
        ("-1:2:3", "--feature '-1:2:3': layer and feature are counted from 0"),
    ],
)
def test_bad_specs_exit_2_with_one_line(device, spec, message):
    result = _invoke(device, "-f", "0:0:0", "-f", spec)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
