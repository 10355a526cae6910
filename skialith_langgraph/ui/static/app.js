// Skialith viewer: a single page over the JSON endpoints under api/.
// Every value from a thread's state, metadata or id is put into the page as text (textContent,
// createTextNode, SVG <text> nodes) or as an attribute set with setAttribute; never as HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const main = () => document.getElementById("main");

// -- DOM helpers --------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

function show(...nodes) {
  append(clear(main()), nodes);
}

function text(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function short(value, n = 80) {
  const t = text(value === null || value === undefined ? "" : value);
  return t.length > n ? t.slice(0, n - 1) + "…" : t;
}

function badge(state, label) {
  return h("span", { class: "badge " + state }, label || state);
}

// -- routing: #/view?key=value (URLSearchParams encodes every id) -----------------------------------

function link(view, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) q.set(k, v);
  const qs = q.toString();
  return "#/" + view + (qs ? "?" + qs : "");
}

function go(view, params) {
  location.hash = link(view, params);
}

function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const i = raw.indexOf("?");
  const view = i < 0 ? raw : raw.slice(0, i);
  const params = new URLSearchParams(i < 0 ? "" : raw.slice(i + 1));
  if (!(view === "thread" && params.get("cp"))) show(h("p", { class: "muted" }, "Loading…"));
  const views = { "": threadsView, thread: threadView, drift: driftView, lineage: lineageView };
  (views[view] || threadsView)(params).catch(fail);
}

function fail(err) {
  show(h("div", { class: "card error-box", id: "error" }, String(err && err.message ? err.message : err)));
}

async function api(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) q.set(k, v);
  const res = await fetch("api/" + path + "?" + q.toString(), { credentials: "same-origin" });
  let body;
  try {
    body = await res.json();
  } catch (e) {
    throw new Error(path + ": HTTP " + res.status);
  }
  if (!res.ok) throw new Error(body && body.error ? body.error : path + ": HTTP " + res.status);
  return body;
}

// -- threads ------------------------------------------------------------------------------------------

