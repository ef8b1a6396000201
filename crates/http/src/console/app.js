// The bindledger security console. Plain JavaScript, no build step, no dependency. Every value
// from the ledger reaches the page through textContent (never as HTML), and the page runs under
// a Content-Security-Policy that allows only this script and its style sheet.
"use strict";

const state = { me: null, csrf: "", stream: null, alerts: new Map() };

// ---- language and time zone ----------------------------------------------------------------------
//
// The page speaks Chinese or English: the browser's language chooses, the header's switch
// changes it, and the choice is remembered (localStorage). Every text of the page goes through
// `t(english, ...values)`: in Chinese, the English text is looked up in ZH (`{0}`, `{1}` are the
// values), and a text missing there is noted in `window.__untranslated` (a test reads it).
// Times show in the viewer's zone (Beijing time by default in Chinese, the browser's zone in
// English; switchable and remembered), with the UTC time on hover.

const LANG_KEY = "bindledger-lang";
const TZ_KEY = "bindledger-tz";

function browserLang() {
  return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
}

let lang = localStorage.getItem(LANG_KEY) === "zh" || localStorage.getItem(LANG_KEY) === "en"
  ? localStorage.getItem(LANG_KEY) : browserLang();

function browserZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (_) { return "UTC"; }
}

function zone() {
  return localStorage.getItem(TZ_KEY) || (lang === "zh" ? "Asia/Shanghai" : browserZone());
}

window.__untranslated = window.__untranslated || [];

function t(text, ...values) {
  let out = text;
  if (lang === "zh") {
    if (Object.prototype.hasOwnProperty.call(ZH, text)) out = ZH[text];
    else if (!window.__untranslated.includes(text)) window.__untranslated.push(text);
  }
  return out.replace(/\{(\d)\}/g, (_, i) => String(values[Number(i)]));
}

// A pair [Chinese, English] in the page's language.
function pick(pair) {
  return lang === "zh" ? pair[0] : pair[1];
}

// A time as the API sends it: RFC 3339 text, or microseconds since 1970 (the delivery log's).
function isoOf(v) {
  return typeof v === "number" ? new Date(v / 1000).toISOString() : v;
}

// The UTC form of a time (the hover text, and what the API sends).
function utc(v) {
  const iso = isoOf(v);
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC") : "";
}

function zoneName(z) {
  if (z === "UTC") return "UTC";
  if (z === "Asia/Shanghai") return t("Beijing time");
  return z;
}

