// The circuitbase dashboard: one page, hash routes, every datum from the public GraphQL API at /graphql.
//   #/prompts?tag=&correct=&feature= prompts with filters; a row opens its graph
//   #/graph/<id>?minInfluence=&topK=&keep=&pinned=&clicked=
//                                    the attribution graph, layered: tokens at the bottom, logits on top, its
//                                    strongest features labelled in place; nodes shown down to a share of the
//                                    influence (keep), a clicked node's strongest paths to the logits, pinned
//                                    nodes grouped into a supernode, the view as circuit-tracer JSON
//                                    (subgraph.js); pick feature nodes, zero/scale/set them, see the top
//                                    tokens before and after
//   #/feature/<key>                  its top activating contexts, every graph and subcircuit it takes part
//                                    in, what drives it and what it drives
//   #/subcircuits                    recurring subcircuits by rank (total influence) as sentences, with their
//                                    causal support and the prompts they occur in with their causal drops;
//                                    #/subcircuit/<key> one of them, each graph with "Ablate in this graph"
//                                    (its features zeroed there: top tokens before and after, answer flips/holds)
//   #/compare?a=&b= | ?split=correct | ?aTag=&bTag=   two prompts or two prompt sets side by side (&fdr=, 0.05);
//                                    without sides: right vs wrong when graphs have correctness, else the two
//                                    largest tags
// Nodes read as words the API makes (GraphNode.text, Feature.description, Subcircuit.sentence).
// When a view has rendered, #view gets data-ready=<view name> (tests wait on it).
"use strict";

const PAGE = 50;
const SVG_NS = "http://www.w3.org/2000/svg";
const view = document.getElementById("view");
const tooltip = document.getElementById("tooltip");
const errorBox = document.getElementById("error");
let allPrompts = null; // every prompt, loaded once (for tag lists and comparison pickers)
let modelNames = null; // model names, loaded once: token keys are '<model>/<token id>'

// ---------------------------------------------------------------------------------------- helpers

/** The data of a GraphQL request (sent with `apiKey` when given); an error carries the errors' `codes`. */
async function gql(query, variables = {}, { apiKey = null } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  const body = await response.json();
  if (body.errors) {
    const error = new Error(body.errors.map((e) => e.message).join("; "));
    error.codes = body.errors.map((e) => e.extensions?.code);
    throw error;
  }
  return body.data;
}

/** An element with attributes (on* values become listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits));
const graphLink = (id, text) => el("a", { href: `#/graph/${encodeURIComponent(id)}` }, text ?? id);
const featureLink = (key, text) => el("a", { href: `#/feature/${encodeURIComponent(key)}` }, text ?? key);
const subcircuitLink = (s) => el("a", { href: `#/subcircuit/${encodeURIComponent(s.key)}`, "data-testid": "subcircuit-link" }, `#${s.rank}`);
const correctBadge = (c) =>
  el("span", { class: `badge ${c === true ? "ok" : c === false ? "bad" : ""}` }, c === true ? "correct" : c === false ? "incorrect" : "?");

function table(testid, headers, rows) {
  return el(
    "table",
    { "data-testid": testid, id: testid },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: name || "prompts", arg: rest.length ? decodeURIComponent(rest.join("/")) : null, params: new URLSearchParams(query) };
}

function go(name, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined));
  const hash = `#/${name}${query.toString() ? "?" + query : ""}`;
  if (location.hash === hash) route(); // the same page again (e.g. the Compare page's default sides): no hashchange
  else location.hash = hash;
}

async function loadPrompts(filter) {
  const query = `query($f: GraphFilterInput, $after: String, $n: Int!) {
    prompts(filter: $f, first: $n, after: $after) {
      edges { node { id text tags dataset answer graphs { id correct topToken } } }
      pageInfo { hasNextPage endCursor } } }`;
  const out = [];
  let after = null;
  for (;;) {
    const page = (await gql(query, { f: filter, after, n: PAGE })).prompts;
    out.push(...page.edges.map((e) => e.node));
    if (!page.pageInfo.hasNextPage) return out;
    after = page.pageInfo.endCursor;
  }
}

async function everyPrompt() {
  allPrompts = allPrompts ?? (await loadPrompts(null));
  return allPrompts;
}

async function models() {
  modelNames = modelNames ?? (await gql("{ models { name } }")).models.map((m) => m.name);
  return modelNames;
}

/** A node's words (`text`) linked to its feature page by `key`; a token key ('<model>/<id>') as plain text. */
function keyLink(key, names, text) {
  const isToken = names.some((m) => key.startsWith(`${m}/`) && /^\d+$/.test(key.slice(m.length + 1)));
  return isToken ? el("span", { class: "token-key", title: key }, text) : featureLink(key, text);
}

const tagsOf = (prompts) => [...new Set(prompts.flatMap((p) => p.tags))].sort();

function select(id, options, value, attrs = {}) {
  return el(
    "select",
    { id, "data-testid": id, ...attrs },
    options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)),
  );
}

// ---------------------------------------------------------------------------------------- prompts

async function showPrompts(params) {
  const tag = params.get("tag") ?? "";
  const correct = params.get("correct") ?? "";
  const feature = params.get("feature") ?? "";
  const filter = {};
  if (tag) filter.tag = tag;
  if (correct) filter.correct = correct === "true";
  if (feature) filter.feature = feature;
  const [every, prompts] = await Promise.all([everyPrompt(), loadPrompts(Object.keys(filter).length ? filter : null)]);
  const apply = () => go("prompts", { tag: $("#filter-tag").value, correct: $("#filter-correct").value, feature });
  const rows = prompts.map((p) => {
    const graph = p.graphs[0];
    return el(
      "tr",
      { "data-testid": "prompt-row", "data-prompt-id": p.id, class: "clickable", onclick: () => graph && go(`graph/${encodeURIComponent(graph.id)}`, {}) },
      el("td", {}, p.id),
      el("td", { class: "text" }, p.text),
      el("td", {}, p.tags.map((t) => el("span", { class: "tag" }, t))),
      el("td", {}, graph ? graph.topToken ?? "" : ""),
      el("td", {}, graph ? correctBadge(graph.correct) : ""),
      el("td", {}, p.graphs.map((g) => graphLink(g.id, "graph"))),
    );
  });
  return [
    el("h1", {}, "Prompts"),
    el(
      "div",
      { class: "controls" },
      el("label", {}, "tag ", select("filter-tag", [["", "any"], ...tagsOf(every).map((t) => [t, t])], tag, { onchange: apply })),
      el(
        "label",
        {},
        "prediction ",
        select("filter-correct", [["", "any"], ["true", "correct"], ["false", "incorrect"]], correct, { onchange: apply }),
      ),
      feature
        ? el("span", { id: "filter-feature", "data-testid": "filter-feature" }, "keeping feature ", featureLink(feature), " ", el("a", { href: "#", onclick: (e) => { e.preventDefault(); go("prompts", { tag, correct }); } }, "(any)"))
        : null,
      el("span", { id: "prompt-count", "data-testid": "prompt-count" }, `${prompts.length} prompts`),
    ),
    table("prompt-table", ["id", "text", "tags", "prediction", "", "graphs"], rows),
  ];
}

