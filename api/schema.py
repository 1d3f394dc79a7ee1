"""The GraphQL schema: types, queries and mutations over the graph store (see cypher/README.md).

Types are built from repository rows; nested fields load through the request's DataLoaders
(`circuitbase.api.loaders`), so a dashboard query costs one round trip per level, whatever the page size.
Lists page Relay-style (`first`/`after`, `pageInfo`, opaque cursors) with `first` bounded by the limits.
Mutations need an API key (`circuitbase.api.auth`). `intervene` runs the model
(`circuitbase.api.intervention_schema`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import enum
import functools
import json
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import strawberry
from anyio import to_thread
from strawberry.fastapi import BaseContext
from strawberry.scalars import JSON
from strawberry.types.base import StrawberryOptional, get_object_definition
from strawberry.types.nodes import SelectedField, Selection

from circuitbase.analysis.compare import TEST_NAME, Comparison, Split, compare
from circuitbase.analysis.compare import SideCount as StratumCount
from circuitbase.analysis.gds import AnalysisError
from circuitbase.analysis.queries import run_query
from circuitbase.analysis.run import STEPS
from circuitbase.api.auth import Caller
from circuitbase.api.cache import ResultCache, unit_size
from circuitbase.api.circuit_tracer import ViewExportError, manual_supernodes, view_document
from circuitbase.api.drawing import EncodedView, encoded_view, node_texts
from circuitbase.api.errors import BAD_USER_INPUT, NOT_FOUND, ApiError
from circuitbase.api.intervention_schema import FeatureChangeInput, Intervention, intervene
from circuitbase.api.interventions import InterventionService
from circuitbase.api.jobs import JobError, JobRunner, JobState
from circuitbase.api.limits import Limits, page_size
from circuitbase.api.loaders import Compute, Loaders
from circuitbase.api.repository import GraphFilter, Repository
from circuitbase.api.words import feature_words, ref_words, subcircuit_sentence
from circuitbase.ingest.model import feature_key, token_key

T = TypeVar("T")


class Context(BaseContext):
    """What resolvers get as `info.context`: the repository, loaders, caller, limits, job runner, the
    server's result cache and its intervention service."""

    def __init__(
        self,
        *,
        repo: Repository,
        caller: Caller,
        limits: Limits,
        jobs: JobRunner,
        cache: ResultCache,
        interventions: InterventionService,
    ) -> None:
        super().__init__()
        self.repo, self.caller, self.limits, self.jobs, self.cache = repo, caller, limits, jobs, cache
        self.interventions = interventions
        self.loaders = Loaders(repo, cached=self.cached_many)
        self._state: asyncio.Future[Hashable | None] | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking repository call on a worker thread."""
        return await to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def cached(
        self, key: Hashable, compute: Callable[[], T], *, size: Callable[[T], int] = unit_size
    ) -> T:
        """`compute()` (blocking, read-only) through the result cache (`ResultCache.get`); `size` as
        there (default: 1)."""
        return await self.cache.get(key, compute, state=await self._state_token(), size=size)

    async def cached_many(self, keys: Sequence[Hashable], compute: Compute) -> list[Any]:
        """Results for `keys` through the result cache (`ResultCache.get_many`); a list is of its
        length's size, anything else of size 1."""
        return await self.cache.get_many(keys, compute, state=await self._state_token(), size=_size)

    async def _state_token(self) -> Hashable | None:
        """The database state this request read before its first cached call (one query per request)."""
        if self._state is None:
            self._state = asyncio.ensure_future(self.call(self.repo.state_token))
        return await self._state


Info = strawberry.Info[Context, None]


def _size(result: Any) -> int:
    """A loader's result's size in the result cache: a list's length, else 1."""
    return len(result) if isinstance(result, list) else 1


def _ctx(info: Info) -> Context:
    return info.context


# ---------------------------------------------------------------- rows


@functools.cache
def _row_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """The fields of strawberry type `cls` without a default, each with whether it is nullable."""
    nullable = {
        f.python_name: isinstance(f.type, StrawberryOptional)
        for f in get_object_definition(cls, strict=True).fields
    }
    return tuple(
        (f.name, nullable.get(f.name, False))
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _from_row(
    cls: type[T], row: Mapping[str, Any], given: Mapping[str, Any] | None = None, /, **keys: str
) -> T:
    """A `cls` with the `given` values, its other fields without a default read from `row` under their own
    names or as renamed by `keys` (`row.get` for nullable fields)."""
    given = given or {}
    values = {
        name: row.get(keys.get(name, name)) if nullable else row[keys.get(name, name)]
        for name, nullable in _row_fields(cls)
        if name not in given
    }
    return cls(**values, **given)


# ---------------------------------------------------------------- cursors


def _cursor(kind: str, value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, value]).encode()).decode()


def _after(kind: str, cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        found, value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error):
        found, value = None, None
    if found != kind:
        raise ApiError(BAD_USER_INPUT, f"`after` is not a cursor of this list: {cursor!r}")
    return value


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


# ---------------------------------------------------------------- catalogue


@strawberry.type(description="A language model graphs were computed for.")
class Model:
    name: str
    transcoder_sets: list[str]


@strawberry.type(description="A set of transcoders (one per layer) that replaces a model's MLPs.")
class TranscoderSet:
    name: str
    model: str | None
    features: int = strawberry.field(description="Features of the set seen in loaded graphs.")


@strawberry.type(description="A vocabulary item seen as an input token or an output logit.")
class Token:
    key: strawberry.ID
    model: str
    token_id: int
    text: str | None

    @classmethod
    def of(cls, row: dict) -> Token:
        return _from_row(cls, row, token_id="id")


@strawberry.type(description="A transcoder feature, shared by every graph that keeps an instance of it.")
class Feature:
    key: strawberry.ID
    transcoder_set: str
    layer: int
    index: int
    label: str | None
    density: float | None
    top_contexts: list[str] | None = strawberry.field(description="Where stored by an annotation tool.")
    top_activations: list[float] | None = strawberry.field(
        description="The activation at the marked token of each of topContexts, where stored."
    )
    promoted_tokens: list[str] | None = strawberry.field(description="Where stored by an annotation tool.")
    community: int | None
    pagerank: float | None
    betweenness: float | None

    @classmethod
    def of(cls, row: dict) -> Feature:
        return _from_row(cls, row, transcoder_set="set")

    @strawberry.field(
        description="The feature in words: layer, index and label ('L1 #208 “France-ish”'), else its top "
        "logit-lens tokens ('L1 #208 (promotes \" Paris\", \" Rome\")'), else 'L1 #208'."
    )
    def description(self) -> str:
        return feature_words(
            {
                "layer": self.layer,
                "index": self.index,
                "label": self.label,
                "promoted_tokens": self.promoted_tokens,
            }
        )

    @strawberry.field(
        description="Complete graphs keeping an instance of this feature, most influential first."
    )
    async def graphs(self, info: Info, min_influence: float = 0.0, limit: int = 25) -> list[FeatureInGraph]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        rows = await _ctx(info).loaders.feature_graphs.load((self.key, min_influence, limit))
        return [_from_row(FeatureInGraph, r, graph_id="graph", prompt_id="prompt") for r in rows]

    @strawberry.field(description="Neighbours in the aggregated graph (ATTRIBUTES), most frequent first.")
    async def neighbours(self, info: Info, min_graphs: int = 1, limit: int = 25) -> list[Neighbour]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        rows = await _ctx(info).loaders.neighbours.load((self.key, min_graphs, limit))
        return [_from_row(Neighbour, r, key="neighbour") for r in rows]

    @strawberry.field(description="Supernodes (communities or named groups) this feature belongs to.")
    async def supernodes(self, info: Info) -> list[Supernode]:
        return [Supernode.of(r) for r in await _ctx(info).loaders.supernodes_of.load(self.key)]

    @strawberry.field(description="Recurring subcircuits this feature is a member of, best ranked first.")
    async def subcircuits(self, info: Info, limit: int = 25) -> list[Subcircuit]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        rows = await _ctx(info).loaders.feature_subcircuits.load((self.key, limit))
        return [Subcircuit.of(r["subcircuit"]) for r in rows]