// A time in the viewer's zone, as text: `2026-12-07 20:15:03 Beijing time`.
function when(v) {
  const iso = isoOf(v);
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const z = zone();
  let parts;
  try {
    parts = new Intl.DateTimeFormat("en-GB", { timeZone: z, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }).formatToParts(d);
  } catch (_) {
    return utc(iso);
  }
  const p = Object.fromEntries(parts.map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${zoneName(z)}`;
}

// A time as an element: the viewer's zone shown, UTC on hover.
function at(v) {
  return v ? el("time", { datetime: isoOf(v), title: utc(v) }, when(v)) : "";
}

// The Chinese of every text of the page (the English is the key).
const ZH = {
  "security console": "安全控制台",
  "Alerts": "告警",
  "At a glance": "总览",
  "Rules": "规则",
  "Webhooks": "Webhook",
  "Open": "打开",
  "account, or wallet fingerprint": "账户，或钱包指纹",
  "Sign out": "退出",
  "Sign in": "登录",
  "Paste a token. It is exchanged for a session cookie the page cannot read, and is not kept.": "粘贴令牌。它会换成页面无法读取的会话 Cookie，令牌本身不会保存。",
  "token": "令牌",
  "That token was not accepted.": "该令牌未被接受。",
  "You were signed out: your session ended (the server restarted, or 8 hours passed without use). Sign in again.": "您已退出登录：会话已结束（服务器重启，或 8 小时未使用）。请重新登录。",
  "Beijing time": "北京时间",
  "time zone": "时区",
  "this browser's zone ({0})": "本浏览器时区（{0}）",
  "language": "语言",
  "The page failed: {0}": "页面出错：{0}",
  "{0} could not be read: {1}": "{0}无法读取：{1}",
  "the alerts": "告警",
  "the alert": "告警",
  "the bindings": "绑定",
  "the payments": "支付记录",
  "the history": "历史",
  "the timeline": "时间线",
  "the wallet": "钱包",
  "the relays": "中继",
  "the cluster": "集群",
  "the rules": "规则",
  "the deliveries": "投递记录",
  "related alerts": "相关告警",
  // the queue
  "opened": "发生时间",
  "severity": "严重程度",
  "rule": "规则",
  "account or wallet": "账户或钱包",
  "observed": "观测",
  "state": "状态",
  "any severity": "任意严重程度",
  "medium or worse": "中及以上",
  "high or worse": "高及以上",
  "critical": "严重",
  "high": "高",
  "medium": "中",
  "low": "低",
  "any rule": "任意规则",
  "any state": "任意状态",
  "open": "未关闭",
  "closed": "已关闭",
  "not yet triaged": "尚未处理",
  "acknowledged": "已确认",
  "assigned": "已指派",
  "resolved": "已解决",
  "false positive": "误报",
  "locked by a person": "人工锁定",
  "unlocked by a person": "人工解锁",
  "assignee": "处理人",
  "account": "账户",
  "sort order": "排序",
  "newest first": "最新在前",
  "oldest first": "最早在前",
  "opened since": "发生于此后",
  "opened before": "发生于此前",
  "Apply": "应用",
  "Clear": "清除",
  "Newest": "最新",
  "Older": "更早",
  "Newer": "更新",
  "Download CSV": "下载 CSV",
  "{0} shown": "显示 {0} 条",
  "connecting…": "连接中…",
  "live": "实时",
  "reconnecting…": "重新连接中…",
  "Select all shown": "全选本页",
  "select": "选择",
  "With the selected:": "对所选告警：",
  "Acknowledge": "确认",
  "Assign": "指派",
  "Resolve": "解决",
  "False positive": "误报",
  "note (who you called, what you found)": "备注（联系了谁，发现了什么）",
  "assign to (token name)": "指派给（令牌名）",
  "note": "备注",
  "{0} recorded, {1} refused": "已记录 {0} 条，拒绝 {1} 条",
  "Nothing selected.": "未选择告警。",
  "refused: someone triaged it after this page was read": "被拒绝：本页读取后已有人处理",
  "refused: {0}": "被拒绝：{0}",
  "No alert matches these filters.": "没有符合条件的告警。",
  "Alerts need the security or auditor role. Look up an account or a wallet above.": "查看告警需要安全或审计角色。可在上方查找账户或钱包。",
  // what an alert says
  "{0} in a {1} window{2}; threshold {3}": "窗口 {1} 内 {0}{2}；阈值 {3}",
  ", all within {0}": "，全部发生在 {0} 内",
  "a second": "1 秒",
  "{0} s": "{0} 秒",
  "{0} min": "{0} 分钟",
  "{0} h": "{0} 小时",
  "binding locked until {0}": "绑定锁定至 {0}",
  "{0} to {1}": "{0}给 {1}",
  "{0} by {1}": "{0}（{1}）",
  "wallet {0}…": "钱包 {0}…",
  // the alert page
  "what": "内容",
  "subject": "对象",
  "accounts": "账户",
  "updated": "更新时间",
  "(revision {0}, {1} matches)": "（第 {0} 版，匹配 {1} 次）",
  "events": "事件",
  "History": "处理历史",
  "{0}: opened by the rule": "{0}：规则触发",
  "Not recorded: someone triaged this alert after this page was read{0}. Read it again, then decide. ": "未记录：本页读取后已有人处理此告警{0}。请重新读取后再决定。",
  "Read it again": "重新读取",
  "Not recorded: {0}": "未记录：{0}",
  "Bindings of {0} now": "{0} 当前的绑定",
  "binding": "绑定",
  "wallet": "钱包",
  "status": "状态",
  "lock": "锁定",
  "locked until {0}": "锁定至 {0}",
  "not locked": "未锁定",
  "Unlock": "解锁",
  "Lock": "锁定",
  "reason": "原因",
  "Timeline of {0}": "{0} 的时间线",
  "Related activity": "相关活动",
  "Other alerts on {0}": "{0} 的其他告警",
  "Other alerts on this wallet": "该钱包的其他告警",
  "Accounts this wallet is or was bound to": "该钱包绑定过的账户",
  "none": "无",
  "Other accounts on the devices of {0}": "与 {0} 使用同一设备的其他账户",
  "Other accounts on the IP addresses of {0}": "与 {0} 使用同一 IP 地址的其他账户",
  "related accounts": "相关账户",
  "Unlock binding {0} of {1}?": "解锁 {1} 的绑定 {0}？",
  "Lock binding {0} of {1} for 30 minutes?": "锁定 {1} 的绑定 {0} 30 分钟？",
  "Not unlocked: {0}": "未解锁：{0}",
  "Not locked: {0}": "未锁定：{0}",
  // timelines
  "time": "时间",
  "seq": "序号",
  "event": "事件",
  "outcome": "结果",
  "failed": "失败",
  "succeeded": "成功",
  "locked": "已锁定",
  "unlocked": "已解锁",
  "recorded": "已记录",
  "erased": "已删除",
  "active": "有效",
  "unbound": "已解绑",
  "by {0}": "操作人 {0}",
  // the account page
  "Account {0}": "账户 {0}",
  "Not found: no event was ever recorded for this account. Check the id.": "未找到：此账户从未有过记录。请检查账户号。",
  "Bindings": "绑定",
  "provider": "支付渠道",
  "bound": "绑定时间",
  "locked until {0} (alert {1})": "锁定至 {0}（告警 {1}）",
  "Payments": "支付",
  "order": "订单",
  "amount": "金额",
  "Older payments": "更早的支付",
  "History (newest first)": "历史（最新在前）",
  // the wallet page
  "Wallet ": "钱包 ",
  "Every account this wallet is or was bound to: {0} now, {1} in all. Several accounts on one wallet is how a shared-wallet ring shows.": "此钱包绑定过的所有账户：当前 {0} 个，共 {1} 个。一个钱包绑定多个账户，正是共用钱包团伙的迹象。",
  " (bound now)": "（当前绑定）",
  " (was bound; unbound since)": "（曾绑定，已解绑）",
  // at a glance
  "Alerts opened by rule: last hour, last day": "按规则统计的告警：最近一小时、最近一天",
  "Commands per second": "每秒命令数",
  "Failures per second, by reason (last second)": "每秒失败数，按原因（最近一秒）",
  "Relays": "中继",
  "Cluster": "集群",
  "Alerts opened by severity, last day": "按严重程度统计的告警，最近一天",
  "at least: the newest {0} alerts were counted": "至少：只统计了最新的 {0} 条告警",
  "measuring…": "测量中…",
  "max {0}/s over the last {1} s": "最近 {1} 秒最高 {0}/秒",
  "{0} commands in the last second": "最近一秒 {0} 条命令",
  "{0}/s": "{0}/秒",
  "{0} (this node)": "{0}（本节点）",
  "{0} slots": "{0} 个槽",
  "{0}, {1}, epoch {2}": "{0}，{1}，纪元 {2}",
  "unreachable: {0}": "无法连接：{0}",
  "{0} events, relay lag {1}": "{0} 个事件，中继延迟 {1}",
  "map v{0}": "分片表 v{0}",
  "shard {0} of {1}, shard map version {2}; requests for another shard's accounts are forwarded to it": "第 {0} 个分片，共 {1} 个，分片表版本 {2}；其他分片账户的请求会转发过去",
  "a ledger alone: not a shard of a cluster": "单个账本：不属于集群",
  "disabled": "未启用",
  "{0}, position {1}": "{0}，位置 {1}",
  ", lag {0} events / {1} s": "，延迟 {0} 个事件 / {1} 秒",
  // rules
  "Rules in force": "生效的规则",
  "on": "启用",
  "off": "停用",
  "settings": "设置",
  "rules digest {0}; limits: {1}": "规则摘要 {0}；限制：{1}",
  "Backtest a candidate rules file": "回测候选规则文件",
  "Runs the candidate over the whole log beside the alerts the ledger raised. Keys left out keep their defaults (see the README).": "在整个日志上运行候选规则，并与账本已产生的告警对比。未写出的键保持默认值（见 README）。",
  "Backtest": "回测",
  "backtests need the security role": "回测需要安全角色",
  "running over the log…": "正在日志上运行…",
  "{0}{1}": "{0}{1}",
  " (line {0})": "（第 {0} 行）",
  "{0} events: {1} added, {2} removed, {3} changed, {4} unchanged (lists show at most {5})": "{0} 个事件：新增 {1}，移除 {2}，变化 {3}，不变 {4}（列表最多显示 {5} 条）",
  "Added": "新增",
  "Removed": "移除",
  "Changed": "变化",
  "candidate rules file": "候选规则文件",
  // webhooks
  "Deliveries": "投递记录",
  "Send a test event": "发送测试事件",
  "Send again": "重新发送",
  "attempt": "尝试",
  "answer": "响应",
  "took": "耗时",
  "next attempt": "下次尝试",
  "kind": "类型",
  "alert": "告警",
  "delivered": "已送达",
  "retrying": "重试中",
  "given_up": "已放弃",
  "test": "测试",
  "resend": "重新发送",
  "{0} ms": "{0} 毫秒",
  "{0} delivered, {1} given up, {2} attempts in all; every change through stream seq {3} sent or given up": "已送达 {0}，放弃 {1}，共尝试 {2} 次；流序号 {3} 及之前的变更均已发送或放弃",
  "last error: {0}": "最近错误：{0}",
  "Webhooks are off: set webhooks.url to send alerts to a receiver.": "Webhook 未启用：设置 webhooks.url 以将告警发送给接收方。",
  "Sent: {0}": "已发送：{0}",
  "Not sent: {0}": "未发送：{0}",
  "Older deliveries": "更早的投递",
  "sending and testing need the security role": "发送和测试需要安全角色",
};

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
  acknowledged: ["确认了告警", "acknowledged"],
  assigned: ["指派了告警", "assigned"],
  resolved: ["解决了告警", "resolved"],
  false_positive: ["标记为误报", "marked a false positive"],
  locked: ["锁定了绑定", "locked the binding"],
  unlocked: ["解锁了绑定", "unlocked the binding"],
};

function action(a) {
  return ACTIONS[a] ? pick(ACTIONS[a]) : a;
}

const RULES = {
  password_brute_force: ["同一账户多次输错支付密码", "wrong payment passwords on one account"],
  bind_failure_burst: ["同一账户多次绑定失败", "failed binds on one account"],
  bind_then_drain: ["新绑定后立即大额消费", "a new binding spent heavily at once"],
  shared_wallet: ["一个钱包绑定了多个账户", "one wallet bound to several accounts"],
  binding_churn: ["反复绑定又解绑", "bind and unbind again and again"],
  amount_spike: ["支付金额远高于该账户平常", "a payment far above the account's usual"],
  dead_wallet_probing: ["用已失效的钱包反复尝试绑定", "binds tried with dead wallets"],
  password_stuffing: ["同一钱包的密码在多个账户上尝试", "one wallet's password tried from many accounts"],
};

function ruleText(r) {
  return RULES[r] ? pick(RULES[r]) : "";
}

const SEVERITIES = { critical: "critical", high: "high", medium: "medium", low: "low" };

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

// A failure reason: its code, or the event's `{code, ...}` object. In English the Chinese is
// shown above it (the platform's own words); in Chinese, the Chinese alone.
function reason(why) {
  const code = why && typeof why === "object" ? why.code : why;
  const r = (code === "invalid_input" && why && INVALID_FIELDS[why.field]) || REASONS[code];
  if (!r) return code || "";
  return lang === "zh"
    ? el("span", { class: "reason" }, r[0])
    : el("span", { class: "reason" }, el("span", { class: "zh", lang: "zh-CN" }, r[0]), r[1]);
}

function eventName(type) {
  const r = EVENTS[type];
  if (!r) return type;
  return lang === "zh" ? el("span", {}, r[0]) : el("span", {}, el("span", { class: "zh", lang: "zh-CN" }, r[0]), r[1]);
}

function span(from, to) {
  const s = Math.round((Date.parse(to) - Date.parse(from)) / 1000);
  if (!(s >= 0)) return "";
  if (s === 0) return t("a second");
  if (s < 120) return t("{0} s", s);
  if (s < 7200) return t("{0} min", Math.round(s / 60));
  return t("{0} h", Math.round(s / 3600));
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

// `what`: what could not be read, already in the page's language.
function failure(what, r) {
  const msg = r.json && r.json.error ? `${r.json.error.message} (${r.json.error.code})` : `HTTP ${r.status}`;
  return el("p", { class: "error", role: "alert" }, t("{0} could not be read: {1}", what, msg));
}

// ---- the page's frame: its static texts, the language and zone switches --------------------------

function translateFrame() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = `bindledger · ${t("security console")}`;
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  for (const e of document.querySelectorAll("[data-t-placeholder]")) {
    e.setAttribute("placeholder", t(e.dataset.tPlaceholder));
    e.setAttribute("aria-label", t(e.dataset.tPlaceholder));
  }
  const switcher = document.getElementById("lang");
  switcher.textContent = lang === "zh" ? "English" : "中文";
  switcher.setAttribute("lang", lang === "zh" ? "en" : "zh-CN");
  switcher.setAttribute("aria-label", t("language"));
  const zones = document.getElementById("zone");
  const mine = browserZone();
  const choices = [["", t("this browser's zone ({0})", mine)], ["Asia/Shanghai", t("Beijing time")], ["UTC", "UTC"]];
  zones.replaceChildren(...choices.map(([v, label]) => el("option", { value: v }, label)));
  zones.value = localStorage.getItem(TZ_KEY) || (lang === "zh" ? "Asia/Shanghai" : "");
  zones.setAttribute("aria-label", t("time zone"));
}

document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem(LANG_KEY, lang);
  translateFrame();
  if (state.me) route(); else signedOutText();
});

document.getElementById("zone").addEventListener("change", (ev) => {
  if (ev.target.value) localStorage.setItem(TZ_KEY, ev.target.value);
  else localStorage.removeItem(TZ_KEY);
  if (state.me) route();
});

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

// The sign-in's message, in the page's language (`state.signedOutWhy` is its English).
function signedOutText() {
  document.getElementById("sign-in-error").textContent = state.signedOutWhy ? t(state.signedOutWhy) : "";
}

// `why`: the English of what to tell (translated when shown).
function signedOut(why) {
  if (why) sessionStorage.removeItem("bindledger-signed-in");
  state.me = null;
  state.csrf = "";
  if (state.stream) { state.stream.close(); state.stream = null; }
  document.getElementById("nav").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("sign-in").hidden = false;
  state.signedOutWhy = why || "";
  signedOutText();
  show();
}

document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  const r = await api("POST", "/console/session", { token: input.value });
  input.value = "";
  if (r.ok) {
    state.signedOutWhy = "";
    signedOutText();
    signedIn(r.json);
  } else {
    state.signedOutWhy = "That token was not accepted.";
    signedOutText();
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
//
// The server pages, filters and sorts (`GET /v1/alerts`); the filters are in the page's address
// (`#/alerts?state=untriaged&rule=...`), so a view can be shared. The page shows one page of
// alerts and follows the live stream from where its listing stood (`stream_seq`, `triage_seq`):
// a new alert that belongs on the page shown is added at its top, and a change or a triage
// applies to the rows shown only. Nothing is replayed, and the page holds at most QUEUE_ROWS_MAX
// alerts, however many the store has.

// Alerts per page.
const QUEUE_PAGE = 50;
// Rows the first page grows to with live alerts before its oldest ones drop off.
const QUEUE_ROWS_MAX = 200;

// What an alert saw, against its threshold, in the rule's window (the observed span, when the
// triggering events are known, is told apart from it: `observed`).
function describe(a, observed) {
  const words = a.unit.replace(/_/g, " ");
  const money = (v) => (a.currency ? `${(v / 100).toFixed(2)} ${a.currency}` : v);
  const within = span(a.window_start, a.window_end);
  const seen = observed ? t(", all within {0}", observed) : "";
  if (a.unit === "minor_units") {
    return t("{0} in a {1} window{2}; threshold {3}", money(a.observed), within, seen, money(a.threshold));
  }
  return t("{0} in a {1} window{2}; threshold {3}", `${a.observed} ${words}`, within, seen, a.threshold);
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
    if (a.binding_lock && Date.parse(a.binding_lock.until) > Date.now()) return t("binding locked until {0}", when(a.binding_lock.until));
  } else {
    // A change from the live stream carries no binding state: its latest triage says.
    const lifted = a.triage && a.triage.action === "unlocked";
    if (a.lock && !lifted && Date.parse(a.lock.until) > Date.now()) return t("binding locked until {0}", when(a.lock.until));
  }
  return Date.parse(a.open_until) > Date.now() ? t("open") : t("closed");
}

// Where an alert stands with the people handling it: its latest triage.
function triageText(tr) {
  if (!tr) return t("not yet triaged");
  const what = tr.action === "assigned" && tr.assignee ? t("{0} to {1}", action(tr.action), tr.assignee) : action(tr.action);
  return t("{0} by {1}", what, tr.operator);
}

function subject(a) {
  if (a.key.kind === "wallet") {
    return el("a", { href: `#/wallet/${a.key.value}` }, t("wallet {0}…", a.key.value.slice(0, 12)));
  }
  return el("a", { href: `#/account/${encodeURIComponent(a.key.value)}` }, a.key.value);
}

function severity(s) {
  return el("span", { class: `sev sev-${s}` }, SEVERITIES[s] ? t(s) : s);
}

function alertRow(a, selectable) {
  return el(
    "tr",
    { "data-alert": a.id, "data-severity": a.severity, "data-rule": a.rule, "data-triage-seq": a.triage ? a.triage.seq : 0 },
    selectable ? el("td", {}, el("input", { type: "checkbox", class: "pick", "aria-label": t("select"), "data-alert": a.id })) : null,
    el("td", {}, at(a.opened_at)),
    el("td", {}, severity(a.severity)),
    el("td", {}, el("a", { href: `#/alert/${encodeURIComponent(a.id)}` }, a.rule), el("div", { class: "muted" }, ruleText(a.rule))),
    el("td", {}, subject(a)),
    el("td", {}, describe(a)),
    el("td", { class: "state" }, alertState(a), el("div", { class: "muted triage" }, triageText(a.triage))),
  );
}

const SEVERITY_RANK = { low: 0, medium: 1, high: 2, critical: 3 };

// Whether an alert the page holds still belongs in the view (the server chose the rows; the
// live stream and triage move them).
function matches(a, f) {
  if (f.severity && SEVERITY_RANK[a.severity] < SEVERITY_RANK[f.severity]) return false;
  if (f.rule && a.rule !== f.rule) return false;
  if (f.account && !(a.accounts || []).includes(f.account)) return false;
  if (f.wallet && a.key.value !== f.wallet) return false;
  if (f.since && a.opened_at < f.since) return false;
  if (f.until && a.opened_at >= f.until) return false;
  if (f.assignee && !(a.triage && a.triage.assignee === f.assignee)) return false;
  if (f.state === "open" || f.state === "closed") {
    if ((Date.parse(a.open_until) > Date.now()) !== (f.state === "open")) return false;
  } else if (f.state === "untriaged") {
    if (a.triage) return false;
  } else if (f.state && (!a.triage || a.triage.action !== f.state)) {
    return false;
  }
  return true;
}

// The queue's filters, as the address holds them.
const FILTERS = ["severity", "rule", "state", "assignee", "account", "wallet", "since", "until", "sort"];

function queueAddress(f, cursor) {
  const q = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) q.set(k, f[k]);
  if (cursor) q.set("cursor", cursor);
  const s = q.toString();
  return s ? `#/alerts?${s}` : "#/alerts";
}