// ---------------------------------------------------------------------------------------- graph

const GRAPH_QUERY = `query($id: ID!, $minInfluence: Float!, $topK: Int!) { graph(id: $id) {
  id model transcoderSet promptId promptText topToken correct replacementScore completenessScore nNodes nEdges
  view(minInfluence: $minInfluence, topK: $topK) { compact }
  subcircuits { subcircuit { key rank support sentence } weight }
  similar(limit: 5) { graphId text score } } }`;

/** A view's compact object (GraphView.compact, parsed: a list per field) as the prompt's tokens and the node and
 *  edge objects the page reads: GraphNode's fields with `feature` ({ key, label, description, supernodes: the manual ones }, one
 *  object per feature; topContexts load when a tooltip shows them) and `token` ({ text }), and GraphEdge's. */
function unpackView(view) {
  const f = view.features;
  const supernodes = f.key.map(() => []);
  for (const s of view.supernodes) for (const i of s.features) supernodes[i].push({ key: s.key, name: s.name, algorithm: "manual" });
  const features = f.key.map((key, i) => ({ key, label: f.label[i], description: f.description[i], supernodes: supernodes[i] }));
  const v = view.nodes;
  const nodes = v.node.map((node, i) => ({
    node, kind: v.kind[i], layer: v.layer[i], position: v.position[i], featureIndex: v.featureIndex[i],
    influence: v.influence[i], activation: v.activation[i], probability: v.probability[i], text: v.text[i],
    feature: v.feature[i] === null ? null : features[v.feature[i]],
    token: v.kind[i] === "TOKEN" || v.kind[i] === "LOGIT" ? { text: v.token[i] } : null,
  }));
  const e = view.edges;
  return { tokens: view.tokens, nodes, edges: e.source.map((s, i) => ({ source: v.node[s], target: v.node[e.target[i]], weight: e.weight[i] })) };
}

