// portcullis console: vanilla JS over the admin JSON API, with the session cookie and the
// session's CSRF token on every unsafe request. Paging is always server-side (a limit and a
// cursor); nothing loads a whole queue or log. Data is put in the page with textContent only.
"use strict";
(function () {
  const PAGE = 25;          // approvals per page
  const CALLS = 50;         // audit records per page
  let me = null;

  function $(id) { return document.getElementById(id); }
  function show(e, on) { e.classList.toggle("hidden", !on); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function td(tr, text, cls) {
    const c = document.createElement("td");
    c.textContent = text == null ? "" : String(text);
    if (cls) c.className = cls;
    tr.appendChild(c);
    return c;
  }
  function button(label, onclick, id, aria) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (id) b.id = id;
    if (aria) b.setAttribute("aria-label", aria);
    b.addEventListener("click", onclick);
    return b;
  }
  function kv(dl, k, v) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v == null ? "—" : (typeof v === "object" ? JSON.stringify(v) : String(v));
    dl.appendChild(dt);
    dl.appendChild(dd);
  }
  function flash(msg, bad) {
    const f = $("flash");
    f.textContent = msg;
    f.classList.toggle("bad", !!bad);
    show(f, true);
  }
  function errText(r) {
    if (r.json && r.json.error) return r.json.error.code + ": " + r.json.error.message;
    return "HTTP " + r.status;
  }
  function atLeast(role) {
    const order = ["viewer", "approver", "operator"];
    return me && order.indexOf(me.role) >= order.indexOf(role);
  }

  async function api(method, url, body, raw) {
    const opts = { method: method, credentials: "same-origin", headers: {}, cache: "no-store" };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = me ? me.csrf : "";
    if (body !== undefined) {
      if (raw) { opts.body = body; opts.headers["Content-Type"] = "text/plain; charset=utf-8"; }
      else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
    }
    const res = await fetch(url, opts);
    let json = null;
    try { json = await res.json(); } catch (e) { json = null; }
    if (res.status === 401) { location.href = "/ui/login"; }
    return { status: res.status, json: json };
  }
  function qs(params) {
    const p = new URLSearchParams();
    for (const k in params) if (params[k] !== "" && params[k] != null) p.set(k, params[k]);
    const s = p.toString();
    return s ? "?" + s : "";
  }

  // ---------------------------------------------------------------- approvals
  const ap = { page: 0, more: false, selected: null };
  async function loadApprovals() {
    const status = $("approvals-status").value;
    const r = await api("GET", "/v1/approvals" + qs({ status: status, limit: PAGE, offset: ap.page * PAGE }));
    const body = $("approvals-table").tBodies[0];
    clear(body);
    if (r.status !== 200) {
      const tr = body.insertRow();
      const c = td(tr, r.status === 404 && r.json && r.json.error && r.json.error.code === "approvals_disabled"
        ? "Approvals are not enabled on this gateway ([approvals] section)." : errText(r));
      c.colSpan = 8;
      return;
    }
    const rows = r.json.approvals;
    ap.more = !!r.json.more;
    if (!rows.length) { const c = td(body.insertRow(), "No " + status + " approvals."); c.colSpan = 8; }
    rows.forEach(function (a) {
      const tr = body.insertRow();
      tr.dataset.id = a.id;
      if (a.id === ap.selected) tr.className = "selected";
      td(tr, a.created); td(tr, a.agent); td(tr, a.proxy); td(tr, a.method); td(tr, a.path, "path");
      td(tr, a.status); td(tr, a.approver);
      const c = td(tr, "");
      c.appendChild(button("Open", function () { openApproval(a.id); }, "open-" + a.id,
        "Open approval " + a.id + " (" + a.method + " " + a.path + ")"));
    });
    $("approvals-page").textContent = "page " + (ap.page + 1);
    $("approvals-prev").disabled = ap.page === 0;
    $("approvals-next").disabled = !ap.more;
  }
  async function openApproval(id) {
    ap.selected = id;
    const r = await api("GET", "/v1/approvals/" + encodeURIComponent(id));
    const d = $("approval-detail");
    show(d, true);
    $("decide-note").textContent = "";
    if (r.status !== 200) { $("ad-id").textContent = id; $("decide-note").textContent = errText(r); return; }
    const a = r.json.approval;
    $("ad-id").textContent = a.id;
    const dl = $("ad-summary");
    clear(dl);
    ["status", "agent", "proxy", "method", "path", "query", "rule", "created", "expires", "decided",
      "approver", "reason", "executed", "body_len", "body_sha256"].forEach(function (k) { kv(dl, k, a[k]); });
    const hb = $("ad-headers").tBodies[0];
    clear(hb);
    (a.headers || []).forEach(function (h) { const tr = hb.insertRow(); td(tr, h[0]); td(tr, h[1], "path"); });
    $("ad-body").textContent = a.body != null ? a.body : (a.body_base64 != null ? "(base64) " + a.body_base64 : "");
    const canDecide = a.status === "pending" && me.named && atLeast("approver") &&
      (!me.proxies || me.proxies.indexOf(a.proxy) >= 0);
    show($("decide-form"), canDecide);
    show($("decide-totp-wrap"), canDecide && me.totp);
    if (!canDecide && a.status === "pending") {
      $("decide-note").textContent = me.named ? "Your role cannot decide this approval."
        : "The shared admin token may read approvals but never decide them; sign in with your own admin key.";
    }
    d.focus();
    document.querySelectorAll("#approvals-table tbody tr").forEach(function (t) {
      t.classList.toggle("selected", t.dataset.id === id);
    });
  }
  async function decide(verb) {
    const id = ap.selected;
    const body = { reason: $("decide-reason").value || undefined };
    if (me.totp) body.totp = $("decide-totp").value;
    const r = await api("POST", "/v1/approvals/" + encodeURIComponent(id) + "/" + verb, body);
    if (r.status === 200) {
      flash((verb === "approve" ? "Approved " : "Denied ") + id);
      $("decide-reason").value = "";
      $("decide-totp").value = "";
    } else {
      flash("Could not " + verb + " " + id + ": " + errText(r), true);
    }
    await openApproval(id);
    await loadApprovals();
  }

  // ---------------------------------------------------------------- calls
  const calls = { cursor: null, seen: new Set(), records: [] };
  function callFilters() {
    return {
      proxy: $("f-proxy").value.trim(), agent: $("f-agent").value.trim(),
      status: $("f-status").value.trim(), decision: $("f-decision").value,
      tool: $("f-tool").value.trim(),
    };
  }
  async function loadCalls(older) {
    const f = callFilters();
    f.since = $("f-since").value.trim();
    f.until = older && calls.cursor ? calls.cursor : $("f-until").value.trim();
    f.limit = CALLS;
    if (!older) calls.seen = new Set();
    const r = await api("GET", "/v1/requests" + qs(f));
    const err = $("calls-error");
    show(err, r.status !== 200);
    const body = $("calls-table").tBodies[0];
    if (r.status !== 200) {
      err.textContent = r.status === 404 ? "No audit log on this gateway ([audit] section)." : errText(r);
      return;
    }
    clear(body);
    // the cursor is the oldest ts on the page; records sharing it that were already shown are skipped
    const recs = r.json.records.filter(function (x) { return !calls.seen.has(x.id); });
    recs.forEach(function (x) { calls.seen.add(x.id); });
    if (recs.length) calls.cursor = recs[recs.length - 1].ts;
    calls.records = recs;
    if (!recs.length) { const c = td(body.insertRow(), older ? "No older records." : "No records match."); c.colSpan = 10; }
    recs.forEach(function (x) { callRow(body, x, false); });
    $("calls-older").disabled = r.json.records.length < CALLS;
  }
  function callRow(body, x, top) {
    const tr = top ? body.insertRow(0) : body.insertRow();
    tr.dataset.id = x.id || "";
    td(tr, x.ts); td(tr, x.agent); td(tr, x.proxy); td(tr, x.method); td(tr, x.path, "path");
    td(tr, x.status); td(tr, x.decision);
    if (!top) { td(tr, x.code); td(tr, x.total_us); }
    const c = td(tr, "");
    c.appendChild(button("Open", function () { openCall(x); }, null,
      "Open record " + (x.id || "") + " (" + (x.method || "") + " " + (x.path || "") + ")"));
    return tr;
  }
  function openCall(x) {
    const d = $("call-detail");
    show(d, true);
    $("cd-id").textContent = x.id || "";
    const dl = $("cd-fields");
    clear(dl);
    Object.keys(x).forEach(function (k) { kv(dl, k, x[k]); });
    d.focus();
  }
  let source = null;
  function stopTail() {
    if (source) { source.close(); source = null; }
    $("tail-toggle").textContent = "Start live tail";
    $("tail-toggle").setAttribute("aria-pressed", "false");
    $("tail-state").textContent = "live tail off";
  }
  function startTail() {
    const f = callFilters();
    show($("tail-box"), true);
    source = new EventSource("/v1/requests/tail" + qs(f));
    $("tail-toggle").textContent = "Stop live tail";
    $("tail-toggle").setAttribute("aria-pressed", "true");
    $("tail-state").textContent = "live tail: connecting";
    source.addEventListener("ready", function () { $("tail-state").textContent = "live tail: connected"; });
    source.addEventListener("record", function (ev) {
      let x;
      try { x = JSON.parse(ev.data); } catch (e) { return; }
      const body = $("tail-table").tBodies[0];
      callRow(body, x, true);
      while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
    });
    source.addEventListener("error", function () {
      if (source && source.readyState === EventSource.CLOSED) stopTail();
      else $("tail-state").textContent = "live tail: reconnecting";
    });
  }

  // ---------------------------------------------------------------- telemetry
  function fmtUs(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + " s";
    if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + " ms";
    return Math.round(v) + " µs";
  }
  async function loadTelemetry() {
    const hours = Number($("t-window").value) || 1;
    const proxy = $("t-proxy").value.trim();
    const buckets = 12;
    const now = Date.now();
    const span = hours * 3600 * 1000;
    const step = span / buckets;
    const iso = function (ms) { return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z"); };
    // the whole window once (totals per proxy and agent), then one request per time slot
    const reqs = [api("GET", "/v1/telemetry" + qs({ proxy: proxy, since: iso(now - span), until: iso(now) }))];
    for (let i = 0; i < buckets; i++) {
      reqs.push(api("GET", "/v1/telemetry" + qs({ proxy: proxy, since: iso(now - span + i * step), until: iso(now - span + (i + 1) * step) })));
    }
    const res = await Promise.all(reqs);
    const err = $("tele-error");
    const charts = $("tele-charts"), tables = $("tele-tables");
    clear(charts); clear(tables);
    const bad = res.find(function (r) { return r.status !== 200; });
    show(err, !!bad);
    if (bad) { err.textContent = bad.status === 404 ? "No audit log on this gateway ([audit] section)." : errText(bad); return; }
    const total = res[0].json;
    const labels = [];
    for (let i = 0; i < buckets; i++) {
      const t = new Date(now - span + (i + 1) * step);
      labels.push(String(t.getHours()).padStart(2, "0") + ":" + String(t.getMinutes()).padStart(2, "0"));
    }
    const names = total.proxies.map(function (p) { return p.proxy; });
    function perSlot(pick) {
      return names.slice(0, 4).map(function (name) {
        return {
          name: name == null ? "(none)" : name, values: res.slice(1).map(function (r) {
            const p = r.json.proxies.find(function (q) { return q.proxy === name; });
            return p ? pick(p) : null;
          })
        };
      });
    }
    PcsChart.line(charts, "Calls per slot", labels, perSlot(function (p) { return p.calls; }), function (v) { return String(Math.round(v)); }, true);
    PcsChart.line(charts, "p50 latency", labels, perSlot(function (p) { return p.latency_us.p50; }), fmtUs);
    PcsChart.line(charts, "p99 latency", labels, perSlot(function (p) { return p.latency_us.p99; }), fmtUs);
    const codes = {};
    total.proxies.forEach(function (p) { for (const c in (p.refusals || {})) codes[c] = (codes[c] || 0) + p.refusals[c]; });
    PcsChart.bars(charts, "Refusals by code", Object.keys(codes).sort().map(function (c) { return { label: c, value: codes[c] }; }));
    // the per-proxy, per-agent table
    const h = document.createElement("h2");
    h.textContent = "Per proxy and agent (" + total.records + " calls" + (total.truncated ? ", truncated" : "") + ")";
    tables.appendChild(h);
    const wrap = document.createElement("div");
    wrap.className = "scroll";
    const t = document.createElement("table");
    t.id = "tele-table";
    const head = t.createTHead().insertRow();
    ["Proxy", "Agent", "Calls", "Served", "Refused", "Refusals by code", "p50", "p99", "max"].forEach(function (x) {
      const th = document.createElement("th"); th.textContent = x; head.appendChild(th);
    });
    const body = t.createTBody();
    function row(proxy, agent, c) {
      const tr = body.insertRow();
      let refused = 0;
      for (const k in (c.refusals || {})) refused += c.refusals[k];
      td(tr, proxy == null ? "(none)" : proxy); td(tr, agent); td(tr, c.calls);
      td(tr, c.calls - refused); td(tr, refused);
      td(tr, Object.keys(c.refusals || {}).map(function (k) { return k + " " + c.refusals[k]; }).join(", "));
      td(tr, c.latency_us.p50 == null ? "" : fmtUs(c.latency_us.p50));
      td(tr, c.latency_us.p99 == null ? "" : fmtUs(c.latency_us.p99));
      td(tr, c.latency_us.max == null ? "" : fmtUs(c.latency_us.max));
    }
    total.proxies.forEach(function (p) {
      row(p.proxy, "(all)", p);
      p.agents.forEach(function (a) { row(p.proxy, a.agent == null ? "(none)" : a.agent, a); });
    });
    wrap.appendChild(t);
    tables.appendChild(wrap);
  }

  // ---------------------------------------------------------------- agents
  async function loadAgents() {
    const r = await api("GET", "/v1/agents");
    const un = $("agents-unavailable");
    if (r.status === 404) {
      un.textContent = "Managed agents are not available on this gateway: GET /v1/agents answered 404. " +
        "Agents are configured in the config file ([[agents]]) until the management API is enabled.";
      show(un, true); show($("agents-main"), false);
      return;
    }
    show(un, r.status !== 200);
    show($("agents-main"), r.status === 200);
    if (r.status !== 200) { un.textContent = errText(r); return; }
    show($("agent-issue"), atLeast("operator"));
    const body = $("agents-table").tBodies[0];
    clear(body);
    (r.json.agents || []).forEach(function (a) {
      const tr = body.insertRow();
      tr.dataset.id = a.id;
      td(tr, a.id); td(tr, (a.roles || []).join(", ")); td(tr, a.source + (a.read_only ? " (read-only)" : ""));
      td(tr, a.created_at); td(tr, a.expires_at); td(tr, a.last_seen); td(tr, a.revoked_at);
      const c = td(tr, "");
      if (atLeast("operator") && !a.read_only && !a.revoked_at) {
        c.appendChild(button("Rotate", function () { rotateAgent(a.id); }, "rotate-" + a.id, "Rotate the key of " + a.id));
        c.appendChild(document.createTextNode(" "));
        c.appendChild(button("Revoke", function () { revokeAgent(a.id); }, "revoke-" + a.id, "Revoke " + a.id));
      }
    });
  }
  function showKey(id, key) {
    $("ak-id").textContent = id;
    $("ak-key").textContent = key;
    show($("agent-key"), true);
  }
  async function issueAgent() {
    const roles = $("ai-roles").value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    const exp = $("ai-expires").value.trim();
    const r = await api("POST", "/v1/agents", { id: $("ai-id").value.trim(), roles: roles, expires_at: exp || null });
    if (r.status === 201) { showKey(r.json.id, r.json.key); flash("Issued agent " + r.json.id); }
    else flash("Could not issue the agent: " + errText(r), true);
    await loadAgents();
  }
  async function rotateAgent(id) {
    const grace = prompt("Grace period for the old key (e.g. 10m; empty for none)", "") || undefined;
    const r = await api("POST", "/v1/agents/" + encodeURIComponent(id) + "/rotate", grace ? { grace: grace } : {});
    if (r.status === 200) { showKey(r.json.id, r.json.key); flash("Rotated " + id); }
    else flash("Could not rotate " + id + ": " + errText(r), true);
    await loadAgents();
  }
  async function revokeAgent(id) {
    if (!confirm("Revoke agent " + id + "? Its key stops working at once.")) return;
    const r = await api("DELETE", "/v1/agents/" + encodeURIComponent(id));
    if (r.status === 200) flash("Revoked " + id);
    else flash("Could not revoke " + id + ": " + errText(r), true);
    await loadAgents();
  }

  // ---------------------------------------------------------------- config
  async function loadConfig() {
    const r = await api("GET", "/v1/config");
    const un = $("config-unavailable");
    show(un, r.status !== 200);
    show($("config-view"), r.status === 200);
    if (r.status === 404) un.textContent = "The config view is not available on this gateway: GET /v1/config answered 404.";
    else if (r.status !== 200) un.textContent = errText(r);
    else $("config-view").textContent = JSON.stringify(r.json, null, 2);
    show($("config-check"), atLeast("operator"));
  }
  async function checkConfig() {
    const r = await api("POST", "/v1/config/check", $("cc-text").value, true);
    const out = $("cc-result");
    clear(out);
    const p = document.createElement("p");
    out.appendChild(p);
    if (r.status === 404) { p.className = "notice"; p.textContent = "Config check is not available on this gateway: POST /v1/config/check answered 404."; return; }
    if (r.status === 200 && r.json && r.json.ok) {
      p.textContent = "The candidate config is valid.";
    } else if (r.status === 422 && r.json) {
      p.className = "error"; p.textContent = "The candidate config has errors:";
    } else { p.className = "error"; p.textContent = errText(r); return; }
    const ul = document.createElement("ul");
    ((r.json.errors || []).concat(r.json.warnings || [])).forEach(function (m) {
      const li = document.createElement("li"); li.textContent = m; ul.appendChild(li);
    });
    out.appendChild(ul);
  }

  // ---------------------------------------------------------------- routing
  const pages = { approvals: loadApprovals, calls: function () { return loadCalls(false); },
    telemetry: loadTelemetry, agents: loadAgents, config: loadConfig };
  function route() {
    let name = location.hash.replace("#", "");
    if (!pages[name]) name = "approvals";
    Object.keys(pages).forEach(function (p) {
      show($("page-" + p), p === name);
      const a = $("nav-" + p);
      if (p === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    if (name !== "calls") stopTail();
    show($("flash"), false);
    document.body.dataset.page = name;
    return pages[name]().then(function () { document.body.dataset.loaded = name; });
  }

  async function init() {
    const r = await fetch("/ui/session", { credentials: "same-origin", cache: "no-store" });
    if (r.status !== 200) { location.href = "/ui/login"; return; }
    me = await r.json();
    $("whoami").textContent = me.id + " (" + me.role + ")";
    $("logout-csrf").value = me.csrf;
    $("approvals-filter").addEventListener("submit", function (e) { e.preventDefault(); ap.page = 0; loadApprovals(); });
    $("approvals-prev").addEventListener("click", function () { if (ap.page > 0) { ap.page--; loadApprovals(); } });
    $("approvals-next").addEventListener("click", function () { if (ap.more) { ap.page++; loadApprovals(); } });
    $("decide-form").addEventListener("submit", function (e) {
      e.preventDefault();
      const verb = e.submitter && e.submitter.value === "deny" ? "deny" : "approve";
      decide(verb);
    });
    $("calls-filter").addEventListener("submit", function (e) {
      e.preventDefault(); calls.cursor = null; loadCalls(false);
      if (source) { stopTail(); startTail(); }
    });
    $("calls-newest").addEventListener("click", function () { calls.cursor = null; loadCalls(false); });
    $("calls-older").addEventListener("click", function () { loadCalls(true); });
    $("tail-toggle").addEventListener("click", function () { if (source) stopTail(); else startTail(); });
    $("tele-filter").addEventListener("submit", function (e) { e.preventDefault(); loadTelemetry(); });
    $("agent-issue").addEventListener("submit", function (e) { e.preventDefault(); issueAgent(); });
    $("config-check").addEventListener("submit", function (e) { e.preventDefault(); checkConfig(); });
    window.addEventListener("hashchange", route);
    document.body.dataset.ready = "1";
    route();
  }
  document.addEventListener("DOMContentLoaded", init);
})();
