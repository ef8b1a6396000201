// The bindledger security console. Plain JavaScript, no build step, no dependency. Every value
// from the ledger reaches the page through textContent (never as HTML), and the page runs under
// a Content-Security-Policy that allows only this script and its style sheet.
"use strict";

const state = { me: null, csrf: "", stream: null, alerts: new Map() };

// Failure reasons in plain language, in Chinese and English (the platform's users read Chinese).
const REASONS = {
  wallet_frozen: ["钱包已被冻结", "the wallet is frozen by its provider"],
  wallet_closed: ["钱包已注销", "the wallet was closed"],
  invalid_input: ["输入信息有误", "the details given were not valid"],
  network: ["网络异常，请稍后重试", "a network error reaching the provider"],
  maintenance: ["支付渠道维护中", "the provider is under maintenance"],
  already_bound: ["该钱包已绑定此账户", "the wallet is already bound to this account"],
  verification_factor_failed: ["验证码或生物识别验证失败", "the SMS code or biometric check failed"],
  binding_limit_reached: ["绑定数量已达上限", "the account has as many wallets as allowed"],
  wrong_password: ["支付密码错误", "wrong payment password"],
  binding_not_active: ["该绑定已失效", "the binding is no longer active"],
  insufficient_funds: ["余额不足", "insufficient funds"],
  not_bound: ["未找到该绑定", "no such binding on this account"],
  binding_locked: ["该绑定因安全原因已被锁定", "the binding is locked for safety"],
  not_locked: ["该绑定未被锁定", "the binding is not locked"],
  too_many_attempts: ["尝试次数过多，请稍后再试", "too many attempts; try again later"],
  order_already_paid: ["该订单已支付", "the order is already paid"],
  unknown_wallet: ["钱包账户不存在", "the provider does not know this wallet account"],
};

const EVENTS = {
  wallet_bound: ["绑定成功", "wallet bound"],
  bind_failed: ["绑定失败", "bind failed"],
  payment_succeeded: ["支付成功", "payment succeeded"],
  payment_failed: ["支付失败", "payment failed"],
  wallet_unbound: ["解绑成功", "wallet unbound"],
  unbind_failed: ["解绑失败", "unbind failed"],
  binding_locked: ["绑定已锁定", "binding locked"],
  binding_lock_failed: ["锁定失败", "lock failed"],
  binding_unlocked: ["绑定已解锁", "binding unlocked"],
  alert_triaged: ["告警已处理", "alert triaged"],
  subject_erased: ["个人信息已删除", "personal data erased"],
};

const ACTIONS = {
  acknowledged: "acknowledged",
  assigned: "assigned",
  resolved: "resolved",
  false_positive: "marked a false positive",
  locked: "locked the binding",
  unlocked: "unlocked the binding",
};

const RULES = {
  password_brute_force: "wrong payment passwords on one account",
  bind_failure_burst: "failed binds on one account",
  bind_then_drain: "a new binding spent heavily at once",
  shared_wallet: "one wallet bound to several accounts",
  binding_churn: "bind and unbind again and again",
  amount_spike: "a payment far above the account's usual",
  dead_wallet_probing: "binds tried with dead wallets",
  password_stuffing: "one wallet's password tried from many accounts",
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// What an invalid input names, by its field.
const INVALID_FIELDS = {
  payment_password: ["支付密码错误", "wrong payment password"],
  wallet_account: ["钱包账户有误", "the wallet account was not valid"],
};

// A failure reason: its code, or the event's `{code, ...}` object.
function reason(why) {
  const code = why && typeof why === "object" ? why.code : why;
  const r = (code === "invalid_input" && why && INVALID_FIELDS[why.field]) || REASONS[code];
  return r ? el("span", { class: "reason" }, el("span", { class: "zh", lang: "zh-CN" }, r[0]), r[1]) : code || "";
}

function eventName(type) {
  const r = EVENTS[type];
  return r ? el("span", {}, el("span", { class: "zh", lang: "zh-CN" }, r[0]), r[1]) : type;
}

function utc(t) {
  return t ? t.replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC") : "";
}

function span(from, to) {
  const s = Math.round((Date.parse(to) - Date.parse(from)) / 1000);
  if (!(s >= 0)) return "";
  if (s === 0) return "a second";
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

// `body`: an object (sent as JSON) or a string (sent as it is, as text).
async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = state.csrf;
  const raw = typeof body === "string";
  if (body !== undefined) headers["content-type"] = raw ? "text/plain" : "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined || raw ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (r.status === 401 && path !== "/console/session") {
    // The session is gone while the page was open: say why rather than only show the sign-in.
    // Once: the other requests in flight meet the same 401.
    if (state.me) signedOut(SESSION_ENDED);
  }
  return { status: r.status, ok: r.ok, json };
}

