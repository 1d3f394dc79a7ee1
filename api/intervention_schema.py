"""The GraphQL side of interventions: the `intervene` query's input and result types, and its resolver
(`intervene`), which checks the request's size and resolves the graph it names before the model runs
(`circuitbase.api.interventions`). It changes no data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import strawberry

from circuitbase.api.errors import BAD_USER_INPUT, NOT_FOUND, ApiError
from circuitbase.api.interventions import FeatureChange, InterventionRequest
from circuitbase.api.limits import page_size

if TYPE_CHECKING:
    from circuitbase.api.schema import Context


@strawberry.input(
    description="A feature to change at one position: value sets its activation, scale multiplies it, "
    "neither zeroes it (ablates it)."
)
class FeatureChangeInput:
    layer: int
    position: int = strawberry.field(
        description="Token index as the graph's nodes count it (0 = first token, BOS included); negative "
        "counts from the end."
    )
    feature: int = strawberry.field(description="The feature's index in its layer (GraphNode.featureIndex).")
    value: float | None = None
    scale: float | None = None


@strawberry.type(description="A next token with its probability and logit.")
class TopToken:
    token_id: int
    text: str
    probability: float
    logit: float


@strawberry.type(description="A token's logit before and after the intervention.")
class LogitChange:
    token_id: int
    text: str
    before: float
    after: float
    change: float


@strawberry.type(description="A changed feature: its activation in the prompt and the one the run used.")
class ChangedFeature:
    layer: int
    position: int = strawberry.field(description="Counted from 0 (a negative one given is resolved).")
    feature: int
    activation_before: float
    activation_after: float


@strawberry.type(
    description="The model's next-token prediction before and after changing features (top tokens by "
    "probability, and the logit change of every token in either list)."
)
class Intervention:
    graph_id: strawberry.ID
    model: str
    transcoder_set: str
    prompt: str
    tokens: list[str]
    free_attention: bool
    changes: list[ChangedFeature]
    before: list[TopToken]
    after: list[TopToken]
    logit_changes: list[LogitChange]


def _top(rows: list[dict]) -> list[TopToken]:
    return [
        TopToken(token_id=r["id"], text=r["token"], probability=r["prob"], logit=r["logit"]) for r in rows
    ]


async def intervene(
    ctx: Context,
    *,
    graph_id: str,
    features: list[FeatureChangeInput],
    prompt: str | None,
    free_attention: bool,
    top: int,
) -> Intervention:
    """Run the graph's prompt (or `prompt`) on the graph's model and transcoder set with `features`
    changed; BAD_USER_INPUT past the limits, NOT_FOUND for an unknown graph or a model the server lacks."""
    limits = ctx.limits
    if not 1 <= len(features) <= limits.max_intervention_features:
        raise ApiError(
            BAD_USER_INPUT,
            f"change 1 to {limits.max_intervention_features} features at once, got {len(features)}",
        )
    top = page_size(top, limits=limits, name="top")
    for i, f in enumerate(features):
        if f.value is not None and f.scale is not None:
            raise ApiError(BAD_USER_INPUT, f"features[{i}]: give value or scale, not both")
    graph = await ctx.loaders.graph.load(graph_id)
    if graph is None:
        raise ApiError(NOT_FOUND, f"no complete graph {graph_id!r}")
    text = graph.get("prompt_text", "") if prompt is None else prompt
    if not text.strip():
        raise ApiError(BAD_USER_INPUT, "the prompt is empty")
    request = InterventionRequest(
        model=graph["model"],
        transcoder_set=graph["transcoder_set"],
        prompt=text,
        changes=tuple(FeatureChange(f.layer, f.position, f.feature, f.value, f.scale) for f in features),
        free_attention=free_attention,
        top=top,
    )
    report = await ctx.interventions.run(request)
    return Intervention(
        graph_id=graph_id,
        model=request.model,
        transcoder_set=request.transcoder_set,
        prompt=text,
        tokens=report["tokens"],
        free_attention=free_attention,
        changes=[ChangedFeature(**c) for c in report["changes"]],
        before=_top(report["before"]),
        after=_top(report["after"]),
        logit_changes=[
            LogitChange(
                token_id=r["id"], text=r["token"], before=r["before"], after=r["after"], change=r["change"]
            )
            for r in report["logit_changes"]
        ],
    )
