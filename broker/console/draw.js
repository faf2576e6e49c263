// Junction's web console: drawing helpers and the route picture (console.js uses them).
//
// Everything from the bridge goes in as text or attribute values (el's "text", setAttribute),
// never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

// el("td", {class: "num"}, "text", child...): attributes set one by one, children as text
function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
  const s = Math.max(0, seconds);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function when(epoch) {
  if (!epoch) return "-";
  const d = new Date(epoch * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

function stateClass(text) {
  const s = String(text || "").toLowerCase();
  if (/^(connected|running|linked|ok|ready|idle)/.test(s)) return "ok";
  if (/(fail|error|dead|refused|stopped|crash)/.test(s)) return "bad";
  return "warn";
}

function rate(value) {
  if (value === null || !isFinite(value)) return "";
  return (value >= 10 ? value.toFixed(0) : value.toFixed(1)) + "/s";
}

// The route picture: source adapters left, routes in the middle, targets right.
function drawGraph(svg, snap, rateOf) {
  const graph = snap.graph || { routes: [] };
  const adapters = snap.adapters || {};
  const sources = [...new Set(graph.routes.flatMap((r) => r.from))].sort();
  const targets = [...new Set(graph.routes.flatMap((r) => r.to))].sort();
  const routes = graph.routes.map((r) => r.name);
  const rowH = 30, boxH = 22, top = 30, width = 900;
  const col = { src: [10, 190], route: [330, 560], dst: [710, 890] };
  const rows = Math.max(sources.length, routes.length, targets.length, 1);
  const height = top + rows * rowH + 10;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const y = (list, i) => top + (rows - list.length) * rowH / 2 + i * rowH + rowH / 2;
  const at = {
    src: Object.fromEntries(sources.map((n, i) => [n, y(sources, i)])),
    route: Object.fromEntries(routes.map((n, i) => [n, y(routes, i)])),
    dst: Object.fromEntries(targets.map((n, i) => [n, y(targets, i)])),
  };
  const parts = [
    el("svg:text", { class: "head", x: col.src[0], y: 14, text: "sources" }),
    el("svg:text", { class: "head", x: col.route[0], y: 14, text: "routes" }),
    el("svg:text", { class: "head", x: col.dst[0], y: 14, text: "targets" }),
  ];
  const edges = [], labels = [];
  const curve = (x1, y1, x2, y2) => {
    const mx = (x1 + x2) / 2;
    return `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
  };
  for (const r of graph.routes) {
    const matched = rateOf(r.name, "matched");
    const delivered = rateOf(r.name, "delivered");
    for (const s of r.from) {
      edges.push(el("svg:path", { class: "edge" + (matched > 0 ? " busy" : ""),
        d: curve(col.src[1], at.src[s], col.route[0], at.route[r.name]) }));
    }
    for (const t of r.to) {
      edges.push(el("svg:path", { class: "edge" + (delivered > 0 ? " busy" : ""),
        "data-route": r.name, "data-target": t,
        d: curve(col.route[1], at.route[r.name], col.dst[0], at.dst[t]) }));
      labels.push(el("svg:text", { class: "rate", x: col.route[1] + 8,
        y: at.route[r.name] + (at.dst[t] - at.route[r.name]) * 0.18, text: rate(delivered) }));
    }
    if (matched !== null) {
      labels.push(el("svg:text", { class: "rate", x: col.route[0] - 56, y: at.route[r.name] - 9,
        text: rate(matched) }));
    }
  }
  const node = (kind, name, x, yy, down) => {
    const g = el("svg:g", { class: "node " + kind + (down ? " down" : ""), "data-name": name });
    g.append(el("svg:rect", { x: x[0], y: yy - boxH / 2, width: x[1] - x[0], height: boxH }));
    const label = name.length > 28 ? name.slice(0, 27) + "\u2026" : name;
    g.append(el("svg:text", { x: x[0] + 8, y: yy + 1, text: label }),
      el("svg:title", { text: name }));
    return g;
  };
  const down = (n) => adapters[n] && stateClass(adapters[n].state) === "bad";
  const nodes = [
    ...sources.map((n) => node("adapter", n, col.src, at.src[n], down(n))),
    ...routes.map((n) => node("route", n, col.route, at.route[n], false)),
    ...targets.map((n) => node("adapter", n, col.dst, at.dst[n], down(n))),
  ];
  svg.replaceChildren(...parts, ...edges, ...nodes, ...labels);
}
