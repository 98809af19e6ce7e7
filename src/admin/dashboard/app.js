// Gantry's dashboard: reads the admin JSON API every REFRESH_MS and renders it; with the admin
// token (kept in this tab's sessionStorage, sent as a bearer header, never a cookie) it sets
// weights, drives rollouts and drains backends. DOM built with textContent only: nothing from the
// API is ever parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
// Certificates change rarely: every fifth refresh. The fleet (read from etcd by the instance):
// every second refresh, and never again once the instance says it has no etcd.
const CERT_EVERY = 5;
const FLEET_EVERY = 2;
const HISTORY = 150;

const state = {
  token: sessionStorage.getItem("gantry-token") || "",
  tokenState: "none", // none | checking | ok | wrong | disabled
  data: {},
  prevVersions: null,
  rates: {},
  scaleHistory: {},
  tick: 0,
  forms: {},
};

// ---- DOM helpers ----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "disabled") el.disabled = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, attrs) {
  return h("div", { class: "scroll" },
    h("table", attrs || {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows)));
}

function stateCell(s, extra) {
  return h("td", { class: `state state-${s}`, ...(extra || {}) }, s);
}

function num(v, digits) {
  if (v === undefined || v === null || Number.isNaN(v)) return "–";
  return typeof v === "number" ? v.toFixed(digits ?? 0) : String(v);
}

function pct(v) {
  return v === undefined || v === null ? "–" : `${(v * 100).toFixed(2)} %`;
}

function ms(v) {
  return v === undefined || v === null ? "–" : `${v.toFixed(1)} ms`;
}