async def _feature(info: Info, key: str | None) -> Feature | None:
    row = await _ctx(info).loaders.feature.load(key) if key else None
    return Feature.of(row) if row else None


async def _graph(info: Info, graph_id: str) -> Graph | None:
    row = await _ctx(info).loaders.graph.load(graph_id)
    return Graph.of(row) if row else None


async def _ref_words(info: Info, key: str, *, logit: bool) -> str:
    """A Feature or Token key in words (`circuitbase.api.words`), loaded in the request's batch."""
    return ref_words(await _ctx(info).loaders.ref.load(key), key=key, logit=logit)


async def _subcircuit(info: Info, key: str | None) -> Subcircuit | None:
    row = await _ctx(info).loaders.subcircuit.load(key) if key else None
    return Subcircuit.of(row) if row else None


@strawberry.type(description="A feature's presence in one graph.")
class FeatureInGraph:
    graph_id: strawberry.ID
    prompt_id: strawberry.ID
    text: str
    correct: bool | None
    influence: float
    activation: float | None
    positions: int

    @strawberry.field
    async def graph(self, info: Info) -> Graph | None:
        return await _graph(info, self.graph_id)


@strawberry.type(description="An ATTRIBUTES edge of the aggregated graph seen from one feature.")
class Neighbour:
    direction: str = strawberry.field(description="'out': the feature attributes to it; 'in': the reverse.")
    key: strawberry.ID
    kind: str = strawberry.field(description="'Feature' or 'Token'.")
    graphs: int
    sum: float
    sum_abs: float
    max_abs: float

    @strawberry.field
    async def feature(self, info: Info) -> Feature | None:
        return await _feature(info, self.key if self.kind == "Feature" else None)

    @strawberry.field(description="The neighbour in words (a feature's label, a token's text).")
    async def text(self, info: Info) -> str:
        return await _ref_words(info, self.key, logit=self.kind == "Token" and self.direction == "out")


# ---------------------------------------------------------------- prompts and graphs


@strawberry.type(description="A prompt; its graphs are its attribution graphs (one per transcoder set).")
class Prompt:
    id: strawberry.ID
    text: str
    tokens: list[str]
    answer: str | None
    tags: list[str]
    dataset: str

    @classmethod
    def of(cls, row: dict) -> Prompt:
        given = {
            "text": row.get("text", ""),
            "tokens": row.get("tokens") or [],
            "tags": row.get("tags") or [],
            "dataset": row.get("dataset") or "",
        }
        return _from_row(cls, row, given)

    @strawberry.field
    async def graphs(self, info: Info) -> list[Graph]:
        return [Graph.of(r) for r in await _ctx(info).loaders.graphs_of_prompt.load(self.id)]


@strawberry.enum
class NodeKind(enum.Enum):
    FEATURE = "FeatureNode"
    ERROR = "ErrorNode"
    TOKEN = "TokenNode"
    LOGIT = "LogitNode"


_TOKEN_KINDS = (NodeKind.TOKEN, NodeKind.LOGIT)
_KIND_NAMES = {kind.value: kind.name for kind in NodeKind}  # node label -> API name


@strawberry.type(description="A kept node of one graph; `node` is the Neuronpedia node id.")
class GraphNode:
    node: strawberry.ID
    kind: NodeKind
    layer: int
    position: int
    influence: float | None
    activation: float | None
    feature_index: int | None
    token_id: int | None
    probability: float | None
    ref: strawberry.Private[str | None]
    feature: Feature | None = strawberry.field(
        default=None, description="The global feature of a feature node."
    )
    token: Token | None = strawberry.field(
        default=None, description="The vocabulary item of a token or logit node."
    )
    text: str | None = strawberry.field(
        default=None,
        description="The node in words with its place: 'L1 #208 “label” @5 \" Dallas\"' (layer, index, label "
        "or logit-lens tokens, position and its input token), '\" Dallas\" @5', 'logit \" Paris\"', "
        "'error L1 @5 \" Dallas\"'.",
    )


def _refs(nodes: list[GraphNode], kinds: tuple[NodeKind, ...]) -> list[str]:
    """The distinct global keys of the `nodes` of `kinds`."""
    return list(dict.fromkeys(n.ref for n in nodes if n.kind in kinds and n.ref))


def _asks_for(info: Info, name: str) -> bool:
    """Whether the items of the list being resolved select field `name` (directly or in a fragment)."""

    def found(selections: Sequence[Selection]) -> bool:
        return any(
            s.name == name if isinstance(s, SelectedField) else found(s.selections) for s in selections
        )

    return any(found(field.selections) for field in info.selected_fields)


def _name_nodes(
    nodes: list[GraphNode], *, feature_rows: dict[str, dict], token_rows: dict[str, dict]
) -> None:
    """Set each node's `text` (`circuitbase.api.drawing.node_texts`)."""
    text_of = {key: row.get("text") for key, row in token_rows.items()}
    texts = node_texts(
        {
            "kind": n.kind.value,
            "layer": n.layer,
            "position": n.position,
            "feature": feature_rows.get(n.ref or "") if n.kind == NodeKind.FEATURE else None,
            "token_text": text_of.get(n.ref or "") if n.kind in _TOKEN_KINDS else None,
        }
        for n in nodes
    )
    for n, text in zip(nodes, texts, strict=True):
        n.text = text


@strawberry.type(description="A kept edge: the direct effect of `source` on `target` (node ids).")
class GraphEdge:
    source: strawberry.ID
    target: strawberry.ID
    weight: float