/** Node positions: x by token position (a column per position, wide enough for its fullest cell), y by layer. */
function layout(nodes, nPositions) {
  const layers = nodes.map((n) => n.layer);
  const minLayer = Math.min(...layers);
  const maxLayer = Math.max(...layers);
  const cells = new Map();
  for (const n of nodes) {
    const key = `${n.layer}:${n.position}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const step = 16;
  const widths = Array.from({ length: nPositions }, () => 90);
  for (const [key, members] of cells) {
    const position = Number(key.split(":")[1]);
    widths[position] = Math.max(widths[position], members.length * step + 20);
  }
  const lefts = widths.map((_, i) => 60 + widths.slice(0, i).reduce((a, b) => a + b, 0));
  const rowHeight = 80;
  const height = (maxLayer - minLayer) * rowHeight + 160;
  const at = new Map();
  for (const [key, members] of cells) {
    const [layer, position] = key.split(":").map(Number);
    members.sort((a, b) => (a.kind > b.kind ? 1 : a.kind < b.kind ? -1 : (b.influence ?? 0) - (a.influence ?? 0)));
    const centre = lefts[position] + widths[position] / 2;
    members.forEach((n, i) => {
      at.set(n.node, { x: centre + (i - (members.length - 1) / 2) * step, y: height - 60 - (layer - minLayer) * rowHeight });
    });
  }
  return { at, width: lefts[nPositions - 1] + widths[nPositions - 1] + 20, height, lefts, widths, minLayer, maxLayer, rowHeight };
}

/** A node in words (the API's GraphNode.text: label or logit-lens tokens, layer and position). */
function nodeLabel(n) {
  return n.text ?? n.node;
}

const LABELLED_NODES = 12; // feature nodes labelled in place, strongest influence first
const LABEL_ROOM = 240; // px right of the last column, for the labels of its nodes
const shorten = (text, n = 48) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

const CONTEXTS_QUERY = `query($key: ID!) { feature(key: $key) { topContexts } }`;

function showTooltip(event, n) {
  tooltip.dataset.node = n.node;
  if (n.feature && !("topContexts" in n.feature)) {
    // the graph view leaves top contexts out: the first tooltip of a feature loads them
    n.feature.topContexts = null;
    gql(CONTEXTS_QUERY, { key: n.feature.key })
      .then((found) => { n.feature.topContexts = found.feature.topContexts; })
      .catch(() => {}) // none shown
      .then(() => { if (!tooltip.hidden && tooltip.dataset.node === n.node) showTooltip(event, n); });
  }
  const lines = [
    el("div", { class: "tt-title" }, `${n.kind.toLowerCase()}: ${nodeLabel(n)}`),
    n.feature?.label ? el("div", {}, `label “${n.feature.label}”`) : null,
    n.feature ? el("div", {}, `key ${n.feature.key}`) : null,
    el("div", {}, `layer ${n.layer}, position ${n.position}`),
    n.activation !== null ? el("div", {}, `activation ${fmt(n.activation)}`) : null,
    n.influence !== null ? el("div", {}, `influence ${fmt(n.influence)}`) : null,
    n.probability !== null ? el("div", {}, `probability ${fmt(n.probability)}`) : null,
    n.feature?.topContexts?.length
      ? el("div", { class: "tt-contexts" }, "top contexts:", el("ul", {}, n.feature.topContexts.slice(0, 5).map((c) => el("li", {}, c))))
      : null,
  ];
  tooltip.replaceChildren(...lines.filter(Boolean));
  tooltip.hidden = false;
  tooltip.style.left = `${event.pageX + 14}px`;
  tooltip.style.top = `${event.pageY + 14}px`;
}

/** The graph as SVG; clicking a node calls `onNode(node, event)`. */
function drawGraph(graph, onNode) {
  const nodes = graph.view.nodes;
  const nPositions = Math.max(graph.prompt?.tokens.length ?? 0, ...nodes.map((n) => n.position + 1));
  const box = layout(nodes, nPositions);
  const width = box.width + LABEL_ROOM;
  const svg = svgEl("svg", { id: "graph-svg", "data-testid": "graph-svg", width, height: box.height, viewBox: `0 0 ${width} ${box.height}` });
  for (let layer = box.minLayer; layer <= box.maxLayer; layer++) {
    const y = box.height - 60 - (layer - box.minLayer) * box.rowHeight;
    svg.append(svgEl("line", { class: "grid", x1: 50, x2: box.width - 10, y1: y, y2: y }));
    const name = layer === box.minLayer ? "tokens" : layer === box.maxLayer ? "logits" : `L${layer}`;
    const label = svgEl("text", { class: "axis", x: 4, y: y + 4 });
    label.textContent = name;
    svg.append(label);
  }
  (graph.prompt?.tokens ?? []).forEach((token, i) => {
    const label = svgEl("text", { class: "token", x: box.lefts[i] + box.widths[i] / 2, y: box.height - 30, "text-anchor": "middle" });
    label.textContent = JSON.stringify(token);
    svg.append(label);
  });
  for (const n of nodes.filter((m) => m.kind === "LOGIT")) {
    const p = box.at.get(n.node);
    const label = svgEl("text", { class: "logit-label", x: p.x, y: p.y - 10, transform: `rotate(-45 ${p.x} ${p.y - 10})` });
    label.textContent = JSON.stringify(n.token?.text ?? "");
    svg.append(label);
  }
  const maxAbs = Math.max(1e-12, ...graph.view.edges.map((e) => Math.abs(e.weight)));
  const edges = svgEl("g", { class: "edges" });
  for (const e of graph.view.edges) {
    const a = box.at.get(e.source);
    const b = box.at.get(e.target);
    if (!a || !b) continue;
    const line = svgEl("line", {
      class: `edge ${e.weight >= 0 ? "pos" : "neg"}`,
      "data-testid": "graph-edge",
      "data-weight": e.weight,
      "data-source": e.source,
      "data-target": e.target,
      x1: a.x, y1: a.y, x2: b.x, y2: b.y,
      "stroke-width": (0.4 + 4.6 * Math.abs(e.weight) / maxAbs).toFixed(2),
    });
    edges.append(line);
  }
  svg.append(edges);
  const maxInfluence = Math.max(1e-12, ...nodes.map((n) => Math.abs(n.influence ?? 0)));
  for (const n of nodes) {
    const p = box.at.get(n.node);
    const circle = svgEl("circle", {
      class: `node ${n.kind.toLowerCase()}`,
      "data-testid": "graph-node",
      "data-node": n.node,
      "data-kind": n.kind,
      cx: p.x, cy: p.y,
      r: (n.kind === "FEATURE" ? 3.5 + 3.5 * Math.abs(n.influence ?? 0) / maxInfluence : 5).toFixed(2),
      onmouseenter: (event) => showTooltip(event, n),
      onmouseleave: () => { tooltip.hidden = true; },
      onclick: (event) => onNode(n, event),
    });
    svg.append(circle);
  }
  svg.append(nodeLabels(nodes, box.at));
  return svg;
}

/** Labels in place for the LABELLED_NODES feature nodes of largest influence: their feature in words. */
function nodeLabels(nodes, at) {
  const group = svgEl("g", { class: "node-labels" });
  const strongest = nodes
    .filter((n) => n.kind === "FEATURE" && n.feature)
    .sort((a, b) => Math.abs(b.influence ?? 0) - Math.abs(a.influence ?? 0))
    .slice(0, LABELLED_NODES);
  for (const n of strongest) {
    const p = at.get(n.node);
    const label = svgEl("text", { class: "node-label", "data-testid": "node-label", "data-node": n.node, x: p.x + 7, y: p.y - 7, transform: `rotate(-30 ${p.x + 7} ${p.y - 7})` });
    label.textContent = shorten(n.feature.description);
    group.append(label);
  }
  return group;
}

/** The graph page: the drawing, its influence filter, the selected node's paths, the subgraph panel
 *  (subgraph.js) and the intervention panel; keep, pinned and clicked live in the URL without reloading. */
async function showGraph(id, params) {
  const ticket = routed;
  const minInfluence = Number(params.get("minInfluence") ?? 0);
  const topK = Number(params.get("topK") ?? 300);
  const graph = (await gql(GRAPH_QUERY, { id, minInfluence, topK })).graph;
  graph.view = unpackView(JSON.parse(graph.view.compact));
  graph.prompt = { tokens: graph.view.tokens };
  const byId = new Map(graph.view.nodes.map((n) => [n.node, n]));
  const state = {
    keep: Math.min(1, Math.max(0, Number(params.get("keep") ?? 1))),
    pinned: (params.get("pinned") ?? "").split(",").filter((p) => byId.has(p)),
    clicked: byId.has(params.get("clicked")) ? params.get("clicked") : null,
  };
  const where = () => ({
    minInfluence: params.get("minInfluence"),
    topK: params.get("topK"),
    keep: state.keep < 1 ? state.keep : null,
    pinned: state.pinned.join(","),
    clicked: state.clicked,
  });
  const page = {
    graph, state, byId, minInfluence, topK,
    shown: () => shownIds(graph.view.nodes, state.keep, state.pinned),
    pin: (node) => {
      state.pinned = node === null ? [] : state.pinned.includes(node) ? state.pinned.filter((p) => p !== node) : [...state.pinned, node];
      refresh();
    },
  };
  const interventions = interventionPanel(graph);
  const subgraph = subgraphPanel(page);
  const selection = selectionPanel(page);
  const svg = drawGraph(graph, (n, event) => {
    if (interventions.picking() && n.feature) interventions.toggle(n, event.currentTarget);
    else if (event.shiftKey || event.ctrlKey || event.metaKey) page.pin(n.node);
    else {
      state.clicked = state.clicked === n.node ? null : n.node;
      refresh();
    }
  });
  const counts = el("span", { id: "shown-counts", "data-testid": "shown-counts" });
  const keepText = el("span", { id: "influence-keep-text", class: "num-text" });
  const keepInput = el("input", { id: "influence-keep", "data-testid": "influence-keep", type: "range", min: 0, max: 100, step: 1, value: Math.round(state.keep * 100) });
  keepInput.addEventListener("input", () => {
    state.keep = Number(keepInput.value) / 100;
    refresh();
  });

  function refresh() {
    const shown = page.shown();
    const edges = graph.view.edges.filter((e) => shown.has(e.source) && shown.has(e.target));
    const traced = state.clicked && shown.has(state.clicked);
    const paths = traced ? strongestPaths(state.clicked, graph.view.nodes.filter((n) => shown.has(n.node)), edges) : [];
    const pathEdges = new Set(paths.flatMap((p) => p.edges.map((e) => `${e.source}>${e.target}`)));
    const pathNodes = new Set(paths.flatMap((p) => p.nodes));
    for (const circle of svg.querySelectorAll("circle.node")) {
      const node = circle.dataset.node;
      circle.toggleAttribute("hidden", !shown.has(node));
      circle.classList.toggle("pinned", state.pinned.includes(node));
      circle.classList.toggle("selected", node === state.clicked);
      circle.classList.toggle("on-path", pathNodes.has(node));
    }
    for (const line of svg.querySelectorAll("line.edge")) {
      line.toggleAttribute("hidden", !(shown.has(line.dataset.source) && shown.has(line.dataset.target)));
      line.classList.toggle("on-path", pathEdges.has(`${line.dataset.source}>${line.dataset.target}`));
    }
    for (const label of svg.querySelectorAll("text.node-label")) label.toggleAttribute("hidden", !shown.has(label.dataset.node));
    svg.classList.toggle("tracing", paths.length > 0);
    counts.textContent = `${shown.size} nodes, ${edges.length} edges`;
    keepText.textContent = `${Math.round(state.keep * 100)}%`;
    selection.render(paths);
    subgraph.render();
    const query = new URLSearchParams(Object.entries(where()).filter(([, v]) => v !== "" && v !== null && v !== undefined));
    replaceUrl(ticket, `#/graph/${encodeURIComponent(id)}${query.toString() ? "?" + query : ""}`);
  }

  const apply = () => go(`graph/${encodeURIComponent(id)}`, { ...where(), minInfluence: $("#min-influence").value, topK: $("#top-k").value });
  const content = [
    el("h1", { id: "graph-title", "data-testid": "graph-title" }, graph.promptText),
    el(
      "p",
      { class: "meta" },
      `${graph.id} · ${graph.model} / ${graph.transcoderSet} · predicts ${JSON.stringify(graph.topToken ?? "")} `,
      correctBadge(graph.correct),
      ` · replacement ${fmt(graph.replacementScore)} · completeness ${fmt(graph.completenessScore)} · `,
      `${graph.nNodes} nodes, ${graph.nEdges} edges stored; showing `,
      counts,
    ),
    el(
      "div",
      { class: "controls" },
      el("label", {}, "min influence ", el("input", { id: "min-influence", "data-testid": "min-influence", type: "number", step: "any", value: minInfluence })),
      el("label", {}, "top edges ", el("input", { id: "top-k", "data-testid": "top-k", type: "number", min: 1, value: topK })),
      el("button", { id: "apply-view", "data-testid": "apply-view", onclick: apply }, "apply"),
      el("label", { title: "Feature and error nodes, strongest first, until they carry this share of the influence; tokens, logits and pinned nodes always show." }, "nodes carrying ", keepInput, " ", keepText, " of the influence"),
      el("span", { class: "legend" }, el("span", { class: "swatch pos" }), "positive ", el("span", { class: "swatch neg" }), "negative"),
    ),
    el("p", { class: "muted hint" }, "Click a node to trace its strongest paths to the logits; shift-click to pin it to the subgraph."),
    el("div", { class: "graph-scroll" }, svg),
    el("div", { class: "columns" }, selection.element, subgraph.element),
    interventions.element,
    el(
      "div",
      { class: "columns" },
      el(
        "section",
        {},
        el("h2", {}, "Subcircuits here"),
        graph.subcircuits.length
          ? el("ul", { id: "graph-subcircuits" }, graph.subcircuits.map((s) => el("li", { "data-testid": "graph-subcircuit" }, s.subcircuit ? subcircuitLink(s.subcircuit) : "", ` ${s.subcircuit?.sentence ?? ""} (support ${s.subcircuit?.support}, weight ${fmt(s.weight)})`)))
          : el("p", { class: "muted" }, "none"),
      ),
      el(
        "section",
        {},
        el("h2", {}, "Similar graphs"),
        graph.similar.length
          ? el("ul", {}, graph.similar.map((s) => el("li", {}, graphLink(s.graphId, s.text), ` (${fmt(s.score, 2)})`)))
          : el("p", { class: "muted" }, "none"),
      ),
    ),
  ];
  refresh();
  return content;
}