function when(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Replaces a section's body, keeping keyboard focus on the control with the same data-key.
function render(id, ...content) {
  const body = document.querySelector(`#${id} .body`);
  const focused = document.activeElement && body.contains(document.activeElement)
    ? document.activeElement.dataset.key : undefined;
  body.replaceChildren(...content.flat().filter(Boolean));
  if (focused) {
    const again = body.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function say(text, kind) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.dataset.kind = kind || "";
}

// ---- the API ----

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// A write: the bearer token, a JSON body; resolves to [ok, parsed body].
async function write(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await r.json(); } catch (_) { /* an empty or non-JSON answer */ }
  if (r.status === 401) setTokenState("wrong");
  if (r.status === 403 && state.token) setTokenState("disabled");
  return [r.ok, answer, r.status];
}

async function act(what, method, path, body) {
  if (!canWrite()) return false;
  say(`${what}…`);
  const [ok, answer, status] = await write(method, path, body);
  if (ok) say(`${what}: done.`, "ok");
  else say(`${what} refused (${status}): ${answer.error || "no reason given"}`, "error");
  refresh();
  return ok;
}

function canWrite() {
  return state.tokenState === "ok";
}

// ---- the token ----

function setTokenState(s) {
  state.tokenState = s;
  const el = document.getElementById("token-state");
  el.dataset.state = s;
  el.textContent = {
    none: "Read-only: enter the admin token to change weights, rollouts and drains.",
    checking: "Checking the token…",
    ok: "Token accepted: actions are enabled (the token stays in this tab only).",
    wrong: "Wrong token: the admin API refused it. The dashboard is read-only.",
    disabled: "Admin writes are disabled on this instance (no token is configured). The dashboard is read-only.",
    unreachable: "The admin API could not be reached to check the token.",
  }[s];
  if (s === "wrong" || s === "disabled") sessionStorage.removeItem("gantry-token");
  for (const el of document.querySelectorAll("[data-write]")) el.disabled = s !== "ok";
}

async function useToken(token) {
  state.token = token.trim();
  if (!state.token) { setTokenState("none"); return; }
  setTokenState("checking");
  try {
    const [ok, , status] = await write("POST", "/api/v1/token");
    if (ok) {
      sessionStorage.setItem("gantry-token", state.token);
      setTokenState("ok");
    } else if (status !== 401 && status !== 403) {
      setTokenState("unreachable");
    }
  } catch (_) {
    setTokenState("unreachable");
  }
}

// A control that writes: enabled only with an accepted token.
function writeButton(label, key, onclick, cls) {
  return h("button", { type: "button", "data-write": "", "data-key": key, class: cls, disabled: !canWrite(), onclick }, label);
}

// ---- views ----

function renderOverview() {
  const { status, routes, certificates, rollouts } = state.data;
  if (!status) return;
  const sources = Object.entries(status.sources || {});
  const summary = `generation ${status.generation} · ${status.ready ? "ready" : "not ready"}`
    + ` · ${sources.length} source${sources.length === 1 ? "" : "s"}`
    + (rollouts ? ` · instance ${rollouts.instance}` : "");
  document.getElementById("summary").textContent = summary;
  const parts = [
    h("dl", { class: "kv card" },
      h("dt", {}, "generation"), h("dd", { id: "generation" }, String(status.generation)),
      h("dt", {}, "ready"), h("dd", { class: `state state-${status.ready ? "ok" : "not_ready"}` }, status.ready ? "yes" : "no"),
      h("dt", {}, "refused updates"), h("dd", {}, String(status.reload_failures)),
      h("dt", {}, "entrypoints"), h("dd", {}, (routes ? routes.entrypoints : []).join(", ") || "–"),
      h("dt", {}, "instance"), h("dd", {}, rollouts ? rollouts.instance : "–")),
    h("h3", {}, "Sources"),
    table(["source", "state", "reachable", "updates", "last update", "problems"],
      sources.map(([name, s]) => h("tr", { "data-source": name },
        h("td", {}, name),
        stateCell(s.ok ? "ok" : "refused"),
        h("td", { class: s.reachable ? "" : "state state-unreachable" }, s.reachable ? "yes" : `no: ${s.unreachable_because || ""}`),
        h("td", { class: "num" }, String(s.updates)),
        h("td", {}, when(s.at_unix)),
        h("td", { class: "text" }, (s.problems || []).join("; ") || "–")))),
  ];
  const last = status.last_error;
  parts.push(h("h3", {}, "Last refused update"),
    last ? h("p", { class: "card", id: "last-refusal" }, h("strong", {}, `${last.source} at ${when(last.at_unix)}: `), last.message)
      : h("p", { class: "muted" }, "none: every update so far was accepted."));
  if (certificates) {
    const certs = certificates.certificates || [];
    parts.push(h("h3", {}, `TLS certificates${certificates.acme ? " (ACME on)" : ""}`),
      certs.length === 0 ? h("p", { class: "muted" }, "no TLS certificates.")
        : table(["name", "source", "state", "issuer", "expires", "next attempt", "last error"],
          certs.map((c) => h("tr", { "data-cert": c.name },
            h("td", {}, c.name), h("td", {}, c.source), stateCell(c.state || "valid"),
            h("td", {}, c.issuer || "–"), h("td", {}, when(c.not_after)),
            h("td", {}, when(c.next_attempt)), h("td", { class: "text" }, c.last_error || "–")))));
  }
  render("overview", parts);
}

// {"policy":"ring_hash","header":"x-user"} reads "ring_hash (header x-user)".
function policyText(p) {
  if (typeof p === "string") return p;
  if (!p || typeof p !== "object") return "–";
  const { policy, ...rest } = p;
  const more = Object.entries(rest).map(([k, v]) => `${k.replace(/_/g, " ")} ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return more.length ? `${policy} (${more.join(", ")})` : String(policy);
}

// The router's match, as /api/v1/routes gives it: {"hosts": [..], "path": {"prefix": ".."} or
// {"exact": ".."}, "methods": [..], "headers": [[name, value]], "query": [[key, value]]}.
function ruleOf(r) {
  const m = r.match || {};
  const parts = [];
  if (m.hosts && m.hosts.length) parts.push(`host ${m.hosts.join(" | ")}`);
  if (m.path && m.path.prefix !== undefined) parts.push(`path ${m.path.prefix}*`);
  if (m.path && m.path.exact !== undefined) parts.push(`path = ${m.path.exact}`);
  if (m.methods && m.methods.length) parts.push(`method ${m.methods.join(" | ")}`);
  for (const [k, v] of m.headers || []) parts.push(`header ${k}: ${v}`);
  for (const [k, v] of m.query || []) parts.push(`query ${k}=${v}`);
  if (r.strip_prefix) parts.push("strip prefix");
  return parts.join(", ") || "every request";
}

function renderRouters() {
  const { routes } = state.data;
  if (!routes) return;
  const rows = Object.entries(routes.routers).map(([name, r]) => h("tr", { "data-router": name },
    h("td", {}, name), h("td", { class: "rule" }, ruleOf(r)), h("td", {}, r.service || "–"),
    h("td", {}, (r.entrypoints || []).join(", ") || "all"),
    h("td", {}, (r.middlewares || []).join(" → ") || "–"),
    h("td", {}, r.tls ? `TLS${r.tls.resolver ? ` (ACME ${r.tls.resolver})` : " (default resolver)"}` : "–"),
    h("td", { class: "num" }, r.priority === undefined ? "–" : String(r.priority))));
  render("routers", table(["router", "rule", "service", "entrypoints", "middlewares", "TLS", "priority"], rows));
}

function renderServices() {
  const { routes } = state.data;
  if (!routes) return;
  const cards = Object.entries(routes.services).map(([name, s]) => h("div", { class: "card", "data-service": name },
    h("h3", {}, name),
    h("p", { class: "muted" },
      `policy ${policyText(s.policy)} · in flight ${s.in_flight}`
      + ` of ${s.limits.max_pending_requests} · breaker `, h("span", { class: `state state-${s.breaker}` }, s.breaker),
      s.health_check ? ` · health check ${s.health_check.path || ""} every ${s.health_check.interval || "?"}` : ""),
    table(["backend", "version", "weight", "state", "in flight", "latency", "ejections", "conns", ""],
      s.backends.map((b) => h("tr", { "data-backend": b.url },
        h("td", {}, b.url), h("td", {}, b.version || "–"), h("td", { class: "num" }, String(b.weight ?? 1)),
        stateCell(b.state, { title: b.reason || "" }),
        h("td", { class: "num" }, String(b.in_flight)),
        h("td", { class: "num" }, ms(b.latency_ewma_ms)),
        h("td", { class: "num" }, String(b.ejections)),
        h("td", { class: "num" }, `${b.open_connections} (${b.idle_connections} idle)`),
        h("td", {}, b.state === "draining" ? "" : writeButton("Drain", `drain:${name}:${b.url}`,
          () => act(`Drain ${b.url}`, "POST", `/api/v1/services/${encodeURIComponent(name)}/drain`, { url: b.url }))))))));
  render("services", h("div", { class: "grid" }, cards));
}

// Request and error rates per version, from two readings of the totals.
function updateRates(versions) {
  const now = performance.now();
  const prev = state.prevVersions;
  if (prev) {
    const dt = (now - prev.at) / 1000;
    for (const [svc, sv] of Object.entries(versions.services)) {
      for (const [v, f] of Object.entries(sv.versions)) {
        const p = prev.data.services[svc] && prev.data.services[svc].versions[v];
        if (!p || dt <= 0) continue;
        const req = f.requests - p.requests;
        state.rates[`${svc}/${v}`] = { rps: req / dt, errors: req > 0 ? (f.errors - p.errors) / req : 0 };
      }
    }
  }
  state.prevVersions = { at: now, data: versions };
}

// The weight editor and the rollout form of one service: built once (so that typing is never
// interrupted by a refresh), rebuilt only when the service's versions change.
function formsOf(svc, versions) {
  const key = `${svc}|${versions.join(",")}`;
  if (state.forms[svc] && state.forms[svc].key === key) return state.forms[svc].node;
  const inputs = versions.map((v) => h("label", {}, `${v} weight`,
    h("input", { type: "number", min: 0, max: 10000, step: 1, "data-weight-for": v, "data-write": "", "data-key": `w:${svc}:${v}`, disabled: !canWrite() })));
  const current = state.data.versions.services[svc].versions;
  inputs.forEach((l, i) => { l.querySelector("input").value = current[versions[i]].weight; });
  const setWeights = () => {
    const weights = {};
    for (const l of inputs) {
      const input = l.querySelector("input");
      weights[input.dataset.weightFor] = Number(input.value);
    }
    act(`Set ${svc}'s weights to ${JSON.stringify(weights)}`, "PUT", `/api/v1/services/${encodeURIComponent(svc)}/weights`, weights);
  };
  const select = (cls, chosen) => h("select", { class: cls, "data-write": "", "data-key": `${cls}:${svc}`, disabled: !canWrite() },
    versions.map((v) => h("option", { value: v, selected: v === chosen }, v)));
  const stable = select("rollout-stable", versions[0]);
  const canary = select("rollout-canary", versions[versions.length - 1]);
  const field = (cls, label, value) => h("label", {}, label,
    h("input", { class: `${cls} wide`, value, "data-write": "", "data-key": `${cls}:${svc}`, disabled: !canWrite() }));
  const steps = field("rollout-steps", "steps (% canary)", "5, 10, 25, 50, 100");
  const stepTime = field("rollout-step-time", "step time", "60s");
  const minRequests = field("rollout-min-requests", "min requests per step", "100");
  const slack = field("rollout-p99-slack", "p99 slack", "5ms");
  const start = () => {
    const spec = {
      stable: stable.value, canary: canary.value,
      steps: steps.querySelector("input").value.split(/[\s,]+/).filter(Boolean).map(Number),
      step_time: stepTime.querySelector("input").value.trim(),
      min_requests: Number(minRequests.querySelector("input").value),
      p99_slack: slack.querySelector("input").value.trim(),
    };
    act(`Start a rollout of ${svc}`, "POST", `/api/v1/rollouts/${encodeURIComponent(svc)}`, spec);
  };
  const node = h("div", {},
    h("div", { class: "controls weights-form" }, inputs,
      writeButton("Set weights", `set:${svc}`, setWeights, "primary set-weights"),
      writeButton("Clear override", `clear:${svc}`, () => act(`Clear ${svc}'s weight override`, "DELETE", `/api/v1/services/${encodeURIComponent(svc)}/weights`), "clear-weights")),
    h("div", { class: "controls rollout-form" },
      h("label", {}, "stable", stable), h("label", {}, "canary", canary), steps, stepTime, minRequests, slack,
      writeButton("Start rollout", `start:${svc}`, start, "rollout-start")));
  state.forms[svc] = { key, node };
  return node;
}

function renderVersions() {
  const { versions } = state.data;
  if (!versions) return;
  const services = Object.entries(versions.services);
  if (services.length === 0) {
    render("versions", h("p", { class: "muted" }, "No service has versions (gantry.version on backends, or versions in the file)."));
    return;
  }
  render("versions", h("div", { class: "grid" }, services.map(([svc, sv]) => {
    const names = Object.keys(sv.versions);
    const total = names.reduce((a, v) => a + sv.versions[v].weight, 0) || 1;
    return h("div", { class: "card", "data-service": svc },
      h("h3", {}, svc),
      table(["version", "weight", "share", "req/s", "errors now", "errors total", "p99"],
        names.map((v) => {
          const f = sv.versions[v];
          const r = state.rates[`${svc}/${v}`] || {};
          return h("tr", { "data-version": v },
            h("td", {}, v), h("td", { class: "num weight" }, String(f.weight)),
            h("td", { class: "num share" }, `${((100 * f.weight) / total).toFixed(1)} %`),
            h("td", { class: "num" }, num(r.rps, 1)), h("td", { class: "num" }, pct(r.errors)),
            h("td", { class: "num" }, pct(f.error_rate)), h("td", { class: "num" }, ms(f.p99_ms)));
        })),
      formsOf(svc, names));
  })));
}

function renderRollouts() {
  const { rollouts } = state.data;
  if (!rollouts) return;
  const entries = Object.entries(rollouts.rollouts);
  const cards = entries.map(([svc, r]) => {
    const decisions = rollouts.decisions.filter((d) => d.service === svc);
    const last = decisions[decisions.length - 1];
    const gate = (label, figure, bar) => h("tr", {}, h("td", {}, label), h("td", { class: "num" }, figure), h("td", { class: "num" }, bar));
    const over = ["promoted", "rolled_back", "aborted"].includes(r.phase);
    return h("div", { class: "card", "data-rollout": svc },
      h("h3", {}, `${svc}: ${r.spec.stable} → ${r.spec.canary}`),
      h("dl", { class: "kv" },
        h("dt", {}, "phase"), h("dd", { class: `phase state state-${r.phase}` }, r.phase),
        h("dt", {}, "step"), h("dd", { class: "step" }, `${r.step + 1} of ${(r.spec.shadow || []).length + r.spec.steps.length} (${(r.spec.shadow || []).map((p) => `shadow ${p}`).concat(r.spec.steps).join(" → ")} %)`),
        h("dt", {}, "canary weight"), h("dd", { class: "weight" }, `${r.weight} %`),
        r.mirror ? [h("dt", {}, "mirrored"), h("dd", { class: "mirror" }, `${r.mirror} % of ${r.spec.stable}'s requests copied to ${r.spec.canary} (answers discarded)`)] : null,
        h("dt", {}, "driven by"), h("dd", {}, r.driven_here ? `this instance (${rollouts.instance})` : "another instance"),
        h("dt", {}, "why"), h("dd", {}, r.reason || "–"),
        r.fleet_ready === false ? [h("dt", {}, "fleet"), h("dd", { class: "fleet-wait state state-draining" },
          (r.waiting_for || []).length
            ? `step on hold: waiting for ${r.waiting_for.join(", ")} to serve revision ${r.weights_revision || "…"}`
            : "step on hold until every instance serves its weights")] : null),
      last ? table(["gate", "canary now", "bar"], [
        gate("error rate", pct(last.canary.error_rate), `≤ ${pct(r.spec.max_error_rate)}`),
        gate("p99", ms(last.canary.p99_ms), `≤ ${r.spec.max_p99_ratio}× stable (${ms(last.stable.p99_ms)}) + ${r.spec.p99_slack}`),
        gate("requests this step", String(last.canary.requests), `≥ ${r.spec.min_requests}`),
      ]) : null,
      h("div", { class: "controls" },
        writeButton("Pause", `pause:${svc}`, () => act(`Pause ${svc}'s rollout`, "POST", `/api/v1/rollouts/${encodeURIComponent(svc)}/pause`), "pause"),
        writeButton("Resume", `resume:${svc}`, () => act(`Resume ${svc}'s rollout`, "POST", `/api/v1/rollouts/${encodeURIComponent(svc)}/resume`), "resume"),
        writeButton("Abort", `abort:${svc}`, () => act(`Abort ${svc}'s rollout`, "POST", `/api/v1/rollouts/${encodeURIComponent(svc)}/abort`), "abort")),
      h("h3", {}, "Timeline"),
      h("ol", { class: "timeline", reversed: true }, decisions.slice().reverse().map((d) => h("li", { "data-action": d.action, "data-step": d.step },
        h("strong", {}, d.action), ` · step ${d.step + 1} · canary ${d.weight} % · ${new Date(d.at_ms).toLocaleTimeString()} · ${d.instance}`,
        h("br"), h("span", { class: "muted" }, d.reason)))),
      over ? h("p", { class: "muted" }, "This rollout is over.") : null);
  });
  render("rollouts", cards.length ? h("div", { class: "grid" }, cards)
    : h("p", { class: "muted" }, "No rollout yet. Start one from a service under Versions (with the admin token)."));
}

function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 140, pad = 20;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...points.map((p) => Math.max(p.replicas, p.ready)));
  svg.setAttribute("aria-label", `recommended and ready replicas over the last ${points.length} readings; at most ${top}`);
  const x = (i) => pad + ((W - 2 * pad) * i) / Math.max(1, HISTORY - 1);
  const y = (v) => H - pad - ((H - 2 * pad) * v) / top;
  const line = (cls, f) => {
    const el = document.createElementNS(ns, "polyline");
    el.setAttribute("class", cls);
    el.setAttribute("points", points.map((p, i) => `${x(i).toFixed(1)},${y(f(p)).toFixed(1)}`).join(" "));
    return el;
  };
  const axis = document.createElementNS(ns, "line");
  axis.setAttribute("class", "axis");
  axis.setAttribute("x1", pad); axis.setAttribute("x2", W - pad);
  axis.setAttribute("y1", H - pad); axis.setAttribute("y2", H - pad);
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 2); label.setAttribute("y", pad - 6);
  label.textContent = `${top} replicas`;
  svg.append(axis, label, line("ready", (p) => p.ready), line("recommended", (p) => p.replicas));
  return svg;
}

