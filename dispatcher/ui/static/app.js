// clusterchecks dashboard: one file, no framework, no build step, no network but the
// dispatcher that served it. It asks GET /v1/api/clusterchecks/overview every
// `refresh_s` seconds (a setting of the dispatcher) and redraws the data in place, so a
// filter being typed or a dialog left open is not disturbed. Text from the API (check
// names, targets, errors: written by config sources and agents) only ever goes into
// textContent, never into markup.
"use strict";

(() => {
  const API = "/v1/api/clusterchecks";
  const TOKEN_KEY = "clusterchecks.admin_token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STATUS = {
    failing: { symbol: "✗", label: "failing" },
    dangling: { symbol: "⚠", label: "dangling" },
    pending: { symbol: "◌", label: "pending" },
    ok: { symbol: "✓", label: "ok" },
  };
  const PAGE = 100;
  const ATTENTION = 25;

  const ui = {
    data: null, // the last overview
    detail: null, // {check, history} on a check's page
    error: null,
    shell: null, // the key of the view whose skeleton is on the page
    refreshes: 0,
    timer: null,
    generation: 0,
    refreshS: 3,
    updatedAt: null,
    searchTimer: null,
    statusSince: new Map(),
  };

  // ------------------------------------------------------------------ DOM helpers

  function build(el, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = value;
      else if (key === "class") el.setAttribute("class", value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) =>
    build(document.createElementNS(SVG_NS, tag), attrs, children);
  const $ = (id) => document.getElementById(id);

  function badge(kind, text, symbol) {
    return h("span", { class: `badge ${kind}` }, symbol ? h("span", { "aria-hidden": "true" }, symbol) : null, text);
  }
  function statusBadge(status) {
    const known = STATUS[status] || { symbol: "?", label: status };
    return badge(status, known.label, known.symbol);
  }
  // One wrapper per cell: on a narrow screen a cell is a two-column grid (its label,
  // then its content), and the content must be one grid item however many parts it has.
  function cell(label, attrs, ...children) {
    return h("td", { "data-label": label, ...(attrs || {}) }, h("div", {}, ...children));
  }

  // ------------------------------------------------------------------- formatting

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 1) return "just now";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }
  function since(unixS) {
    if (unixS === null || unixS === undefined || !ui.data) return "never";
    return ago(Math.max(0, ui.data.generated_at - unixS));
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
    return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  }
  function percent(share) {
    if (share === null || share === undefined) return "–";
    const p = share * 100;
    return `${p >= 99.95 || p === 0 ? p.toFixed(0) : p.toFixed(p >= 99 ? 2 : 1)} %`;
  }
  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function when(unixS) {
    return new Date(unixS * 1000).toLocaleString();
  }
  const short = (digest) => digest.slice(0, 12);

  // ------------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (exc) {
      throw new ApiError(0, "unreachable", `The dispatcher does not answer (${exc.message}).`);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (exc) {
      payload = null;
    }
    if (!response.ok) {
      const error = (payload && payload.error) || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`,
        error.message || `${response.status} ${response.statusText}`);
    }
    return payload;
  }

  function explainError(exc) {
    if (exc.status === 401) {
      return token()
        ? `The dispatcher refused the admin token: ${exc.message}`
        : "This dispatcher asks for the admin token: enter it above.";
    }
    if (exc.status === 403) return `This token is not the admin token: ${exc.message}`;
    if (exc.status === 503) return `No leader can answer now: ${exc.message}`;
    return exc.message;
  }

  // ---------------------------------------------------- banner and notice
  // The banner says why the data is not current (it goes when a refresh succeeds); the
  // notice says how an action ended. Two places, so neither hides the other.

  function showBanner(text) {
    const banner = $("banner");
    // An alert is spoken when its text changes: not again at every failed refresh.
    if (banner.hidden || banner.textContent !== text) banner.textContent = text;
    banner.hidden = false;
  }

  let noticeTimer = null;
  function notify(kind, text) {
    const notice = $("notice");
    clearTimeout(noticeTimer);
    notice.textContent = text;
    notice.className = `banner ${kind}`;
    notice.setAttribute("role", kind === "error" ? "alert" : "status");
    notice.hidden = false;
    if (kind === "info") noticeTimer = setTimeout(() => { notice.hidden = true; }, 10000);
  }

  // -------------------------------------------------------------------- routing

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    if (path.startsWith("/checks/")) {
      let digest = path.slice(8);
      try {
        digest = decodeURIComponent(digest);
      } catch (exc) {
        // A hand-typed hash that is not valid percent-encoding: asked for as it is (404).
      }
      return { view: "check", key: path, digest, params };
    }
    if (path === "/checks") return { view: "checks", key: "checks", params };
    if (path === "/nodes") return { view: "nodes", key: "nodes", params };
    return { view: "overview", key: "overview", params };
  }

  function setParams(params) {
    const query = params.toString();
    history.replaceState(null, "", `#/checks${query ? `?${query}` : ""}`);
  }

  // -------------------------------------------------------------------- refresh

  async function refresh() {
    clearTimeout(ui.timer);
    const generation = ++ui.generation;
    const where = route();
    const query = new URLSearchParams();
    if (where.view === "checks") {
      for (const key of ["q", "status", "node", "source", "offset"]) {
        const value = where.params.get(key);
        if (value) query.set(key, value);
      }
      query.set("limit", String(PAGE));
    } else {
      query.set("limit", String(where.view === "overview" ? ATTENTION : 1));
    }
    try {
      const overview = await api("GET", `${API}/overview?${query}`);
      let detail = null;
      if (where.view === "check") {
        const path = `${API}/checks/${encodeURIComponent(where.digest)}`;
        try {
          const [check, history] = await Promise.all([
            api("GET", path), api("GET", `${path}/history?limit=500`),
          ]);
          detail = { check, history };
        } catch (exc) {
          if (exc.status !== 404) throw exc;
          detail = { missing: true };
        }
      }
      if (generation !== ui.generation) return; // a newer refresh (a navigation) runs
      ui.data = overview;
      ui.detail = detail;
      ui.error = null;
      ui.updatedAt = new Date();
      ui.refreshS = overview.refresh_s;
      $("banner").hidden = true;
      announce(overview.totals);
      render(where);
    } catch (exc) {
      if (generation !== ui.generation) return;
      ui.error = exc;
      showBanner(explainError(exc));
      if (!ui.data) render(where);
    } finally {
      if (generation === ui.generation) {
        ui.refreshes += 1;
        document.body.dataset.refreshes = String(ui.refreshes);
        showLive();
        ui.timer = setTimeout(refresh, ui.refreshS * 1000);
      }
    }
  }

  // Screen readers hear what changed (the failing and dangling counts), not every
  // refresh: the header's "updated at" line is not a live region.
  function announce(totals) {
    const text = `${totals.failing} failing, ${totals.dangling} dangling of ${totals.checks} checks`;
    const region = $("announce");
    if (region.textContent !== text) region.textContent = text;
  }

  function showLive() {
    const live = $("live");
    const data = ui.data;
    if (ui.error) {
      live.classList.add("stale");
      live.textContent = ui.updatedAt
        ? `Not updated since ${clock(ui.updatedAt)}; retrying every ${ui.refreshS} s.`
        : `No data yet; retrying every ${ui.refreshS} s.`;
    } else if (data) {
      live.classList.remove("stale");
      const leader = data.leader ? `leader ${data.leader}, epoch ${data.epoch}` : "no leader";
      live.textContent = `Live: updated ${clock(ui.updatedAt)}, every ${data.refresh_s} s · ${leader}`;
    }
    const form = $("token-form");
    const help = $("token-help");
    if (data && !data.auth) {
      form.classList.add("not-needed");
      help.textContent = "No token needed: this dispatcher serves without auth (loopback).";
    } else {
      form.classList.remove("not-needed");
      help.textContent = token()
        ? "A token is set for this tab (session storage)."
        : "Kept in this tab only (session storage).";
    }
  }

  // --------------------------------------------------------------------- render

  function render(where) {
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      const current = link.dataset.view === (where.view === "check" ? "checks" : where.view);
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const main = $("main");
    if (ui.shell !== where.key) {
      main.replaceChildren(...SHELLS[where.view](where));
      ui.shell = where.key;
    }
    if (ui.data) {
      const focused = focusKey(document.activeElement);
      FILLS[where.view](where);
      if (focused) refocus(focused);
      // For measurements (make bench): when the first data was on the page.
      if (!performance.getEntriesByName("clusterchecks:first-render").length) {
        performance.mark("clusterchecks:first-render");
      }
    }
    main.dataset.view = where.view;
  }

  // Redrawing replaces the tables' buttons and links every refresh: the one that had the
  // keyboard focus gets it back (found again by its accessible name), so a keyboard or
  // screen-reader user on "Cordon node-a" or "Next" is not thrown back to the top.
  // A link by where it goes (many checks share a name), a button by its name.
  const nameOf = (el) => (el.tagName === "A" ? el.getAttribute("href")
    : (el.getAttribute("aria-label") || el.textContent).trim());

  function focusKey(el) {
    if (!el || el === document.body || !$("main").contains(el)) return null;
    if (!el.matches("button, a")) return null;
    return { tag: el.tagName, name: nameOf(el) };
  }

  function refocus(key) {
    if (!key) return;
    for (const el of $("main").querySelectorAll(key.tag)) {
      if (nameOf(el) === key.name) {
        if (document.activeElement !== el && !el.disabled) el.focus();
        return;
      }
    }
  }

  const SHELLS = {
    overview: () => [
      h("h1", { text: "Overview" }),
      h("div", { class: "cards", id: "ov-cards" }),
      h("section", { class: "panel", "aria-labelledby": "ov-attention-title" },
        h("h2", { id: "ov-attention-title", text: "Needs attention" }),
        h("div", { id: "ov-attention" })),
      h("section", { class: "panel", "aria-labelledby": "ov-replicas-title" },
        h("h2", { id: "ov-replicas-title", text: "Dispatcher replicas" }),
        h("div", { id: "ov-replicas" })),
      h("section", { class: "panel", "aria-labelledby": "ov-health-title" },
        h("h2", { id: "ov-health-title", text: "Leader health" }),
        h("div", { id: "ov-health" })),
    ],
    nodes: () => [
      h("div", { class: "panel-head" },
        h("h1", { text: "Nodes" }),
        h("button", { type: "button", id: "rebalance", onclick: rebalance },
          "Rebalance…")),
      h("div", { class: "panel", id: "nodes-table" }),
    ],
    checks: (where) => [h("h1", { text: "Checks" }), filterForm(where),
      h("div", { class: "panel", id: "checks-table" }), h("div", { class: "pager", id: "pager" })],
    check: () => [
      h("p", {}, h("a", { href: "#/checks" }, "← All checks")),
      h("div", { id: "check-head" }),
      h("div", { class: "cards", id: "check-cards" }),
      h("section", { class: "panel", "aria-labelledby": "check-chart-title" },
        h("h2", { id: "check-chart-title", text: "Duration of recent runs" }),
        h("div", { id: "check-chart" })),
      h("section", { class: "panel", "aria-labelledby": "check-errors-title" },
        h("h2", { id: "check-errors-title", text: "Last errors" }),
        h("div", { id: "check-errors" })),
    ],
  };

  const FILLS = {
    overview: fillOverview,
    nodes: fillNodes,
    checks: fillChecks,
    check: fillCheck,
  };

  // ------------------------------------------------------------------- overview

  function fillOverview() {
    const data = ui.data;
    const t = data.totals;
    const health = data.health;
    const countLink = (status, n) => h("a", { href: `#/checks?status=${status}` },
      badge(status, `${n} ${STATUS[status].label}`, STATUS[status].symbol));
    $("ov-cards").replaceChildren(
      h("section", { class: "card", "aria-labelledby": "card-leader" },
        h("h2", { id: "card-leader", text: "Leader" }),
        h("div", { class: "big", id: "leader-name" }, data.leader || "none"),
        h("dl", {},
          h("dt", { text: "Epoch" }), h("dd", { text: String(data.epoch) }),
          h("dt", { text: "Warm-up" }), h("dd", { text: data.warmup ? "yes: placements wait" : "no" }),
          h("dt", { text: "Health" }), h("dd", {}, badge(health.status, health.status)))),
      h("section", { class: "card", "aria-labelledby": "card-checks" },
        h("h2", { id: "card-checks", text: "Checks" }),
        h("div", { class: "big" }, String(t.checks)),
        h("div", { class: "counts" },
          countLink("failing", t.failing), countLink("dangling", t.dangling),
          countLink("pending", t.pending), countLink("ok", t.ok))),
      h("section", { class: "card", "aria-labelledby": "card-nodes" },
        h("h2", { id: "card-nodes", text: "Nodes" }),
        h("div", { class: "big" }, String(t.nodes)),
        h("dl", {},
          h("dt", { text: "Cordoned" }), h("dd", { text: String(t.cordoned_nodes) }),
          h("dt", { text: "Checks placed" }), h("dd", { text: `${t.dispatched} of ${t.checks}` }))),
      h("section", { class: "card", "aria-labelledby": "card-sources" },
        h("h2", { id: "card-sources", text: "Sources" }),
        h("div", { class: "big" }, String(data.sources.length)),
        h("ul", { class: "muted" }, data.sources.slice(0, 6).map((src) =>
          h("li", {}, h("a", { href: `#/checks?source=${encodeURIComponent(src.name)}` }, src.name),
            ` (${src.checks})`)))),
    );
    const attention = data.page.checks.filter((c) => c.status !== "ok" && c.status !== "pending");
    const needing = t.failing + t.dangling;
    $("ov-attention").replaceChildren(attention.length
      ? checksTable(attention, "Failing and dangling checks, failing first")
      : h("p", { class: "muted" }, "✓ No check is failing or dangling."),
    needing > attention.length
      ? h("p", {}, h("a", { href: "#/checks?status=failing" }, `All ${t.failing} failing checks`),
        t.dangling ? [" · ", h("a", { href: "#/checks?status=dangling" }, `all ${t.dangling} dangling`)] : null)
      : null);
    $("ov-replicas").replaceChildren(replicasTable(data));
    const components = Object.entries(health.components);
    $("ov-health").replaceChildren(components.length ? h("table", { class: "cards-on-narrow" },
      h("caption", { class: "visually-hidden", text: "Health components of the leader" }),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Component" }),
        h("th", { scope: "col", text: "Status" }), h("th", { scope: "col", text: "Message" }))),
      h("tbody", {}, components.map(([name, c]) => h("tr", {},
        cell("Component", {}, name), cell("Status", {}, badge(c.status, c.status)),
        cell("Message", {}, c.message || "–"))))) : h("p", { class: "muted", text: "No component reports." }));
  }

  function replicasTable(data) {
    if (!data.replicas) return h("p", { class: "error-text", text: data.replicas_error || "Unknown." });
    return h("table", { class: "cards-on-narrow", id: "replicas" },
      h("caption", { class: "visually-hidden", text: "Dispatcher replicas" }),
      h("thead", {}, h("tr", {}, ["Replica", "Role", "Health", "Ready", "Epoch", "URL", "Reported"]
        .map((name) => h("th", { scope: "col", text: name })))),
      h("tbody", {}, data.replicas.map((r) => h("tr", {},
        cell("Replica", {}, r.identity),
        cell("Role", {}, badge(r.role, r.role)),
        cell("Health", {}, badge(r.status, r.status)),
        cell("Ready", {}, r.ready ? badge("ready", "ready", "✓") : badge("failing", "not ready", "✗")),
        cell("Epoch", { class: "num" }, String(r.epoch)),
        cell("URL", { class: "target" }, r.url),
        cell("Reported", {}, ago(r.age_s))))));
  }

  // ---------------------------------------------------------------------- nodes

  function nodeState(node) {
    if (node.drained) return badge("drained", "drained", "⏏");
    if (node.cordoned) return badge("cordoned", "cordoned", "⛔");
    return badge("ready", "ready", "✓");
  }

  function loadBar(node) {
    const share = node.busyness;
    const width = Math.min(100, Math.round(share * 100));
    const text = `${percent(share)} of capacity ${node.capacity}`;
    return h("div", { class: "bar" },
      h("div", { class: "bar-track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-valuenow": String(Math.round(share * 100)), "aria-label": `Load of ${node.name}: ${text}` },
      h("div", { class: `bar-fill${share > 1 ? " over" : ""}`, style: null, "data-width": width })),
      h("span", { class: "muted", text }));
  }

  function fillNodes() {
    const nodes = ui.data.nodes;
    const holder = $("nodes-table");
    if (!nodes.length) {
      holder.replaceChildren(h("p", { class: "muted", text: "No node agent has registered." }));
      return;
    }
    holder.replaceChildren(h("table", { class: "cards-on-narrow", id: "nodes" },
      h("caption", { class: "visually-hidden", text: "Node agents" }),
      h("thead", {}, h("tr", {}, ["Node", "State", "Heartbeat", "Load", "Checks", "Failing", "Labels", "Actions"]
        .map((name) => h("th", { scope: "col", text: name })))),
      h("tbody", {}, nodes.map((node) => h("tr", { "data-node": node.name },
        cell("Node", {}, h("a", { href: `#/checks?node=${encodeURIComponent(node.name)}` }, node.name)),
        cell("State", { class: "node-state" }, nodeState(node)),
        cell("Heartbeat", {}, ago(node.heartbeat_age_s)),
        cell("Load", {}, loadBar(node)),
        cell("Checks", { class: "num" }, String(node.checks)),
        cell("Failing", { class: "num" }, node.failing ? badge("failing", String(node.failing), "✗") : "0"),
        cell("Labels", {}, Object.entries(node.labels).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
        cell("Actions", {}, h("div", { class: "actions" },
          node.cordoned
            ? actionButton("Uncordon", node.name, () => nodeAction(node.name, "uncordon"))
            : actionButton("Cordon", node.name, () => nodeAction(node.name, "cordon")),
          actionButton("Drain", node.name, () => nodeAction(node.name, "drain"), "danger"))))))));
    // Widths through CSSOM: the page's policy allows no inline style attributes.
    for (const fill of holder.querySelectorAll(".bar-fill")) fill.style.width = `${fill.dataset.width}%`;
  }

  function actionButton(verb, target, onclick, kind) {
    return h("button", { type: "button", class: kind || null, "data-action": verb.toLowerCase(),
      "aria-label": `${verb} ${target}`, onclick }, verb);
  }

  const NODE_ACTIONS = {
    cordon: "No new check will go to this node; its checks stay where they are.",
    uncordon: "The node takes new checks again (this also ends an isolate).",
    drain: "The node is cordoned and every check it runs moves to other nodes now.",
  };

  async function nodeAction(name, action) {
    const verb = action[0].toUpperCase() + action.slice(1);
    await act(`${verb} ${name}?`, [h("p", { text: NODE_ACTIONS[action] })], verb,
      async () => {
        const node = await api("POST", `${API}/nodes/${encodeURIComponent(name)}/${action}`);
        return `${verb}: ${name} is now ${node.cordoned ? "cordoned" : "taking checks"}.`;
      });
  }

  async function rebalance() {
    let plan;
    try {
      plan = await api("POST", `${API}/rebalance`, { dry_run: true });
    } catch (exc) {
      notify("error", `Rebalance refused: ${explainError(exc)}`);
      return;
    }
    const moves = plan.moves;
    const force = h("input", { type: "checkbox", id: "rebalance-force" });
    const body = [
      h("p", { text: moves.length
        ? `The dry run plans ${moves.length} move${moves.length === 1 ? "" : "s"}`
          + ` (spread ${percent(plan.spread_before)} → ${percent(plan.spread_after)}).`
        : `Nothing to move (${(plan.outcome || "").replaceAll("_", " ")}).` }),
      moves.length ? h("ul", { id: "rebalance-moves" }, moves.map((m) =>
        h("li", {}, `${m.check_name} ${short(m.digest)}: ${m.source_node} → ${m.dest_node}`))) : null,
      plan.outcome === "gain_too_small" ? h("p", {}, force,
        h("label", { for: "rebalance-force", text: " Apply although the gain is below the minimum" })) : null,
    ];
    await act("Rebalance?", body, moves.length ? "Apply" : null, async () => {
      const done = await api("POST", `${API}/rebalance`, { dry_run: false, force: force.checked });
      return done.applied ? `Rebalance applied: ${done.moves.length} moves.`
        : `Rebalance applied nothing (${(done.outcome || "").replaceAll("_", " ")}).`;
    });
  }

  // Asks in the dialog, then runs; the outcome goes to the banner, then a refresh.
  async function act(title, body, confirmLabel, run) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-body").replaceChildren(...body.filter(Boolean));
    const ok = $("confirm-ok");
    ok.hidden = !confirmLabel;
    ok.textContent = confirmLabel || "";
    $("confirm-cancel").textContent = confirmLabel ? "Cancel" : "Close";
    dialog.returnValue = "";
    const opener = focusKey(document.activeElement);
    const answer = await new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
      dialog.showModal();
      (confirmLabel ? $("confirm-cancel") : ok).focus();
    });
    refocus(opener); // its button may have been redrawn while the dialog was open
    if (answer !== "ok") return;
    try {
      notify("info", await run());
    } catch (exc) {
      notify("error", `${title.replace(/\?$/, "")} refused: ${explainError(exc)}`);
    }
    refresh();
  }

  // --------------------------------------------------------------------- checks

  function filterForm(where) {
    const params = where.params;
    const search = h("input", { type: "search", id: "f-q", name: "q", value: params.get("q") || "",
      placeholder: "name, target, node, digest…" });
    const status = h("select", { id: "f-status", name: "status" },
      h("option", { value: "" }, "Any status"),
      Object.keys(STATUS).map((name) => h("option", { value: name }, STATUS[name].label)));
    status.value = params.get("status") || "";
    const node = h("select", { id: "f-node", name: "node" }, h("option", { value: "" }, "Any node"));
    const source = h("select", { id: "f-source", name: "source" }, h("option", { value: "" }, "Any source"));
    const changed = () => {
      const next = new URLSearchParams();
      for (const [key, el] of [["q", search], ["status", status], ["node", node], ["source", source]]) {
        if (el.value) next.set(key, el.value);
      }
      setParams(next);
      refresh();
    };
    search.addEventListener("input", () => {
      clearTimeout(ui.searchTimer);
      ui.searchTimer = setTimeout(changed, 300);
    });
    for (const el of [status, node, source]) el.addEventListener("change", changed);
    return h("form", { class: "filters", role: "search", "aria-label": "Filter checks",
      onsubmit: (event) => { event.preventDefault(); changed(); } },
    h("label", { for: "f-q" }, "Search", search),
    h("label", { for: "f-status" }, "Status", status),
    h("label", { for: "f-node" }, "Node", node),
    h("label", { for: "f-source" }, "Source", source));
  }

  function syncOptions(select, names, wanted) {
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      select.replaceChildren(select.options[0], ...names.map((n) => h("option", { value: n }, n)));
    }
    if (wanted && !names.includes(wanted)) select.append(h("option", { value: wanted }, wanted));
    select.value = wanted || "";
  }

  function fillChecks(where) {
    const data = ui.data;
    syncOptions($("f-node"), data.nodes.map((n) => n.name), where.params.get("node"));
    syncOptions($("f-source"), data.sources.map((src) => src.name), where.params.get("source"));
    const page = data.page;
    $("checks-table").replaceChildren(page.checks.length
      ? checksTable(page.checks, "Checks, failing first")
      : h("p", { class: "muted", text: data.totals.checks ? "No check matches the filter." : "No check is configured." }));
    const from = page.checks.length ? page.offset + 1 : 0;
    const to = page.checks.length ? page.offset + page.checks.length : 0;
    const go = (offset) => () => {
      const next = new URLSearchParams(where.params);
      if (offset > 0) next.set("offset", String(offset));
      else next.delete("offset");
      setParams(next);
      refresh();
    };
    $("pager").replaceChildren(
      h("span", { text: `${from}–${to} of ${page.matching}` }),
      h("button", { type: "button", disabled: page.offset === 0, onclick: go(Math.max(0, page.offset - PAGE)) }, "Previous"),
      h("button", { type: "button", disabled: page.offset + PAGE >= page.matching,
        onclick: go(page.offset + PAGE) }, "Next"));
  }

  function checksTable(checks, caption) {
    return h("table", { class: "cards-on-narrow checks" },
      h("caption", { class: "visually-hidden", text: caption }),
      h("thead", {}, h("tr", {}, ["Status", "Check", "Target", "Node", "Last run", "Uptime 24 h", "Duration"]
        .map((name) => h("th", { scope: "col", class: name.startsWith("Uptime") ? "num" : null, text: name })))),
      h("tbody", {}, checks.map((c) => h("tr", { class: c.status, "data-digest": c.digest,
        "data-status-since": statusSince(c) },
        cell("Status", {}, statusBadge(c.status)),
        cell("Check", {},
          h("a", { href: `#/checks/${c.digest}`, class: "check-name" }, c.name),
          h("div", { class: "muted" }, short(c.digest)),
          c.last_error ? h("div", { class: "error-text" }, c.last_error) : null),
        cell("Target", { class: "target" }, c.target),
        cell("Node", {}, c.node || h("span", { class: "muted" }, "none")),
        cell("Last run", {}, since(c.last_run_at)),
        cell("Uptime 24 h", { class: "num" }, percent(c.uptime_24h)),
        cell("Duration", {}, sparkline(c), ` ${duration(c.duration_s)}`)))));
  }

  // The refresh (its number, as in body[data-refreshes]) that first showed a check with
  // its current status: how soon a change reached the page, for the browser test.
  function statusSince(check) {
    const known = ui.statusSince.get(check.digest);
    if (known && known.status === check.status) return known.refresh;
    const refresh = ui.refreshes + 1; // this render's refresh (counted once it ends)
    ui.statusSince.set(check.digest, { status: check.status, refresh });
    return refresh;
  }

  function sparkline(check) {
    const runs = check.recent;
    const width = 100;
    const height = 22;
    const failed = runs.filter((r) => !r.ok).length;
    const label = runs.length
      ? `Last ${runs.length} runs: ${failed} failed, longest ${duration(Math.max(...runs.map((r) => r.duration_s)))}`
      : "No run yet";
    const svgEl = s("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`,
      role: "img", "aria-label": label, "data-points": String(runs.length) }, s("title", { text: label }));
    if (!runs.length) return svgEl;
    if (runs.length === 1) {
      svgEl.append(s("circle", { class: runs[0].ok ? "dot" : "fail", cx: width / 2, cy: height / 2, r: 3 }));
      return svgEl;
    }
    const top = Math.max(...runs.map((r) => r.duration_s)) || 1;
    const step = runs.length > 1 ? (width - 4) / (runs.length - 1) : 0;
    const points = runs.map((r, i) => [2 + i * step, height - 3 - (r.duration_s / top) * (height - 6)]);
    svgEl.append(s("polyline", { class: "line", points: points.map((p) => p.map((v) => v.toFixed(1)).join(",")).join(" ") }));
    runs.forEach((r, i) => {
      if (!r.ok) svgEl.append(s("rect", { class: "fail", x: (points[i][0] - 2).toFixed(1), y: height - 4, width: 4, height: 4 }));
    });
    return svgEl;
  }

  // ------------------------------------------------------------------ one check

  function fillCheck(where) {
    const detail = ui.detail;
    if (!detail || detail.missing) {
      $("check-head").replaceChildren(h("h1", { text: "Unknown check" }),
        h("p", { text: `The dispatcher holds no check ${where.digest}. It may have been removed.` }));
      for (const id of ["check-cards", "check-chart", "check-errors"]) $(id).replaceChildren();
      return;
    }
    const { check, history } = detail;
    const last = check.last_result;
    // The dispatcher's rule (core/overview.py): failing, else dangling without a node,
    // else ok or pending.
    let status = "ok";
    if (last && !last.ok) status = "failing";
    else if (!check.node) status = "dangling";
    else if (!last) status = "pending";
    const sources = check.sources.length ? check.sources.join(", ") : "none";
    $("check-head").replaceChildren(
      h("div", { class: "panel-head" },
        h("h1", {}, `${check.name} `, statusBadge(status)),
        h("div", { class: "actions" },
          actionButton("Isolate", check.name, () => isolate(check), null))),
      h("dl", { class: "facts panel" },
        h("dt", { text: "Target" }), h("dd", { class: "target" }, targetOf(check)),
        h("dt", { text: "Digest" }), h("dd", { class: "target" }, check.digest),
        h("dt", { text: "Node" }), h("dd", {}, check.node || "none (dangling)"),
        h("dt", { text: "Why there" }), h("dd", { id: "explain" }, check.explain || "–"),
        h("dt", { text: "Sources" }), h("dd", {}, sources),
        h("dt", { text: "Interval" }), h("dd", {}, `${check.interval_s} s (timeout ${check.timeout_s} s)`),
        h("dt", { text: "Last run" }), h("dd", {}, last ? `${since(last.started_at)} on ${last.node}` : "never")));
    const up = history.uptime;
    const p = history.duration_s;
    $("check-cards").replaceChildren(
      ...[["1h", "Uptime 1 h"], ["24h", "Uptime 24 h"], ["7d", "Uptime 7 d"]].map(([key, title]) =>
        h("section", { class: "card" }, h("h2", { text: title }), h("div", { class: "big" }, percent(up[key])))),
      h("section", { class: "card" }, h("h2", { text: "Duration" }),
        h("dl", {}, h("dt", { text: "p50" }), h("dd", { text: duration(p.p50) }),
          h("dt", { text: "p95" }), h("dd", { text: duration(p.p95) }),
          h("dt", { text: "p99" }), h("dd", { text: duration(p.p99) }))));
    const chartWidth = Math.max(320, Math.min(1200, $("check-chart").clientWidth || 800));
    $("check-chart").replaceChildren(historyChart(history.results.slice().reverse(), chartWidth),
      h("div", { class: "legend" },
        h("span", {}, "● ok run"), h("span", {}, "▲ failed run (red)"),
        h("span", { text: `${history.results.length} runs shown, newest on the right` })));
    const failures = history.results.filter((r) => !r.ok).slice(0, 10);
    $("check-errors").replaceChildren(failures.length ? h("table", { class: "cards-on-narrow", id: "errors" },
      h("caption", { class: "visually-hidden", text: "The last failed runs" }),
      h("thead", {}, h("tr", {}, ["When", "Node", "Error"].map((name) => h("th", { scope: "col", text: name })))),
      h("tbody", {}, failures.map((r) => h("tr", {},
        cell("When", {}, when(r.started_at)), cell("Node", {}, r.node),
        cell("Error", { class: "error-text" }, r.errors.join("; ")))))) : h("p", { class: "muted", text: "✓ No failed run in the history." }));
  }

  function targetOf(check) {
    const first = check.instances[0] || {};
    if (typeof first.url === "string") return first.url;
    if (typeof first.host === "string") return `${first.host}:${first.port}`;
    if (typeof first.name === "string") return first.name;
    if (Array.isArray(first.command)) return first.command.join(" ");
    return JSON.stringify(first);
  }

  // Drawn at the width it is shown at, so its labels stay legible on a phone.
  function historyChart(runs, width) {
    const height = width < 500 ? 180 : 220;
    const left = 56;
    const bottom = 24;
    const failed = runs.filter((r) => !r.ok).length;
    const label = runs.length
      ? `Duration of the last ${runs.length} runs; ${failed} failed (marked with triangles).`
      : "No run yet.";
    const chart = s("svg", { class: "chart", id: "history-chart", viewBox: `0 0 ${width} ${height}`,
      role: "img", "aria-label": label, "data-points": String(runs.length) }, s("title", { text: label }));
    if (!runs.length) {
      chart.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", text: "No run yet" }));
      return chart;
    }
    const top = Math.max(...runs.map((r) => r.duration_s)) * 1.1 || 1;
    const t0 = runs[0].started_at;
    const t1 = runs[runs.length - 1].started_at;
    const span = t1 - t0 || 1;
    const x = (r) => left + ((r.started_at - t0) / span) * (width - left - 10);
    const y = (d) => height - bottom - (d / top) * (height - bottom - 10);
    chart.append(
      s("line", { class: "axis", x1: left, y1: height - bottom, x2: width - 10, y2: height - bottom }),
      s("line", { class: "axis", x1: left, y1: 10, x2: left, y2: height - bottom }),
      s("text", { x: left - 6, y: y(top / 1.1) + 4, "text-anchor": "end", text: duration(top / 1.1) }),
      s("text", { x: left - 6, y: height - bottom, "text-anchor": "end", text: "0" }),
      s("text", { x: left, y: height - 6, text: new Date(t0 * 1000).toLocaleTimeString() }),
      s("text", { x: width - 10, y: height - 6, "text-anchor": "end", text: new Date(t1 * 1000).toLocaleTimeString() }),
      s("polyline", { class: "line", points: runs.map((r) => `${x(r).toFixed(1)},${y(r.duration_s).toFixed(1)}`).join(" ") }));
    for (const r of runs) {
      const cx = x(r);
      const cy = y(r.duration_s);
      const mark = r.ok
        ? s("circle", { class: "okpt", cx: cx.toFixed(1), cy: cy.toFixed(1), r: 2.5 })
        : s("path", { class: "fail", d: `M${cx.toFixed(1)},${(cy - 6).toFixed(1)} l5,9 h-10 z` });
      mark.append(s("title", { text: `${when(r.started_at)}: ${r.ok ? "ok" : "failed"}, ${duration(r.duration_s)}` }));
      chart.append(mark);
    }
    return chart;
  }

  async function isolate(check) {
    await act(`Isolate ${check.name}?`, [h("p", { text:
      `${check.name} stays on ${check.node || "its node"}, which is cordoned, and every other check there moves away.` })],
    "Isolate", async () => {
      const done = await api("POST", `${API}/isolate/${encodeURIComponent(check.digest)}`);
      return `Isolated on ${done.node}: ${done.moves.length} other checks moved.`;
    });
  }

  // ----------------------------------------------------------------------- start

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token");
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      refresh();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      refresh();
    });
    window.addEventListener("hashchange", () => {
      ui.shell = null;
      refresh();
      $("main").focus();
    });
    refresh();
  }

  start();
})();