@strawberry.type(description="One graph at a pruning level: nodes by influence, edges by |weight| and count.")
class GraphView:
    graph_id: strawberry.Private[str]
    model: strawberry.Private[str]
    transcoder_set: strawberry.Private[str]
    min_influence: float
    min_abs_weight: float
    top_k: int

    @strawberry.field(
        description="Feature and error nodes with influence >= minInfluence; all tokens and logits."
    )
    async def nodes(self, info: Info) -> list[GraphNode]:
        ctx = _ctx(info)
        nodes = [self._node(r) for r in await ctx.loaders.nodes.load((self.graph_id, self.min_influence))]
        # the nodes' features and tokens, if asked for, load here in one batch each (not one awaitable per
        # node: a view has thousands of nodes); words need both
        words = _asks_for(info, "text")
        features = _refs(nodes, (NodeKind.FEATURE,)) if words or _asks_for(info, "feature") else []
        tokens = _refs(nodes, _TOKEN_KINDS) if words or _asks_for(info, "token") else []
        found_features, found_tokens = await asyncio.gather(
            ctx.loaders.feature.load_many(features), ctx.loaders.token.load_many(tokens)
        )
        feature_rows = {k: r for k, r in zip(features, found_features, strict=True) if r}
        token_rows = {k: r for k, r in zip(tokens, found_tokens, strict=True) if r}
        feature_of = {k: Feature.of(r) for k, r in feature_rows.items()}
        token_of = {k: Token.of(r) for k, r in token_rows.items()}
        for n in nodes:
            n.feature = feature_of.get(n.ref) if n.kind == NodeKind.FEATURE else None
            n.token = token_of.get(n.ref) if n.kind in _TOKEN_KINDS else None
        if words:
            _name_nodes(nodes, feature_rows=feature_rows, token_rows=token_rows)
        return nodes

    @strawberry.field(
        description="The topK strongest edges with |weight| >= minAbsWeight between kept nodes."
    )
    async def edges(self, info: Info) -> list[GraphEdge]:
        key = (self.graph_id, self.min_influence, self.min_abs_weight, self.top_k)
        return [GraphEdge(**r) for r in await _ctx(info).loaders.edges.load(key)]

    @strawberry.field(
        description="This view as the dashboard draws it: the JSON text (parse it, e.g. JSON.parse) of "
        "one compact object of columns (a list per field; see `circuitbase.api.drawing`): tokens (the "
        "prompt's), nodes (node, kind, layer, position, featureIndex, influence, activation, "
        "probability, text, feature: an index in features, token: its text), features (key, label, "
        "description), supernodes (the manual ones with members here: key, name, features) and edges "
        "(source, target: indices in nodes, weight). The same nodes and edges as `nodes` and `edges`, "
        "from one query, encoded once and cached until the database changes."
    )
    async def compact(self, info: Info) -> str:
        ctx = _ctx(info)
        key = ("compact", self.graph_id, self.min_influence, self.min_abs_weight, self.top_k)
        found = await ctx.cached(key, lambda: self._compact(ctx.repo), size=lambda view: view.size)
        return found.text

    def _compact(self, repo: Repository) -> EncodedView:
        """The compact view, computed (blocking)."""
        row = repo.graph_view(
            self.graph_id,
            min_influence=self.min_influence,
            min_abs_weight=self.min_abs_weight,
            top_k=self.top_k,
        )
        if row is None:  # deleted since the graph was read
            raise ApiError(NOT_FOUND, f"no complete graph {self.graph_id!r}")
        return encoded_view(row, kinds=_KIND_NAMES)

    @strawberry.field(
        description="This view as circuit-tracer / Neuronpedia graph JSON, in the format `circuitbase "
        "attribute` writes: its nodes (only `nodes` when given, e.g. those a dashboard shows) and its edges "
        "between them; qParams hold pinnedIds, clickedId and, as [name, node id, ...], the manual "
        "supernodes with members among those nodes."
    )
    async def circuit_tracer_json(
        self,
        info: Info,
        nodes: list[strawberry.ID] | None = None,
        pinned_ids: list[strawberry.ID] | None = None,
        clicked_id: strawberry.ID | None = None,
    ) -> JSON:
        ctx = _ctx(info)
        edge_key = (self.graph_id, self.min_influence, self.min_abs_weight, self.top_k)
        rows, edges, graph = await asyncio.gather(
            ctx.loaders.nodes.load((self.graph_id, self.min_influence)),
            ctx.loaders.edges.load(edge_key),
            ctx.loaders.graph.load(self.graph_id),
        )
        refs = {r["node"]: self._node(r) for r in rows}
        features = _refs(list(refs.values()), (NodeKind.FEATURE,))
        tokens = _refs(list(refs.values()), _TOKEN_KINDS)
        prompt, feature_rows, token_rows, memberships = await asyncio.gather(
            ctx.loaders.prompt.load(graph["prompt"]),
            ctx.loaders.feature.load_many(features),
            ctx.loaders.token.load_many(tokens),
            ctx.loaders.supernodes_of.load_many(features),
        )
        label_of = {k: (r or {}).get("label") for k, r in zip(features, feature_rows, strict=True)}
        text_of = {k: (r or {}).get("text") for k, r in zip(tokens, token_rows, strict=True)}
        feature_of = {n: g.ref for n, g in refs.items() if g.kind == NodeKind.FEATURE and g.ref}
        try:
            return view_document(
                graph=graph,
                prompt=prompt,
                rows=rows,
                edges=edges,
                labels={n: label_of.get(k) for n, k in feature_of.items()},
                token_texts={n: text_of.get(g.ref or "") for n, g in refs.items() if g.kind in _TOKEN_KINDS},
                keep=nodes,
                pinned_ids=pinned_ids or [],
                clicked_id=clicked_id or "",
                supernodes=manual_supernodes(feature_of, dict(zip(features, memberships, strict=True))),
                info={
                    "graph_id": self.graph_id,
                    "view": {
                        "min_influence": self.min_influence,
                        "min_abs_weight": self.min_abs_weight,
                        "top_k": self.top_k,
                    },
                },
            )
        except ViewExportError as exc:
            raise ApiError(BAD_USER_INPUT, str(exc)) from None

    def _node(self, r: dict) -> GraphNode:
        kind = NodeKind(r["kind"])
        ref = None
        if kind == NodeKind.FEATURE:
            ref = feature_key(self.transcoder_set, r["layer"], r["feature"])
        elif kind in _TOKEN_KINDS:
            ref = token_key(self.model, r["token_id"])
        return _from_row(GraphNode, r, {"kind": kind, "ref": ref}, feature_index="feature")


@strawberry.type(description="A graph similar to another (Jaccard similarity of their features).")
class SimilarGraph:
    graph_id: strawberry.ID
    text: str
    score: float

    @strawberry.field
    async def graph(self, info: Info) -> Graph | None:
        return await _graph(info, self.graph_id)