function can(role) {
  return !!state.me && state.me.roles.includes(role);
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function failure(what, r) {
  const msg = r.json && r.json.error ? `${r.json.error.message} (${r.json.error.code})` : `HTTP ${r.status}`;
  return el("p", { class: "error", role: "alert" }, `${what}: ${msg}`);
}

// ---- sign-in ---------------------------------------------------------------------------------

const SESSION_ENDED = "You were signed out: your session ended (the server restarted, or 8 hours passed without use). Sign in again.";

function signedIn(me) {
  // Whether this tab was signed in (not who, nor any secret): a page opened again after the
  // session ended says so.
  sessionStorage.setItem("bindledger-signed-in", "1");
  state.me = me;
  state.csrf = me.csrf;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${me.name} (${me.roles.join(", ")})`;
  route();
}

function signedOut(why) {
  if (why) sessionStorage.removeItem("bindledger-signed-in");
  state.me = null;
  state.csrf = "";
  if (state.stream) { state.stream.close(); state.stream = null; }
  document.getElementById("nav").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = why || "";
  show();
}

document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  const r = await api("POST", "/console/session", { token: input.value });
  input.value = "";
  if (r.ok) {
    document.getElementById("sign-in-error").textContent = "";
    signedIn(r.json);
  } else {
    document.getElementById("sign-in-error").textContent = "That token was not accepted.";
  }
});

document.getElementById("sign-out").addEventListener("click", async () => {
  await api("DELETE", "/console/session");
  sessionStorage.removeItem("bindledger-signed-in");
  signedOut();
});

document.getElementById("find").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = document.getElementById("find-text").value.trim();
  if (!v) return;
  location.hash = /^[0-9a-f]{64}$/.test(v) ? `#/wallet/${v}` : `#/account/${encodeURIComponent(v)}`;
});

// ---- the alert queue ---------------------------------------------------------------------------

// What the rule saw, against its threshold, in the rule's window (the observed span, when the
// triggering events are known, is told apart from it: `observed`).
function describe(a, observed) {
  const words = a.unit.replace(/_/g, " ");
  const money = (v) => (a.currency ? `${(v / 100).toFixed(2)} ${a.currency}` : v);
  const within = span(a.window_start, a.window_end);
  const seen = observed ? `, all within ${observed}` : "";
  if (a.unit === "minor_units") {
    return `${money(a.observed)} in a ${within} window${seen}; threshold ${money(a.threshold)}`;
  }
  return `${a.observed} ${words} in a ${within} window${seen}; threshold ${a.threshold}`;
}

// What an event did, as a timeline says it: a failure failed; a record (a triage, an
// erasure) and a lock are not "succeeded" commands of the account holder.
const OUTCOMES = {
  binding_locked: "locked",
  binding_unlocked: "unlocked",
  alert_triaged: "recorded",
  subject_erased: "erased",
};

function alertState(a) {
  // The lock on the alert's binding as it stands (the server reads the binding): one lifted
  // since is not in force, one the rule made again after an unlock is.
  if (a.binding_lock !== undefined) {
    if (a.binding_lock && Date.parse(a.binding_lock.until) > Date.now()) return `binding locked until ${utc(a.binding_lock.until)}`;
  } else {
    // A change from the live stream carries no binding state: its latest triage says.
    const lifted = a.triage && a.triage.action === "unlocked";
    if (a.lock && !lifted && Date.parse(a.lock.until) > Date.now()) return `binding locked until ${utc(a.lock.until)}`;
  }
  return Date.parse(a.open_until) > Date.now() ? "open" : "closed";
}

// Where an alert stands with the people handling it: its latest triage.
function triageText(a) {
  const t = a.triage;
  if (!t) return "not yet triaged";
  const to = t.action === "assigned" && t.assignee ? ` to ${t.assignee}` : "";
  return `${ACTIONS[t.action] || t.action}${to} by ${t.operator}`;
}

function subject(a) {
  if (a.key.kind === "wallet") {
    return el("a", { href: `#/wallet/${a.key.value}` }, `wallet ${a.key.value.slice(0, 12)}…`);
  }
  return el("a", { href: `#/account/${encodeURIComponent(a.key.value)}` }, a.key.value);
}

function alertRow(a) {
  return el(
    "tr",
    { "data-alert": a.id, "data-severity": a.severity, "data-rule": a.rule },
    el("td", {}, utc(a.opened_at)),
    el("td", {}, el("span", { class: `sev sev-${a.severity}` }, a.severity)),
    el("td", {}, el("a", { href: `#/alert/${encodeURIComponent(a.id)}` }, a.rule), el("div", { class: "muted" }, RULES[a.rule] || "")),
    el("td", {}, subject(a)),
    el("td", {}, describe(a)),
    el("td", { class: "state" }, alertState(a), el("div", { class: "muted triage" }, triageText(a))),
  );
}

const SEVERITY_RANK = { low: 0, medium: 1, high: 2, critical: 3 };

function matches(a, f) {
  if (f.severity && SEVERITY_RANK[a.severity] < SEVERITY_RANK[f.severity]) return false;
  if (f.rule && a.rule !== f.rule) return false;
  if (f.account && !(a.accounts || []).includes(f.account) && a.key.value !== f.account) return false;
  if (f.state === "open" || f.state === "closed") {
    if ((alertState(a) === "closed") !== (f.state === "closed")) return false;
  } else if (f.state === "untriaged") {
    if (a.triage) return false;
  } else if (f.state && (!a.triage || a.triage.action !== f.state)) {
    return false;
  }
  return true;
}

