"""`circuitbase demo --no-serve` end to end on the toy model and the real Neo4j; re-run reuse; bad input."""

from __future__ import annotations

import re
from pathlib import Path

import neo4j
import pytest
from typer.testing import CliRunner

from circuitbase.cli import app
from circuitbase.commands.demo import write_demo_prompts
from circuitbase.engine.prompts import read_prompts
from circuitbase.engine.study_prompts import study_prompts
from circuitbase.engine.toy import toy_prompts
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV, Neo4jSettings

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def test_demo_runs_the_study_end_to_end_and_reuses_it(
    clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUITBASE_HOME", str(tmp_path))
    monkeypatch.setenv(URI_ENV, neo4j_settings.uri)
    monkeypatch.setenv(USER_ENV, neo4j_settings.user)
    monkeypatch.setenv(PASSWORD_ENV, neo4j_settings.password)
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--no-serve", "--prompts", "12"], env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    prompts = read_prompts(tmp_path / "demo" / "toy" / "prompts.jsonl").prompts
    assert len(prompts) > 12  # 12 drawn + every untaught prompt
    records, _, _ = clean_db.execute_query(
        "MATCH (g:Graph {complete: true})-[:OF_PROMPT]->(p:Prompt) "
        "RETURN count(g) AS graphs, sum(CASE WHEN p.correct THEN 0 ELSE 1 END) AS wrong"
    )
    assert records[0]["graphs"] == len(prompts) and records[0]["wrong"] > 0
    loaded = re.search(r"(\d+) graphs loaded, (\d+) already there", first.output)
    assert loaded and (int(loaded[1]), int(loaded[2])) == (len(prompts), 0)
    shown_texts = ("Top recurring subcircuits", "causal support", "Right (", "Neo4j Browser", "/graphql")
    for shown in (*shown_texts, "demo finished"):
        assert shown in first.output, shown
    n_subcircuits = clean_db.execute_query("MATCH (s:Subcircuit) RETURN count(s) AS n").records[0]["n"]
    assert n_subcircuits > 0

    again = runner.invoke(app, ["demo", "--no-serve", "--prompts", "12"], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"0 graphs loaded, {len(prompts)} already there" in again.output
    subcircuits = clean_db.execute_query("MATCH (s:Subcircuit) RETURN count(s) AS n").records[0]["n"]
    assert subcircuits == n_subcircuits

    bad = runner.invoke(app, ["demo", "--no-serve", "--model", "gpt-5"])
    assert bad.exit_code == 1 and "unknown demo model 'gpt-5'" in bad.output


def test_smollm2_study_prompts_cover_three_tasks_with_answers() -> None:
    prompts = study_prompts()
    tasks = [p["tags"][0] for p in prompts]
    counts = {t: tasks.count(t) for t in set(tasks)}
    assert counts == {"two_hop": 12, "one_hop": 9, "arithmetic": 10, "copy": 10}
    assert all(p["answer"].startswith(" ") and p["answer"].strip() for p in prompts)
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    copy = next(p for p in prompts if p["tags"][0] == "copy")
    assert copy["prompt"].count(copy["answer"].strip()) == 1  # the answer is the name not repeated


def test_the_toy_demo_prompts_hold_each_text_once(tmp_path: Path) -> None:
    """The default draw (96) repeats some texts: each is attributed once, so the demo's first run loads every
    prompt it lists and finds none already there."""
    prompts = read_prompts(write_demo_prompts(tmp_path / "prompts.jsonl", "toy", 96)).prompts
    texts = [p.text for p in prompts]
    assert len(texts) == len(set(texts)) > 96
    drawn = [p["prompt"] for p in toy_prompts(96, seed=0)]
    assert len(set(drawn)) < len(drawn)  # the draw itself repeats, so the file is deduplicated
    assert texts[: len(set(drawn))] == list(dict.fromkeys(drawn))