async function threadsView(params) {
  const q = params.get("q") || "";
  const status = params.get("status") || "";
  const after = params.get("after") || "";
  const search = h("input", { id: "search", type: "search", placeholder: "search thread ids", value: q, size: 30 });
  const statusSel = h(
    "select",
    { id: "status" },
    ["", "finished", "interrupted", "errored", "next"].map((v) =>
      h("option", v === status ? { value: v, selected: "selected" } : { value: v }, v || "any status")
    )
  );
  const form = h(
    "form",
    {
      class: "toolbar",
      onsubmit: (e) => {
        e.preventDefault();
        go("", { q: search.value || null, status: statusSel.value || null });
      },
    },
    search,
    statusSel,
    h("button", { type: "submit", id: "search-go" }, "Search")
  );
  show(h("h1", {}, "Threads and agents"), form, h("p", { class: "muted" }, "Loading…"));
  const page = await api("threads", { q: q || null, status: status || null, after: after || null, limit: 25 });
  const rows = page.threads.map((t) =>
    h(
      "tr",
      {
        class: "row thread-row",
        "data-kind": t.kind,
        onclick: () => go("thread", { id: t.thread_id, kind: t.kind === "agent" ? "agent" : null }),
      },
      h("td", {}, t.kind),
      h("td", { class: "id", title: short(t.thread_id, 300) }, h("a", { href: link("thread", { id: t.thread_id, kind: t.kind === "agent" ? "agent" : null }) }, t.thread_id === "" ? h("span", { class: "muted" }, "(empty id)") : t.thread_id)),
      h("td", {}, String(t.checkpoints)),
      h("td", {}, t.last_step === null ? "" : String(t.last_step)),
      h("td", {}, t.last_activity || ""),
      h("td", {}, badge(t.status, t.status === "next" ? "next: " + t.next.join(", ") : t.status))
    )
  );
  const table = h(
    "table",
    { id: "threads" },
    h("thead", {}, h("tr", {}, ["kind", "id", "checkpoints", "last step", "last activity", "status"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows)
  );
  const more = page.next_cursor
    ? h("p", {}, h("a", { id: "more", href: link("", { q: q || null, status: status || null, after: page.next_cursor }) }, "Next page →"))
    : null;
  show(
    h("h1", {}, "Threads and agents"),
    form,
    rows.length ? h("div", { class: "card" }, table) : h("p", { class: "muted", id: "empty" }, "No thread matches."),
    more
  );
}

// -- one thread: branch tree, checkpoint state and diff, timings --------------------------------------

const ROW = 30;
const LANE = 18;

function lanes(entries) {
  // oldest first; a checkpoint continues its parent's lane when it is the lane's newest node,
  // else (a fork, or a parent on an older page) it opens a new lane
  const laneOf = new Map();
  const tips = [];
  for (const e of entries) {
    const p = e.parent_checkpoint_id;
    let lane = -1;
    if (p && laneOf.has(p) && tips[laneOf.get(p)] === p) lane = laneOf.get(p);
    if (lane < 0) {
      lane = tips.length;
      tips.push(null);
    }
    tips[lane] = e.checkpoint_id;
    laneOf.set(e.checkpoint_id, lane);
  }
  return { laneOf, count: Math.max(tips.length, 1) };
}

function branchTree(entries, selected, onSelect) {
  const { laneOf, count } = lanes(entries);
  const rowOf = new Map(entries.map((e, i) => [e.checkpoint_id, i]));
  const x0 = 10;
  const textX = x0 + count * LANE + 8;
  const svg = s("svg", { id: "tree", width: "100%", height: entries.length * ROW + 8, role: "list" });
  entries.forEach((e, i) => {
    const p = e.parent_checkpoint_id;
    if (p && rowOf.has(p)) {
      const pr = rowOf.get(p);
      const px = x0 + laneOf.get(p) * LANE + 6;
      const cx = x0 + laneOf.get(e.checkpoint_id) * LANE + 6;
      const d = `M${px},${pr * ROW + 15} C${px},${i * ROW} ${cx},${i * ROW} ${cx},${i * ROW + 15}`;
      svg.appendChild(s("path", { class: "edge", d }));
    }
  });
  entries.forEach((e, i) => {
    const y = i * ROW;
    const cx = x0 + laneOf.get(e.checkpoint_id) * LANE + 6;
    const state = e.errors.length ? "errored" : e.interrupts.length ? "interrupted" : "";
    const parts = [`step ${e.step === null ? "?" : e.step}`, e.source || "", e.nodes.join(", ")];
    if (e.duration !== null) parts.push(e.duration.toFixed(3) + " s");
    if (e.pending_writes) parts.push(e.pending_writes + " write(s)");
    const g = s(
      "g",
      {
        class: "node cp" + (e.checkpoint_id === selected ? " selected" : ""),
        "data-checkpoint": e.checkpoint_id,
        "data-step": e.step,
        role: "listitem",
        onclick: () => onSelect(e.checkpoint_id),
      },
      s("rect", { class: "hit", x: 0, y, width: "100%", height: ROW }),
      s("circle", { class: "dot " + state, cx, cy: y + 15, r: 6 }),
      s("text", { x: textX, y: y + 19, class: "label" }, parts.filter(Boolean).join(" · ")),
      e.fork ? s("text", { class: "fork", x: textX + 420, y: y + 19 }, "fork") : null,
      e.interrupts.length ? s("text", { class: "mark-int", x: textX + 460, y: y + 19 }, "⏸ interrupt") : null,
      e.errors.length ? s("text", { class: "mark-err", x: textX + 460, y: y + 19 }, "✖ error: " + short(e.errors[0], 60)) : null
    );
    svg.appendChild(g);
  });
  return svg;
}

async function threadView(params) {
  const id = params.get("id");
  if (id === null) return threadsView(new URLSearchParams());
  const ns = params.get("ns") || "";
  const tab = params.get("tab") || "timeline";
  const kind = params.get("kind") === "agent" ? "agent" : "thread";
  const cid = params.get("cp");
  const nav = (t) => go("thread", { id, ns: ns || null, tab: t, cp: cid, kind: kind === "agent" ? "agent" : null });
  const tabs = h(
    "div",
    { class: "tabs" },
    (kind === "agent" ? ["timings"] : ["timeline", "timings", "lineage"]).map((t) =>
      h("button", { type: "button", id: "tab-" + t, class: t === tab ? "active" : "", onclick: () => nav(t) }, t)
    ),
    kind === "agent" ? null : h("button", { type: "button", id: "compare", onclick: () => go("drift", { a: id }) }, "Compare with another run…")
  );
  const title = h("h1", {}, kind === "agent" ? "Agent " : "Thread ", h("span", { class: "id", id: "thread-id" }, id), ns ? h("span", { class: "muted" }, "  ns ", ns) : null);
  if (kind === "agent" || tab === "timings") {
    show(title, tabs, h("div", { class: "card", id: "timings" }, h("p", { class: "muted" }, "Loading…")));
    return timingsPanel(id, kind, ns);
  }
  if (tab === "lineage") {
    show(title, tabs, h("div", { class: "card", id: "lineage" }, h("p", { class: "muted" }, "Loading…")));
    return lineagePanel(id);
  }
  const before = params.get("before");
  const hist = await api("history", { thread: id, ns, limit: 100, before });
  const entries = hist.entries;
  const selected = cid || (entries.length ? entries[entries.length - 1].checkpoint_id : null);
  const detail = h("div", { class: "card", id: "checkpoint" });
  const select = (c) => go("thread", { id, ns: ns || null, cp: c, before });
  const older = hist.before
    ? h("a", { id: "older", href: link("thread", { id, ns: ns || null, before: hist.before }) }, "← older checkpoints")
    : null;
  show(
    title,
    tabs,
    h(
      "div",
      { class: "layout" },
      h("div", { class: "card" }, h("h2", {}, "Timeline (", String(entries.length), " checkpoints)"), older, branchTree(entries, selected, select)),
      detail
    )
  );
  if (selected) await checkpointPanel(detail, id, selected, ns);
}

async function checkpointPanel(el, id, cid, ns) {
  append(clear(el), [h("p", { class: "muted" }, "Loading…")]);
  const data = await api("checkpoint", { thread: id, checkpoint: cid, ns });
  const st = data.state;
  const parts = [
    h("h2", {}, "Checkpoint"),
    h(
      "dl",
      { class: "kv" },
      h("dt", {}, "id"), h("dd", { class: "id", id: "cp-id" }, st.checkpoint_id),
      h("dt", {}, "step"), h("dd", {}, String(st.metadata && st.metadata.step !== undefined ? st.metadata.step : "")),
      h("dt", {}, "source"), h("dd", {}, String((st.metadata && st.metadata.source) || "")),
      h("dt", {}, "time"), h("dd", {}, st.ts || ""),
      h("dt", {}, "status"), h("dd", {}, badge(st.status, st.status === "next" ? "next: " + st.next.join(", ") : st.status)),
      h("dt", {}, "parent"), h("dd", { class: "id" }, st.parent_checkpoint_id || "—")
    ),
  ];
  for (const i of st.interrupts) parts.push(h("div", { class: "alert int interrupt" }, "Interrupt: ", h("pre", {}, text(i))));
  for (const e of st.errors) parts.push(h("div", { class: "alert error" }, "Error: ", h("pre", {}, text(e))));
  parts.push(h("h3", {}, "State"));
  const state = h("div", { id: "state" });
  for (const [ch, msgs] of Object.entries(st.messages)) {
    state.appendChild(h("h3", {}, ch, " (conversation)"));
    for (const m of msgs) state.appendChild(h("div", { class: "msg" }, h("span", { class: "role" }, m.role), h("span", { class: "content" }, text(m.content))));
  }
  for (const [ch, v] of Object.entries(st.values)) {
    state.appendChild(h("div", { class: "channel", "data-channel": ch }, h("h3", {}, ch), h("pre", {}, text(v))));
  }
  parts.push(state);
  if (st.pending_writes.length) {
    parts.push(h("h3", {}, "Pending writes"));
    parts.push(
      h("table", {}, st.pending_writes.map((w) => h("tr", {}, h("td", { class: "id" }, short(w.task_id, 12)), h("td", {}, w.channel), h("td", {}, h("pre", {}, short(w.value, 400))))))
    );
  }
  parts.push(h("h3", {}, "Metadata"), h("pre", { id: "metadata" }, text(st.metadata)));
  parts.push(h("h2", {}, "Diff to parent"));
  parts.push(data.diff_to_parent ? diffView(data.diff_to_parent.channels) : h("p", { class: "muted", id: "diff" }, "The first checkpoint: no parent."));
  append(clear(el), parts);
}

function diffView(channels) {
  const names = Object.keys(channels);
  if (!names.length) return h("p", { class: "muted", id: "diff" }, "No channel changed.");
  return h("div", { id: "diff" }, names.map((ch) => channelDiff(ch, channels[ch])));
}

function channelDiff(ch, d) {
  const out = h("div", { class: "channel-diff", "data-channel": ch }, h("h3", {}, ch, " ", h("span", { class: "op-" + d.op }, d.op)));
  if (d.op === "added") out.appendChild(h("pre", { class: "new" }, text(d.new)));
  else if (d.op === "removed") out.appendChild(h("pre", { class: "old" }, text(d.old)));
  else if (d.messages) {
    for (const m of d.messages.added) out.appendChild(h("div", { class: "msg new" }, h("span", { class: "role" }, "+ " + m.role), h("span", { class: "content" }, text(m.content))));
    for (const m of d.messages.removed) out.appendChild(h("div", { class: "msg old" }, h("span", { class: "role" }, "− " + m.role), h("span", { class: "content" }, text(m.content))));
    for (const m of d.messages.edited)
      out.appendChild(h("div", { class: "msg" }, h("span", { class: "role" }, "~ " + m.new.role), h("span", { class: "content" }, h("span", { class: "old" }, text(m.old.content)), " → ", h("span", { class: "new" }, text(m.new.content)))));
  } else if (d.changes) {
    out.appendChild(
      h(
        "table",
        {},
        h("tr", {}, h("th", {}, "path"), h("th", {}, "op"), h("th", {}, "before"), h("th", {}, "after")),
        d.changes.map((c) =>
          h("tr", {}, h("td", { class: "id" }, c.path || "(value)"), h("td", { class: "op-" + c.op }, c.op), h("td", { class: "old" }, "old" in c ? h("pre", {}, text(c.old)) : ""), h("td", { class: "new" }, "new" in c ? h("pre", {}, text(c.new)) : ""))
        )
      )
    );
  }
  return out;
}

// -- timings: a Gantt chart of the thread's spans ------------------------------------------------------

async function timingsPanel(id, kind, ns) {
  const el = document.getElementById("timings");
  const data = await api("timings", { thread: id, kind: kind === "agent" ? "agent" : null, ns: ns || null });
  const spans = data.spans.filter((sp) => sp.finished_at !== null);
  if (!spans.length) {
    append(clear(el), [h("p", { class: "muted", id: "no-timings" }, "No timings recorded for this thread yet: they come from skialith_agent_traces, which the trace ingest fills ('skialith up' runs it).")]);
    return;
  }
  const t0 = Math.min(...spans.map((sp) => (sp.started_at !== null ? sp.started_at : sp.finished_at)));
  const t1 = Math.max(...spans.map((sp) => sp.finished_at));
  const total = Math.max(t1 - t0, 1e-6);
  const labelW = 200, chartW = 760, rowH = 22;
  const svg = s("svg", { id: "gantt", width: labelW + chartW + 80, height: spans.length * rowH + 30 });
  for (let k = 0; k <= 4; k++) {
    const x = labelW + (chartW * k) / 4;
    svg.appendChild(s("line", { class: "grid", x1: x, x2: x, y1: 0, y2: spans.length * rowH + 10 }));
    svg.appendChild(s("text", { x, y: spans.length * rowH + 24, class: "muted" }, ((total * k) / 4 * 1000).toFixed(1) + " ms"));
  }
  spans.forEach((sp, i) => {
    const start = sp.started_at !== null ? sp.started_at : sp.finished_at;
    const x = labelW + ((start - t0) / total) * chartW;
    const w = Math.max(((sp.finished_at - start) / total) * chartW, 2);
    const cls = "bar " + (sp.kind === "checkpoint" ? "checkpoint" : sp.status === "ok" ? "" : sp.status);
    const label = (sp.kind === "task" ? sp.name : sp.kind + " " + sp.name) + (sp.step !== null ? " @" + sp.step : "");
    svg.appendChild(
      s(
        "g",
        { class: "span", "data-name": sp.name, "data-status": sp.status },
        s("title", {}, `${label}: ${sp.duration === null ? "?" : (sp.duration * 1000).toFixed(1) + " ms"} (${sp.status})`),
        s("text", { x: 4, y: i * rowH + 15 }, short(label, 30)),
        s("rect", { class: cls, x, y: i * rowH + 4, width: w, height: rowH - 8, rx: 2 }),
        s("text", { x: x + w + 4, y: i * rowH + 15, class: "muted" }, sp.duration === null ? "" : (sp.duration * 1000).toFixed(1) + " ms" + (sp.status !== "ok" ? " " + sp.status : ""))
      )
    );
  });
  append(clear(el), [h("h2", {}, "Node timings"), data.truncated ? h("p", { class: "muted" }, "The newest spans only.") : null, svg]);
}

// -- lineage: an SVG tree -------------------------------------------------------------------------------

function treeSvg(root, id) {
  // root: {label, cls, href, children}; leaves stacked vertically, parents centred on their children
  const W = 230, H = 34, GAP = 40;
  let leaf = 0;
  const placed = [];
  (function place(n, depth) {
    const kids = n.children || [];
    kids.forEach((c) => place(c, depth + 1));
    n.x = depth * (W + GAP) + 10;
    n.y = kids.length ? (kids[0].y + kids[kids.length - 1].y) / 2 : leaf++ * (H + 12) + 10;
    placed.push(n);
  })(root, 0);
  const depth = Math.max(...placed.map((n) => n.x)) + W + 20;
  const svg = s("svg", { id, width: depth, height: leaf * (H + 12) + 20 });
  for (const n of placed) for (const c of n.children || []) svg.appendChild(s("path", { class: "edge", d: `M${n.x + W},${n.y + H / 2} C${n.x + W + GAP / 2},${n.y + H / 2} ${c.x - GAP / 2},${c.y + H / 2} ${c.x},${c.y + H / 2}` }));
  for (const n of placed) {
    const g = s("g", { class: "node lnode " + (n.cls || ""), "data-id": n.key }, s("title", {}, n.title || n.label), s("rect", { x: n.x, y: n.y, width: W, height: H, rx: 5 }), s("text", { x: n.x + 8, y: n.y + 21 }, short(n.label, 32)));
    if (n.href) g.addEventListener("click", () => (location.hash = n.href));
    svg.appendChild(g);
  }
  return svg;
}

async function lineagePanel(id) {
  const el = document.getElementById("lineage");
  const data = await api("lineage", { thread: id });
  const thread = (tid, cls) => ({ key: tid, label: tid === "" ? "(empty id)" : tid, title: tid, cls, href: link("thread", { id: tid }) });
  const kids = (list) => list.map((c) => ({ ...thread(c.thread_id, "thread"), children: kids(c.children) }));
  const self = { ...thread(id, "self"), children: kids(data.children) };
  let root = self;
  for (const a of [...data.ancestors].reverse()) root = { ...thread(a, "thread"), children: [root] };
  const nsNode = (n) => ({
    key: n.ns,
    label: (n.ns === "" ? "root graph" : n.node) + " · " + n.checkpoints + " cp",
    title: n.ns || "(root namespace)",
    cls: "ns",
    href: link("thread", { id, ns: n.ns || null }),
    children: n.children.map(nsNode),
  });
  append(clear(el), [
    h("h2", {}, "Threads linked through metadata '", data.parent_key, "'"),
    treeSvg(root, "lineage-threads"),
    h("h2", {}, "Subgraph namespaces"),
    treeSvg(nsNode(data.namespaces), "lineage-ns"),
  ]);
}

async function lineageView(params) {
  const id = params.get("id") || "";
  show(h("h1", {}, "Lineage of ", h("span", { class: "id" }, id)), h("div", { class: "card", id: "lineage" }, "Loading…"));
  return lineagePanel(id);
}

// -- drift: two runs side by side ------------------------------------------------------------------------

function sides(d) {
  // what run A and run B hold where a channel differs
  if (!d) return ["", ""];
  if (d.op === "added") return ["—", text(d.new === undefined ? "(step missing)" : d.new)];
  if (d.op === "removed") return [text(d.old === undefined ? "(step missing)" : d.old), "—"];
  if (d.messages) {
    const a = [...d.messages.removed.map((m) => m.role + ": " + text(m.content)), ...d.messages.edited.map((m) => m.old.role + ": " + text(m.old.content))];
    const b = [...d.messages.added.map((m) => m.role + ": " + text(m.content)), ...d.messages.edited.map((m) => m.new.role + ": " + text(m.new.content))];
    return [a.join("\n"), b.join("\n")];
  }
  const ch = d.changes || [];
  return [ch.map((c) => (c.path || "(value)") + ": " + ("old" in c ? text(c.old) : "—")).join("\n"), ch.map((c) => (c.path || "(value)") + ": " + ("new" in c ? text(c.new) : "—")).join("\n")];
}

async function driftView(params) {
  const a = params.get("a") || "";
  const b = params.get("b") || "";
  const ia = h("input", { id: "drift-a", placeholder: "thread A (expected)", value: a, size: 28 });
  const ib = h("input", { id: "drift-b", placeholder: "thread B (actual)", value: b, size: 28 });
  const form = h(
    "form",
    { class: "toolbar", onsubmit: (e) => { e.preventDefault(); go("drift", { a: ia.value, b: ib.value }); } },
    ia, ib, h("button", { type: "submit", id: "drift-go" }, "Compare")
  );
  if (!params.has("a") || !params.has("b")) {
    show(h("h1", {}, "Drift: two runs step by step"), form);
    return;
  }
  show(h("h1", {}, "Drift: two runs step by step"), form, h("p", { class: "muted" }, "Loading…"));
  const d = await api("drift", { a, b });
  const summary =
    d.first_divergence === null
      ? h("p", { id: "drift-summary" }, "The runs agree at every step.")
      : h("p", { id: "drift-summary" }, "First divergence at step ", h("strong", {}, String(d.first_divergence)), ` (at most ${d.max_differing} differing channel(s) in a step).`);
  const rows = [];
  for (const st of d.steps) {
    const first = st.step === d.first_divergence;
    const names = Object.keys(st.channels);
    const cls = "drift-step " + (first ? "first-divergence" : names.length ? "differs" : "same");
    if (!names.length) {
      rows.push(h("tr", { class: cls, "data-step": st.step }, h("td", {}, String(st.step)), h("td", {}, "same"), h("td", { class: "id" }, st.a || "—"), h("td", { class: "id" }, st.b || "—")));
      continue;
    }
    names.forEach((ch, k) => {
      const [left, right] = sides(st.channels[ch]);
      rows.push(
        h(
          "tr",
          { class: cls, "data-step": st.step, "data-channel": ch },
          h("td", {}, k === 0 ? String(st.step) : ""),
          h("td", {}, ch, st.missing_in !== null ? h("div", { class: "muted" }, "missing in ", st.missing_in) : null),
          h("td", { class: "old" }, h("pre", {}, left)),
          h("td", { class: "new" }, h("pre", {}, right))
        )
      );
    });
  }
  show(
    h("h1", {}, "Drift: two runs step by step"),
    form,
    summary,
    h(
      "div",
      { class: "card" },
      h("table", { id: "drift" }, h("thead", {}, h("tr", {}, h("th", {}, "step"), h("th", {}, "channel"), h("th", { class: "id" }, "A: ", a), h("th", { class: "id" }, "B: ", b))), h("tbody", {}, rows))
    )
  );
  const first = document.querySelector("tr.first-divergence");
  if (first) first.scrollIntoView({ block: "center" });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