function renderQueue(tbody, filters) {
  const rows = [...state.alerts.values()]
    .filter((a) => matches(a, filters))
    .sort((x, y) => (y.opened_at > x.opened_at ? 1 : y.opened_at < x.opened_at ? -1 : 0))
    .map(alertRow);
  tbody.replaceChildren(...rows);
  document.getElementById("count").textContent = `${rows.length} alert${rows.length === 1 ? "" : "s"}`;
}

async function alertsView() {
  const filters = { severity: "", rule: "", account: "", state: "" };
  const tbody = el("tbody", { id: "queue" });
  const select = (name, options) =>
    el("select", { id: `f-${name}`, "aria-label": name, onchange: (e) => { filters[name] = e.target.value; renderQueue(tbody, filters); } },
      options.map(([v, label]) => el("option", { value: v }, label)));
  const controls = el(
    "div",
    { class: "filters" },
    select("severity", [["", "any severity"], ["medium", "medium or worse"], ["high", "high or worse"], ["critical", "critical"]]),
    select("rule", [["", "any rule"], ...Object.keys(RULES).map((r) => [r, r])]),
    select("state", [["", "any state"], ["open", "open"], ["closed", "closed"], ["untriaged", "not yet triaged"],
      ["acknowledged", "acknowledged"], ["assigned", "assigned"], ["resolved", "resolved"], ["false_positive", "false positive"], ["locked", "locked by a person"], ["unlocked", "unlocked by a person"]]),
    el("input", { id: "f-account", placeholder: "account", "aria-label": "account",
      oninput: (e) => { filters.account = e.target.value.trim(); renderQueue(tbody, filters); } }),
    el("span", { id: "count", class: "muted" }),
    el("span", { id: "live", class: "muted" }, "connecting…"),
  );
  show(
    el("h2", {}, "Alerts"),
    controls,
    el("table", {}, el("thead", {}, el("tr", {}, ["opened", "severity", "rule", "account or wallet", "observed", "state"].map((h) => el("th", {}, h)))), tbody),
  );
  const r = await api("GET", "/v1/alerts?limit=1000");
  if (!r.ok) { show(failure("the alerts could not be read", r)); return; }
  for (const a of r.json.alerts) state.alerts.set(a.id, a);
  renderQueue(tbody, filters);
  // Triage by others shows within a few seconds: the listing carries it.
  if (state.triagePoll) clearInterval(state.triagePoll);
  state.triagePoll = setInterval(async () => {
    if (!document.body.contains(tbody)) { clearInterval(state.triagePoll); state.triagePoll = null; return; }
    const r = await api("GET", "/v1/alerts?limit=1000");
    if (!r.ok || !document.body.contains(tbody)) return;
    let changed = false;
    for (const a of r.json.alerts) {
      const known = state.alerts.get(a.id);
      if (known && JSON.stringify(known.triage) !== JSON.stringify(a.triage)) { known.triage = a.triage; changed = true; }
      if (known && JSON.stringify(known.binding_lock) !== JSON.stringify(a.binding_lock)) { known.binding_lock = a.binding_lock; changed = true; }
    }
    if (changed) renderQueue(tbody, filters);
  }, 3000);
  if (state.stream) state.stream.close();
  // The feed replays every change from the start, then follows: a row is updated in place.
  const stream = new EventSource("/v1/alerts/stream", { withCredentials: true });
  state.stream = stream;
  stream.addEventListener("open", () => { document.getElementById("live") && (document.getElementById("live").textContent = "live"); });
  stream.addEventListener("error", () => { document.getElementById("live") && (document.getElementById("live").textContent = "reconnecting…"); });
  stream.addEventListener("alert", (ev) => {
    const change = JSON.parse(ev.data);
    const a = change.alert;
    const prev = state.alerts.get(a.id);
    const fresh = !prev || prev.revision < a.revision;
    if (prev && a.triage === undefined) a.triage = prev.triage; // the stream carries revisions, not triage
    if (prev && a.binding_lock === undefined) a.binding_lock = prev.binding_lock;
    state.alerts.set(a.id, a);
    // A revision of an alert that locks may have locked its binding again (after an unlock):
    // the binding's state is read, and the row drawn again with it.
    if (a.lock && fresh) {
      api("GET", `/v1/alerts/${encodeURIComponent(a.id)}`).then((r) => {
        const now = state.alerts.get(a.id);
        if (!r.ok || !now || now.revision > r.json.revision) return;
        state.alerts.set(a.id, r.json);
        const row = tbody.querySelector(`tr[data-alert="${CSS.escape(a.id)}"]`);
        if (row && document.body.contains(tbody)) row.replaceWith(alertRow(r.json));
      });
    }
    if (!document.body.contains(tbody)) return;
    const old = tbody.querySelector(`tr[data-alert="${CSS.escape(a.id)}"]`);
    if (old && matches(a, filters)) {
      const row = alertRow(a);
      if (fresh) row.classList.add("fresh");
      old.replaceWith(row);
    } else if (fresh) {
      renderQueue(tbody, filters);
      const row = tbody.querySelector(`tr[data-alert="${CSS.escape(a.id)}"]`);
      if (row) row.classList.add("fresh");
    }
  });
}

// ---- an alert, an account, a wallet -------------------------------------------------------------