// ---------------------------------------------------------------------------------------- interventions

const INTERVENE_QUERY = `query($id: ID!, $features: [FeatureChangeInput!]!, $free: Boolean!, $top: Int!) {
  intervene(graphId: $id, features: $features, freeAttention: $free, top: $top) {
    changes { layer position feature activationBefore activationAfter }
    before { tokenId text probability } after { tokenId text probability }
    logitChanges { tokenId text before after change } } }`;

/** The graph page's intervention panel: with "pick features" ticked, clicking a feature node adds it (or
 *  takes it out); each pick is zeroed, scaled or set; "run" shows the top tokens before and after. */
function interventionPanel(graph) {
  const picks = new Map(); // node id -> { n, circle }
  const tokens = graph.prompt?.tokens ?? [];
  const list = el("tbody", { id: "intervene-picks" });
  const result = el("div", { id: "intervene-result", "data-testid": "intervene-result" });
  const pickMode = el("input", { id: "pick-mode", "data-testid": "pick-mode", type: "checkbox" });
  const runButton = el("button", { id: "intervene-run", "data-testid": "intervene-run", disabled: true, onclick: () => run() }, "run");

  function pickRow(n) {
    const op = select(`op-${n.node}`, [["zero", "zero"], ["scale", "scale ×"], ["set", "set to"]], "zero", { class: "pick-op", "data-testid": "pick-op" });
    const amount = el("input", { class: "pick-amount", "data-testid": "pick-amount", type: "number", step: "any", value: 2, disabled: true });
    op.addEventListener("change", () => { amount.disabled = op.value === "zero"; });
    const token = tokens[n.position] === undefined ? "" : ` ${JSON.stringify(tokens[n.position])}`;
    return el(
      "tr",
      { "data-testid": "intervene-pick", "data-node": n.node },
      el("td", {}, featureLink(n.feature.key, n.feature.description)),
      el("td", {}, `L${n.layer} @${n.position}${token}`),
      el("td", { class: "num" }, fmt(n.activation)),
      el("td", {}, op, " ", amount),
      el("td", {}, el("button", { class: "link", title: "take out", onclick: () => toggle(n, picks.get(n.node).circle) }, "×")),
    );
  }

  function toggle(n, circle) {
    if (picks.has(n.node)) picks.delete(n.node);
    else picks.set(n.node, { n, circle, row: pickRow(n) });
    circle.classList.toggle("picked", picks.has(n.node));
    list.replaceChildren(...[...picks.values()].map((p) => p.row));
    runButton.disabled = picks.size === 0;
  }

  function run() {
    const features = [...picks.values()].map(({ n, row }) => {
      const op = row.querySelector(".pick-op").value;
      const amount = Number(row.querySelector(".pick-amount").value);
      return { layer: n.layer, position: n.position, feature: n.featureIndex, ...(op === "scale" ? { scale: amount } : op === "set" ? { value: amount } : {}) };
    });
    const top = Number($("#intervene-top").value);
    return runIntervention(result, { graphId: graph.id, features, free: $("#intervene-attention").value === "free", top });
  }

  const element = el(
    "section",
    { id: "intervene-panel", "data-testid": "intervene-panel", class: "card" },
    el("h2", {}, "Intervene"),
    el("p", { class: "muted" }, "Tick “pick features” and click feature nodes in the graph; zero (ablate), scale or set each, then run: the model reruns this prompt with those features changed."),
    el(
      "div",
      { class: "controls" },
      el("label", {}, pickMode, " pick features"),
      el("label", {}, "attention ", select("intervene-attention", [["frozen", "frozen"], ["free", "free"]], "frozen")),
      el("label", {}, "top ", el("input", { id: "intervene-top", "data-testid": "intervene-top", type: "number", min: 1, max: 20, value: 5 })),
      runButton,
    ),
    el("table", { id: "intervene-pick-table" }, el("thead", {}, el("tr", {}, ["feature", "where", "activation", "change", ""].map((h) => el("th", {}, h)))), list),
    result,
  );
  return { element, picking: () => pickMode.checked, toggle };
}

/** Run an intervention (the `intervene` query: graph `graphId`, `features` as FeatureChangeInput) and show its
 *  answer in `result`, whose data-state goes running → done or error; ids in it start with `prefix`. */
