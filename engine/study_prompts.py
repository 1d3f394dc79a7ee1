"""A small real-language prompt study for pretrained models (the `--model smollm2` demo).

Three tasks with a single-token-start answer each, tagged by task and by template, so right-vs-wrong and
task-vs-task comparisons have material (a 135M model gets some of each right and some wrong):
1. two_hop: "the capital of the state containing <city> is" -> the state's capital (the city's state is
   never named), beside one_hop: "the capital of <state> is", the same fact asked directly;
2. arithmetic: "<a> + <b> =" -> the sum, for one-digit sums;
3. copy: a two-name sentence whose continuation must copy the name not repeated (indirect object).
"""

from __future__ import annotations

from typing import Any

DATASET = "study-v1"
CITIES = (  # city, state, capital
    ("Dallas", "Texas", "Austin"),
    ("Houston", "Texas", "Austin"),
    ("Chicago", "Illinois", "Springfield"),
    ("Miami", "Florida", "Tallahassee"),
    ("Orlando", "Florida", "Tallahassee"),
    ("Seattle", "Washington", "Olympia"),
    ("Los Angeles", "California", "Sacramento"),
    ("San Francisco", "California", "Sacramento"),
    ("Detroit", "Michigan", "Lansing"),
    ("Philadelphia", "Pennsylvania", "Harrisburg"),
    ("Cleveland", "Ohio", "Columbus"),
    ("Las Vegas", "Nevada", "Carson City"),
)
SUMS = ((1, 1), (2, 3), (3, 4), (4, 4), (1, 6), (5, 2), (2, 2), (3, 5), (6, 3), (4, 1))
NAMES = (("Mary", "John"), ("Alice", "Bob"), ("Sarah", "David"), ("Emma", "James"), ("Anna", "Tom"))
PLACES = ("the store", "the park")


def _prompt(text: str, answer: str, task: str, template: str) -> dict[str, Any]:
    return {"prompt": text, "answer": answer, "tags": [task, template], "dataset": DATASET}


def study_prompts() -> list[dict[str, Any]]:
    """The study's prompt dicts {prompt, answer, tags, dataset} in a fixed order (12 two-hop, 9 one-hop,
    10 arithmetic, 10 copy)."""
    two_hop = [
        _prompt(f"Fact: the capital of the state containing {city} is", f" {capital}", "two_hop", "t1")
        for city, _state, capital in CITIES
    ]
    states = dict((state, capital) for _city, state, capital in CITIES)
    one_hop = [
        _prompt(f"Fact: the capital of {state} is", f" {capital}", "one_hop", "t1")
        for state, capital in states.items()
    ]
    arithmetic = [_prompt(f"{a} + {b} =", f" {a + b}", "arithmetic", "t1") for a, b in SUMS]
    copies = [
        _prompt(
            f"When {first} and {second} went to {place}, {second} gave a drink to",
            f" {first}",
            "copy",
            f"t{index + 1}",
        )
        for first, second in NAMES
        for index, place in enumerate(PLACES)
    ]
    return [*two_hop, *one_hop, *arithmetic, *copies]