function timeline(events, highlight) {
  return el(
    "table",
    { class: "timeline" },
    el("thead", {}, el("tr", {}, ["time", "seq", "event", "outcome", "wallet", "reason"].map((h) => el("th", {}, h)))),
    el("tbody", {}, events.map((e) => {
      const p = e.payload || {};
      const failed = /failed$/.test(p.type);
      return el(
        "tr",
        { class: highlight.has(e.seq) ? "hit" : null, "data-seq": e.seq },
        el("td", {}, utc(e.event_time)),
        el("td", {}, e.seq),
        el("td", {}, eventName(p.type)),
        el("td", { class: "outcome" }, failed ? "failed" : OUTCOMES[p.type] || "succeeded"),
        el("td", {}, p.wallet ? p.wallet.masked : ""),
        el("td", {}, failed ? reason(p.reason) : p.type === "alert_triaged" ? `${ACTIONS[p.action] || p.action} by ${p.operator}` : p.type === "subject_erased" ? `by ${p.operator}` : ""),
      );
    })),
  );
}

async function alertView(id) {
  const r = await api("GET", `/v1/alerts/${encodeURIComponent(id)}`);
  if (!r.ok) { show(failure("the alert could not be read", r)); return; }
  const a = r.json;
  const parts = [
    el("h2", {}, `${a.rule} `, el("span", { class: `sev sev-${a.severity}` }, a.severity)),
    el("dl", {},
      el("dt", {}, "what"), el("dd", {}, RULES[a.rule] || a.rule),
      el("dt", {}, "observed"), el("dd", { id: "alert-observed" }, describe(a)),
      el("dt", {}, "subject"), el("dd", {}, subject(a)),
      el("dt", {}, "accounts"), el("dd", {}, (a.accounts || []).map((acc) => [el("a", { href: `#/account/${encodeURIComponent(acc)}` }, acc), " "])),
      el("dt", {}, "opened"), el("dd", {}, utc(a.opened_at)),
      el("dt", {}, "updated"), el("dd", {}, `${utc(a.updated_at)} (revision ${a.revision}, ${a.matches} matches)`),
      el("dt", {}, "state"), el("dd", { id: "alert-state" }, Date.parse(a.open_until) > Date.now() ? "open" : "closed"),
      el("dt", {}, "events"), el("dd", {}, a.event_seqs.join(", ")),
    ),
  ];
  const hits = new Set(a.event_seqs);
  const timelines = [];
  // Each account's events around the triggering ones (however long its history), and its
  // newest, where the alert's triage is; newest first, each event once.
  const lastHit = a.event_seqs.length ? Math.max(...a.event_seqs) : 0;
  for (const acc of (a.accounts || []).slice(0, 4)) {
    const path = `/v1/accounts/${encodeURIComponent(acc)}/events`;
    const [around, newest] = await Promise.all([
      lastHit ? api("GET", `${path}?at_seq=${lastHit}&limit=200`) : { ok: false },
      api("GET", `${path}?order=newest&limit=500`),
    ]);
    const h = around.ok ? around : newest;
    if (around.ok && newest.ok) {
      const seen = new Set(around.json.events.map((e) => e.seq));
      h.json.events = newest.json.events.filter((e) => !seen.has(e.seq)).concat(around.json.events).sort((x, y) => y.seq - x.seq);
    }
    timelines.push([acc, h]);
  }
  // The alert's history: every triage recorded against it, oldest first.
  const triage = timelines
    .flatMap(([, h]) => (h.ok ? h.json.events : []))
    .filter((e) => e.payload && e.payload.type === "alert_triaged" && e.payload.alert_id === a.id)
    .sort((x, y) => x.seq - y.seq);
  const latest = triage[triage.length - 1];
  // How close together the triggering events came (the window is the rule's, not theirs).
  const hitTimes = timelines
    .flatMap(([, h]) => (h.ok ? h.json.events : []))
    .filter((e) => hits.has(e.seq))
    .map((e) => e.record_time)
    .sort();
  if (hitTimes.length > 1) {
    parts[1].querySelector("#alert-observed").textContent = describe(a, span(hitTimes[0], hitTimes[hitTimes.length - 1]));
  }
  if (latest) {
    parts[1].querySelector("#alert-state").append(`; ${ACTIONS[latest.payload.action] || latest.payload.action} by ${latest.payload.operator}`);
  }
  parts.push(el("h3", {}, "History"));
  parts.push(el("ul", { id: "triage-history" },
    el("li", {}, `${utc(a.opened_at)}: opened by the rule`),
    triage.map((e) => el("li", { "data-action": e.payload.action },
      `${utc(e.record_time)}: ${ACTIONS[e.payload.action] || e.payload.action} by ${e.payload.operator}`,
      e.payload.assignee ? ` (to ${e.payload.assignee})` : "",
      e.payload.note ? [": ", el("q", {}, e.payload.note)] : ""))));
  if (can("security")) {
    const note = el("textarea", { id: "triage-note", rows: "2", cols: "60", maxlength: "1000", placeholder: "note (who you called, what you found)", "aria-label": "note" });
    const assignee = el("input", { id: "triage-assignee", placeholder: "assign to (token name)", "aria-label": "assignee" });
    // The triage this page shows: an action states it, and is refused if another came since.
    const seen = Math.max(a.triage ? a.triage.seq : 0, latest ? latest.seq : 0);
    const result = el("p", { id: "triage-result", role: "alert", tabindex: "-1" });
    const act = async (action) => {
      const body = { action, note: note.value, expected_triage_seq: seen };
      if (action === "assigned") body.assignee = assignee.value.trim();
      const r = await api("POST", `/v1/alerts/${encodeURIComponent(a.id)}/triage`, body);
      if (!r.ok) {
        const e = r.json && r.json.error;
        if (r.status === 409 && e && e.code === "triage_conflict") {
          const t = r.json.current && r.json.current.triage;
          result.replaceChildren(
            `Not recorded: someone triaged this alert after this page was read${t ? ` (${ACTIONS[t.action] || t.action} by ${t.operator})` : ""}. Read it again, then decide. `,
            el("button", { type: "button", id: "triage-reload", onclick: () => alertView(a.id) }, "Read it again"));
        } else {
          result.replaceChildren(`Not recorded: ${e ? e.message : r.status}`);
        }
        result.focus();
        return;
      }
      await alertView(a.id);
      // Focus stays where the work is: the history now holding the action.
      const h = document.getElementById("triage-history");
      if (h) { h.setAttribute("tabindex", "-1"); h.focus(); }
    };
    parts.push(el("div", { class: "filters", id: "triage" }, result, note,
      el("button", { type: "button", id: "ack", onclick: () => act("acknowledged") }, "Acknowledge"),
      assignee, el("button", { type: "button", id: "assign", onclick: () => act("assigned") }, "Assign"),
      el("button", { type: "button", id: "resolve", onclick: () => act("resolved") }, "Resolve"),
      el("button", { type: "button", id: "false-positive", onclick: () => act("false_positive") }, "False positive")));
  }
  // The bindings as they stand now (a lock lifted since the alert shows here at once).
  for (const acc of (a.accounts || []).slice(0, 4)) {
    const b = await api("GET", `/v1/accounts/${encodeURIComponent(acc)}/bindings`);
    if (!b.ok) continue;
    const now = Date.now();
    parts.push(el("h3", {}, `Bindings of ${acc} now`));
    parts.push(el("table", { class: "alert-bindings" },
      el("thead", {}, el("tr", {}, ["binding", "wallet", "status", "lock", ""].map((x) => el("th", {}, x)))),
      el("tbody", {}, b.json.bindings.filter((x) => x.status === "active").map((x) => {
        const locked = x.lock && Date.parse(x.lock.until) > now;
        return el("tr", { "data-binding": x.binding_id, "data-locked": locked ? "true" : "false" },
          el("td", {}, x.binding_id), el("td", {}, x.wallet.masked), el("td", {}, x.status),
          el("td", {}, locked ? `locked until ${utc(x.lock.until)}` : "not locked"),
          el("td", {}, can("security") ? (() => {
            const why = reasonInput(x.binding_id);
            return [why, " ", locked
              ? el("button", { type: "button", class: "danger unlock", onclick: async () => { await unlock(acc, x.binding_id, why); await alertView(a.id); } }, "Unlock")
              : el("button", { type: "button", class: "danger lock", onclick: () => lock(a.id, acc, x.binding_id, why) }, "Lock")];
          })() : ""));
      }))));
  }
  for (const [acc, h] of timelines) {
    parts.push(el("h3", {}, `Timeline of ${acc}`));
    parts.push(h.ok ? timeline(h.json.events, hits) : failure("the timeline could not be read", h));
  }
  show(...parts);
}

