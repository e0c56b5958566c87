// meshcp KPI page: fetches /dashboard/data and draws the service graph, the per-edge
// table and the TrafficSplits. No framework, nothing loaded from elsewhere.
//
// URL parameters: ?window=<Prometheus duration> (default 1m), ?refresh=<seconds>
// (default 5; 0 stops refreshing).
//
// Rendered elements carry stable hooks for tests and tools: nodes `[data-node]`, edges
// `path.edge[data-edge]` and `tr[data-edge][data-requests]`, cells `td[data-col][data-value]`, splits
// `[data-split] tr[data-leaf][data-weight][data-share]`; <body data-state> is loading,
// ok, empty or error, and <body data-updates> counts the data shown.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(window.location.search);
  const windowParam = params.get("window") || "1m";
  const refreshSeconds = parseRefresh(params.get("refresh"));
  const dataUrl = "/dashboard/data?window=" + encodeURIComponent(windowParam);

  // Columns of the edge table: how a value sorts and shows.
  const NUMERIC = new Set(["rps", "success", "latency_p50", "latency_p99"]);
  const MTLS_RANK = { yes: 3, partly: 2, no: 1 };
  let sort = { key: "src", dir: "ascending" };
  let lastData = null;
  let updates = 0;
  let timer = null;

  function parseRefresh(text) {
    if (text === null || text === "") return 5;
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) return 5;
    return value === 0 ? 0 : Math.min(Math.max(value, 1), 3600);
  }

  // ---- formatting ---------------------------------------------------------------
  function dash(value) {
    return value === null || value === undefined;
  }
  function fmtRps(v) {
    return dash(v) ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1);
  }
  function fmtPercent(v, digits) {
    return dash(v) ? "–" : (v * 100).toFixed(digits) + "%";
  }
  function fmtMs(v) {
    if (dash(v)) return "–";
    return (v >= 100 ? Math.round(v).toString() : v.toPrecision(3)) + " ms";
  }
  function health(success) {
    if (dash(success)) return "idle";
    if (success >= 0.99) return "ok";
    if (success >= 0.95) return "warn";
    return "bad";
  }
  const HEALTH_TEXT = { ok: "healthy", warn: "degraded", bad: "failing", idle: "no requests" };

  // ---- DOM helpers --------------------------------------------------------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children || []) node.append(child);
    return node;
  }
  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    for (const child of children || []) node.append(child);
    return node;
  }
  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      node.setAttribute(name, String(value));
    }
  }
  function domId(prefix, id) {
    return prefix + "-" + id.replace(/[^A-Za-z0-9_-]/g, "_");
  }
  function dataValue(v) {
    return dash(v) ? "" : String(v);
  }

  // ---- the graph ----------------------------------------------------------------
  const NODE_W = 230;
  const NODE_H = 46;
  const GAP = 14;
  const TOP = 34;
  const ARC = 70;

  function renderGraph(data) {
    const graph = document.getElementById("graph");
    const desc = document.getElementById("graph-desc");
    graph.replaceChildren(desc);
    document.getElementById("graph-empty").hidden = data.nodes.length > 0;
    graph.hidden = data.nodes.length === 0;
    if (data.nodes.length === 0) return;

    // Workloads call services: two columns. A TrafficSplit's apex sits among the
    // services, right above its backends, linked to them by arcs on the right.
    const apexIds = new Set(data.splits.map((s) => "svc/" + s.namespace + "/" + s.apex));
    const services = orderServices(data);
    const columns = [
      { title: "Workloads", nodes: data.nodes.filter((n) => n.kind === "deploy") },
      { title: "Services", nodes: services },
    ].filter((c) => c.nodes.length > 0);
    const width = 1000;
    const tallest = Math.max(...columns.map((c) => c.nodes.length));
    const height = TOP + tallest * (NODE_H + GAP) + 10;
    graph.setAttribute("viewBox", "0 0 " + width + " " + height);
    graph.setAttribute("width", String(width));
    graph.setAttribute("height", String(height));

    graph.append(markers());
    const positions = new Map();
    columns.forEach((column) => {
      const x = column.title === "Workloads" ? 20 : width - 20 - ARC - 40 - NODE_W;
      const offset = ((tallest - column.nodes.length) * (NODE_H + GAP)) / 2;
      graph.append(svg("text", { class: "column-title", x: x, y: 18 }, [column.title]));
      column.nodes.forEach((node, row) => {
        positions.set(node.id, { x: x, y: TOP + offset + row * (NODE_H + GAP) });
      });
    });

    const links = svg("g", { class: "links" });
    const labels = svg("g", { class: "labels" });
    for (const split of data.splits) {
      const apex = positions.get("svc/" + split.namespace + "/" + split.apex);
      for (const leaf of split.leaves) {
        const target = positions.get("svc/" + split.namespace + "/" + leaf.service);
        if (!apex || !target) continue;
        const path = svg(
          "path",
          {
            class: "split-link",
            d: arc(apex, target),
            "marker-end": "url(#arrow-split)",
            "data-split": split.namespace + "/" + split.name,
            "data-leaf": leaf.service,
            "data-weight": dataValue(leaf.weight),
          },
          [svg("title", {}, [split.apex + " → " + leaf.service + ": configured " + fmtPercent(leaf.weight, 1)])],
        );
        links.append(path);
        labels.append(svg("text", { class: "split-label", x: apex.x + NODE_W + ARC * 0.75 + 6, y: (apex.y + target.y) / 2 + NODE_H / 2 + 4, "text-anchor": "start" }, [
          fmtPercent(leaf.weight, 0),
        ]));
      }
    }
    for (const edge of data.edges) {
      const from = positions.get(edge.source);
      const to = positions.get(edge.target);
      if (!from || !to) continue;
      const state = health(edge.success);
      const widthPx = 1.5 + Math.min(6, Math.log2(1 + (edge.rps || 0)) * 1.5);
      const summary =
        edge.src + " → " + edge.dst + ": " + fmtRps(edge.rps) + " rps, success " + fmtPercent(edge.success, 2) +
        ", p99 " + fmtMs(edge.latency_p99) + ", mTLS " + (edge.secured || "–") + " (" + HEALTH_TEXT[state] + ")";
      links.append(
        svg(
          "path",
          {
            class: "edge health-" + state,
            id: domId("edge", edge.id),
            d: curve(from, to),
            "stroke-width": widthPx.toFixed(1),
            "marker-end": "url(#arrow-" + state + ")",
            tabindex: "0",
            role: "img",
            "aria-label": summary,
            "data-edge": edge.id,
            "data-source": edge.source,
            "data-target": edge.target,
            "data-health": state,
            "data-rps": dataValue(edge.rps),
            "data-success": dataValue(edge.success),
            "data-secured": dataValue(edge.secured),
            "data-requests": dataValue(edge.requests),
          },
          [svg("title", {}, [summary])],
        ),
      );
      if (!dash(edge.rps) && edge.rps > 0) {
        const mid = midpoint(from, to);
        labels.append(svg("text", { class: "edge-label", x: mid.x, y: mid.y - 4, "text-anchor": "middle" }, [
          fmtRps(edge.rps) + " rps · " + fmtPercent(edge.success, 1),
        ]));
      }
    }
    graph.append(links);
    const nodes = svg("g", { class: "nodes" });
    for (const node of data.nodes) {
      const at = positions.get(node.id);
      if (!at) continue;
      const kindText = node.kind === "deploy" ? "workload" : apexIds.has(node.id) ? "split apex" : "service";
      nodes.append(
        svg(
          "g",
          {
            class: "node node-" + node.kind,
            id: domId("node", node.id),
            transform: "translate(" + at.x + "," + at.y + ")",
            "data-node": node.id,
            "data-kind": node.kind,
            "data-namespace": node.namespace,
            "data-name": node.name,
          },
          [
            svg("title", {}, [kindText + " " + node.namespace + "/" + node.name]),
            svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
            svg("text", { class: "kind", x: NODE_W - 8, y: 15, "text-anchor": "end" }, [kindText]),
            svg("text", { class: "name", x: 10, y: 20 }, [clip(node.name, 24)]),
            svg("text", { class: "ns", x: 10, y: 37 }, [clip(node.namespace, 30)]),
          ],
        ),
      );
    }
    graph.append(nodes);
    graph.append(labels);
  }

  // The services in namespace/name order, except that each split's apex comes right
  // before the first of its backends (so that its arcs stay short).
  function orderServices(data) {
    const services = data.nodes.filter((n) => n.kind === "svc");
    const byId = new Map(services.map((n) => [n.id, n]));
    const apexOf = new Map(); // backend id -> apex id
    for (const split of data.splits) {
      const apex = "svc/" + split.namespace + "/" + split.apex;
      for (const leaf of split.leaves) apexOf.set("svc/" + split.namespace + "/" + leaf.service, apex);
    }
    const apexes = new Set(apexOf.values());
    const ordered = [];
    const placed = new Set();
    const place = (node) => {
      if (node && !placed.has(node.id)) {
        placed.add(node.id);
        ordered.push(node);
      }
    };
    for (const node of services) {
      if (apexes.has(node.id) && !apexOf.has(node.id)) continue; // placed with its first backend
      place(byId.get(apexOf.get(node.id)));
      place(node);
    }
    for (const node of services) place(node); // an apex whose backends are not drawn
    return ordered;
  }

  function clip(text, length) {
    return text.length > length ? text.slice(0, length - 1) + "…" : text;
  }
  function curve(from, to) {
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x - 4;
    const y2 = to.y + NODE_H / 2;
    const bend = Math.max(40, (x2 - x1) / 2);
    return "M" + x1 + "," + y1 + " C" + (x1 + bend) + "," + y1 + " " + (x2 - bend) + "," + y2 + " " + x2 + "," + y2;
  }
  function arc(from, to) {
    const x = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const y2 = to.y + NODE_H / 2;
    return "M" + x + "," + y1 + " C" + (x + ARC) + "," + y1 + " " + (x + ARC) + "," + y2 + " " + (x + 4) + "," + y2;
  }
  function midpoint(from, to) {
    return { x: (from.x + NODE_W + to.x) / 2, y: (from.y + to.y) / 2 + NODE_H / 2 };
  }
  function markers() {
    const defs = svg("defs");
    for (const name of ["ok", "warn", "bad", "idle", "split"]) {
      defs.append(
        svg(
          "marker",
          {
            id: "arrow-" + name,
            viewBox: "0 0 10 10",
            refX: 8,
            refY: 5,
            markerWidth: 6,
            markerHeight: 6,
            markerUnits: "userSpaceOnUse",
            orient: "auto",
          },
          [svg("path", { d: "M0,0 L10,5 L0,10 z", class: name === "split" ? "split" : "health-" + name })],
        ),
      );
    }
    return defs;
  }

  // ---- the edge table -----------------------------------------------------------
  function compare(a, b) {
    const key = sort.key;
    const va = sortValue(a, key);
    const vb = sortValue(b, key);
    // Missing values last, whichever the direction.
    if (va === null && vb !== null) return 1;
    if (vb === null && va !== null) return -1;
    let order = 0;
    if (va !== null && vb !== null) {
      order = typeof va === "number" ? va - vb : String(va).localeCompare(String(vb));
      if (sort.dir === "descending") order = -order;
    }
    return order || a.src.localeCompare(b.src) || a.dst.localeCompare(b.dst);
  }
  function sortValue(edge, key) {
    const value = edge[key];
    if (dash(value)) return null;
    if (key === "secured") return MTLS_RANK[value] || 0;
    return value;
  }

  function renderTable(data) {
    const body = document.getElementById("edges-body");
    const rows = data.edges.slice().sort(compare);
    body.replaceChildren(
      ...rows.map((edge) => {
        const state = health(edge.success);
        const attrs = {
          "data-edge": edge.id,
          "data-src": edge.src,
          "data-dst": edge.dst,
          "data-health": state,
          "data-requests": dataValue(edge.requests),
        };
        return el("tr", attrs, [
          el("th", { scope: "row", "data-col": "src", "data-value": edge.src }, [edge.src]),
          el("td", { "data-col": "dst", "data-value": edge.dst }, [edge.dst]),
          cell("rps", edge.rps, fmtRps(edge.rps)),
          el("td", { class: "num", "data-col": "success", "data-value": dataValue(edge.success) }, [
            el("span", { class: "dot health-" + state, title: HEALTH_TEXT[state] }),
            fmtPercent(edge.success, 2),
          ]),
          cell("latency_p50", edge.latency_p50, fmtMs(edge.latency_p50)),
          cell("latency_p99", edge.latency_p99, fmtMs(edge.latency_p99)),
          el("td", { "data-col": "secured", "data-value": dataValue(edge.secured), class: "mtls-" + (edge.secured || "unknown") }, [
            edge.secured || "–",
          ]),
          el("td", { class: "ids", "data-col": "client_id", "data-value": dataValue(edge.client_id) }, [edge.client_id || "–"]),
          el("td", { class: "ids", "data-col": "server_id", "data-value": dataValue(edge.server_id) }, [edge.server_id || "–"]),
        ]);
      }),
    );
    document.getElementById("edges-empty").hidden = rows.length > 0;
    for (const th of document.querySelectorAll("#edges-table thead th")) {
      th.setAttribute("aria-sort", th.dataset.col === sort.key ? sort.dir : "none");
    }
  }
  function cell(column, value, text) {
    return el("td", { class: "num", "data-col": column, "data-value": dataValue(value) }, [text]);
  }

  function onSort(event) {
    const button = event.target.closest("button[data-sort]");
    if (!button) return;
    const key = button.dataset.sort;
    if (sort.key === key) {
      sort = { key: key, dir: sort.dir === "ascending" ? "descending" : "ascending" };
    } else {
      // Metrics: the biggest first; names: alphabetical.
      sort = { key: key, dir: NUMERIC.has(key) || key === "secured" ? "descending" : "ascending" };
    }
    if (lastData) renderTable(lastData);
  }

  // ---- TrafficSplits ------------------------------------------------------------
  function renderSplits(data) {
    const box = document.getElementById("splits");
    box.replaceChildren(
      ...data.splits.map((split) => {
        const id = split.namespace + "/" + split.name;
        const head = el("tr", {}, [
          el("th", { scope: "col" }, ["Backend"]),
          el("th", { scope: "col", class: "num" }, [el("span", { class: "key weight" }), "Configured"]),
          el("th", { scope: "col", class: "num" }, [el("span", { class: "key share" }), "Observed"]),
          el("th", { scope: "col" }, [el("span", { class: "visually-hidden" }, ["Configured and observed, as bars"])]),
          el("th", { scope: "col", class: "num" }, ["RPS"]),
          el("th", { scope: "col", class: "num" }, ["Success"]),
        ]);
        const rows = split.leaves.map((leaf) =>
          el("tr", { "data-leaf": leaf.service, "data-weight": dataValue(leaf.weight), "data-share": dataValue(leaf.share) }, [
            el("th", { scope: "row" }, [leaf.service]),
            el("td", { class: "num", "data-col": "weight", "data-value": dataValue(leaf.weight) }, [fmtPercent(leaf.weight, 1)]),
            el("td", { class: "num", "data-col": "share", "data-value": dataValue(leaf.share) }, [fmtPercent(leaf.share, 1)]),
            el("td", {}, [bars(leaf)]),
            cell("rps", leaf.rps, fmtRps(leaf.rps)),
            cell("success", leaf.success, fmtPercent(leaf.success, 2)),
          ]),
        );
        return el("div", { class: "split", "data-split": id, "data-apex": split.apex }, [
          el("h3", {}, [split.namespace + "/" + split.name + " ", el("span", { class: "apex" }, ["apex " + split.apex])]),
          el("div", { class: "scroll" }, [
            el("table", { class: "data" }, [
              el("caption", {}, ["Configured weight and observed share of requests per backend of " + split.apex]),
              el("thead", {}, [head]),
              el("tbody", {}, rows),
            ]),
          ]),
        ]);
      }),
    );
    document.getElementById("splits-empty").hidden = data.splits.length > 0;
  }
  function bars(leaf) {
    const bar = (kind, value, label) => {
      const fill = el("span");
      fill.style.width = dash(value) ? "0" : (Math.min(1, Math.max(0, value)) * 100).toFixed(1) + "%";
      return el("div", { class: "bar " + kind, title: label + " " + fmtPercent(value, 1) }, [fill]);
    };
    return el("div", { class: "bars", "aria-hidden": "true" }, [
      bar("weight", leaf.weight, "configured"),
      bar("share", leaf.share, "observed"),
    ]);
  }

  // ---- the loop -----------------------------------------------------------------
  function show(data) {
    lastData = data;
    updates += 1;
    document.getElementById("error").hidden = true;
    renderGraph(data);
    renderTable(data);
    renderSplits(data);
    document.getElementById("source").textContent = "Prometheus at " + data.prometheus;
    document.getElementById("window").textContent = data.window;
    const every = refreshSeconds ? " · refreshed every " + refreshSeconds + " s" : "";
    document.getElementById("status").textContent =
      "Updated " + new Date().toLocaleTimeString() + " · window " + data.window + every;
    document.body.dataset.state = data.edges.length ? "ok" : "empty";
    document.body.dataset.updates = String(updates);
  }

  function fail(reason) {
    const box = document.getElementById("error");
    box.textContent = reason;
    box.hidden = false;
    document.getElementById("status").textContent = "No data · " + new Date().toLocaleTimeString();
    document.body.dataset.state = "error";
  }

  async function refresh() {
    try {
      const response = await fetch(dataUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      let body = null;
      try {
        body = await response.json();
      } catch (ignored) {
        body = null;
      }
      if (response.ok && body) {
        show(body);
      } else {
        fail((body && body.error) || "The controller answered " + response.status + " " + response.statusText);
      }
    } catch (error) {
      fail("The controller did not answer (" + error.message + ")");
    }
    if (refreshSeconds) timer = window.setTimeout(refresh, refreshSeconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelector("#edges-table thead").addEventListener("click", onSort);
    const link = document.querySelector(".foot a");
    if (link) link.setAttribute("href", dataUrl);
    document.getElementById("window").textContent = windowParam;
    refresh();
  });
  window.addEventListener("pagehide", () => window.clearTimeout(timer));
})();