async function runIntervention(result, { graphId, features, free, top }, prefix = "intervene") {
  result.dataset.state = "running";
  result.replaceChildren(el("p", { class: "muted" }, "running the model…"));
  try {
    const out = (await gql(INTERVENE_QUERY, { id: graphId, features, free, top })).intervene;
    result.replaceChildren(...interventionResult(out, prefix));
    result.dataset.state = "done";
  } catch (error) {
    result.replaceChildren(el("p", { id: `${prefix}-error`, "data-testid": "intervene-error", class: "error" }, error.message));
    result.dataset.state = "error";
  }
}

function topTable(testid, side, title, rows) {
  return el(
    "section",
    { class: "side", "data-side": side },
    el("h3", {}, title),
    table(
      testid,
      ["#", "token", "probability"],
      rows.map((t, i) =>
        el("tr", { "data-testid": "intervene-top-row", "data-token-id": t.tokenId, "data-prob": t.probability }, el("td", { class: "num" }, i + 1), el("td", {}, JSON.stringify(t.text)), el("td", { class: "num" }, fmt(t.probability, 4))),
      ),
    ),
  );
}

/** Whether the answer (the top token) changed: 'answer flips: "a" → "b"' or 'answer holds: "a"'. */
function answerVerdict(out) {
  const [before, after] = [out.before[0], out.after[0]];
  const flips = before.tokenId !== after.tokenId;
  return el(
    "p",
    { class: `verdict ${flips ? "flips" : "holds"}`, "data-testid": "answer-verdict", "data-flips": String(flips) },
    flips ? `answer flips: ${JSON.stringify(before.text)} → ${JSON.stringify(after.text)}` : `answer holds: ${JSON.stringify(before.text)}`,
  );
}

function interventionResult(out, prefix) {
  const changes = out.logitChanges.map((c) =>
    el(
      "tr",
      { "data-testid": "intervene-change", "data-token-id": c.tokenId, "data-change": c.change },
      el("td", {}, JSON.stringify(c.text)),
      el("td", { class: "num" }, fmt(c.before, 4)),
      el("td", { class: "num" }, fmt(c.after, 4)),
      el("td", { class: `num ${c.change >= 0 ? "pos" : "neg"}` }, `${c.change >= 0 ? "+" : ""}${fmt(c.change, 4)}`),
    ),
  );
  const activations = out.changes.map((c) => `L${c.layer} @${c.position} #${c.feature}: ${fmt(c.activationBefore)} → ${fmt(c.activationAfter)}`);
  return [
    answerVerdict(out),
    el("div", { class: "columns" }, topTable(`${prefix}-before`, "before", "Before", out.before), topTable(`${prefix}-after`, "after", "After", out.after)),
    el("h3", {}, "Logit changes"),
    table(`${prefix}-changes`, ["token", "before", "after", "change"], changes),
    el("p", { class: "muted" }, `activations: ${activations.join("; ")}`),
  ];
}

// ---------------------------------------------------------------------------------------- feature

const FEATURE_GRAPHS = 100; // graphs listed on a feature page; the prompts page lists every one

const FEATURE_QUERY = `query($key: ID!) { feature(key: $key) {
  key transcoderSet layer index label description density topContexts topActivations promotedTokens community pagerank
  graphs(limit: ${FEATURE_GRAPHS}) { graphId promptId text correct influence activation positions }
  subcircuits(limit: 100) { key rank support sentence }
  neighbours(limit: 50) { direction key kind graphs sum sumAbs text }
  supernodes { key name } } }`;

/** A top activating context ('… «token» …', as labelling renders it) with its marked token highlighted. */
function contextItem(text, activation) {
  const [before, rest = ""] = text.split("«");
  const [marked, after = ""] = rest.split("»");
  return el(
    "li",
    { "data-testid": "feature-context" },
    before,
    rest ? el("mark", {}, marked) : null,
    after,
    activation !== undefined && activation !== null ? el("span", { class: "muted" }, ` (activation ${fmt(activation)})`) : null,
  );
}

function neighbourTable(testid, neighbours) {
  const rows = neighbours.map((n) =>
    el(
      "tr",
      { "data-testid": "neighbour-row", "data-key": n.key },
      el("td", {}, n.kind === "Feature" ? featureLink(n.key, n.text) : el("span", { class: "token-key", title: n.key }, n.text)),
      el("td", { class: "num" }, n.graphs),
      el("td", { class: `num ${n.sum >= 0 ? "pos" : "neg"}` }, fmt(n.sum)),
    ),
  );
  return rows.length ? table(testid, ["node", "graphs", "summed weight"], rows) : el("p", { id: testid, class: "muted" }, "none");
}

async function showFeature(key) {
  const f = (await gql(FEATURE_QUERY, { key })).feature;
  const rows = f.graphs.map((g) =>
    el(
      "tr",
      { "data-testid": "feature-graph-row", "data-graph-id": g.graphId },
      el("td", {}, graphLink(g.graphId, g.promptId)),
      el("td", { class: "text" }, g.text),
      el("td", {}, correctBadge(g.correct)),
      el("td", { class: "num" }, fmt(g.influence)),
      el("td", { class: "num" }, fmt(g.activation)),
      el("td", { class: "num" }, g.positions),
    ),
  );
  const drives = f.neighbours.filter((n) => n.direction === "in");
  const driven = f.neighbours.filter((n) => n.direction === "out");
  return [
    el("h1", {}, el("span", { id: "feature-description", "data-testid": "feature-description" }, f.description), " ", el("code", { id: "feature-key", "data-testid": "feature-key" }, f.key)),
    el(
      "p",
      { class: "meta" },
      `${f.label ? `“${f.label}” · ` : ""}${f.transcoderSet}, layer ${f.layer}, index ${f.index} · density ${fmt(f.density)} · community ${f.community ?? "–"} · pagerank ${fmt(f.pagerank)}`,
      f.supernodes.length ? ` · supernodes: ${f.supernodes.map((s) => s.name ?? s.key).join(", ")}` : "",
    ),
    el(
      "section",
      {},
      el("h2", {}, "Top activating contexts"),
      f.topContexts?.length
        ? el("ul", { id: "feature-contexts", "data-testid": "feature-contexts" }, f.topContexts.map((c, i) => contextItem(c, f.topActivations?.[i])))
        : el("p", { class: "muted", id: "feature-contexts" }, "None stored: label the transcoder set (its labels file) and ingest again."),
    ),
    el("h2", {}, `Graphs it takes part in (${f.graphs.length < FEATURE_GRAPHS ? f.graphs.length : `the ${FEATURE_GRAPHS} where it is most influential`})`),
    el("p", {}, el("a", { id: "feature-prompts", href: `#/prompts?${new URLSearchParams({ feature: f.key })}` }, "every prompt whose graph keeps it")),
    table("feature-graphs", ["prompt", "text", "", "influence", "activation", "positions"], rows),
    el("h2", {}, `Subcircuits it takes part in (${f.subcircuits.length})`),
    f.subcircuits.length
      ? el("ul", { id: "feature-subcircuits", "data-testid": "feature-subcircuits" }, f.subcircuits.map((s) => el("li", { "data-testid": "feature-subcircuit", "data-key": s.key }, subcircuitLink(s), ` ${s.sentence} (support ${s.support})`)))
      : el("p", { class: "muted", id: "feature-subcircuits" }, "none (run `circuitbase analyze --step subcircuits`)"),
    el(
      "div",
      { class: "columns" },
      el("section", {}, el("h2", {}, "What drives it"), neighbourTable("neighbours-in", drives)),
      el("section", {}, el("h2", {}, "What it drives"), neighbourTable("neighbours-out", driven)),
    ),
  ];
}