function reasonInput(binding) {
  return el("input", { class: "reason", "data-for": binding, placeholder: "reason", "aria-label": "reason", maxlength: "1000" });
}

// `reason`: the input beside the button (its text is recorded with the person's name).
async function unlock(account, binding, reason) {
  const why = reason.value.trim();
  if (!confirm(`Unlock binding ${binding} of ${account}?`)) return;
  const r = await api("POST", `/v1/accounts/${encodeURIComponent(account)}/bindings/${binding}/unlock`, { confirm: true, reason: why });
  if (!r.ok) { alert(`Not unlocked: ${r.json && r.json.error ? r.json.error.message : r.status}`); }
  await accountView(account);
}

async function lock(alertId, account, binding, reason) {
  const why = reason.value.trim();
  if (!confirm(`Lock binding ${binding} of ${account} for 30 minutes?`)) return;
  const r = await api("POST", `/v1/accounts/${encodeURIComponent(account)}/bindings/${binding}/lock`,
    { confirm: true, alert_id: alertId, minutes: 30, reason: why });
  if (!r.ok) { alert(`Not locked: ${r.json && r.json.error ? r.json.error.message : r.status}`); }
  await alertView(alertId);
}

async function accountView(account) {
  const [b, p, h] = await Promise.all([
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/bindings`),
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/payments?limit=50`),
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100`),
  ]);
  const parts = [el("h2", {}, `Account ${account}`)];
  if (!b.ok) { show(...parts, failure("the bindings could not be read", b)); return; }
  if (b.json.version === 0) {
    show(...parts, el("p", { id: "not-found", role: "status" }, "Not found: no event was ever recorded for this account. Check the id."));
    return;
  }
  // A failed payment names its binding only: its wallet is the binding's.
  const walletOf = Object.fromEntries(b.json.bindings.map((x) => [x.binding_id, x.wallet.masked]));
  const paymentRow = (x) => el("tr", {},
    el("td", {}, utc(x.event_time || x.time)), el("td", {}, x.order_id),
    el("td", {}, `${(x.amount_minor / 100).toFixed(2)} ${x.currency || ""}`),
    el("td", { class: "wallet" }, x.wallet || walletOf[x.binding_id] || ""),
    el("td", {}, x.status), el("td", {}, x.reason ? reason(x.reason) : ""));
  const now = Date.now();
  parts.push(el("h3", {}, "Bindings"));
  parts.push(el("table", { id: "bindings" },
    el("thead", {}, el("tr", {}, ["binding", "provider", "wallet", "status", "lock", "bound", ""].map((x) => el("th", {}, x)))),
    el("tbody", {}, b.json.bindings.map((x) => {
      const locked = x.lock && Date.parse(x.lock.until) > now;
      return el("tr", { "data-binding": x.binding_id, "data-locked": locked ? "true" : "false" },
        el("td", {}, x.binding_id),
        el("td", {}, x.provider),
        el("td", {}, x.wallet.masked, " ", el("a", { href: `#/wallet/${x.wallet.fingerprint}` }, "wallet")),
        el("td", { class: "status" }, x.status),
        el("td", { class: "lock" }, locked ? `locked until ${utc(x.lock.until)} (alert ${x.lock.alert_id})` : "not locked"),
        el("td", {}, utc(x.bound_at)),
        el("td", {}, locked && can("security") ? (() => {
          const why = reasonInput(x.binding_id);
          return [why, " ", el("button", { class: "danger unlock", type: "button", onclick: () => unlock(account, x.binding_id, why) }, "Unlock")];
        })() : ""),
      );
    })),
  ));
  parts.push(el("h3", {}, "Payments"));
  parts.push(p.ok
    ? el("table", { id: "payments" }, el("thead", {}, el("tr", {}, ["time", "order", "amount", "wallet", "status", "reason"].map((x) => el("th", {}, x)))),
        el("tbody", {}, p.json.payments.map(paymentRow)))
    : failure("the payments could not be read", p));
  if (p.ok && p.json.next_before_version) {
    parts.push(pager("payments-older", "Older payments", async () => {
      const more = await api("GET", `/v1/accounts/${encodeURIComponent(account)}/payments?limit=50&before_version=${p.json.next_before_version}`);
      if (!more.ok) return;
      p.json.next_before_version = more.json.next_before_version;
      document.querySelector("#payments tbody").append(...more.json.payments.map(paymentRow));
      if (!more.json.next_before_version) document.getElementById("payments-older").remove();
    }));
  }
  parts.push(el("h3", {}, "History (newest first)"));
  const history = el("div", { id: "history" });
  const page = async (r) => {
    if (!r.ok) { history.replaceChildren(failure("the history could not be read", r)); return; }
    const nav = [];
    if (r.json.newer_before_version) {
      nav.push(pager("history-newer", "Newer", async () => page(await api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100&before_version=${r.json.newer_before_version}`))));
    }
    if (r.json.next_before_version) {
      nav.push(pager("history-older", "Older", async () => page(await api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100&before_version=${r.json.next_before_version}`))));
    }
    history.replaceChildren(timeline(r.json.events, new Set()), ...nav);
  };
  await page(h);
  parts.push(history);
  show(...parts);
}