@strawberry.type(description="The attribution graph of one prompt under one transcoder set (pruned).")
class Graph:
    id: strawberry.ID
    model: str
    transcoder_set: str
    prompt_id: strawberry.ID
    prompt_text: str
    replacement_score: float | None
    completeness_score: float | None
    faithfulness: float | None = strawberry.field(
        description="Agreement (-1..1) of the top-logit changes the graph predicts and the real model shows "
        "when its most influential features are ablated (attention free); null when not checked."
    )
    faithfulness_correlation: float | None = strawberry.field(
        description="Pearson correlation of those predicted and measured changes, one feature at a time."
    )
    logit_share_measured: float | None = strawberry.field(
        description="Share of the top logit the ablated features carry in the real model."
    )
    logit_share_predicted: float | None = strawberry.field(
        description="Share of the top logit the graph says they carry."
    )
    top_token: str | None = strawberry.field(description="The model's prediction.")
    correct: bool | None = strawberry.field(description="Whether the prediction is the expected answer.")
    node_threshold: float | None
    edge_threshold: float | None
    n_nodes: int
    n_edges: int
    n_nodes_full: int | None
    n_edges_full: int | None
    format: str | None

    @classmethod
    def of(cls, row: dict) -> Graph:
        given = {
            "prompt_text": row.get("prompt_text", ""),
            "n_nodes": row.get("n_nodes", 0),
            "n_edges": row.get("n_edges", 0),
        }
        return _from_row(cls, row, given, prompt_id="prompt")

    @strawberry.field
    async def prompt(self, info: Info) -> Prompt | None:
        row = await _ctx(info).loaders.prompt.load(self.prompt_id)
        return Prompt.of(row) if row else None

    @strawberry.field(
        description="The graph's nodes and edges at a pruning level (defaults: everything stored, "
        "the 1,000 strongest edges)."
    )
    def view(
        self, info: Info, min_influence: float = 0.0, min_abs_weight: float = 0.0, top_k: int = 1000
    ) -> GraphView:
        limits = _ctx(info).limits
        if not 1 <= top_k <= limits.max_edges:
            raise ApiError(BAD_USER_INPUT, f"topK must be between 1 and {limits.max_edges}, got {top_k}")
        if min_abs_weight < 0:
            raise ApiError(BAD_USER_INPUT, f"minAbsWeight must be >= 0, got {min_abs_weight}")
        return GraphView(
            graph_id=self.id,
            model=self.model,
            transcoder_set=self.transcoder_set,
            min_influence=min_influence,
            min_abs_weight=min_abs_weight,
            top_k=top_k,
        )

    @strawberry.field(description="The most similar graphs (after `analyze --step similarity`).")
    async def similar(self, info: Info, limit: int = 10) -> list[SimilarGraph]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        rows = await _ctx(info).loaders.similar.load((self.id, limit))
        return [_from_row(SimilarGraph, r, graph_id="graph") for r in rows]

    @strawberry.field(description="Recurring subcircuits occurring in this graph, best ranked first.")
    async def subcircuits(self, info: Info) -> list[SubcircuitOccurrence]:
        rows = await _ctx(info).loaders.subcircuits_of_graph.load(self.id)
        return [_from_row(SubcircuitOccurrence, r, {"graph_id": self.id}, subcircuit_row="s") for r in rows]


# ---------------------------------------------------------------- analysis results


@strawberry.type
class SubcircuitEdge:
    source: strawberry.ID
    target: strawberry.ID

    @strawberry.field(description="The source in words (an input token's text or a feature).")
    async def source_text(self, info: Info) -> str:
        return await _ref_words(info, self.source, logit=False)

    @strawberry.field(description="The target in words (a feature, or 'logit \"text\"' for a token).")
    async def target_text(self, info: Info) -> str:
        return await _ref_words(info, self.target, logit=True)


@strawberry.type(description="A recurring, connected set of feature-level edges (see cypher/README.md).")
class Subcircuit:
    key: strawberry.ID
    rank: int
    support: int
    support_fraction: float
    influence: float | None
    weight: float | None
    weight_abs: float | None
    causal_support: float | None = strawberry.field(
        description="Share of its measured occurrences where ablating it on the real model takes at least "
        "the analysis run's threshold of the answer's lead (`analyze --step causal`); null: not measured."
    )
    causal_occurrences: int | None = strawberry.field(
        description="Occurrences its causal support was measured on (null: not measured)."
    )
    edges: list[SubcircuitEdge]

    @classmethod
    def of(cls, row: dict) -> Subcircuit:
        edges = [
            SubcircuitEdge(source=s, target=t) for s, t in zip(row["sources"], row["targets"], strict=True)
        ]
        return _from_row(cls, row, {"edges": edges})

    @strawberry.field(
        description="Its paths from input tokens to logits in words, '; '-separated, each edge in one at "
        'least: \'"capital" → L1 #208 “France-ish” → logit " Paris"\'; the maxPaths (default 5) covering '
        "most edges first, then '… (+N more paths)'."
    )
    async def sentence(self, info: Info, max_paths: int = 5) -> str:
        if max_paths < 1:
            raise ApiError(BAD_USER_INPUT, f"maxPaths must be >= 1, got {max_paths}")
        sources, targets = [e.source for e in self.edges], [e.target for e in self.edges]
        keys = list(dict.fromkeys(sources + targets))
        rows = await _ctx(info).loaders.ref.load_many(keys)
        return subcircuit_sentence(sources, targets, dict(zip(keys, rows, strict=True)), max_paths=max_paths)

    @strawberry.field(description="Graphs it occurs in, by |weight| there.")
    async def occurrences(self, info: Info, limit: int = 25) -> list[SubcircuitOccurrence]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        rows = await _ctx(info).loaders.occurrences.load((self.key, limit))
        given = {"subcircuit_row": None, "subcircuit_key": self.key}
        return [_from_row(SubcircuitOccurrence, r, given, graph_id="graph") for r in rows]


@strawberry.type(
    description="A subcircuit in one graph: its summed edge weight, largest member influence and what "
    "ablating it there does to the graph's answer."
)
class SubcircuitOccurrence:
    graph_id: strawberry.ID
    weight: float | None
    influence: float | None
    causal_drop: float | None = strawberry.field(
        description="Share of the answer's lead (its logit minus the best other logit) taken away when "
        "memberNodes are ablated on the real model (`analyze --step causal`): 0 no effect, 1 the answer "
        "ties, above 1 the answer changes, negative it grew; null: not measured."
    )
    causal_logit_drop: float | None = strawberry.field(
        description="That drop of the lead in logits; null: not measured."
    )
    subcircuit_row: strawberry.Private[dict | None]
    subcircuit_key: strawberry.Private[str | None] = None

    @strawberry.field
    async def graph(self, info: Info) -> Graph | None:
        return await _graph(info, self.graph_id)

    @strawberry.field(
        description="The graph's kept feature nodes that are instances of the subcircuit's member "
        "features, by layer, position and feature index: what the causal step ablates together here (as "
        "`intervene` takes features: layer, position, featureIndex)."
    )
    async def member_nodes(self, info: Info) -> list[SubcircuitMemberNode]:
        key = self.subcircuit_row["key"] if self.subcircuit_row else self.subcircuit_key
        rows = await _ctx(info).loaders.member_nodes.load((key, self.graph_id))
        return [_from_row(SubcircuitMemberNode, r, feature_index="feature") for r in rows]

    @strawberry.field
    async def subcircuit(self, info: Info) -> Subcircuit | None:
        if self.subcircuit_row:
            return Subcircuit.of(self.subcircuit_row)
        return await _subcircuit(info, self.subcircuit_key)


@strawberry.type(description="A feature node of one graph that is an instance of a subcircuit's member.")
class SubcircuitMemberNode:
    node: strawberry.ID
    layer: int
    position: int
    feature_index: int
    feature_key: strawberry.ID
    influence: float | None
    activation: float | None

    @strawberry.field
    async def feature(self, info: Info) -> Feature | None:
        return await _feature(info, self.feature_key)