// The API's query for the filters (the same names).
function apiQuery(f, more) {
  const q = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) q.set(k, f[k]);
  for (const [k, v] of Object.entries(more || {})) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  return q.toString();
}

// `datetime-local` value (the viewer's zone is the browser's here) to RFC 3339, and back.
function localToIso(v) {
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

function isoToLocal(v) {
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function alertsView(params) {
  const f = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || ""]));
  const cursor = params.get("cursor") || "";
  const go = (changes) => { location.hash = queueAddress({ ...f, ...changes }, ""); };
  const selectable = can("security");
  const tbody = el("tbody", { id: "queue" });
  const select = (name, options) => {
    const s = el("select", { id: `f-${name}`, "aria-label": t(name === "sort" ? "sort order" : name), onchange: (e) => go({ [name]: e.target.value }) },
      options.map(([v, label]) => el("option", { value: v }, label)));
    s.value = f[name];
    return s;
  };
  const text = (name, label) => {
    const i = el("input", { id: `f-${name}`, placeholder: t(label), "aria-label": t(label), value: f[name] });
    i.addEventListener("change", (e) => go({ [name]: e.target.value.trim() }));
    return i;
  };
  const time = (name, label) => {
    const i = el("input", { id: `f-${name}`, type: "datetime-local", "aria-label": t(label), title: t(label), value: f[name] ? isoToLocal(f[name]) : "" });
    i.addEventListener("change", (e) => go({ [name]: e.target.value ? localToIso(e.target.value) : "" }));
    return i;
  };
  const count = el("span", { id: "count", class: "muted" });
  const live = el("span", { id: "live", class: "muted" }, t("connecting…"));
  const controls = el(
    "div",
    { class: "filters" },
    select("severity", [["", t("any severity")], ["medium", t("medium or worse")], ["high", t("high or worse")], ["critical", t("critical")]]),
    select("rule", [["", t("any rule")], ...Object.keys(RULES).map((r) => [r, r])]),
    select("state", [["", t("any state")], ["open", t("open")], ["closed", t("closed")], ["untriaged", t("not yet triaged")],
      ["acknowledged", t("acknowledged")], ["assigned", t("assigned")], ["resolved", t("resolved")], ["false_positive", t("false positive")],
      ["locked", t("locked by a person")], ["unlocked", t("unlocked by a person")]]),
    text("assignee", "assignee"),
    text("account", "account"),
    time("since", "opened since"),
    time("until", "opened before"),
    select("sort", [["", t("newest first")], ["oldest", t("oldest first")]]),
    el("a", { href: "#/alerts", id: "f-clear" }, t("Clear")),
    el("a", { id: "export", href: `/v1/alerts/export?${apiQuery(f)}`, download: "alerts.csv" }, t("Download CSV")),
    count,
    live,
  );
  const bulk = selectable ? bulkBar(tbody, () => alertsView(params)) : null;
  const pagers = el("div", { class: "filters", id: "pagers" });
  show(
    el("h2", {}, t("Alerts")),
    controls,
    bulk,
    el("table", {}, el("thead", {}, el("tr", {},
      selectable ? el("th", {}, el("input", { type: "checkbox", id: "pick-all", "aria-label": t("Select all shown"),
        onchange: (e) => { for (const c of tbody.querySelectorAll("input.pick")) c.checked = e.target.checked; } })) : null,
      [t("opened"), t("severity"), t("rule"), t("account or wallet"), t("observed"), t("state")].map((h) => el("th", {}, h)))), tbody),
    pagers,
  );
  const r = await api("GET", `/v1/alerts?${apiQuery(f, { limit: QUEUE_PAGE, cursor })}`);
  if (!document.body.contains(tbody)) return;
  if (!r.ok) { show(failure(t("the alerts"), r)); return; }
  state.alerts = new Map();
  for (const a of r.json.alerts) state.alerts.set(a.id, a);
  tbody.replaceChildren(...r.json.alerts.map((a) => alertRow(a, selectable)));
  const counted = () => {
    const n = tbody.querySelectorAll("tr[data-alert]").length;
    count.textContent = t("{0} shown", n);
    const empty = document.getElementById("queue-empty");
    if (n === 0 && !empty) tbody.after(el("p", { id: "queue-empty", class: "muted" }, t("No alert matches these filters.")));
    if (n > 0 && empty) empty.remove();
  };
  counted();
  if (cursor) pagers.append(el("a", { id: "page-newest", href: queueAddress(f, "") }, t("Newest")));
  let next = r.json.next_cursor;
  const older = () => pagers.querySelector("#page-older");
  const setOlder = () => {
    if (older()) older().remove();
    if (next) pagers.append(el("a", { id: "page-older", href: queueAddress(f, next) }, t("Older")));
  };
  setOlder();
  // Live: the first page (newest first, or oldest first once its last page is shown) takes new
  // alerts; every page takes changes and triage of the rows it shows.
  const takesNew = (!cursor && f.sort !== "oldest") || (f.sort === "oldest" && !next);
  if (state.stream) state.stream.close();
  const streamQuery = apiQuery({ severity: f.severity, rule: f.rule, account: f.account, wallet: f.wallet },
    { after: r.json.stream_seq, triage: "true", triage_after: r.json.triage_seq });
  const stream = new EventSource(`/v1/alerts/stream?${streamQuery}`, { withCredentials: true });
  state.stream = stream;
  const rowOf = (id) => tbody.querySelector(`tr[data-alert="${CSS.escape(id)}"]`);
  const redraw = (a, fresh) => {
    const old = rowOf(a.id);
    if (!old) return;
    if (!matches(a, f)) { old.remove(); state.alerts.delete(a.id); counted(); return; }
    const picked = old.querySelector("input.pick") && old.querySelector("input.pick").checked;
    const row = alertRow(a, selectable);
    if (picked) row.querySelector("input.pick").checked = true;
    if (fresh) row.classList.add("fresh");
    old.replaceWith(row);
  };
  stream.addEventListener("open", () => { live.textContent = t("live"); });
  stream.addEventListener("error", () => { live.textContent = t("reconnecting…"); });
  stream.addEventListener("alert", (ev) => {
    if (!document.body.contains(tbody)) { stream.close(); return; }
    const change = JSON.parse(ev.data);
    const a = change.alert;
    const prev = state.alerts.get(a.id);
    if (prev) {
      if (prev.revision >= a.revision) return;
      // The stream carries revisions, not triage or the binding's lock.
      a.triage = prev.triage;
      a.binding_lock = prev.binding_lock;
      state.alerts.set(a.id, a);
      redraw(a, true);
    } else {
      if (!takesNew || !matches(a, f)) return;
      state.alerts.set(a.id, a);
      const row = alertRow(a, selectable);
      row.classList.add("fresh");
      if (f.sort === "oldest") tbody.append(row); else tbody.prepend(row);
      // Bounded: the oldest rows of the first page drop off; "Older" then starts at them.
      while (tbody.children.length > QUEUE_ROWS_MAX) {
        const last = f.sort === "oldest" ? tbody.firstElementChild : tbody.lastElementChild;
        state.alerts.delete(last.dataset.alert);
        if (f.sort !== "oldest") { next = last.dataset.alert; setOlder(); }
        last.remove();
      }
      counted();
    }
    // A revision of an alert that locks may lock its binding again (after an unlock): the
    // monitor's lock lands milliseconds after the revision, so the alert is read again (its
    // `binding_lock`), a few times over three seconds until the lock shows.
    if (a.lock) {
      const reread = async (waits) => {
        const r = await api("GET", `/v1/alerts/${encodeURIComponent(a.id)}`);
        const now = state.alerts.get(a.id);
        if (!r.ok || !now || now.revision > r.json.revision || !document.body.contains(tbody)) return;
        state.alerts.set(a.id, r.json);
        redraw(r.json, false);
        if (!r.json.binding_lock && waits.length) setTimeout(() => reread(waits.slice(1)), waits[0]);
      };
      reread([250, 750, 2000]);
    }
  });
  stream.addEventListener("triage", (ev) => {
    if (!document.body.contains(tbody)) { stream.close(); return; }
    const entry = JSON.parse(ev.data);
    const a = state.alerts.get(entry.alert_id);
    if (!a || (a.triage && a.triage.seq >= entry.triage.seq)) return;
    a.triage = entry.triage;
    // A person's lock or unlock changed the binding: the row shows the lock it now has.
    if (entry.triage.action === "unlocked") a.binding_lock = null;
    if (entry.triage.action === "locked") delete a.binding_lock;
    redraw(a, true);
    counted();
  });
}