function pager(id, label, onclick) {
  return el("button", { type: "button", id, class: "pager", onclick }, label);
}

async function walletView(fingerprint) {
  const r = await api("GET", `/v1/wallets/${fingerprint}/accounts`);
  if (!r.ok) { show(failure("the wallet could not be read", r)); return; }
  const now = new Set(r.json.accounts);
  const all = r.json.history && r.json.history.length ? r.json.history : r.json.accounts;
  show(
    el("h2", {}, "Wallet ", el("code", {}, fingerprint.slice(0, 16) + "…")),
    el("p", { class: "muted" }, `Every account this wallet is or was bound to: ${now.size} now, ${all.length} in all. Several accounts on one wallet is how a shared-wallet ring shows.`),
    el("ul", { id: "wallet-accounts" }, all.map((acc) => el("li", { "data-bound": now.has(acc) ? "now" : "before" },
      el("a", { href: `#/account/${encodeURIComponent(acc)}` }, acc), now.has(acc) ? " (bound now)" : " (was bound; unbound since)"))),
  );
}

// ---- at a glance ----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children.flat(Infinity)) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/// Horizontal bars: [label, value] pairs.
function bars(id, rows, color) {
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const h = 20 * rows.length + 4;
  return svg("svg", { id, width: "560", height: String(h), role: "img" },
    rows.map(([label, v], i) => [
      svg("text", { x: "0", y: String(20 * i + 15), "font-size": "12" }, label),
      svg("rect", { x: "190", y: String(20 * i + 4), height: "14", width: String(Math.max(1, (300 * v) / max)), fill: color }),
      svg("text", { x: String(196 + (300 * v) / max), y: String(20 * i + 15), "font-size": "12" }, String(v)),
    ]));
}