/** Whose traffic a recommendation is made from, and who publishes it. */
function scopeText(s) {
  if (!s) return "this instance";
  if (s.figures === "fleet") {
    const out = (s.left_out || []).length ? `; left out (no recent report): ${s.left_out.join(", ")}` : "";
    return `the fleet's traffic (${s.instances.join(", ")}); published by this instance${out}`;
  }
  if (s.publishes) return "this instance's traffic; published by this instance";
  return `this instance's traffic only; ${s.publisher ? `${s.publisher} publishes the fleet's` : "no publisher known yet"}`;
}

function renderScaling() {
  const { scaling } = state.data;
  if (!scaling) return;
  for (const r of scaling.services) {
    const hist = (state.scaleHistory[r.service] ||= []);
    hist.push({ replicas: r.replicas, ready: r.ready, concurrency: r.stable.concurrency });
    if (hist.length > HISTORY) hist.shift();
  }
  const cards = scaling.services.map((r) => h("div", { class: "card", "data-scaled": r.service },
    h("h3", {}, r.service),
    h("dl", { class: "kv" },
      h("dt", {}, "recommended"), h("dd", { class: "replicas" }, `${r.replicas} replicas (${r.min}–${r.max}, ${r.mode})`),
      h("dt", {}, "ready"), h("dd", {}, String(r.ready)),
      h("dt", {}, "from"), h("dd", { class: "scope" }, scopeText(r.scope)),
      h("dt", {}, "concurrency"), h("dd", {}, `${num(r.stable.concurrency, 2)} over ${num(r.stable.seconds, 0)} s (burst ${num(r.burst.concurrency, 2)}); target ${r.target} per replica at ${pct(r.utilization)}`),
      h("dt", {}, "traffic"), h("dd", {}, `${num(r.stable.requests_per_second, 1)} req/s, ${ms(r.stable.mean_latency_ms)} mean, ${pct(r.stable.error_rate)} errors`),
      h("dt", {}, "why"), h("dd", {}, r.reason)),
    chart(state.scaleHistory[r.service]),
    h("p", { class: "muted" }, h("span", { class: "legend-recommended" }, "── recommended"), " · ", h("span", { class: "legend-ready" }, "- - ready"))));
  const s = scaling.scaler;
  const actions = (s.actions || []).slice().reverse();
  render("scaling",
    cards.length ? h("div", { class: "grid" }, cards) : h("p", { class: "muted" }, "No service is scaled (scale in the file, or aliyun.scale / gantry.scale labels)."),
    h("h3", {}, "Docker scaler"),
    !s.enabled ? h("p", { class: "muted" }, "off (gantry run --docker-scale turns it on).")
      : actions.length === 0 ? h("p", { class: "muted" }, `on; no action yet${(s.busy || []).length ? `; busy with ${s.busy.join(", ")}` : ""}.`)
        : table(["service", "action", "from", "to", "result", "reason", "took"], actions.map((a) => h("tr", {},
          h("td", {}, a.service), h("td", {}, a.action), h("td", { class: "num" }, String(a.from)), h("td", { class: "num" }, String(a.to)),
          h("td", {}, a.result), h("td", { class: "text" }, a.reason), h("td", { class: "num" }, `${a.seconds.toFixed(1)} s`)))));
}