@strawberry.type(
    description="A named group of features: a community (analysis) or defined by a user ('manual')."
)
class Supernode:
    key: strawberry.ID
    name: str | None
    description: str | None
    algorithm: str | None
    community: int | None
    size: int
    n_features: int
    internal_weight: float | None

    @classmethod
    def of(cls, row: dict) -> Supernode:
        return _from_row(cls, row, {"size": row.get("size", 0), "n_features": row.get("features", 0)})

    @strawberry.field(description="Keys of the member Features (and Tokens, for communities).")
    async def members(self, info: Info) -> list[strawberry.ID]:
        return await _ctx(info).loaders.members.load(self.key)


# ---------------------------------------------------------------- comparisons


@strawberry.type(description="A feature across the compared graphs, side by side (null where absent).")
class FeatureAcross:
    key: strawberry.ID
    graphs: int = strawberry.field(description="How many of the compared graphs keep it.")
    shared: bool
    unique_to: strawberry.ID | None = strawberry.field(
        description="The one graph keeping it, if only one does."
    )
    influence: list[float | None] = strawberry.field(description="Largest instance influence, per graph.")
    activation: list[float | None] = strawberry.field(description="Largest instance activation, per graph.")

    @strawberry.field
    async def feature(self, info: Info) -> Feature | None:
        return await _feature(info, self.key)


@strawberry.type(description="A subcircuit across the compared graphs, side by side (null where absent).")
class SubcircuitAcross:
    key: strawberry.ID
    graphs: int
    shared: bool
    unique_to: strawberry.ID | None
    weight: list[float | None]
    influence: list[float | None]
    causal_drop: list[float | None] = strawberry.field(
        description="Its occurrence's causalDrop, per graph (null: absent or not measured)."
    )
    causal_logit_drop: list[float | None] = strawberry.field(
        description="Its occurrence's causalLogitDrop, per graph (null: absent or not measured)."
    )

    @strawberry.field
    async def subcircuit(self, info: Info) -> Subcircuit | None:
        return await _subcircuit(info, self.key)


@strawberry.enum
class Presence(enum.Enum):
    ALL = "all"
    SHARED = "shared"
    UNIQUE = "unique"


def _across(values: dict[str, dict[str, dict]], columns: list[str], only: Presence) -> list[dict]:
    """Rows `key -> {graph: {field: value}}` aligned to `columns`, filtered by presence, most shared first."""
    rows = []
    for key, per_graph in values.items():
        shared, unique = len(per_graph) == len(columns), len(per_graph) == 1
        if (only == Presence.SHARED and not shared) or (only == Presence.UNIQUE and not unique):
            continue
        rows.append(
            {
                "key": key,
                "graphs": len(per_graph),
                "shared": shared,
                "unique_to": next(iter(per_graph)) if unique else None,
                "per_graph": per_graph,
            }
        )
    peak = {r["key"]: max(abs(v.get("influence") or 0.0) for v in r["per_graph"].values()) for r in rows}
    rows.sort(key=lambda r: (-r["graphs"], -peak[r["key"]], r["key"]))
    return rows


def _per_graph(row: dict, columns: list[str], *names: str) -> dict[str, list]:
    """The values `names` of an `_across` row, each a list aligned to `columns` (null where absent)."""
    return {n: [row["per_graph"].get(g, {}).get(n) for g in columns] for n in names}


@strawberry.type(description="Two or more graphs side by side: shared and unique features and subcircuits.")
class GraphComparison:
    graph_ids: list[strawberry.ID] = strawberry.field(description="The columns of every side-by-side list.")

    @strawberry.field
    async def graphs(self, info: Info) -> list[Graph | None]:
        return [await _graph(info, g) for g in self.graph_ids]

    @strawberry.field
    async def features(
        self, info: Info, only: Presence = Presence.ALL, limit: int = 50
    ) -> list[FeatureAcross]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        values: dict[str, dict[str, dict]] = {}
        for graph_id, rows in (
            await _ctx(info).call(_ctx(info).repo.feature_presence, self.graph_ids)
        ).items():
            for r in rows:
                values.setdefault(r["feature"], {})[graph_id] = r
        rows = _across(values, self.graph_ids, only)[:limit]
        return [
            _from_row(FeatureAcross, r, _per_graph(r, self.graph_ids, "influence", "activation"))
            for r in rows
        ]

    @strawberry.field
    async def subcircuits(
        self, info: Info, only: Presence = Presence.ALL, limit: int = 50
    ) -> list[SubcircuitAcross]:
        limit = page_size(limit, limits=_ctx(info).limits, name="limit")
        found = await _ctx(info).loaders.subcircuits_of_graph.load_many(self.graph_ids)
        values: dict[str, dict[str, dict]] = {}
        for graph_id, rows in zip(self.graph_ids, found, strict=True):
            for r in rows:
                values.setdefault(r["s"]["key"], {})[graph_id] = r
        return [
            _from_row(
                SubcircuitAcross,
                r,
                _per_graph(r, self.graph_ids, "weight", "influence", "causal_drop", "causal_logit_drop"),
            )
            for r in _across(values, self.graph_ids, only)[:limit]
        ]


@strawberry.interface(
    description="Presence on sides A and B, crude and tested within strata (analysis.compare)."
)
class Contrast:
    key: strawberry.ID
    k_a: int
    n_a: int
    k_b: int
    n_b: int
    p_a: float
    p_b: float
    diff: float = strawberry.field(description="pA - pB over all graphs (crude).")
    log_odds: float = strawberry.field(description="Haldane-corrected log-odds ratio (crude).")
    se: float
    z: float = strawberry.field(description="logOdds / se (crude Wald z).")
    influence_a: float | None
    influence_b: float | None
    mh_diff: float | None = strawberry.field(
        description="Mantel-Haenszel risk difference over the strata holding both sides (null: none does)."
    )
    test_z: float | None = strawberry.field(
        description="Cochran-Mantel-Haenszel statistic (null: not testable, no variance in any stratum)."
    )
    p_value: float | None = strawberry.field(description="Two-sided p-value of testZ.")
    q_value: float | None = strawberry.field(
        description="Benjamini-Hochberg q-value over the tested rows of this table."
    )


@strawberry.type(
    description="A feature whose presence differs between sides A and B (compare_features.cypher)."
)
class FeatureContrast(Contrast):
    label: str | None

    @strawberry.field
    async def feature(self, info: Info) -> Feature | None:
        return await _feature(info, self.key)


@strawberry.type(description="A subcircuit whose support differs between sides A and B.")
class SubcircuitContrast(Contrast):
    rank: int

    @strawberry.field
    async def subcircuit(self, info: Info) -> Subcircuit | None:
        return await _subcircuit(info, self.key)


@strawberry.type(description="Graphs of each side in one stratum, or carrying one tag.")
class SideCount:
    name: str
    n_a: int
    n_b: int
    one_sided: bool = strawberry.field(description="Only one side has graphs here.")


@strawberry.type(description="A feature seen on one side only (features_unique.cypher).")
class UniqueFeature:
    key: strawberry.ID
    side: str
    graphs_a: int
    graphs_b: int
    mean_influence: float | None

    @strawberry.field
    async def feature(self, info: Info) -> Feature | None:
        return await _feature(info, self.key)