// Bulk triage of the rows picked: one request per alert, each stating the triage its row
// shows (a row triaged by someone else meanwhile is refused, and said so).
function bulkBar(tbody, reload) {
  const result = el("p", { id: "bulk-result", role: "status", tabindex: "-1" });
  const note = el("input", { id: "bulk-note", placeholder: t("note"), "aria-label": t("note"), maxlength: "1000" });
  const assignee = el("input", { id: "bulk-assignee", placeholder: t("assign to (token name)"), "aria-label": t("assignee") });
  const run = async (act) => {
    const picked = [...tbody.querySelectorAll("input.pick:checked")].map((c) => c.closest("tr"));
    if (!picked.length) { result.textContent = t("Nothing selected."); result.focus(); return; }
    let recorded = 0;
    const refused = [];
    for (const row of picked) {
      const body = { action: act, note: note.value, expected_triage_seq: Number(row.dataset.triageSeq || 0) };
      if (act === "assigned") body.assignee = assignee.value.trim();
      const r = await api("POST", `/v1/alerts/${encodeURIComponent(row.dataset.alert)}/triage`, body);
      if (r.ok) {
        recorded += 1;
      } else {
        const e = r.json && r.json.error;
        const why = r.status === 409 && e && e.code === "triage_conflict"
          ? t("refused: someone triaged it after this page was read") : t("refused: {0}", e ? e.message : r.status);
        refused.push(el("li", { "data-alert": row.dataset.alert }, `${row.dataset.alert}: ${why}`));
      }
    }
    // The queue read again (the rows as they now stand), with what happened said in it.
    state.bulkSaid = [t("{0} recorded, {1} refused", recorded, refused.length), refused.length ? el("ul", { id: "bulk-refused" }, refused) : ""];
    await reload();
  };
  if (state.bulkSaid) {
    result.replaceChildren(...state.bulkSaid);
    state.bulkSaid = null;
    setTimeout(() => result.focus(), 0);
  }
  return el("div", { class: "filters", id: "bulk" },
    el("span", {}, t("With the selected:")),
    note,
    el("button", { type: "button", id: "bulk-ack", onclick: () => run("acknowledged") }, t("Acknowledge")),
    assignee, el("button", { type: "button", id: "bulk-assign", onclick: () => run("assigned") }, t("Assign")),
    el("button", { type: "button", id: "bulk-resolve", onclick: () => run("resolved") }, t("Resolve")),
    el("button", { type: "button", id: "bulk-false-positive", onclick: () => run("false_positive") }, t("False positive")),
    result);
}

