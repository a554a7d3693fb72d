// Vivace's dashboard: plain JavaScript, no build step. It reads the control plane's API with the
// browser session's cookie and puts every piece of user text into the page as text (never as HTML).

const VERSION = document.querySelector('meta[name="vivace-version"]').content;
const REFRESH_MS = 2000;
const view = document.getElementById("view");
const statusEl = document.getElementById("status");
let generation = 0; // bumped on every navigation: loops of the page left behind stop

// -- helpers ------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const resp = await fetch(url, { headers: { "x-vivace-version": VERSION }, credentials: "same-origin" });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, detail);
  }
  return resp.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "href") node.setAttribute("href", v.startsWith("#") || v.startsWith("/dashboard/") ? v : "#");
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(node.style, v); // CSSOM: the policy forbids style attributes
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function link(route, text) { return el("a", { href: "#" + route }, text); }
function badge(text, extra = "") { return el("span", { class: `badge ${text} ${extra}` }, text); }

function when(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function secs(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(2)} h`;
}
function money(v) { return (v || 0) < 100 ? (v || 0).toFixed(4) : (v || 0).toLocaleString(undefined, { maximumFractionDigits: 2 }); }
function mib(v) { return v === null || v === undefined ? "—" : v >= 1024 ? `${(v / 1024).toFixed(1)} GiB` : `${v} MiB`; }
function bytes(v) { return v === null || v === undefined ? "—" : mib(Math.round(v / 1048576)); }

// columns: [title, row => value or Node, "num"?]
function table(columns, rows, empty = "Nothing here yet.") {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  const head = el("tr", {}, columns.map(([t, , cls]) => el("th", { class: cls }, t)));
  const body = rows.map((r) => el("tr", {}, columns.map(([, get, cls]) => el("td", { class: cls }, get(r)))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

function tiles(items) {
  return el("div", { class: "tiles" }, items.map(([label, value]) =>
    el("div", { class: "tile" }, el("div", { class: "muted" }, label), el("div", { class: "value" }, value))));
}

// -- pages --------------------------------------------------------------------------------------------
const PAGES = [
  ["apps", "Apps"], ["calls", "Calls"], ["containers", "Containers"], ["workers", "Workers"],
  ["sandboxes", "Sandboxes"], ["volumes", "Volumes"], ["logs", "Logs"], ["usage", "Usage"],
];

async function appsPage() {
  const { apps } = await api("/v1/apps", { all: 1 });
  const live = apps.filter((a) => a.state !== "stopped");
  return [
    el("h1", {}, "Apps"),
    tiles([["Live apps", live.length], ["Containers", live.reduce((n, a) => n + a.containers, 0)]]),
    table([
      ["App", (a) => link(`/apps/${encodeURIComponent(a.app_id)}`, a.name || a.app_id)],
      ["Id", (a) => el("span", { class: "mono" }, a.app_id)],
      ["State", (a) => badge(a.state)],
      ["Containers", (a) => a.containers, "num"],
      ["Created", (a) => when(a.created_at)],
      ["Stopped", (a) => a.stop_reason ? `${when(a.stopped_at)} (${a.stop_reason})` : ""],
    ], apps, "No apps yet: `vivace run app.py` starts one."),
  ];
}

async function appPage(appId) {
  const [{ functions }, { calls }, { containers }] = await Promise.all([
    api(`/v1/apps/${encodeURIComponent(appId)}/functions`),
    api("/v1/calls", { app: appId, limit: 20 }),
    api("/v1/containers", { app: appId }),
  ]);
  return [
    el("h1", {}, "App ", el("span", { class: "mono" }, appId)),
    el("h2", {}, "Functions"),
    table([
      ["Function", (f) => f.name],
      ["Queued", (f) => f.backlog, "num"], ["Running", (f) => f.running, "num"],
      ["Containers", (f) => f.containers, "num"],
      ["Resources", (f) => `${f.cpu} cores, ${mib(f.memory)}` + (f.gpu ? `, ${f.gpu.map((g) => `${g.count} x ${g.type || "any GPU"}`).join(" or ")}` : "")],
      ["Scaling", (f) => `${f.min_containers}–${f.max_containers ?? "∞"}`],
      ["Kind", (f) => [f.web ? "web " : "", f.schedule ? "scheduled" : ""].join("") || "function"],
    ], functions),
    el("h2", {}, "Recent calls"), callsTable(calls),
    el("h2", {}, "Live containers"), containersTable(containers),
  ];
}

function callsTable(calls) {
  return table([
    ["Call", (c) => el("span", { class: "mono" }, c.call_id)],
    ["Function", (c) => `${c.app}.${c.function}`],
    ["Status", (c) => badge(c.status)],
    ["Inputs", (c) => `${c.done} / ${c.inputs}`, "num"],
    ["Failed", (c) => c.failures, "num"], ["Retried", (c) => c.retried, "num"],
    ["Duration", (c) => secs(c.duration_s), "num"],
    ["Cost", (c) => money(c.cost), "num"],
    ["Started", (c) => when(c.created_at)],
    ["Error", (c) => el("span", { class: "error" }, c.error || ""), "wrap"],
  ], calls, "No calls yet.");
}

async function callsPage() {
  const { calls } = await api("/v1/calls", { limit: 200 });
  const running = calls.filter((c) => c.status === "running").length;
  const failed = calls.filter((c) => c.status === "failed").length;
  return [el("h1", {}, "Calls"), tiles([["Shown", calls.length], ["Running", running], ["Failed", failed]]), callsTable(calls)];
}

const PHASES = [["placement", "created_at", "assigned_at"], ["image", "assigned_at", "image_ready_at"],
  ["start", "image_ready_at", "started_at"], ["enter", "started_at", "ready_at"]];

function phaseBar(c) {
  const parts = PHASES.map(([name, a, b]) => [name, c[a] != null && c[b] != null ? Math.max(0, c[b] - c[a]) : 0]);
  const total = parts.reduce((n, [, v]) => n + v, 0);
  const bar = el("div", { class: "bar", title: parts.map(([n, v]) => `${n} ${secs(v)}`).join(", ") },
    parts.map(([n, v]) => el("span", { class: `p-${n}`, style: { width: `${total ? (100 * v) / total : 0}%` } })));
  return el("div", {}, bar, el("span", { class: "muted" }, total ? ` ${secs(total)}` : ""));
}

function containersTable(rows) {
  return table([
    ["Container", (c) => link(`/containers/${encodeURIComponent(c.container_id)}`, c.container_id)],
    ["Function", (c) => c.function],
    ["State", (c) => badge(c.state, c.exit_code ? "bad" : "")],
    ["Worker", (c) => el("span", { class: "mono" }, c.worker_id || "—")],
    ["Pool", (c) => c.pool || "—"],
    ["Start (placement | image | start | @enter)", (c) => phaseBar(c)],
    ["Inputs", (c) => `${c.inputs_held} now, ${c.inputs_served} done`, "num"],
    ["CPU used", (c) => (c.cpu_used_s == null ? "—" : secs(c.cpu_used_s)), "num"],
    ["Stopped", (c) => c.stop_reason || "", "wrap"],
  ], rows, "No containers.");
}

function phaseLegend() {
  return el("div", { class: "legend" }, PHASES.map(([n]) => el("span", {}, el("i", { class: `p-${n}` }), n)));
}

async function containersPage() {
  const { containers } = await api("/v1/containers", { all: 1 });
  const live = containers.filter((c) => c.state !== "stopped");
  return [el("h1", {}, "Containers"), tiles([["Live", live.length], ["Shown", containers.length]]),
    phaseLegend(), containersTable(containers)];
}

async function containerPage(cid) {
  const c = await api(`/v1/containers/${encodeURIComponent(cid)}`);
  const m = c.meter;
  const kv = (pairs) => el("div", { class: "kv card" }, pairs.flatMap(([k, v]) => [el("span", { class: "muted" }, k), el("span", {}, v)]));
  return [
    el("h1", {}, "Container ", el("span", { class: "mono" }, cid)),
    kv([["Function", c.function], ["App", c.app_id], ["State", badge(c.state)], ["Stopped because", c.stop_reason || "—"],
      ["Worker", c.worker_id || "—"], ["Pool", m.pool || "—"],
      ["Reserved", `${m.reserved.cpu} cores, ${mib(m.reserved.memory_mib)}` + (m.gpu_count ? `, ${m.gpu_count} x ${m.gpu_type}` : "")]]),
    el("h2", {}, "Start phases"), phaseLegend(), phaseBar({ ...m.phases }),
    kv(Object.entries(m.phases).map(([k, v]) => [k.replace("_at", ""), when(v)])),
    el("h2", {}, "Meter"),
    kv([["Billed", secs(m.billed_s)], ["Cold start", secs(m.cold_s)], ["Busy", secs(m.busy_s)], ["Idle", secs(m.idle_s)],
      ["Rate", `${m.rate_per_s.toFixed(8)} / s`], ["Cost", money(m.cost)],
      ["CPU used (kernel)", m.cpu_used_s == null ? "not measured" : secs(m.cpu_used_s)],
      ["Peak memory (kernel)", bytes(m.memory_peak)]]),
    el("p", {}, link(`/logs?container=${encodeURIComponent(cid)}`, "This container's logs")),
  ];
}

async function workersPage() {
  const { workers } = await api("/v1/workers");
  return [
    el("h1", {}, "Workers"),
    tiles([["Workers", workers.length], ["Cores", workers.reduce((n, w) => n + w.cpu, 0)],
      ["GPUs", workers.reduce((n, w) => n + w.gpus.length, 0)]]),
    table([
      ["Worker", (w) => w.name], ["Id", (w) => el("span", { class: "mono" }, w.worker_id)],
      ["Pool", (w) => w.labels.pool || "default"], ["State", (w) => badge(w.state)],
      ["Cores used / free", (w) => `${w.cpu_used.toFixed(2)} / ${(w.cpu - w.cpu_used).toFixed(2)} of ${w.cpu}`, "num"],
      ["Memory used / free", (w) => `${mib(w.memory_used)} / ${mib(w.memory - w.memory_used)}`, "num"],
      ["GPUs", (w) => w.gpus.length ? w.gpus.map((g) => {
        const s = (w.gpu_stats || []).find((x) => x.index === g.index);
        return `${g.index}: ${g.type}` + (s ? ` ${s.utilization}% busy, ${mib(s.memory_used_mib)} used` : "");
      }).join("; ") : "none", "wrap"],
      ["Runtimes", (w) => w.runtimes.join(", ")], ["Last seen", (w) => when(w.heartbeat_at)],
    ], workers, "No workers: `vivace worker --server URL --token ...` adds one."),
  ];
}

async function sandboxesPage() {
  const { sandboxes } = await api("/v1/sandboxes", { include_finished: 1 });
  return [el("h1", {}, "Sandboxes"), table([
    ["Sandbox", (s) => el("span", { class: "mono" }, s.sandbox_id)], ["Name", (s) => s.name || ""],
    ["App", (s) => el("span", { class: "mono" }, s.app_id)], ["State", (s) => badge(s.state)],
    ["Tags", (s) => Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join(", "), "wrap"],
    ["Created", (s) => when(s.created_at)], ["Exit", (s) => s.returncode ?? ""],
  ], sandboxes, "No sandboxes.")];
}

async function volumesPage() {
  const { objects } = await api("/v1/objects/volume");
  return [el("h1", {}, "Volumes"), table([
    ["Volume", (v) => v.name], ["Id", (v) => el("span", { class: "mono" }, v.object_id)], ["Created", (v) => when(v.created_at)],
  ], objects, "No named volumes.")];
}

const PALETTE = ["#3a5bd9", "#e07b39", "#2f9e6f", "#b0479b", "#c9a227", "#4aa3c7", "#8c5e3c", "#6b6b76"];

function lastDays(n) {
  const out = [];
  for (let i = n - 1; i >= 0; i--) out.push(new Date(Date.now() - i * 86400000).toISOString().slice(0, 10));
  return out;
}

function costChart(rows, key, days = lastDays(30)) {
  // stacked bars: one per day, one colour per `key` value (the top 7; the rest as "others")
  const totals = {};
  for (const r of rows) totals[r[key]] = (totals[r[key]] || 0) + r.cost;
  const top = Object.entries(totals).sort((a, b) => b[1] - a[1]).slice(0, 7).map(([k]) => k);
  const groupOf = (v) => (top.includes(v) ? v : "others");
  days = [...new Set([...days, ...rows.map((r) => r.day)])].sort();
  const byDay = Object.fromEntries(days.map((d) => [d, {}]));
  for (const r of rows) { const g = groupOf(r[key]); byDay[r.day][g] = (byDay[r.day][g] || 0) + r.cost; }
  const groups = [...top, ...(Object.keys(totals).length > top.length ? ["others"] : [])];
  const max = Math.max(1e-12, ...days.map((d) => Object.values(byDay[d]).reduce((a, b) => a + b, 0)));
  const W = 760, H = 220, left = 56, bottom = 22, bw = Math.max(6, Math.min(40, (W - left) / Math.max(1, days.length) - 6));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", preserveAspectRatio: "xMinYMid meet", role: "img", "aria-label": `cost per day by ${key}` });
  for (let i = 0; i <= 4; i++) {
    const y = H - bottom - ((H - bottom - 10) * i) / 4;
    chart.append(svg("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#e2e2e7" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, money((max * i) / 4)));
  }
  days.forEach((d, i) => {
    const x = left + 6 + i * (bw + 6);
    let y = H - bottom;
    groups.forEach((g, gi) => {
      const v = byDay[d][g] || 0;
      const h = ((H - bottom - 10) * v) / max;
      if (h > 0) {
        const rect = svg("rect", { x, y: y - h, width: bw, height: h, fill: PALETTE[gi % PALETTE.length] });
        rect.append(svg("title", {}, `${d} ${g}: ${money(v)}`));
        chart.append(rect);
        y -= h;
      }
    });
    if (days.length <= 16 || i % Math.ceil(days.length / 10) === 0) chart.append(svg("text", { x: x + bw / 2, y: H - 6, "text-anchor": "middle" }, d.slice(5)));
  });
  const legend = el("div", { class: "legend" }, groups.map((g, gi) => el("span", {}, el("i", { style: { background: PALETTE[gi % PALETTE.length] } }), g)));
  return el("div", { class: "chart" }, chart, legend);
}

async function usagePage() {
  const since = Math.floor(Date.now() / 1000) - 30 * 86400;
  const [byApp, byFn, byGpu, limits] = await Promise.all([
    api("/v1/usage", { by: "app,day", since }), api("/v1/usage", { by: "function,day", since }),
    api("/v1/usage", { by: "gpu,day", since }), api("/v1/spend-limits"),
  ]);
  const sum = (rows, k) => Object.values(rows.reduce((acc, r) => {
    const g = acc[r[k]] || (acc[r[k]] = { name: r[k], cost: 0, billed_s: 0, busy_s: 0, cold_s: 0, idle_s: 0, gpu_s: 0 });
    for (const f of ["cost", "billed_s", "busy_s", "cold_s", "idle_s", "gpu_s"]) g[f] += r[f];
    return acc;
  }, {})).sort((a, b) => b.cost - a.cost);
  const summary = (rows, k, title) => table([
    [title, (r) => r.name], ["Billed", (r) => secs(r.billed_s), "num"], ["Cold start", (r) => secs(r.cold_s), "num"],
    ["Busy", (r) => secs(r.busy_s), "num"], ["Idle", (r) => secs(r.idle_s), "num"],
    ["GPU time", (r) => secs(r.gpu_s), "num"], ["Cost", (r) => money(r.cost), "num"],
  ], sum(rows, k), "No usage in the last 30 days.");
  const total = byApp.total || { cost: 0, billed_s: 0 };
  return [
    el("h1", {}, "Usage, last 30 days"),
    tiles([["Cost", money(total.cost)], ["Container time", secs(total.billed_s)], ["Containers", total.containers || 0]]),
    el("h2", {}, "Cost per day, by app"), costChart(byApp.rows, "app"),
    el("h2", {}, "Cost per day, by function"), costChart(byFn.rows, "function"),
    el("h2", {}, "Cost per day, by GPU type"), costChart(byGpu.rows, "gpu"),
    el("h2", {}, "By app"), summary(byApp.rows, "app", "App"),
    el("h2", {}, "By function"), summary(byFn.rows, "function", "Function"),
    el("h2", {}, "Spend limits"),
    table([["Scope", (l) => (l.app === null ? "workspace" : `app ${l.app}`)], ["Period", (l) => l.period],
      ["Limit", (l) => money(l.amount), "num"], ["Spent", (l) => money(l.spent), "num"],
      ["State", (l) => (l.reached ? el("span", { class: "error" }, "reached: no new containers") : "ok")]],
    limits.limits, "No spend limits (`vivace usage limit set`)."),
  ];
}

async function logsPage(params) {
  const gen = generation;
  const { apps } = await api("/v1/apps", { all: 1 });
  const appSel = el("select", { id: "log-app" }, el("option", { value: "" }, "— choose an app —"),
    apps.map((a) => el("option", { value: a.app_id }, `${a.name || a.app_id} (${a.state})`)));
  const search = el("input", { type: "text", id: "log-search", placeholder: "search text" });
  const streams = ["stdout", "stderr", "system", "platform"].map((s) => {
    const box = el("input", { type: "checkbox", checked: "checked", value: s });
    return [box, el("label", {}, box, ` ${s}`)];
  });
  const out = el("div", { class: "logs", id: "log-lines" });
  const note = el("span", { class: "muted" });
  if (params.get("container")) appSel.disabled = true;
  appSel.value = params.get("app") || "";
  search.value = params.get("search") || "";
  let restart = 0;
  const follow = async () => {
    const mine = ++restart;
    out.replaceChildren();
    const query = { container: params.get("container"), app: params.get("container") ? null : appSel.value,
      search: search.value, stream: streams.filter(([b]) => b.checked).map(([b]) => b.value).join(",") };
    if (!query.container && !query.app) { note.textContent = "Choose an app."; return; }
    if (!query.stream) { note.textContent = "Choose a stream."; return; }
    let cursor = 0;
    note.textContent = "following…";
    while (gen === generation && mine === restart) {
      let page;
      try { page = await api("/v1/logs", { ...query, cursor, wait: cursor ? 10 : 0 }); }
      catch (e) { note.textContent = `error: ${e.message}`; await new Promise((r) => setTimeout(r, 2000)); continue; }
      if (gen !== generation || mine !== restart) return;
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      for (const ln of page.lines) {
        out.append(el("div", { class: `line ${ln.stream}` }, el("span", { class: "ts" }, when(ln.ts)),
          ln.stream === "system" || ln.stream === "platform" ? "[vivace] " : "", ln.line));
      }
      while (out.childElementCount > 5000) out.firstElementChild.remove();
      if (stick) out.scrollTop = out.scrollHeight;
      cursor = page.cursor;
    }
  };
  appSel.addEventListener("change", follow);
  search.addEventListener("change", follow);
  streams.forEach(([b]) => b.addEventListener("change", follow));
  setTimeout(follow, 0);
  const what = params.get("container") ? ["container ", el("span", { class: "mono" }, params.get("container"))] : [];
  return [el("h1", {}, "Logs ", ...what), el("div", { class: "controls" }, appSel, search, streams.map(([, l]) => l), note), out];
}

// -- routing and refresh ---------------------------------------------------------------------------------
function route() {
  const [path, query] = (location.hash.slice(1) || "/apps").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  const [page, id] = parts;
  if (page === "apps" && id) return { key: "apps", render: () => appPage(id) };
  if (page === "containers" && id) return { key: "containers", render: () => containerPage(id) };
  const table = { apps: appsPage, calls: callsPage, containers: containersPage, workers: workersPage,
    sandboxes: sandboxesPage, volumes: volumesPage, usage: usagePage };
  if (page === "logs") return { key: "logs", render: () => logsPage(params), once: true };
  return { key: table[page] ? page : "apps", render: table[page] || appsPage };
}

function drawNav(active) {
  document.getElementById("nav").replaceChildren(...PAGES.map(([k, label]) =>
    el("a", { href: `#/${k}`, class: k === active ? "active" : "" }, label)));
}

async function show() {
  const gen = ++generation;
  const r = route();
  drawNav(r.key);
  const draw = async () => {
    try {
      const nodes = await r.render();
      if (gen !== generation) return false;
      view.replaceChildren(...[nodes].flat());
      statusEl.textContent = `updated ${new Date().toLocaleTimeString()}`;
      return true;
    } catch (e) {
      if (gen !== generation) return false;
      if (e instanceof ApiError && e.status === 401) {
        view.replaceChildren(el("div", { class: "card" }, el("h1", {}, "Signed out"),
          el("p", {}, "This browser's session has ended. Run `vivace dashboard` to open the dashboard again.")));
        return false;
      }
      statusEl.textContent = `error: ${e.message}`;
      return true;
    }
  };
  if (!(await draw()) || r.once) return;
  const tick = async () => {
    if (gen !== generation) return;
    if (document.visibilityState === "visible" && !document.activeElement?.matches("input, select")) await draw();
    setTimeout(tick, REFRESH_MS);
  };
  setTimeout(tick, REFRESH_MS);
}

window.addEventListener("hashchange", show);
show();
