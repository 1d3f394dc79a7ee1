// The graph page's subgraph tools (loaded before app.js, whose helpers `el`, `gql`, `fmt`, `featureLink`
// they call):
//   - influence filter: feature and error nodes are kept, strongest first, until they carry a share of the
//     view's influence (as pruning does: a node is kept while the influence before it is under the share);
//     tokens, logits and pinned nodes always show;
//   - paths: the strongest paths from a node to the logits over the shown edges; a path's strength is the
//     product, over its edges, of |weight| / (summed |weight| into the edge's target), the share of each
//     target's input it carries (as influence is computed), times the logit's probability;
//   - the subgraph panel: pinned nodes in words, grouped into a supernode (defineSupernode, with an API key
//     kept in sessionStorage), and the view exported as circuit-tracer JSON (GraphView.circuitTracerJson).
"use strict";

const PATHS_SHOWN = 3; // strongest paths highlighted from a selected node
const API_KEY_STORE = "circuitbase.apiKey"; // sessionStorage: asked once per tab

/** node id -> share of the view's feature and error influence carried by the nodes stronger than it. */
function influenceShares(nodes) {
  const ranked = nodes
    .filter((n) => n.kind === "FEATURE" || n.kind === "ERROR")
    .map((n, i) => ({ id: n.node, influence: Math.abs(n.influence ?? 0), i }))
    .sort((a, b) => b.influence - a.influence || a.i - b.i);
  const total = ranked.reduce((sum, n) => sum + n.influence, 0);
  const shares = new Map();
  let before = 0;
  for (const n of ranked) {
    shares.set(n.id, total > 0 ? before / total : 0);
    before += n.influence;
  }
  return shares;
}

/** Ids of the nodes shown at influence share `keep` (0..1; 1 shows all), `pinned` always included. */
function shownIds(nodes, keep, pinned) {
  const shares = influenceShares(nodes);
  return new Set(
    nodes.filter((n) => keep >= 1 || !shares.has(n.node) || shares.get(n.node) < keep || pinned.includes(n.node)).map((n) => n.node),
  );
}

/** The `k` strongest paths from node `start` to a logit over `edges` (header comment), strongest first:
 *  { score, sign, nodes: [ids], edges: [edge] }; none from a logit or a node without a way to one. */
function strongestPaths(start, nodes, edges, k = PATHS_SHOWN) {
  const byId = new Map(nodes.map((n) => [n.node, n]));
  const into = new Map();
  const out = new Map();
  for (const e of edges) {
    into.set(e.target, (into.get(e.target) ?? 0) + Math.abs(e.weight));
    if (!out.has(e.source)) out.set(e.source, []);
    out.get(e.source).push(e);
  }
  const best = new Map(); // node id -> its k strongest paths to a logit (attribution graphs have no cycles)
  const visit = (id) => {
    if (best.has(id)) return best.get(id);
    best.set(id, []); // a cycle, should one occur, ends here
    const node = byId.get(id);
    let found = [];
    if (node?.kind === "LOGIT") found = [{ score: node.probability ?? 1, sign: 1, nodes: [id], edges: [] }];
    else {
      for (const e of out.get(id) ?? []) {
        const share = Math.abs(e.weight) / into.get(e.target);
        for (const p of visit(e.target)) found.push({ score: share * p.score, sign: Math.sign(e.weight) * p.sign, nodes: [id, ...p.nodes], edges: [e, ...p.edges] });
      }
      found.sort((a, b) => b.score - a.score);
      found = found.slice(0, k);
    }
    best.set(id, found);
    return found;
  };
  return visit(start).filter((p) => p.edges.length > 0);
}

// ---------------------------------------------------------------------------------------- API key

function storedApiKey() {
  return sessionStorage.getItem(API_KEY_STORE);
}

const SUPERNODE_MUTATION = `mutation($name: String!, $features: [ID!]!, $description: String!) {
  defineSupernode(name: $name, features: $features, description: $description) { key name algorithm size } }`;

const EXPORT_QUERY = `query($id: ID!, $i: Float!, $k: Int!, $nodes: [ID!], $pinned: [ID!], $clicked: ID) {
  graph(id: $id) { view(minInfluence: $i, topK: $k) { circuitTracerJson(nodes: $nodes, pinnedIds: $pinned, clickedId: $clicked) } } }`;