// ---------------------------------------------------------------------------------------- subcircuits

const OCCURRENCE_FIELDS = "graphId weight causalDrop causalLogitDrop graph { promptId promptText correct }";

const SUBCIRCUIT_FIELDS = (occurrence) => `key rank support supportFraction influence weight sentence causalSupport causalOccurrences
  edges { source target sourceText targetText }
  occurrences(limit: 25) { ${occurrence} }`;

const SUBCIRCUITS_QUERY = `query($after: String) { subcircuits(first: 20, after: $after) {
  edges { node { ${SUBCIRCUIT_FIELDS(OCCURRENCE_FIELDS)} } } pageInfo { hasNextPage endCursor } } }`;

const SUBCIRCUIT_QUERY = `query($key: ID!) {
  subcircuit(key: $key) { ${SUBCIRCUIT_FIELDS(`${OCCURRENCE_FIELDS} memberNodes { layer position featureIndex }`)} }
  analysisRuns { step params } limits { maxInterventionFeatures } }`;

const CAUSAL_DROP_HELP =
  "Causal drop: the share of the answer's lead (its logit minus the best other logit) taken away when the subcircuit's " +
  "features are ablated in this graph on the real model; 1: the answer ties, above 1: the answer changes.";

/** Causal support in words: 'causal support 0.92 over 12 occurrences', or 'causal support not measured'. */
function causalSupportText(s) {
  if (s.causalSupport === null) return "causal support not measured";
  return `causal support ${s.causalSupport.toFixed(2)} over ${s.causalOccurrences} occurrence${s.causalOccurrences === 1 ? "" : "s"}`;
}

/** An occurrence's causal drop in words: 'causal drop 1.35 (2.10 logits)', or 'causal drop not measured'. */
function causalDropText(o) {
  if (o.causalLogitDrop === null) return "causal drop not measured";
  return `causal drop ${o.causalDrop === null ? "–" : o.causalDrop.toFixed(2)} (${o.causalLogitDrop.toFixed(2)} logits)`;
}

/** "Ablate in this graph": zero the occurrence's member nodes (what the causal step ablates there) in its graph's
 *  prompt, attention as that step ran (`free`), and show the top tokens before and after in `result`. Disabled,
 *  saying why, when the occurrence has more member nodes than the server changes at once (`maxFeatures`). */
function ablateButton(o, index, { free, maxFeatures }) {
  const result = el("div", { class: "ablate-result", "data-testid": "ablate-result" });
  const features = o.memberNodes.map((n) => ({ layer: n.layer, position: n.position, feature: n.featureIndex }));
  const where = o.memberNodes.map((n) => `L${n.layer} @${n.position} #${n.featureIndex}`).join(", ");
  const tooMany = features.length > maxFeatures;
  const button = el(
    "button",
    {
      "data-testid": "ablate",
      disabled: tooMany,
      title: tooMany
        ? `${features.length} feature nodes here; this server changes at most ${maxFeatures} at once`
        : `zero ${where} (attention ${free ? "free" : "frozen"}, as the causal step ran)`,
      onclick: () => runIntervention(result, { graphId: o.graphId, features, free, top: 5 }, `ablate-${index}`),
    },
    "Ablate in this graph",
  );
  return [" ", button, result];
}

/** A subcircuit as a card: rank, support and causal support, its sentence, its edges in words and the graphs it
 *  occurs in with their causal drops; with `ablation` ({ free, maxFeatures }: the causal step's attention, the
 *  server's limit), each graph gets an "Ablate in this graph" button. */
function subcircuitCard(s, names, ablation = null) {
  return el(
    "article",
    { class: "card", "data-testid": "subcircuit", "data-key": s.key, "data-support": s.support, "data-rank": s.rank },
    el(
      "h3",
      {},
      `#${s.rank} · support ${s.support} (${(100 * s.supportFraction).toFixed(0)}% of graphs) · influence ${fmt(s.influence)} · `,
      el("span", { "data-testid": "causal-support", "data-value": s.causalSupport ?? "" }, causalSupportText(s)),
    ),
    el("p", { class: "sentence", "data-testid": "subcircuit-sentence" }, s.sentence),
    el(
      "details",
      { open: s.edges.length <= 6 },
      el("summary", {}, `${s.edges.length} edges`),
      el("ul", { class: "edges-list" }, s.edges.map((e) => el("li", { "data-testid": "subcircuit-edge" }, keyLink(e.source, names, e.sourceText), " → ", keyLink(e.target, names, e.targetText)))),
    ),
    el(
      "ul",
      { class: "occurrences" },
      s.occurrences.map((o, i) =>
        el(
          "li",
          { "data-testid": "occurrence", "data-graph-id": o.graphId },
          graphLink(o.graphId, o.graph?.promptText ?? o.graphId),
          " ",
          correctBadge(o.graph?.correct),
          ` weight ${fmt(o.weight)} · `,
          el("span", { class: "causal-drop", "data-testid": "causal-drop", "data-value": o.causalDrop ?? "", title: CAUSAL_DROP_HELP }, causalDropText(o)),
          ablation && o.memberNodes.length ? ablateButton(o, i, ablation) : null,
        ),
      ),
    ),
  );
}

async function showSubcircuits() {
  const [page, names] = await Promise.all([gql(SUBCIRCUITS_QUERY).then((d) => d.subcircuits), models()]);
  const cards = page.edges.map(({ node: s }) => subcircuitCard(s, names));
  return [
    el("h1", {}, "Recurring subcircuits"),
    cards.length ? el("div", { id: "subcircuit-list", "data-testid": "subcircuit-list" }, cards) : el("p", { class: "muted" }, "No subcircuits mined yet: run `circuitbase analyze`."),
    page.pageInfo.hasNextPage ? el("p", { class: "muted" }, "showing the 20 best ranked") : null,
  ];
}

/** Whether the causal step let attention respond (its recorded freeze_attention; free when it has not run). */
function causalAttentionFree(runs) {
  const params = runs.find((r) => r.step === "causal")?.params;
  return !(params && JSON.parse(params).freeze_attention);
}