@strawberry.type(description="Two prompt sets compared: A and B by correctness or by tag.")
class SetComparison:
    a: str
    b: str
    n_a: int
    n_b: int
    split: strawberry.Private[Split]
    result: strawberry.Private[Comparison]
    min_graphs: strawberry.Private[int]

    @strawberry.field(description="What the strata are: tags, dataset, none, or a tag prefix.")
    def within(self) -> str:
        return self.result.within

    @strawberry.field(description="The false-discovery rate the rows are filtered at.")
    def fdr(self) -> float:
        return self.result.fdr

    @strawberry.field(description="The test behind pValue and qValue.")
    def test(self) -> str:
        return TEST_NAME

    @strawberry.field(description="Graphs per side in each stratum; one-sided strata are left out of tests.")
    def strata(self) -> list[SideCount]:
        return [_side_count(s) for s in self.result.strata]

    @strawberry.field(description="No stratum holds both sides: nothing is testable within a task.")
    def fully_confounded(self) -> bool:
        return self.result.fully_confounded

    @strawberry.field(
        description="Tags (in >= 2 graphs) present on one side only: confounded with the split."
    )
    def confounded_tags(self) -> list[SideCount]:
        return [_side_count(t) for t in self.result.confounded_tags]

    @strawberry.field(description="Features tested (a test with variance in some two-sided stratum).")
    def features_tested(self) -> int:
        return self.result.features_tested

    @strawberry.field(description="Tested features with q < fdr.")
    def features_passing(self) -> int:
        return self.result.features_passing

    @strawberry.field
    def subcircuits_tested(self) -> int:
        return self.result.subcircuits_tested

    @strawberry.field
    def subcircuits_passing(self) -> int:
        return self.result.subcircuits_passing

    @strawberry.field(
        description="Features with q < fdr (every row with allRows), ranked by |mhDiff|, then q."
    )
    def features(self) -> list[FeatureContrast]:
        return [_from_row(FeatureContrast, r, key="feature") for r in self.result.features]

    @strawberry.field(description="Subcircuits with q < fdr (every row with allRows), ranked as features.")
    def subcircuits(self) -> list[SubcircuitContrast]:
        return [_from_row(SubcircuitContrast, r, key="subcircuit") for r in self.result.subcircuits]

    @strawberry.field(description="Features seen on one side only, in >= minGraphs graphs.")
    async def unique_features(self, info: Info, limit: int = 25) -> list[UniqueFeature]:
        ctx = _ctx(info)
        limit = page_size(limit, limits=ctx.limits, name="limit")
        rows = await ctx.cached(
            ("features_unique", self.split, self.min_graphs, limit),
            lambda: run_query(
                ctx.repo.driver,
                "features_unique",
                database=ctx.repo.database,
                min_graphs=self.min_graphs,
                limit=limit,
                **self.split.params(),
            ),
        )
        return [_from_row(UniqueFeature, r, key="feature") for r in rows]


def _side_count(count: StratumCount) -> SideCount:
    return SideCount(name=count.name, n_a=count.n_a, n_b=count.n_b, one_sided=count.one_sided)


@strawberry.input(description="Sides of a set comparison: split='correct', or both aTag and bTag.")
class SidesInput:
    split: str | None = None
    a_tag: str | None = None
    b_tag: str | None = None


# ---------------------------------------------------------------- jobs


@strawberry.type(description="An ingest run recorded in the database (`:IngestJob`).")
class IngestJob:
    id: strawberry.ID
    status: str
    started: str | None
    finished: str | None
    graphs_loaded: int
    graphs_skipped: int
    errors: list[str]
    parameters: str = strawberry.field(description="The job's parameters, as JSON.")

    @classmethod
    def of(cls, row: dict) -> IngestJob:
        given = {
            "graphs_loaded": row.get("graphs_loaded", 0),
            "graphs_skipped": row.get("graphs_skipped", 0),
            "errors": row.get("errors") or [],
            "parameters": row.get("parameters") or "{}",
        }
        return _from_row(cls, row, given)


@strawberry.type(description="A job started through the API (ingest or analysis); poll it for progress.")
class Job:
    id: strawberry.ID
    kind: str
    status: str = strawberry.field(description="queued, running, finished or failed.")
    error: str | None
    total: int = strawberry.field(description="Prompts (ingest) or steps (analysis) to do.")
    created: str
    started: str | None
    finished: str | None
    summary: str = strawberry.field(description="What the job reported when done, as JSON.")
    marker: strawberry.Private[str | None]

    @classmethod
    def of(cls, job: JobState) -> Job:
        return _from_row(cls, vars(job), {"summary": json.dumps(job.summary, default=str)})

    @strawberry.field(description="The ingest job's database record, with its live counters.")
    async def ingest_job(self, info: Info) -> IngestJob | None:
        if self.marker is None:
            return None
        row = await _ctx(info).call(_ctx(info).repo.ingest_job_by_marker, self.marker)
        return IngestJob.of(row) if row else None

    @strawberry.field(description="Share of the work done, 0..1 (ingest: graphs loaded or skipped).")
    async def progress(self, info: Info) -> float:
        if self.status == "finished":
            return 1.0
        record = await self.ingest_job(info) if self.kind == "ingest" else None
        if record is None or self.total == 0:
            return 0.0
        return min(1.0, (record.graphs_loaded + record.graphs_skipped + len(record.errors)) / self.total)


@strawberry.type(description="The last run of one analysis step (`:AnalysisRun`).")
class AnalysisRun:
    step: strawberry.ID
    status: str | None
    started: str | None
    finished: str | None
    params: str | None
    summary: str | None


@strawberry.type(description="What one request may ask of this server (see `circuitbase.api.limits`).")
class ServerLimits:
    max_depth: int
    max_complexity: int
    max_page_size: int
    max_edges: int
    max_intervention_features: int
    max_intervention_tokens: int
    interventions_per_minute: int

    @classmethod
    def of(cls, limits: Limits) -> ServerLimits:
        return cls(**{f.name: getattr(limits, f.name) for f in dataclasses.fields(cls)})


@strawberry.input(description="A prompt to attribute and load.")
class PromptInput:
    text: str
    answer: str | None = None
    tags: list[str] = strawberry.field(default_factory=list)
    dataset: str = ""
    id: str | None = None


# ---------------------------------------------------------------- connections


@strawberry.type
class GraphConnectionEdge:
    cursor: str
    node: Graph


@strawberry.type
class GraphConnection:
    edges: list[GraphConnectionEdge]
    page_info: PageInfo
    where: strawberry.Private[GraphFilter]

    @strawberry.field(description="Graphs matching the filter, over all pages (one extra query).")
    async def total_count(self, info: Info) -> int:
        return await _ctx(info).call(_ctx(info).repo.graphs_count, self.where)


@strawberry.type
class PromptConnectionEdge:
    cursor: str
    node: Prompt


@strawberry.type
class PromptConnection:
    edges: list[PromptConnectionEdge]
    page_info: PageInfo


@strawberry.type
class SubcircuitConnectionEdge:
    cursor: str
    node: Subcircuit