/** The manual supernodes (defined by a person) with members among `nodes`: { key, name, nodes: [node] }. */
function viewSupernodes(nodes) {
  const groups = new Map();
  for (const n of nodes) {
    for (const s of n.feature?.supernodes ?? []) {
      if (s.algorithm !== "manual") continue;
      if (!groups.has(s.key)) groups.set(s.key, { key: s.key, name: s.name ?? s.key, nodes: [] });
      groups.get(s.key).nodes.push(n);
    }
  }
  return [...groups.values()].sort((a, b) => (a.key < b.key ? -1 : 1));
}

/** The subgraph panel of graph page `page` ({ graph, state, shown(), byId, changed() }): pinned nodes in
 *  words, a form grouping their features into a supernode, the view's supernodes and the JSON export. */
function subgraphPanel(page) {
  const { graph, state, byId } = page;
  const pinnedBody = el("tbody", { id: "pinned-nodes" });
  const groupList = el("ul", { id: "view-supernodes", "data-testid": "view-supernodes" });
  const message = el("p", { id: "supernode-message", "data-testid": "supernode-message", class: "muted" });
  const name = el("input", { id: "supernode-name", "data-testid": "supernode-name", type: "text", placeholder: "supernode name" });
  const keyInput = el("input", { id: "api-key", "data-testid": "api-key", type: "password", placeholder: "cbk_…", autocomplete: "off" });
  const keyRow = el("label", { id: "api-key-row" }, "API key ", keyInput);
  const keyKept = el("span", { id: "api-key-kept", class: "muted" }, "using this tab's API key ", el("button", { class: "link-plain", onclick: () => { sessionStorage.removeItem(API_KEY_STORE); showKey(); } }, "(forget it)"));
  const exportLink = el("a", { id: "export-link", "data-testid": "export-link", hidden: true }, "download");
  const exportStatus = el("span", { id: "export-status", "data-testid": "export-status", class: "muted" });

  function showKey() {
    keyRow.hidden = Boolean(storedApiKey());
    keyKept.hidden = !storedApiKey();
  }

  function say(text, kind) {
    message.textContent = text;
    message.dataset.state = kind;
    message.className = kind === "saved" ? "ok-text" : kind === "error" || kind === "need-key" ? "error" : "muted";
  }

  function render() {
    const rows = state.pinned.map((id) => {
      const n = byId.get(id);
      return el(
        "tr",
        { "data-testid": "pinned-node", "data-node": id, "data-kind": n.kind },
        el("td", {}, n.feature ? featureLink(n.feature.key, n.text ?? id) : n.text ?? id),
        el("td", {}, n.kind.toLowerCase()),
        el("td", { class: "num" }, fmt(n.influence)),
        el("td", { class: "num" }, fmt(n.activation)),
        el("td", {}, el("button", { class: "link", title: "unpin", onclick: () => page.pin(id) }, "×")),
      );
    });
    pinnedBody.replaceChildren(...rows);
    const groups = viewSupernodes(graph.view.nodes);
    groupList.replaceChildren(
      ...(groups.length
        ? groups.map((g) => el("li", { "data-testid": "view-supernode", "data-key": g.key, "data-nodes": g.nodes.map((n) => n.node).join(",") }, el("strong", {}, g.name), ": ", g.nodes.map((n) => n.text ?? n.node).join("; ")))
        : [el("li", { class: "muted" }, "none yet")]),
    );
  }

  async function saveSupernode() {
    const features = [...new Set(state.pinned.map((id) => byId.get(id).feature?.key).filter(Boolean))];
    const title = name.value.trim();
    if (!features.length) return say("Pin feature nodes first (shift-click them): a supernode groups features.", "error");
    if (!title) return say("Name the supernode.", "error");
    const key = storedApiKey() ?? keyInput.value.trim();
    if (!key) {
      showKey();
      return say("Saving needs an API key: create one with `circuitbase api-key create NAME` and enter it above.", "need-key");
    }
    say("saving…", "saving");
    try {
      const description = `grouped on graph ${graph.id}`;
      const saved = (await gql(SUPERNODE_MUTATION, { name: title, features, description }, { apiKey: key })).defineSupernode;
      sessionStorage.setItem(API_KEY_STORE, key);
      keyInput.value = "";
      for (const n of graph.view.nodes) {
        if (!n.feature) continue;
        const others = (n.feature.supernodes ?? []).filter((s) => s.key !== saved.key);
        n.feature.supernodes = features.includes(n.feature.key) ? [...others, saved] : others;
      }
      render();
      say(`Saved supernode “${saved.name}” with ${saved.size} features.`, "saved");
    } catch (error) {
      if (error.codes?.includes("UNAUTHENTICATED")) {
        sessionStorage.removeItem(API_KEY_STORE);
        say(`The API key was refused (${error.message.replace(/^.*; /, "")}): enter a valid key.`, "error");
      } else say(error.message, "error");
    } finally {
      showKey();
    }
  }

  async function exportJson() {
    exportStatus.textContent = "exporting…";
    exportStatus.dataset.state = "running";
    const shown = page.shown();
    const nodes = graph.view.nodes.map((n) => n.node).filter((id) => shown.has(id));
    const clicked = state.clicked && shown.has(state.clicked) ? state.clicked : null;
    try {
      const variables = { id: graph.id, i: page.minInfluence, k: page.topK, nodes, pinned: state.pinned, clicked };
      const doc = (await gql(EXPORT_QUERY, variables)).graph.view.circuitTracerJson;
      if (exportLink.href) URL.revokeObjectURL(exportLink.href);
      exportLink.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" }));
      exportLink.download = `${doc.metadata.slug}.json`;
      exportLink.hidden = false;
      exportStatus.textContent = `${doc.nodes.length} nodes, ${doc.links.length} links `;
      exportStatus.dataset.state = "done";
      window.open(exportLink.href, "_blank");
    } catch (error) {
      exportStatus.textContent = error.message;
      exportStatus.dataset.state = "error";
    }
  }

  showKey();
  render();
  const element = el(
    "section",
    { id: "subgraph-panel", "data-testid": "subgraph-panel", class: "card" },
    el("h2", {}, "Subgraph"),
    el("p", { class: "muted" }, "Shift-click nodes to pin them here; group the pinned features into a supernode; export what the graph shows."),
    el("table", { id: "pinned-table" }, el("thead", {}, el("tr", {}, ["pinned node", "kind", "influence", "activation", ""].map((h) => el("th", {}, h)))), pinnedBody),
    el(
      "div",
      { class: "controls" },
      name,
      keyRow,
      keyKept,
      el("button", { id: "supernode-save", "data-testid": "supernode-save", onclick: saveSupernode }, "group pinned features as a supernode"),
      el("button", { id: "unpin-all", onclick: () => page.pin(null) }, "unpin all"),
    ),
    message,
    el("h3", {}, "Supernodes in this view"),
    groupList,
    el("div", { class: "controls" }, el("button", { id: "export-json", "data-testid": "export-json", onclick: exportJson }, "Open as circuit-tracer JSON"), exportStatus, exportLink),
  );
  return { element, render };
}

