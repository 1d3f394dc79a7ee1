"""Varied copies of the SmolLM2 study's prompts (`engine.study_prompts`, the `demo --model smollm2` set), for
analysis benchmarks on real graphs: round r puts preamble r before every study prompt, so each round holds
the study's tasks, templates and answers in the same mix with different text (round 0 is the study itself).

    python bench/study_variants.py --rounds 25 --out variants.jsonl       # 25 x 41 = 1,025 prompts
    circuitbase attribute variants.jsonl --model smollm2 --max-feature-nodes 256 --out real-graphs
    python bench/analysis.py --wipe --instance bench-analysis --real-graphs real-graphs --stages 100 300 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuitbase.engine.study_prompts import study_prompts

PREAMBLES = (
    "",
    "Quiz.",
    "Question:",
    "Here is a fact.",
    "Note:",
    "Remember this.",
    "True statement:",
    "From the textbook:",
    "Read carefully.",
    "Fill in the blank.",
    "A short test.",
    "Exercise 1.",
    "Example:",
    "Complete the sentence.",
    "Lesson notes:",
    "Homework:",
    "As everyone knows,",
    "Trivia time.",
    "Next item:",
    "One more:",
    "Practice problem.",
    "Warm-up:",
    "Review:",
    "Check:",
    "Final question.",
)
DATASET = "study-v1-variants"


def variants(rounds: int) -> list[dict]:
    """`rounds` x the study's prompts (at most len(PREAMBLES) rounds), round by round."""
    if not 1 <= rounds <= len(PREAMBLES):
        raise ValueError(f"rounds must be 1 to {len(PREAMBLES)}, got {rounds}")
    study = study_prompts()
    return [
        {**p, "prompt": f"{preamble} {p['prompt']}".lstrip(), "dataset": DATASET}
        for preamble in PREAMBLES[:rounds]
        for p in study
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=len(PREAMBLES), help="default: every preamble")
    parser.add_argument("--out", type=Path, required=True, help="the .jsonl prompt file written")
    args = parser.parse_args()
    prompts = variants(args.rounds)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    print(f"{len(prompts):,} prompts ({args.rounds} rounds) -> {args.out}")


if __name__ == "__main__":
    main()