// ---- the loop ----
function renderFleet() {
  const { fleet } = state.data;
  if (!fleet) return;
  if (!fleet.etcd) {
    render("fleet", h("p", { class: "muted" }, `No fleet: this instance (${fleet.instance}) runs without etcd.`));
    return;
  }
  const parts = [];
  if (fleet.error) parts.push(h("p", { class: "state state-unreachable", id: "fleet-error" }, `etcd could not be read: ${fleet.error}`));
  parts.push(table(["instance", "ready", "serves revision", "behind", "traffic", "drives", "admin", "entrypoints", "version", "up since"],
    fleet.instances.map((i) => h("tr", { "data-instance": i.id },
      h("td", {}, i.this ? `${i.id} (this one)` : i.id),
      stateCell(i.ready ? "ready" : "not_ready"),
      h("td", { class: "num revision" }, num(i.revision)),
      h("td", { class: `num behind${i.behind > 0 ? " state state-draining" : ""}` }, num(i.behind)),
      h("td", { class: "num share" }, i.share == null ? "–" : `${(i.share * 100).toFixed(0)} % (${num(Math.round(i.rps))}/s)`),
      h("td", { class: "drives" }, (i.drives || []).join(", ") || "–"),
      h("td", {}, i.admin || "–"),
      h("td", {}, Object.entries(i.entrypoints || {}).map(([n, a]) => `${n} ${a}`).join(", ") || "–"),
      h("td", {}, i.version || "–"),
      h("td", {}, when(i.started_unix))))));
  render("fleet", parts);
}

let inFlight = false;
async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const certs = state.tick % CERT_EVERY === 0 || !state.data.certificates;
    const fleet = !state.data.fleet || (state.data.fleet.etcd && state.tick % FLEET_EVERY === 0);
    const names = ["status", "routes", "versions", "rollouts", "scaling"]
      .concat(certs ? ["certificates"] : [], fleet ? ["fleet"] : []);
    const got = await Promise.all(names.map((n) => getJson(`/api/v1/${n}`)));
    names.forEach((n, i) => { state.data[n] = got[i]; });
    state.tick += 1;
    updateRates(state.data.versions);
    renderOverview();
    renderRouters();
    renderServices();
    renderVersions();
    renderRollouts();
    renderScaling();
    renderFleet();
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000} s`;
  } catch (e) {
    document.getElementById("updated").textContent = `the admin API did not answer: ${e.message}; retrying`;
  } finally {
    inFlight = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("token-input");
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken(input.value);
    input.value = "";
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    state.token = "";
    sessionStorage.removeItem("gantry-token");
    setTokenState("none");
  });
  if (state.token) useToken(state.token);
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
});