/** The selected node's card: the node in words and its strongest paths to the logits. */
function selectionPanel(page) {
  const body = el("div", { id: "selection", "data-testid": "selection" });
  function render(paths) {
    const n = page.state.clicked ? page.byId.get(page.state.clicked) : null;
    if (!n) {
      body.replaceChildren(el("p", { class: "muted" }, "Click a node to trace its strongest paths to the logits."));
      return;
    }
    const words = (id) => page.byId.get(id)?.text ?? id;
    body.replaceChildren(
      el("p", { id: "selected-node", "data-testid": "selected-node", "data-node": n.node }, el("strong", {}, n.text ?? n.node), ` · ${n.kind.toLowerCase()} · influence ${fmt(n.influence)}`, n.activation !== null ? ` · activation ${fmt(n.activation)}` : ""),
      el(
        "p",
        {},
        el("button", { id: "pin-selected", onclick: () => page.pin(n.node) }, page.state.pinned.includes(n.node) ? "unpin" : "pin"),
        n.feature ? " " : null,
        n.feature ? featureLink(n.feature.key, "open its feature page") : null,
      ),
      paths.length
        ? el(
            "ol",
            { id: "selected-paths" },
            paths.map((p) =>
              el("li", { "data-testid": "selected-path", "data-nodes": p.nodes.join(","), "data-score": p.score }, p.nodes.map(words).join(" → "), el("span", { class: "muted" }, ` (${p.sign >= 0 ? "promotes" : "suppresses"}, strength ${fmt(p.score)})`)),
            ),
          )
        : el("p", { class: "muted", id: "selected-paths" }, n.kind === "LOGIT" ? "A logit: the paths end here." : "No path to a logit over the shown edges."),
    );
  }
  return { element: el("section", { id: "selection-panel", class: "card" }, el("h2", {}, "Selected node"), body), render };
}