/// A line over the last samples (one per second).
function line(id, samples) {
  const w = 560, h = 80, max = Math.max(1, ...samples);
  const points = samples.map((v, i) => `${(w * i) / Math.max(1, samples.length - 1)},${h - (h * v) / max}`).join(" ");
  return svg("svg", { id, width: String(w), height: String(h + 14), role: "img" },
    svg("polyline", { points, fill: "none", stroke: "#2457c5", "stroke-width": "2" }),
    svg("text", { x: "0", y: String(h + 12), "font-size": "11" }, `max ${max}/s over the last ${samples.length} s`));
}

/// The commands counters of `/metrics` (OpenMetrics text): {"kind outcome": total}.
function commandTotals(text) {
  const totals = {};
  for (const l of text.split("\n")) {
    const m = /^bindledger_commands_total\{kind="([^"]*)",outcome="([^"]*)"\} (\d+)/.exec(l);
    if (m) totals[`${m[1]} ${m[2]}`] = Number(m[3]);
  }
  return totals;
}

async function glanceView() {
  const rate = el("div", { id: "glance-rate" }, el("span", { class: "muted" }, "measuring…"));
  const reasons = el("table", { id: "glance-reasons" });
  const relays = el("div", { id: "glance-relays" });
  const rules = el("div", { id: "glance-rules" });
  const cluster = el("div", { id: "glance-cluster" });
  show(el("h2", {}, "At a glance"),
    el("h3", {}, "Alerts opened by rule: last hour, last day"), rules,
    el("h3", {}, "Commands per second"), rate,
    el("h3", {}, "Failures per second, by reason (last second)"), reasons,
    el("h3", {}, "Relays"), relays,
    el("h3", {}, "Cluster"), cluster);
  const shardRow = (me, r) => el("tr", {},
    el("td", {}, r.shard === me ? `${r.shard} (this node)` : r.shard),
    el("td", {}, r.url),
    el("td", {}, `${r.slots} slots`),
    el("td", {}, r.answered ? `${r.status}, ${r.role}, epoch ${r.epoch}` : `unreachable: ${r.error}`),
    el("td", {}, r.answered ? `${r.events} events, relay lag ${r.relay_lag_events}` : ""),
    el("td", {}, r.answered ? `map v${r.map_version}` : ""));
  const showCluster = async () => {
    const c = await api("GET", "/v1/cluster/status");
    if (c.ok) {
      cluster.replaceChildren(
        el("p", { class: "muted" }, `shard ${c.json.shard} of ${c.json.shards.length}, shard map version ${c.json.map_version}; requests for another shard's accounts are forwarded to it`),
        el("table", { id: "glance-shards" }, c.json.shards.map((r) => shardRow(c.json.shard, r))));
    } else if (c.status === 404) {
      cluster.replaceChildren(el("p", { class: "muted" }, "a ledger alone: not a shard of a cluster"));
    } else {
      cluster.replaceChildren(failure("the cluster could not be read", c));
    }
  };
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const a = await api("GET", `/v1/alerts?limit=1000&since=${encodeURIComponent(since)}`);
  if (a.ok) {
    const hour = Date.now() - 3600 * 1000;
    const byRule = Object.keys(RULES).map((r) => {
      const of = a.json.alerts.filter((x) => x.rule === r);
      return [r, of.filter((x) => Date.parse(x.opened_at) >= hour).length, of.length];
    });
    const bySeverity = ["critical", "high", "medium", "low"].map((s) => [s, a.json.alerts.filter((x) => x.severity === s).length]);
    rules.replaceChildren(
      bars("glance-rules-hour", byRule.map(([r, h]) => [r, h]), "#c0392b"),
      bars("glance-rules-day", byRule.map(([r, , d]) => [r, d]), "#b9770e"),
      el("h3", {}, "Alerts opened by severity, last day"),
      bars("glance-severity", bySeverity, "#4a6a88"));
  } else {
    rules.replaceChildren(failure("the alerts could not be read", a));
  }
  const samples = [];
  let last = null;
  let ticks = 0;
  const tick = async () => {
    if (!document.body.contains(rate)) { clearInterval(state.glance); state.glance = null; return; }
    const m = await fetch("/metrics", { credentials: "same-origin" });
    const totals = commandTotals(await m.text());
    if (last) {
      const delta = (k) => (totals[k] || 0) - (last[k] || 0);
      const all = Object.keys(totals).reduce((s, k) => s + delta(k), 0);
      samples.push(all);
      if (samples.length > 60) samples.shift();
      rate.replaceChildren(line("glance-rate-line", samples), el("div", { class: "muted" }, `${all} commands in the last second`));
      const failing = Object.keys(totals)
        .filter((k) => !k.endsWith(" succeeded") && delta(k) > 0)
        .map((k) => [k.split(" ")[1], delta(k)]);
      reasons.replaceChildren(...failing.map(([code, n]) => el("tr", {}, el("td", {}, reason(code)), el("td", {}, `${n}/s`))));
    }
    last = totals;
    if (ticks++ % 5 === 0) await showCluster();
    const s = await api("GET", "/v1/status");
    if (s.ok) {
      const r = s.json.relays;
      relays.replaceChildren(el("dl", {},
        ["events", "alerts", "checkpoints"].map((k) => [
          el("dt", {}, k),
          el("dd", {}, r[k].state === "disabled" ? "disabled"
            : `${r[k].state}, position ${r[k].position}` + (k === "events" ? `, lag ${r[k].lag_events} events / ${Number(r[k].lag_seconds || 0).toFixed(3)} s` : "")),
        ])));
    } else {
      relays.replaceChildren(failure("the relays could not be read", s));
    }
  };
  if (state.glance) clearInterval(state.glance);
  await tick();
  state.glance = setInterval(tick, 1000);
}