@strawberry.type
class SubcircuitConnection:
    edges: list[SubcircuitConnectionEdge]
    page_info: PageInfo


@strawberry.input(description="Filters on graphs (and, for prompts, on the prompt's graphs); all optional.")
class GraphFilterInput:
    tag: str | None = None
    dataset: str | None = None
    correct: bool | None = None
    model: str | None = None
    transcoder_set: str | None = None
    feature: strawberry.ID | None = strawberry.field(
        default=None, description="A Feature key the graph keeps."
    )

    def to_filter(self) -> GraphFilter:
        return GraphFilter(
            tag=self.tag,
            dataset=self.dataset,
            correct=self.correct,
            model=self.model,
            transcoder_set=self.transcoder_set,
            feature=self.feature,
        )


def _page(rows: list[dict], first: int) -> tuple[list[dict], bool]:
    return rows[:first], len(rows) > first


async def _one(info: Info, what: str, key: str, load: Callable[[str], Awaitable[Any]]) -> Any:
    row = await load(key)
    if row is None:
        raise ApiError(NOT_FOUND, f"no {what} {key!r}")
    return row


def _split(sides: SidesInput) -> Split:
    try:
        return Split(split=sides.split, a_tag=sides.a_tag, b_tag=sides.b_tag)
    except AnalysisError as exc:
        raise ApiError(BAD_USER_INPUT, str(exc)) from None