// ---- an alert, an account, a wallet -------------------------------------------------------------

function timeline(events, highlight) {
  return el(
    "table",
    { class: "timeline" },
    el("thead", {}, el("tr", {}, [t("time"), t("seq"), t("event"), t("outcome"), t("wallet"), t("reason")].map((h) => el("th", {}, h)))),
    el("tbody", {}, events.map((e) => {
      const p = e.payload || {};
      const failed = /failed$/.test(p.type);
      return el(
        "tr",
        { class: highlight.has(e.seq) ? "hit" : null, "data-seq": e.seq },
        el("td", {}, at(e.event_time)),
        el("td", {}, e.seq),
        el("td", {}, eventName(p.type)),
        el("td", { class: "outcome" }, t(failed ? "failed" : OUTCOMES[p.type] || "succeeded")),
        el("td", {}, p.wallet ? p.wallet.masked : ""),
        el("td", {}, failed ? reason(p.reason) : p.type === "alert_triaged" ? t("{0} by {1}", action(p.action), p.operator) : p.type === "subject_erased" ? t("by {0}", p.operator) : ""),
      );
    })),
  );
}

// Related activity: the other alerts on the alert's accounts and on its wallet (by the
// listing's indexes), and the accounts its wallet is or was bound to.
async function related(a) {
  const box = el("div", { id: "related" });
  const list = (alerts) => alerts.length
    ? el("ul", {}, alerts.map((x) => el("li", { "data-alert": x.id },
      el("a", { href: `#/alert/${encodeURIComponent(x.id)}` }, x.rule), " ", severity(x.severity), " ", at(x.opened_at), " · ", triageText(x.triage))))
    : el("p", { class: "muted" }, t("none"));
  for (const acc of (a.accounts || []).slice(0, 4)) {
    const r = await api("GET", `/v1/alerts?account=${encodeURIComponent(acc)}&limit=20`);
    box.append(el("h4", {}, t("Other alerts on {0}", acc)));
    box.append(r.ok ? list(r.json.alerts.filter((x) => x.id !== a.id)) : failure(t("related alerts"), r));
  }
  // The wallets involved: the alert's own key, or the wallets of its accounts' bindings.
  const wallets = new Set();
  if (a.key.kind === "wallet") wallets.add(a.key.value);
  for (const acc of (a.accounts || []).slice(0, 1)) {
    const b = await api("GET", `/v1/accounts/${encodeURIComponent(acc)}/bindings`);
    if (b.ok) for (const x of b.json.bindings) if (x.wallet && /^[0-9a-f]{64}$/.test(x.wallet.fingerprint || "")) wallets.add(x.wallet.fingerprint);
  }
  for (const fp of [...wallets].slice(0, 4)) {
    const [r, w] = await Promise.all([
      api("GET", `/v1/alerts?wallet=${fp}&limit=20`),
      api("GET", `/v1/wallets/${fp}/accounts`),
    ]);
    box.append(el("h4", {}, t("Other alerts on this wallet"), " ", el("a", { href: `#/wallet/${fp}` }, el("code", {}, `${fp.slice(0, 12)}…`))));
    box.append(r.ok ? list(r.json.alerts.filter((x) => x.id !== a.id)) : failure(t("related alerts"), r));
    if (w.ok) {
      const all = w.json.history && w.json.history.length ? w.json.history : w.json.accounts;
      box.append(el("p", { class: "wallet-accounts" }, t("Accounts this wallet is or was bound to"), ": ",
        all.map((acc) => [el("a", { href: `#/account/${encodeURIComponent(acc)}` }, acc), " "])));
    }
  }
  // Other accounts on the devices and addresses the alert's accounts used (by their keyed
  // fingerprints: the page never sees a device id or an address of another account).
  for (const acc of (a.accounts || []).slice(0, 4)) {
    const r = await api("GET", `/v1/accounts/${encodeURIComponent(acc)}/related`);
    if (!r.ok) { box.append(failure(t("related accounts"), r)); continue; }
    const group = (title, id, items) => {
      const others = items.flatMap((x) => x.accounts);
      const more = items.some((x) => x.more);
      return [el("h4", {}, t(title, acc)),
        others.length
          ? el("ul", { class: id }, others.map((o) => el("li", { "data-account": o.account },
            el("a", { href: `#/account/${encodeURIComponent(o.account)}` }, o.account))), more ? el("li", { class: "muted" }, "…") : "")
          : el("p", { class: "muted" }, t("none"))];
    };
    box.append(...group("Other accounts on the devices of {0}", "related-devices", r.json.devices),
      ...group("Other accounts on the IP addresses of {0}", "related-addresses", r.json.addresses));
  }
  return box;
}