// ---- rules and backtest -------------------------------------------------------------------------

function settings(r) {
  return Object.entries(r)
    .filter(([k]) => k !== "enabled" && k !== "severity")
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`)
    .join(" · ");
}

async function rulesView() {
  const r = await api("GET", "/v1/rules");
  if (!r.ok) { show(failure("the rules could not be read", r)); return; }
  const rules = r.json.rules;
  const out = el("div", { id: "backtest-result" });
  const candidate = el("textarea", { id: "candidate", rows: "8", cols: "80", "aria-label": "candidate rules file",
    placeholder: "[password_brute_force]\nthreshold = 3\nwindow = \"10m\"" });
  const run = async () => {
    out.replaceChildren(el("p", { class: "muted" }, "running over the log…"));
    const res = await api("POST", "/v1/rules/backtest", candidate.value);
    const json = res.json;
    if (!res.ok) {
      const line = json && json.line ? ` (line ${json.line})` : "";
      out.replaceChildren(el("p", { class: "error", role: "alert" }, `${json && json.error ? json.error.message : res.status}${line}`));
      return;
    }
    const listed = (title, id, alerts) => [el("h3", {}, title), el("ul", { id }, alerts.map((a) =>
      el("li", {}, el("a", { href: `#/alert/${encodeURIComponent(a.id)}` }, a.id), ` ${a.severity} · ${a.key.value} · ${describe(a)}`)))];
    out.replaceChildren(
      el("p", { id: "backtest-summary" }, `${json.events} events: ${json.added_total} added, ${json.removed_total} removed, ${json.changed_total} changed, ${json.unchanged} unchanged (lists show at most ${json.listed_max})`),
      ...listed("Added", "backtest-added", json.added),
      ...listed("Removed", "backtest-removed", json.removed),
      el("h3", {}, "Changed"),
      el("ul", { id: "backtest-changed" }, json.changed.map((c) => el("li", {}, el("a", { href: `#/alert/${encodeURIComponent(c.id)}` }, c.id), `: ${c.differences.join("; ")}`))),
    );
  };
  show(
    el("h2", {}, "Rules in force"),
    el("table", { id: "rules" },
      el("thead", {}, el("tr", {}, ["rule", "what", "severity", "on", "settings"].map((h) => el("th", {}, h)))),
      el("tbody", {}, Object.keys(RULES).map((name) => {
        const rule = rules[name] || {};
        return el("tr", { "data-rule": name }, el("td", {}, name), el("td", {}, RULES[name]),
          el("td", {}, rule.severity || ""), el("td", {}, rule.enabled === false ? "off" : "on"), el("td", {}, settings(rule)));
      }))),
    el("p", { class: "muted" }, `rules digest ${r.json.digest}; limits: ${settings(rules.limits || {})}`),
    el("h2", {}, "Backtest a candidate rules file"),
    el("p", { class: "muted" }, "Runs the candidate over the whole log beside the alerts the ledger raised. Keys left out keep their defaults (see the README)."),
    candidate,
    el("div", {}, can("security") ? el("button", { type: "button", id: "run-backtest", onclick: run }, "Backtest") : el("span", { class: "muted" }, "backtests need the security role")),
    out,
  );
}

// ---- routing ------------------------------------------------------------------------------------

function route() {
  if (!state.me) return;
  const [, view, arg] = (location.hash || "#/alerts").split("/");
  const value = arg ? decodeURIComponent(arg) : "";
  if (view !== "alerts" && state.stream) { state.stream.close(); state.stream = null; }
  if (view === "alert") alertView(value);
  else if (view === "account") accountView(value);
  else if (view === "wallet") walletView(value);
  else if (view === "glance") glanceView();
  else if (view === "rules") rulesView();
  else if (can("security") || can("auditor")) alertsView();
  else show(el("p", { id: "no-alerts", class: "muted" }, "Alerts need the security or auditor role. Look up an account or a wallet above."));
}

window.addEventListener("hashchange", route);

// A failure of the page itself is shown, not swallowed (and the browser test looks for it).
function pageError(what) {
  const main = document.getElementById("main");
  main.prepend(el("p", { class: "error page-error", role: "alert" }, `The page failed: ${what}`));
}
window.addEventListener("error", (e) => pageError(e.message));
window.addEventListener("unhandledrejection", (e) => pageError(String(e.reason)));

(async () => {
  const r = await api("GET", "/console/session");
  if (r.ok) signedIn(r.json);
  else signedOut(sessionStorage.getItem("bindledger-signed-in") ? SESSION_ENDED : "");
})();