async function showSubcircuit(key) {
  const [data, names] = await Promise.all([gql(SUBCIRCUIT_QUERY, { key }), models()]);
  const free = causalAttentionFree(data.analysisRuns);
  return [
    el("h1", {}, `Subcircuit #${data.subcircuit.rank}`),
    el("p", {}, el("a", { href: "#/subcircuits" }, "all recurring subcircuits")),
    el(
      "p",
      { class: "muted", id: "ablate-help" },
      `“Ablate in this graph” zeroes every kept instance of this subcircuit's features in that graph, as the causal step did (attention ${free ? "free" : "frozen"}), and reruns the model on its prompt. `,
      CAUSAL_DROP_HELP,
    ),
    subcircuitCard(data.subcircuit, names, { free, maxFeatures: data.limits.maxInterventionFeatures }),
  ];
}

// ---------------------------------------------------------------------------------------- compare

const COMPARE_PROMPTS_QUERY = `query($ids: [ID!]!) { comparePrompts(promptIds: $ids) {
  graphIds graphs { id promptId promptText correct topToken }
  features(limit: 100) { key graphs shared uniqueTo influence feature { description } }
  subcircuits(limit: 50) { key shared weight subcircuit { rank support sentence } } } }`;

const COMPARE_SETS_QUERY = `query($sides: SidesInput!, $fdr: Float!) { compareSets(sides: $sides, limit: 50, fdr: $fdr) {
  a b nA nB within fdr featuresTested featuresPassing fullyConfounded
  strata { name nA nB oneSided } confoundedTags { name nA nB }
  features { key kA nA kB nB pA pB diff mhDiff testZ qValue feature { description } }
  uniqueFeatures(limit: 50) { key side graphsA graphsB meanInfluence feature { description } } } }`;

const SIDE_GRAPHS_QUERY = `query($f: GraphFilterInput!) { graphs(filter: $f, first: ${PAGE}) {
  totalCount edges { node { id promptId promptText topToken correct } } } }`;

/** The sides the page opens on without any: right vs wrong when graphs of both kinds exist, else the two
 *  tags carried by the most prompts (null when there are fewer than two). */
function defaultSides(prompts) {
  const graphs = prompts.flatMap((p) => p.graphs);
  if (graphs.some((g) => g.correct === true) && graphs.some((g) => g.correct === false)) return { split: "correct" };
  const counts = new Map();
  for (const t of prompts.flatMap((p) => p.tags)) counts.set(t, (counts.get(t) ?? 0) + 1);
  const largest = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([t]) => t);
  return largest.length >= 2 ? { aTag: largest[0], bTag: largest[1] } : null;
}

function compareForm(params, prompts) {
  const ids = prompts.map((p) => [p.id, `${p.id}: ${p.text.slice(0, 40)}`]);
  const tags = tagsOf(prompts).map((t) => [t, t]);
  const mode = params.get("split") || params.get("aTag") ? "sets" : "prompts";
  const run = () => {
    if ($("#compare-mode").value === "prompts") go("compare", { a: $("#compare-a").value, b: $("#compare-b").value });
    else if ($("#compare-split").value === "correct") go("compare", { split: "correct" });
    else go("compare", { aTag: $("#compare-a-tag").value, bTag: $("#compare-b-tag").value });
  };
  const pickPrompts = el("span", { class: "group", id: "pick-prompts" }, "A ", select("compare-a", ids, params.get("a") ?? ids[0]?.[0]), " B ", select("compare-b", ids, params.get("b") ?? ids[1]?.[0]));
  const pickSets = el(
    "span",
    { class: "group", id: "pick-sets" },
    select("compare-split", [["correct", "correct vs incorrect"], ["tags", "tag vs tag"]], params.get("aTag") ? "tags" : "correct"),
    " A ", select("compare-a-tag", tags, params.get("aTag") ?? tags[0]?.[0]),
    " B ", select("compare-b-tag", tags, params.get("bTag") ?? tags[1]?.[0]),
  );
  const showPicks = (chosen) => {
    pickPrompts.hidden = chosen !== "prompts";
    pickSets.hidden = chosen !== "sets";
  };
  showPicks(mode); // on the elements themselves: a page dropped before it was shown has none in the document
  return el(
    "div",
    { class: "controls" },
    select("compare-mode", [["prompts", "two prompts"], ["sets", "two prompt sets"]], mode, { onchange: (event) => showPicks(event.target.value) }),
    pickPrompts,
    pickSets,
    el("button", { id: "compare-run", "data-testid": "compare-run", onclick: run }, "compare"),
  );
}

function presenceClass(present) {
  if (present.every(Boolean)) return "shared";
  return present[0] ? "only-a" : "only-b";
}

async function comparePrompts(a, b) {
  const out = (await gql(COMPARE_PROMPTS_QUERY, { ids: [a, b] })).comparePrompts;
  const [ga, gb] = out.graphs;
  const rows = out.features.map((f) => {
    const cls = presenceClass(f.influence.map((x) => x !== null));
    return el(
      "tr",
      { class: cls, "data-testid": "compare-feature", "data-key": f.key, "data-shared": String(f.shared) },
      el("td", {}, featureLink(f.key, f.feature?.description)),
      el("td", { class: "num" }, fmt(f.influence[0])),
      el("td", { class: "num" }, fmt(f.influence[1])),
      el("td", {}, el("span", { class: `badge ${cls}` }, cls === "shared" ? "shared" : cls === "only-a" ? "only A" : "only B")),
    );
  });
  const shared = out.features.filter((f) => f.shared).length;
  return [
    el(
      "div",
      { class: "columns" },
      [ga, gb].map((g, i) =>
        el("section", { class: `side side-${i ? "b" : "a"}` }, el("h2", {}, i ? "B" : "A", " ", g ? graphLink(g.id, g.promptText) : "(no graph)"), g ? correctBadge(g.correct) : null),
      ),
    ),
    el("p", { id: "compare-summary", "data-testid": "compare-summary" }, `${shared} shared features, ${out.features.length - shared} in one prompt only (of the ${out.features.length} listed)`),
    table("compare-features", ["feature", "influence A", "influence B", ""], rows),
    out.subcircuits.length
      ? el("section", {}, el("h2", {}, "Subcircuits"), el("ul", {}, out.subcircuits.map((s) => el("li", { class: presenceClass(s.weight.map((w) => w !== null)) }, `#${s.subcircuit?.rank} ${s.subcircuit?.sentence ?? ""} (support ${s.subcircuit?.support}): weight A ${fmt(s.weight[0])}, B ${fmt(s.weight[1])}`))))
      : null,
  ];
}

function strataNotes(out) {
  const oneSided = out.strata.filter((s) => s.oneSided).map((s) => `${s.name} (A ${s.nA}, B ${s.nB})`);
  const notes = [];
  if (out.fullyConfounded) notes.push("No stratum holds both sides: nothing can be compared within a task.");
  if (oneSided.length) notes.push(`Strata with one side only, left out of the test: ${oneSided.join(", ")}.`);
  if (out.confoundedTags.length) notes.push(`Split confounded with tags (one side only): ${out.confoundedTags.map((t) => `${t.name} (A ${t.nA}, B ${t.nB})`).join(", ")}.`);
  return notes.map((n) => el("p", { class: "muted", "data-testid": "compare-note" }, n));
}