async function alertView(id) {
  const r = await api("GET", `/v1/alerts/${encodeURIComponent(id)}`);
  if (!r.ok) { show(failure(t("the alert"), r)); return; }
  const a = r.json;
  const parts = [
    el("h2", {}, `${a.rule} `, severity(a.severity)),
    el("dl", {},
      el("dt", {}, t("what")), el("dd", {}, ruleText(a.rule) || a.rule),
      el("dt", {}, t("observed")), el("dd", { id: "alert-observed" }, describe(a)),
      el("dt", {}, t("subject")), el("dd", {}, subject(a)),
      el("dt", {}, t("accounts")), el("dd", {}, (a.accounts || []).map((acc) => [el("a", { href: `#/account/${encodeURIComponent(acc)}` }, acc), " "])),
      el("dt", {}, t("opened")), el("dd", {}, at(a.opened_at)),
      el("dt", {}, t("updated")), el("dd", {}, at(a.updated_at), " ", t("(revision {0}, {1} matches)", a.revision, a.matches)),
      el("dt", {}, t("state")), el("dd", { id: "alert-state" }, Date.parse(a.open_until) > Date.now() ? t("open") : t("closed")),
      el("dt", {}, t("events")), el("dd", {}, a.event_seqs.join(", ")),
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
  // The alert's history: every triage recorded against it (`/v1/alerts/{id}/history`, however
  // long its account's history), shown oldest first; "Older" reads the page before.
  const hist = await api("GET", `/v1/alerts/${encodeURIComponent(a.id)}/history?limit=100`);
  const triage = hist.ok ? hist.json.events.slice().reverse() : [];
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
    parts[1].querySelector("#alert-state").append(`; ${t("{0} by {1}", action(latest.payload.action), latest.payload.operator)}`);
  }
  parts.push(el("h3", {}, t("History")));
  const entry = (e) => el("li", { "data-action": e.payload.action, "data-seq": e.seq },
    `${when(e.record_time)}: ${t("{0} by {1}", action(e.payload.action), e.payload.operator)}`,
    e.payload.assignee ? ` (${t("{0} to {1}", action("assigned"), e.payload.assignee)})` : "",
    e.payload.note ? [": ", el("q", {}, e.payload.note)] : "");
  const opened = el("li", {}, t("{0}: opened by the rule", when(a.opened_at)));
  const historyList = el("ul", { id: "triage-history" }, hist.ok ? [] : failure(t("the history"), hist), triage.map(entry));
  let before = hist.ok ? hist.json.next_before : null;
  const olderHistory = () => pager("history-older", t("Older"), async () => {
    const more = await api("GET", `/v1/alerts/${encodeURIComponent(a.id)}/history?limit=100&before=${before}`);
    if (!more.ok) return;
    historyList.querySelector("#history-older").closest("li").after(...more.json.events.slice().reverse().map(entry));
    before = more.json.next_before;
    if (!before) { historyList.querySelector("#history-older").closest("li").remove(); historyList.prepend(opened); }
  });
  if (before) historyList.prepend(el("li", {}, olderHistory())); else historyList.prepend(opened);
  parts.push(historyList);
  if (can("security")) {
    const note = el("textarea", { id: "triage-note", rows: "2", cols: "60", maxlength: "1000", placeholder: t("note (who you called, what you found)"), "aria-label": t("note") });
    const assignee = el("input", { id: "triage-assignee", placeholder: t("assign to (token name)"), "aria-label": t("assignee") });
    // The triage this page shows: an action states it, and is refused if another came since.
    const seen = Math.max(a.triage ? a.triage.seq : 0, latest ? latest.seq : 0);
    const result = el("p", { id: "triage-result", role: "alert", tabindex: "-1" });
    const act = async (what) => {
      const body = { action: what, note: note.value, expected_triage_seq: seen };
      if (what === "assigned") body.assignee = assignee.value.trim();
      const r = await api("POST", `/v1/alerts/${encodeURIComponent(a.id)}/triage`, body);
      if (!r.ok) {
        const e = r.json && r.json.error;
        if (r.status === 409 && e && e.code === "triage_conflict") {
          const c = r.json.current && r.json.current.triage;
          result.replaceChildren(
            t("Not recorded: someone triaged this alert after this page was read{0}. Read it again, then decide. ", c ? ` (${t("{0} by {1}", action(c.action), c.operator)})` : ""),
            el("button", { type: "button", id: "triage-reload", onclick: () => alertView(a.id) }, t("Read it again")));
        } else {
          result.replaceChildren(t("Not recorded: {0}", e ? e.message : r.status));
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
      el("button", { type: "button", id: "ack", onclick: () => act("acknowledged") }, t("Acknowledge")),
      assignee, el("button", { type: "button", id: "assign", onclick: () => act("assigned") }, t("Assign")),
      el("button", { type: "button", id: "resolve", onclick: () => act("resolved") }, t("Resolve")),
      el("button", { type: "button", id: "false-positive", onclick: () => act("false_positive") }, t("False positive"))));
  }
  // The bindings as they stand now (a lock lifted since the alert shows here at once).
  for (const acc of (a.accounts || []).slice(0, 4)) {
    const b = await api("GET", `/v1/accounts/${encodeURIComponent(acc)}/bindings`);
    if (!b.ok) continue;
    const now = Date.now();
    parts.push(el("h3", {}, t("Bindings of {0} now", acc)));
    parts.push(el("table", { class: "alert-bindings" },
      el("thead", {}, el("tr", {}, [t("binding"), t("wallet"), t("status"), t("lock"), ""].map((x) => el("th", {}, x)))),
      el("tbody", {}, b.json.bindings.filter((x) => x.status === "active").map((x) => {
        const locked = x.lock && Date.parse(x.lock.until) > now;
        return el("tr", { "data-binding": x.binding_id, "data-locked": locked ? "true" : "false" },
          el("td", {}, x.binding_id), el("td", {}, x.wallet.masked), el("td", {}, x.status),
          el("td", {}, locked ? t("locked until {0}", when(x.lock.until)) : t("not locked")),
          el("td", {}, can("security") ? (() => {
            const why = reasonInput(x.binding_id);
            return [why, " ", locked
              ? el("button", { type: "button", class: "danger unlock", onclick: async () => { await unlock(acc, x.binding_id, why); await alertView(a.id); } }, t("Unlock"))
              : el("button", { type: "button", class: "danger lock", onclick: () => lock(a.id, acc, x.binding_id, why) }, t("Lock"))];
          })() : ""));
      }))));
  }
  parts.push(el("h3", {}, t("Related activity")));
  const rel = el("div", { id: "related-slot" }, el("p", { class: "muted" }, "…"));
  parts.push(rel);
  for (const [acc, h] of timelines) {
    parts.push(el("h3", {}, t("Timeline of {0}", acc)));
    parts.push(h.ok ? timeline(h.json.events, hits) : failure(t("the timeline"), h));
  }
  show(...parts);
  const box = await related(a);
  if (document.body.contains(rel)) rel.replaceWith(box);
}

function reasonInput(binding) {
  return el("input", { class: "reason", "data-for": binding, placeholder: t("reason"), "aria-label": t("reason"), maxlength: "1000" });
}

function refusal(r) {
  return r.json && r.json.error ? r.json.error.message : r.status;
}

// `reason`: the input beside the button (its text is recorded with the person's name).
async function unlock(account, binding, reason) {
  const why = reason.value.trim();
  if (!confirm(t("Unlock binding {0} of {1}?", binding, account))) return;
  const r = await api("POST", `/v1/accounts/${encodeURIComponent(account)}/bindings/${binding}/unlock`, { confirm: true, reason: why });
  if (!r.ok) { alert(t("Not unlocked: {0}", refusal(r))); }
  await accountView(account);
}

async function lock(alertId, account, binding, reason) {
  const why = reason.value.trim();
  if (!confirm(t("Lock binding {0} of {1} for 30 minutes?", binding, account))) return;
  const r = await api("POST", `/v1/accounts/${encodeURIComponent(account)}/bindings/${binding}/lock`,
    { confirm: true, alert_id: alertId, minutes: 30, reason: why });
  if (!r.ok) { alert(t("Not locked: {0}", refusal(r))); }
  await alertView(alertId);
}

async function accountView(account) {
  const [b, p, h] = await Promise.all([
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/bindings`),
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/payments?limit=50`),
    api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100`),
  ]);
  const parts = [el("h2", {}, t("Account {0}", account))];
  if (!b.ok) { show(...parts, failure(t("the bindings"), b)); return; }
  if (b.json.version === 0) {
    show(...parts, el("p", { id: "not-found", role: "status" }, t("Not found: no event was ever recorded for this account. Check the id.")));
    return;
  }
  // A failed payment names its binding only: its wallet is the binding's.
  const walletOf = Object.fromEntries(b.json.bindings.map((x) => [x.binding_id, x.wallet.masked]));
  const paymentRow = (x) => el("tr", {},
    el("td", {}, at(x.event_time || x.time)), el("td", {}, x.order_id),
    el("td", {}, `${(x.amount_minor / 100).toFixed(2)} ${x.currency || ""}`),
    el("td", { class: "wallet" }, x.wallet || walletOf[x.binding_id] || ""),
    el("td", {}, t(x.status)), el("td", {}, x.reason ? reason(x.reason) : ""));
  const now = Date.now();
  parts.push(el("h3", {}, t("Bindings")));
  parts.push(el("table", { id: "bindings" },
    el("thead", {}, el("tr", {}, [t("binding"), t("provider"), t("wallet"), t("status"), t("lock"), t("bound"), ""].map((x) => el("th", {}, x)))),
    el("tbody", {}, b.json.bindings.map((x) => {
      const locked = x.lock && Date.parse(x.lock.until) > now;
      return el("tr", { "data-binding": x.binding_id, "data-locked": locked ? "true" : "false" },
        el("td", {}, x.binding_id),
        el("td", {}, x.provider),
        el("td", {}, x.wallet.masked, " ", el("a", { href: `#/wallet/${x.wallet.fingerprint}` }, t("wallet"))),
        el("td", { class: "status" }, t(x.status)),
        el("td", { class: "lock" }, locked ? t("locked until {0} (alert {1})", when(x.lock.until), x.lock.alert_id) : t("not locked")),
        el("td", {}, at(x.bound_at)),
        el("td", {}, locked && can("security") ? (() => {
          const why = reasonInput(x.binding_id);
          return [why, " ", el("button", { class: "danger unlock", type: "button", onclick: () => unlock(account, x.binding_id, why) }, t("Unlock"))];
        })() : ""),
      );
    })),
  ));
  parts.push(el("h3", {}, t("Payments")));
  parts.push(p.ok
    ? el("table", { id: "payments" }, el("thead", {}, el("tr", {}, [t("time"), t("order"), t("amount"), t("wallet"), t("status"), t("reason")].map((x) => el("th", {}, x)))),
        el("tbody", {}, p.json.payments.map(paymentRow)))
    : failure(t("the payments"), p));
  if (p.ok && p.json.next_before_version) {
    parts.push(pager("payments-older", t("Older payments"), async () => {
      const more = await api("GET", `/v1/accounts/${encodeURIComponent(account)}/payments?limit=50&before_version=${p.json.next_before_version}`);
      if (!more.ok) return;
      p.json.next_before_version = more.json.next_before_version;
      document.querySelector("#payments tbody").append(...more.json.payments.map(paymentRow));
      if (!more.json.next_before_version) document.getElementById("payments-older").remove();
    }));
  }
  parts.push(el("h3", {}, t("History (newest first)")));
  const history = el("div", { id: "history" });
  const page = async (r) => {
    if (!r.ok) { history.replaceChildren(failure(t("the history"), r)); return; }
    const nav = [];
    if (r.json.newer_before_version) {
      nav.push(pager("history-newer", t("Newer"), async () => page(await api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100&before_version=${r.json.newer_before_version}`))));
    }
    if (r.json.next_before_version) {
      nav.push(pager("history-older", t("Older"), async () => page(await api("GET", `/v1/accounts/${encodeURIComponent(account)}/events?order=newest&limit=100&before_version=${r.json.next_before_version}`))));
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
  if (!r.ok) { show(failure(t("the wallet"), r)); return; }
  const now = new Set(r.json.accounts);
  const all = r.json.history && r.json.history.length ? r.json.history : r.json.accounts;
  show(
    el("h2", {}, t("Wallet "), el("code", {}, fingerprint.slice(0, 16) + "…")),
    el("p", { class: "muted" }, t("Every account this wallet is or was bound to: {0} now, {1} in all. Several accounts on one wallet is how a shared-wallet ring shows.", now.size, all.length)),
    el("ul", { id: "wallet-accounts" }, all.map((acc) => el("li", { "data-bound": now.has(acc) ? "now" : "before" },
      el("a", { href: `#/account/${encodeURIComponent(acc)}` }, acc), now.has(acc) ? t(" (bound now)") : t(" (was bound; unbound since)")))),
  );
}

// ---- webhooks -------------------------------------------------------------------------------------

async function webhooksView() {
  const r = await api("GET", "/v1/webhooks/deliveries?limit=100");
  if (r.status === 503) { show(el("h2", {}, t("Webhooks")), el("p", { id: "webhooks-off", class: "muted" }, t("Webhooks are off: set webhooks.url to send alerts to a receiver."))); return; }
  if (!r.ok) { show(failure(t("the deliveries"), r)); return; }
  const result = el("p", { id: "webhook-result", role: "status", tabindex: "-1" });
  const said = (what, res) => {
    result.textContent = res.ok
      ? t("Sent: {0}", `${t(res.json.outcome)}${res.json.status ? ` (${res.json.status})` : ""}${res.json.error ? `, ${res.json.error}` : ""}`)
      : t("Not sent: {0}", refusal(res));
  };
  const send = async (path) => {
    const res = await api("POST", path);
    await webhooksView();
    const again = document.getElementById("webhook-result");
    if (again) { said(path, res); again.replaceWith(result); result.focus(); }
  };
  const row = (d) => el("tr", { "data-n": d.n, "data-outcome": d.outcome, "data-kind": d.kind || "alert" },
    el("td", {}, d.n),
    el("td", {}, at(d.at)),
    el("td", {}, t(d.kind || "alert")),
    el("td", {}, d.alert_id ? el("a", { href: `#/alert/${encodeURIComponent(d.alert_id)}` }, d.alert_id) : ""),
    el("td", {}, d.attempt),
    el("td", { class: "outcome" }, t(d.outcome)),
    el("td", {}, [d.status || "", d.error ? ` ${d.error}` : ""]),
    el("td", {}, t("{0} ms", d.duration_ms)),
    el("td", { class: "next" }, d.next_attempt_at ? at(d.next_attempt_at) : ""),
    el("td", {}, can("security") && d.stream_seq ? el("button", { type: "button", class: "resend", onclick: () => send(`/v1/webhooks/deliveries/${d.stream_seq}/resend`) }, t("Send again")) : ""));
  const tbody = el("tbody", { id: "deliveries" }, r.json.deliveries.map(row));
  const more = el("div", { class: "filters" });
  let before = r.json.next_before;
  const older = () => {
    more.replaceChildren();
    if (before) more.append(pager("deliveries-older", t("Older deliveries"), async () => {
      const m = await api("GET", `/v1/webhooks/deliveries?limit=100&before=${before}`);
      if (!m.ok) return;
      tbody.append(...m.json.deliveries.map(row));
      before = m.json.next_before;
      older();
    }));
  };
  older();
  show(
    el("h2", {}, t("Webhooks")),
    el("p", { id: "webhook-totals" }, t("{0} delivered, {1} given up, {2} attempts in all; every change through stream seq {3} sent or given up",
      r.json.delivered_total, r.json.given_up_total, r.json.attempts_total, r.json.position)),
    r.json.last_error ? el("p", { class: "error" }, t("last error: {0}", r.json.last_error)) : "",
    el("div", { class: "filters" }, can("security")
      ? el("button", { type: "button", id: "webhook-test", onclick: () => send("/v1/webhooks/test") }, t("Send a test event"))
      : el("span", { class: "muted" }, t("sending and testing need the security role")), result),
    el("h3", {}, t("Deliveries")),
    el("table", {}, el("thead", {}, el("tr", {}, ["#", t("time"), t("kind"), t("alert"), t("attempt"), t("outcome"), t("answer"), t("took"), t("next attempt"), ""].map((h) => el("th", {}, h)))), tbody),
    more,
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
    svg("text", { x: "0", y: String(h + 12), "font-size": "11" }, t("max {0}/s over the last {1} s", max, samples.length)));
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
  const rate = el("div", { id: "glance-rate" }, el("span", { class: "muted" }, t("measuring…")));
  const reasons = el("table", { id: "glance-reasons" });
  const relays = el("div", { id: "glance-relays" });
  const rules = el("div", { id: "glance-rules" });
  const cluster = el("div", { id: "glance-cluster" });
  show(el("h2", {}, t("At a glance")),
    el("h3", {}, t("Alerts opened by rule: last hour, last day")), rules,
    el("h3", {}, t("Commands per second")), rate,
    el("h3", {}, t("Failures per second, by reason (last second)")), reasons,
    el("h3", {}, t("Relays")), relays,
    el("h3", {}, t("Cluster")), cluster);
  const shardRow = (me, r) => el("tr", {},
    el("td", {}, r.shard === me ? t("{0} (this node)", r.shard) : r.shard),
    el("td", {}, r.url),
    el("td", {}, t("{0} slots", r.slots)),
    el("td", {}, r.answered ? t("{0}, {1}, epoch {2}", r.status, r.role, r.epoch) : t("unreachable: {0}", r.error)),
    el("td", {}, r.answered ? t("{0} events, relay lag {1}", r.events, r.relay_lag_events) : ""),
    el("td", {}, r.answered ? t("map v{0}", r.map_version) : ""));
  const showCluster = async () => {
    const c = await api("GET", "/v1/cluster/status");
    if (c.ok) {
      cluster.replaceChildren(
        el("p", { class: "muted" }, t("shard {0} of {1}, shard map version {2}; requests for another shard's accounts are forwarded to it", c.json.shard, c.json.shards.length, c.json.map_version)),
        el("table", { id: "glance-shards" }, c.json.shards.map((r) => shardRow(c.json.shard, r))));
    } else if (c.status === 404) {
      cluster.replaceChildren(el("p", { class: "muted" }, t("a ledger alone: not a shard of a cluster")));
    } else {
      cluster.replaceChildren(failure(t("the cluster"), c));
    }
  };
  // Counted by the server (`/v1/alerts/counts`): two small answers, however many alerts.
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const hour = new Date(Date.now() - 3600 * 1000).toISOString();
  const [h, d] = await Promise.all([
    api("GET", `/v1/alerts/counts?since=${encodeURIComponent(hour)}`),
    api("GET", `/v1/alerts/counts?since=${encodeURIComponent(since)}`),
  ]);
  if (h.ok && d.ok) {
    const n = (c, r) => c.json.by_rule[r] || 0;
    rules.replaceChildren(
      bars("glance-rules-hour", Object.keys(RULES).map((r) => [r, n(h, r)]), "#c0392b"),
      bars("glance-rules-day", Object.keys(RULES).map((r) => [r, n(d, r)]), "#b9770e"),
      el("h3", {}, t("Alerts opened by severity, last day")),
      bars("glance-severity", ["critical", "high", "medium", "low"].map((s) => [t(s), d.json.by_severity[s] || 0]), "#4a6a88"),
      d.json.complete ? "" : el("p", { class: "muted" }, t("at least: the newest {0} alerts were counted", d.json.total)));
  } else {
    rules.replaceChildren(failure(t("the alerts"), h.ok ? d : h));
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
      rate.replaceChildren(line("glance-rate-line", samples), el("div", { class: "muted" }, t("{0} commands in the last second", all)));
      const failing = Object.keys(totals)
        .filter((k) => !k.endsWith(" succeeded") && delta(k) > 0)
        .map((k) => [k.split(" ")[1], delta(k)]);
      reasons.replaceChildren(...failing.map(([code, n]) => el("tr", {}, el("td", {}, reason(code)), el("td", {}, t("{0}/s", n)))));
    }
    last = totals;
    if (ticks++ % 5 === 0) await showCluster();
    const s = await api("GET", "/v1/status");
    if (s.ok) {
      const r = s.json.relays;
      relays.replaceChildren(el("dl", {},
        ["events", "alerts", "checkpoints"].map((k) => [
          el("dt", {}, k),
          el("dd", {}, r[k].state === "disabled" ? t("disabled")
            : t("{0}, position {1}", r[k].state, r[k].position) + (k === "events" ? t(", lag {0} events / {1} s", r[k].lag_events, Number(r[k].lag_seconds || 0).toFixed(3)) : "")),
        ])));
    } else {
      relays.replaceChildren(failure(t("the relays"), s));
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
  if (!r.ok) { show(failure(t("the rules"), r)); return; }
  const rules = r.json.rules;
  const out = el("div", { id: "backtest-result" });
  const candidate = el("textarea", { id: "candidate", rows: "8", cols: "80", "aria-label": t("candidate rules file"),
    placeholder: "[password_brute_force]\nthreshold = 3\nwindow = \"10m\"" });
  const run = async () => {
    out.replaceChildren(el("p", { class: "muted" }, t("running over the log…")));
    const res = await api("POST", "/v1/rules/backtest", candidate.value);
    const json = res.json;
    if (!res.ok) {
      const where = json && json.line ? t(" (line {0})", json.line) : "";
      out.replaceChildren(el("p", { class: "error", role: "alert" }, t("{0}{1}", json && json.error ? json.error.message : res.status, where)));
      return;
    }
    const listed = (title, id, alerts) => [el("h3", {}, title), el("ul", { id }, alerts.map((a) =>
      el("li", {}, el("a", { href: `#/alert/${encodeURIComponent(a.id)}` }, a.id), ` ${t(a.severity)} · ${a.key.value} · ${describe(a)}`)))];
    out.replaceChildren(
      el("p", { id: "backtest-summary" }, t("{0} events: {1} added, {2} removed, {3} changed, {4} unchanged (lists show at most {5})", json.events, json.added_total, json.removed_total, json.changed_total, json.unchanged, json.listed_max)),
      ...listed(t("Added"), "backtest-added", json.added),
      ...listed(t("Removed"), "backtest-removed", json.removed),
      el("h3", {}, t("Changed")),
      el("ul", { id: "backtest-changed" }, json.changed.map((c) => el("li", {}, el("a", { href: `#/alert/${encodeURIComponent(c.id)}` }, c.id), `: ${c.differences.join("; ")}`))),
    );
  };
  show(
    el("h2", {}, t("Rules in force")),
    el("table", { id: "rules" },
      el("thead", {}, el("tr", {}, [t("rule"), t("what"), t("severity"), t("on"), t("settings")].map((h) => el("th", {}, h)))),
      el("tbody", {}, Object.keys(RULES).map((name) => {
        const rule = rules[name] || {};
        return el("tr", { "data-rule": name }, el("td", {}, name), el("td", {}, ruleText(name)),
          el("td", {}, rule.severity ? t(rule.severity) : ""), el("td", {}, rule.enabled === false ? t("off") : t("on")), el("td", {}, settings(rule)));
      }))),
    el("p", { class: "muted" }, t("rules digest {0}; limits: {1}", r.json.digest, settings(rules.limits || {}))),
    el("h2", {}, t("Backtest a candidate rules file")),
    el("p", { class: "muted" }, t("Runs the candidate over the whole log beside the alerts the ledger raised. Keys left out keep their defaults (see the README).")),
    candidate,
    el("div", {}, can("security") ? el("button", { type: "button", id: "run-backtest", onclick: run }, t("Backtest")) : el("span", { class: "muted" }, t("backtests need the security role"))),
    out,
  );
}

// ---- routing ------------------------------------------------------------------------------------

function route() {
  if (!state.me) return;
  const hash = location.hash || "#/alerts";
  const q = hash.indexOf("?");
  const path = q < 0 ? hash : hash.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
  const [, view, arg] = path.split("/");
  const value = arg ? decodeURIComponent(arg) : "";
  if (view !== "alerts" && state.stream) { state.stream.close(); state.stream = null; }
  if (view === "alert") alertView(value);
  else if (view === "account") accountView(value);
  else if (view === "wallet") walletView(value);
  else if (view === "glance") glanceView();
  else if (view === "rules") rulesView();
  else if (view === "webhooks") webhooksView();
  else if (can("security") || can("auditor")) alertsView(params);
  else show(el("p", { id: "no-alerts", class: "muted" }, t("Alerts need the security or auditor role. Look up an account or a wallet above.")));
}

window.addEventListener("hashchange", route);

// A failure of the page itself is shown, not swallowed (and the browser test looks for it).
function pageError(what) {
  const main = document.getElementById("main");
  main.prepend(el("p", { class: "error page-error", role: "alert" }, t("The page failed: {0}", what)));
}
window.addEventListener("error", (e) => pageError(e.message));
window.addEventListener("unhandledrejection", (e) => pageError(String(e.reason)));

translateFrame();
(async () => {
  const r = await api("GET", "/console/session");
  if (r.ok) signedIn(r.json);
  else signedOut(sessionStorage.getItem("bindledger-signed-in") ? SESSION_ENDED : "");
})();