@strawberry.type
class Query:
    @strawberry.field
    async def models(self, info: Info) -> list[Model]:
        rows = await _ctx(info).call(_ctx(info).repo.models)
        return [_from_row(Model, r, transcoder_sets="sets") for r in rows]

    @strawberry.field
    async def transcoder_sets(self, info: Info) -> list[TranscoderSet]:
        return [TranscoderSet(**r) for r in await _ctx(info).call(_ctx(info).repo.transcoder_sets)]

    @strawberry.field(description="Complete graphs matching `filter`, by id.")
    async def graphs(
        self, info: Info, filter: GraphFilterInput | None = None, first: int = 20, after: str | None = None
    ) -> GraphConnection:
        ctx = _ctx(info)
        first, where = page_size(first, limits=ctx.limits), (filter or GraphFilterInput()).to_filter()
        rows, more = _page(
            await ctx.call(ctx.repo.graphs_page, where, after=_after("graph", after), limit=first + 1), first
        )
        edges = [GraphConnectionEdge(cursor=_cursor("graph", r["id"]), node=Graph.of(r)) for r in rows]
        return GraphConnection(
            edges=edges,
            page_info=PageInfo(has_next_page=more, end_cursor=edges[-1].cursor if edges else None),
            where=where,
        )

    @strawberry.field(
        description="Prompts matching `filter` (graph fields: some graph of the prompt), by id."
    )
    async def prompts(
        self, info: Info, filter: GraphFilterInput | None = None, first: int = 20, after: str | None = None
    ) -> PromptConnection:
        ctx = _ctx(info)
        first, where = page_size(first, limits=ctx.limits), (filter or GraphFilterInput()).to_filter()
        rows, more = _page(
            await ctx.call(ctx.repo.prompts_page, where, after=_after("prompt", after), limit=first + 1),
            first,
        )
        edges = [PromptConnectionEdge(cursor=_cursor("prompt", r["id"]), node=Prompt.of(r)) for r in rows]
        return PromptConnection(
            edges=edges,
            page_info=PageInfo(has_next_page=more, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field
    async def graph(self, info: Info, id: strawberry.ID) -> Graph:
        return Graph.of(await _one(info, "complete graph", id, _ctx(info).loaders.graph.load))

    @strawberry.field
    async def prompt(self, info: Info, id: strawberry.ID) -> Prompt:
        return Prompt.of(await _one(info, "prompt", id, _ctx(info).loaders.prompt.load))

    @strawberry.field(description="A feature by key ('set/layer/index').")
    async def feature(self, info: Info, key: strawberry.ID) -> Feature:
        return Feature.of(await _one(info, "feature", key, _ctx(info).loaders.feature.load))

    @strawberry.field(description="Hub features by PageRank or betweenness (after `analyze --step hubs`).")
    async def hub_features(self, info: Info, order: str = "pagerank", limit: int = 20) -> list[Feature]:
        ctx = _ctx(info)
        if order not in ("pagerank", "betweenness"):
            raise ApiError(BAD_USER_INPUT, f"order must be 'pagerank' or 'betweenness', got {order!r}")
        limit = page_size(limit, limits=ctx.limits, name="limit")
        rows = await ctx.call(
            run_query, ctx.repo.driver, "hub_features", database=ctx.repo.database, order=order, limit=limit
        )
        found = await ctx.loaders.feature.load_many([r["feature"] for r in rows])
        return [Feature.of(f) for f in found if f]

    @strawberry.field(
        description="Recurring subcircuits, best ranked first (support x mean influence, then support)."
    )
    async def subcircuits(
        self, info: Info, min_support: int = 1, first: int = 20, after: str | None = None
    ) -> SubcircuitConnection:
        ctx = _ctx(info)
        first = page_size(first, limits=ctx.limits)
        rows, more = _page(
            await ctx.call(
                ctx.repo.subcircuits_page,
                min_support=min_support,
                after=_after("subcircuit", after),
                limit=first + 1,
            ),
            first,
        )
        edges = [
            SubcircuitConnectionEdge(cursor=_cursor("subcircuit", r["rank"]), node=Subcircuit.of(r))
            for r in rows
        ]
        return SubcircuitConnection(
            edges=edges,
            page_info=PageInfo(has_next_page=more, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field
    async def subcircuit(self, info: Info, key: strawberry.ID) -> Subcircuit:
        return Subcircuit.of(await _one(info, "subcircuit", key, _ctx(info).loaders.subcircuit.load))

    @strawberry.field(description="Supernodes, largest first.")
    async def supernodes(self, info: Info, limit: int = 20) -> list[Supernode]:
        ctx = _ctx(info)
        limit = page_size(limit, limits=ctx.limits, name="limit")
        return [Supernode.of(r) for r in await ctx.call(ctx.repo.supernodes, limit=limit)]

    @strawberry.field(description="Compare the graphs of two or more prompts side by side.")
    async def compare_prompts(
        self, info: Info, prompt_ids: list[strawberry.ID], transcoder_set: str | None = None
    ) -> GraphComparison:
        ctx = _ctx(info)
        if not 2 <= len(set(prompt_ids)) <= ctx.limits.max_page_size:
            raise ApiError(
                BAD_USER_INPUT,
                f"compare 2 to {ctx.limits.max_page_size} distinct prompts, got {len(set(prompt_ids))}",
            )
        found = await ctx.loaders.graphs_of_prompt.load_many(list(dict.fromkeys(prompt_ids)))
        graphs: list[str] = []
        for prompt_id, rows in zip(dict.fromkeys(prompt_ids), found, strict=True):
            rows = [r for r in rows if transcoder_set is None or r["transcoder_set"] == transcoder_set]
            if not rows:
                raise ApiError(
                    NOT_FOUND,
                    f"prompt {prompt_id!r} has no complete graph"
                    + (f" under {transcoder_set!r}" if transcoder_set else ""),
                )
            graphs.extend(r["id"] for r in rows)
        return GraphComparison(graph_ids=graphs)

    @strawberry.field(
        description="Compare two prompt sets (split='correct' or aTag vs bTag), tested within strata "
        "(within: tags, dataset, none or a tag prefix; default tags for split, none for tags); rows with "
        "a Benjamini-Hochberg q below fdr (0.05), or every row with allRows."
    )
    async def compare_sets(
        self,
        info: Info,
        sides: SidesInput,
        limit: int = 25,
        min_graphs: int = 2,
        within: str | None = None,
        fdr: float = 0.05,
        all_rows: bool = False,
    ) -> SetComparison:
        ctx = _ctx(info)
        split, limit = _split(sides), page_size(limit, limits=ctx.limits, name="limit")
        options = {
            "within": within,
            "fdr": fdr,
            "all_rows": all_rows,
            "limit": limit,
            "min_graphs": min_graphs,
        }
        try:
            result = await ctx.cached(
                ("compare", split, *sorted(options.items())),
                lambda: compare(ctx.repo.driver, split, database=ctx.repo.database, **options),
            )
        except AnalysisError as exc:
            raise ApiError(BAD_USER_INPUT, str(exc)) from None
        a, b = split.names()
        return SetComparison(
            a=a, b=b, n_a=result.n_a, n_b=result.n_b, split=split, result=result, min_graphs=min_graphs
        )

    @strawberry.field(description="Ingest runs recorded in the database, newest first.")
    async def ingest_jobs(self, info: Info, limit: int = 20) -> list[IngestJob]:
        ctx = _ctx(info)
        limit = page_size(limit, limits=ctx.limits, name="limit")
        return [IngestJob.of(r) for r in await ctx.call(ctx.repo.ingest_jobs, job_id=None, limit=limit)]

    @strawberry.field
    async def ingest_job(self, info: Info, id: strawberry.ID) -> IngestJob:
        ctx = _ctx(info)
        rows = await ctx.call(ctx.repo.ingest_jobs, job_id=id, limit=1)
        if not rows:
            raise ApiError(NOT_FOUND, f"no ingest job {id!r}")
        return IngestJob.of(rows[0])

    @strawberry.field(description="A job started through this server (kept in memory until it restarts).")
    def job(self, info: Info, id: strawberry.ID) -> Job:
        state = _ctx(info).jobs.get(id)
        if state is None:
            raise ApiError(NOT_FOUND, f"no job {id!r} on this server")
        return Job.of(state)

    @strawberry.field
    def jobs(self, info: Info) -> list[Job]:
        return [Job.of(j) for j in _ctx(info).jobs.list()]

    @strawberry.field
    async def analysis_runs(self, info: Info) -> list[AnalysisRun]:
        rows = await _ctx(info).call(_ctx(info).repo.analysis_runs)
        return [_from_row(AnalysisRun, r, step="id") for r in rows]

    @strawberry.field(description="This server's limits, e.g. so a dashboard offers only what it allows.")
    def limits(self, info: Info) -> ServerLimits:
        return ServerLimits.of(_ctx(info).limits)

    @strawberry.field(
        description="Change features of a graph's prompt (or of `prompt`) and run the graph's model and "
        "transcoder set: the top next tokens before and after, and the logit changes. Attention is frozen "
        "as in the prompt unless freeAttention. Changes no data; limited in features, prompt tokens and "
        "model runs a minute; answers are cached."
    )
    async def intervene(
        self,
        info: Info,
        graph_id: strawberry.ID,
        features: list[FeatureChangeInput],
        prompt: str | None = None,
        free_attention: bool = False,
        top: int = 5,
    ) -> Intervention:
        return await intervene(
            _ctx(info),
            graph_id=graph_id,
            features=features,
            prompt=prompt,
            free_attention=free_attention,
            top=top,
        )


def _prompts(inputs: Sequence[PromptInput]) -> list[Any]:
    from circuitbase.engine.prompts import Prompt as EnginePrompt
    from circuitbase.engine.prompts import prompt_id

    out = []
    for i, p in enumerate(inputs):
        if not p.text.strip():
            raise ApiError(BAD_USER_INPUT, f"prompts[{i}]: text is empty")
        out.append(
            EnginePrompt(
                text=p.text,
                answer=p.answer,
                tags=tuple(p.tags),
                dataset=p.dataset,
                id=p.id or prompt_id(p.text, p.answer),
            )
        )
    return out


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Attribute and load prompts in the background; poll `job(id)`.")
    def start_ingest(self, info: Info, prompts: list[PromptInput], max_feature_nodes: int = 256) -> Job:
        ctx = _ctx(info)
        if not 1 <= len(prompts) <= 10_000:
            raise ApiError(BAD_USER_INPUT, f"give 1 to 10,000 prompts, got {len(prompts)}")
        if max_feature_nodes < 1:
            raise ApiError(BAD_USER_INPUT, f"maxFeatureNodes must be >= 1, got {max_feature_nodes}")
        try:
            return Job.of(ctx.jobs.start_ingest(_prompts(prompts), max_feature_nodes=max_feature_nodes))
        except JobError as exc:
            raise ApiError(BAD_USER_INPUT, str(exc)) from None

    @strawberry.mutation(
        description=f"Run analysis steps in the background (default all: {', '.join(STEPS)})."
    )
    def start_analysis(self, info: Info, steps: list[str] | None = None) -> Job:
        steps = list(steps or STEPS)
        unknown = [s for s in steps if s not in STEPS]
        if unknown or not steps:
            raise ApiError(
                BAD_USER_INPUT, f"unknown analysis steps {unknown}; choose from {', '.join(STEPS)}"
            )
        return Job.of(_ctx(info).jobs.start_analysis([s for s in STEPS if s in steps]))

    @strawberry.mutation(description="Set a feature's label.")
    async def label_feature(self, info: Info, key: strawberry.ID, label: str) -> Feature:
        ctx = _ctx(info)
        if not label.strip() or len(label) > 500:
            raise ApiError(BAD_USER_INPUT, "a label must have 1 to 500 characters")
        row = await ctx.call(ctx.repo.label_feature, key, label.strip(), source=f"api:{ctx.caller.name}")
        if row is None:
            raise ApiError(NOT_FOUND, f"no feature {key!r}")
        return Feature.of(row)

    @strawberry.mutation(description="Define (or redefine) a supernode: a named group of features.")
    async def define_supernode(
        self, info: Info, name: str, features: list[strawberry.ID], description: str = ""
    ) -> Supernode:
        ctx = _ctx(info)
        keys = list(dict.fromkeys(features))
        if not name.strip() or not keys or len(keys) > 1000:
            raise ApiError(BAD_USER_INPUT, "a supernode needs a non-empty name and 1 to 1,000 features")
        missing = await ctx.call(ctx.repo.missing_features, keys)
        if missing:
            raise ApiError(NOT_FOUND, f"no features {missing[:10]}")
        row = await ctx.call(
            ctx.repo.define_supernode,
            key=f"manual-{name.strip()}",
            name=name.strip(),
            description=description,
            features=keys,
        )
        return Supernode.of(row)