/** The graph filters of sides A and B (as the prompts page takes them). */
function sideFilters(sides) {
  if (sides.split === "correct") return [{ correct: "true" }, { correct: "false" }];
  return [{ tag: sides.aTag }, { tag: sides.bTag }];
}

/** "k/n" linked to the prompts of one side that keep `key` (each of their rows opens its graph). */
function sideLink(filter, key, k, n) {
  return el("a", { href: `#/prompts?${new URLSearchParams({ ...filter, feature: key })}`, "data-testid": "side-link" }, `${k}/${n}`);
}

/** A side's graphs as a table of links to the graph pages (the first PAGE of them). */
async function sideGraphs(side, name, filter) {
  const f = filter.correct ? { correct: filter.correct === "true" } : { tag: filter.tag };
  const out = (await gql(SIDE_GRAPHS_QUERY, { f })).graphs;
  const rows = out.edges.map(({ node: g }) =>
    el(
      "tr",
      { "data-testid": "side-graph", "data-graph-id": g.id },
      el("td", {}, graphLink(g.id, g.promptText)),
      el("td", {}, JSON.stringify(g.topToken ?? "")),
      el("td", {}, correctBadge(g.correct)),
    ),
  );
  const more = out.totalCount > rows.length ? ` (first ${rows.length} of ${out.totalCount})` : ` (${out.totalCount})`;
  return el("section", { class: `side side-${side}` }, el("h3", {}, `${side.toUpperCase()} = ${name}${more}`), table(`side-graphs-${side}`, ["prompt", "predicts", ""], rows));
}

async function compareSets(sides, fdr) {
  const out = (await gql(COMPARE_SETS_QUERY, { sides, fdr })).compareSets;
  const [filterA, filterB] = sideFilters(sides);
  const rows = out.features.map((f) => {
    const cls = presenceClass([f.kA > 0, f.kB > 0]);
    return el(
      "tr",
      { class: cls, "data-testid": "compare-feature", "data-key": f.key, "data-shared": String(cls === "shared") },
      el("td", {}, featureLink(f.key, f.feature?.description)),
      el("td", { class: "num" }, sideLink(filterA, f.key, f.kA, f.nA)),
      el("td", { class: "num" }, sideLink(filterB, f.key, f.kB, f.nB)),
      el("td", { class: `num ${f.diff >= 0 ? "pos" : "neg"}` }, fmt(f.diff, 2)),
      el("td", { class: `num ${f.mhDiff >= 0 ? "pos" : "neg"}` }, fmt(f.mhDiff, 2)),
      el("td", { class: "num" }, fmt(f.testZ, 2)),
      el("td", { class: "num" }, fmt(f.qValue, 2)),
    );
  });
  const unique = out.uniqueFeatures.map((u) =>
    el(
      "li",
      { class: u.side === "a" ? "only-a" : "only-b", "data-testid": "unique-feature", "data-side": u.side, "data-key": u.key },
      featureLink(u.key, u.feature?.description),
      " only in ",
      sideLink(u.side === "a" ? filterA : filterB, u.key, u.side === "a" ? u.graphsA : u.graphsB, u.side === "a" ? out.nA : out.nB),
      ` graphs of ${u.side.toUpperCase()}`,
    ),
  );
  const graphs = await Promise.all([sideGraphs("a", out.a, filterA), sideGraphs("b", out.b, filterB)]);
  return [
    el("p", { id: "compare-summary", "data-testid": "compare-summary" }, `A = ${out.a} (${out.nA} graphs) vs B = ${out.b} (${out.nB} graphs), within ${out.within}: ${out.featuresTested} features tested, ${out.featuresPassing} with q < ${out.fdr}`),
    ...strataNotes(out),
    table("compare-features", ["feature", "in A", "in B", "pA − pB", "MH diff", "z (CMH)", "q (BH)"], rows),
    el("h2", {}, "Seen on one side only"),
    unique.length ? el("ul", { id: "unique-features" }, unique) : el("p", { class: "muted" }, "none"),
    el("h2", {}, "The graphs of each side"),
    el("div", { class: "columns" }, graphs),
  ];
}

async function showCompare(params) {
  const ticket = routed;
  const prompts = await everyPrompt();
  let opened = null;
  if (![...params.keys()].some((k) => ["a", "b", "split", "aTag", "bTag"].includes(k))) {
    const sides = defaultSides(prompts);
    if (sides) {
      for (const [k, v] of Object.entries(sides)) params.set(k, v);
      replaceUrl(ticket, `#/compare?${params}`);
      opened = el("p", { class: "muted", id: "compare-default", "data-testid": "compare-default" }, sides.split ? "Opened on right vs wrong answers; pick other sides above." : `Opened on the two largest tags, ${sides.aTag} vs ${sides.bTag}; pick other sides above.`);
    }
  }
  let result = [el("p", { class: "muted" }, "Pick two prompts or two prompt sets.")];
  const fdr = Number(params.get("fdr") ?? 0.05);
  if (params.get("a") && params.get("b")) result = await comparePrompts(params.get("a"), params.get("b"));
  else if (params.get("split")) result = await compareSets({ split: params.get("split") }, fdr);
  else if (params.get("aTag") && params.get("bTag")) result = await compareSets({ aTag: params.get("aTag"), bTag: params.get("bTag") }, fdr);
  return [el("h1", {}, "Compare"), compareForm(params, prompts), opened, ...result];
}

// ---------------------------------------------------------------------------------------- router

function $(selector) {
  return document.querySelector(selector);
}

let routed = 0; // routes started: a page whose data comes back after a newer route started is dropped

/** Rewrite the URL to `hash` for the page of route `ticket` (`routed` when that page started), unless the user
 *  has moved on since: a page whose data lands late must not take the URL back. */
function replaceUrl(ticket, hash) {
  if (ticket === routed) history.replaceState(null, "", hash);
}

async function route() {
  const ticket = ++routed;
  const { name, arg, params } = parseHash();
  const views = {
    prompts: () => showPrompts(params),
    graph: () => showGraph(arg, params),
    feature: () => showFeature(arg),
    subcircuits: () => showSubcircuits(),
    subcircuit: () => showSubcircuit(arg),
    compare: () => showCompare(params),
  };
  view.removeAttribute("data-ready");
  tooltip.hidden = true;
  errorBox.hidden = true;
  for (const link of document.querySelectorAll("nav a[data-route]")) link.classList.toggle("active", link.dataset.route === name);
  try {
    if (!views[name]) throw new Error(`no such page: ${name}`);
    const content = await views[name]();
    if (ticket !== routed) return;
    view.replaceChildren(...content.filter(Boolean));
  } catch (error) {
    if (ticket !== routed) return;
    errorBox.textContent = error.message;
    errorBox.hidden = false;
    view.replaceChildren();
  }
  view.setAttribute("data-ready", name);
}

window.addEventListener("hashchange", route);
route();
