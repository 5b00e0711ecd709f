/* Analytics dashboard: reads the /analytics/ routes and draws them with Chart.js.
 *
 * The key: `/dashboard?key=<ANALYTICS_API_KEY>` (kept in sessionStorage and removed from the address
 * bar), or typed into the key field that appears when the API answers 401. In dev mode without a key
 * configured, the API is open and no key is needed.
 * The numbers change only when dbt rebuilds the models: every `?refresh=<seconds>` (default 10;
 * 0 = never) the page asks /analytics/status when the last build began, and reloads everything when
 * that changed. Until the first build, it says so (and when the first build is due).
 * For tests and tools, every canvas gets data-rendered ("true" | "empty" | "error") and data-points
 * after it is drawn (the error-rate chart also data-ticks: the labels drawn); <body> gets data-state
 * ("ready" | "not-built" | "needs-key" | "error"), data-built-at, data-refreshes (status checks) and
 * data-loads (full reloads).
 */
(() => {
  "use strict";

  const KEY_STORAGE = "iotAnalyticsKey";
  const params = new URLSearchParams(window.location.search);
  if (params.has("key")) {
    sessionStorage.setItem(KEY_STORAGE, params.get("key"));
    params.delete("key");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
  }
  const refreshSeconds = Number(params.get("refresh") ?? 10);
  const COLORS = { legacy: "#d97706", new: "#2563eb", migrated: "#059669", other: "#6b7280" };
  const charts = {};
  const state = { granularity: "hour", metric: null, offset: 0, metrics: [], refreshes: 0, loads: 0, builtAt: null, needKey: false };
  const ERROR_BAR_PX = 26; // the error-rate chart grows with its bars, so every reason keeps its label

  class ApiError extends Error {
    constructor(status, reason, detail) {
      super(detail || reason || `HTTP ${status}`);
      this.status = status;
      this.reason = reason;
    }
  }

  async function api(path, query = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(url, { headers, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const detail = body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      throw new ApiError(response.status, body && body.reason, detail);
    }
    return body;
  }

  // ---- small DOM helpers -------------------------------------------------------------------------
  const $ = (sel) => document.querySelector(sel);
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  function fmt(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(3);
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (/^\d{4}-\d\d-\d\dT/.test(value)) return value.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, " UTC");
    return String(value);
  }
  const pct = (x) => `${(100 * x).toFixed(1)} %`;

  function table(columns, rows, name) {
    const head = el("tr", {}, ...columns.map((c) => el("th", { text: c })));
    const body = rows.map((row) => el("tr", { "data-row": "" },
      ...columns.map((c) => el("td", { class: typeof row[c] === "number" ? "num" : "", text: fmt(row[c]) }))));
    const t = el("table", { "data-table": name, "data-rows": String(rows.length) }, el("thead", {}, head), el("tbody", {}, ...body));
    if (!rows.length) t.append(el("caption", { class: "empty", text: "no rows" }));
    return t;
  }

  function showError(container, error) {
    container.replaceChildren(el("p", { class: "empty", "data-error": error.reason || String(error.status), text: message(error) }));
  }
  function message(error) {
    return error.message || String(error);
  }

  // ---- charts ------------------------------------------------------------------------------------
  function drawChart(id, config, points) {
    const canvas = document.getElementById(id);
    const empty = document.querySelector(`.empty[data-for="${id}"]`);
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    if (!points) {
      canvas.dataset.rendered = "empty";
      canvas.dataset.points = "0";
      empty.hidden = false;
      empty.textContent = config.emptyText || "No data yet.";
      return;
    }
    empty.hidden = true;
    if (config.height) canvas.parentElement.style.height = `${config.height}px`;
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
    charts[id] = new Chart(canvas, config);
    canvas.dataset.rendered = "true";
    canvas.dataset.points = String(points);
    canvas.dataset.series = String(config.data.datasets.length);
  }
  function chartFailed(id, error) {
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    const canvas = document.getElementById(id);
    canvas.dataset.rendered = "error";
    canvas.dataset.points = "0";
    const empty = document.querySelector(`.empty[data-for="${id}"]`);
    empty.hidden = false;
    empty.textContent = message(error);
  }

  async function loadFormatShare() {
    const id = "chart-format-share";
    try {
      const series = await api("/analytics/rollout/format_share", { granularity: state.granularity });
      const buckets = [...new Set(series.points.map((p) => p.bucket_start))].sort();
      const labels = buckets.map((b) => (state.granularity === "hour" ? fmt(b).slice(5, 16) : b));
      const datasets = [];
      for (const format of ["legacy", "new"]) {
        const byBucket = Object.fromEntries(series.points.filter((p) => p.payload_format === format).map((p) => [p.bucket_start, p]));
        const name = format === "legacy" ? "legacy (ticks)" : "new (mm)";
        datasets.push({ type: "bar", label: `devices on ${name}`, backgroundColor: COLORS[format] + "99",
          data: buckets.map((b) => (byBucket[b] ? 100 * byBucket[b].device_share : 0)) });
        datasets.push({ type: "line", label: `readings on ${name}`, borderColor: COLORS[format], backgroundColor: COLORS[format],
          data: buckets.map((b) => (byBucket[b] ? 100 * byBucket[b].reading_share : null)), pointRadius: 3 });
      }
      drawChart(id, {
        type: "bar",
        data: { labels, datasets },
        emptyText: "No platform extension readings in this window yet (or dbt has not rolled them up).",
        options: { scales: { y: { min: 0, max: 100, title: { display: true, text: "% of devices / readings" } } },
          plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${c.parsed.y?.toFixed(1)} %` } } } },
      }, series.points.length);
    } catch (error) { if (!handleAuth(error)) chartFailed(id, error); }
  }

  async function loadDeviceStates() {
    const id = "chart-device-states";
    try {
      const page = await api("/analytics/fct_rollout_device_state_daily", { limit: 1000, order: "desc" });
      const rows = page.rows.slice().reverse();
      const series = [["legacy_only_devices", "legacy only", COLORS.legacy], ["migrated_devices", "migrated (both)", COLORS.migrated],
        ["new_only_devices", "new only", COLORS.new]];
      drawChart(id, {
        type: "bar",
        data: { labels: rows.map((r) => r.report_date),
          datasets: series.map(([col, label, color]) => ({ label, data: rows.map((r) => r[col]), backgroundColor: color, stack: "s" })) },
        options: { scales: { y: { stacked: true, title: { display: true, text: "devices" } }, x: { stacked: true } } },
      }, rows.length);
      return rows;
    } catch (error) { if (!handleAuth(error)) chartFailed(id, error); return []; }
  }

  async function loadErrors() {
    const id = "chart-error-rate";
    const since = new Date(Date.now() - 7 * 86400e3).toISOString().slice(0, 10);
    try {
      const page = await api("/analytics/fct_ingest_error_rate_daily", { from: since, limit: 1000 });
      const byKey = new Map();
      for (const r of page.rows) {
        const key = `${r.reason} · ${r.payload_format}`;
        const agg = byKey.get(key) || { reason: r.reason, payload_format: r.payload_format, errors: 0, raw_records: 0, days: new Set() };
        agg.errors += r.errors;
        if (!agg.days.has(r.report_date)) { agg.days.add(r.report_date); agg.raw_records += r.raw_records; }
        byKey.set(key, agg);
      }
      const rows = [...byKey.values()].map((a) => ({ reason: a.reason, payload_format: a.payload_format, errors: a.errors,
        raw_records: a.raw_records, error_rate: a.raw_records ? a.errors / a.raw_records : 0 }))
        .sort((a, b) => b.errors - a.errors);
      drawChart(id, {
        type: "bar",
        data: { labels: rows.map((r) => `${r.reason} (${r.payload_format})`),
          datasets: [{ label: "error rate, % of the format's items", data: rows.map((r) => 100 * r.error_rate),
            backgroundColor: rows.map((r) => COLORS[r.payload_format] || COLORS.other) }] },
        emptyText: "No rejected items in the last 7 days.",
        options: { indexAxis: "y", plugins: { legend: { display: false } },
          scales: { x: { beginAtZero: true, title: { display: true, text: "% of the format's items received" } },
            y: { ticks: { autoSkip: false } } } },
        height: Math.max(160, ERROR_BAR_PX * rows.length + 70),
      }, rows.length);
      if (charts[id]) document.getElementById(id).dataset.ticks = String(charts[id].scales.y.ticks.length);
      $("#error-table").replaceChildren(table(["reason", "payload_format", "errors", "raw_records", "error_rate"],
        rows.map((r) => ({ ...r, error_rate: pct(r.error_rate) })), "error_rate_by_reason"));
      return rows;
    } catch (error) {
      if (!handleAuth(error)) { chartFailed(id, error); showError($("#error-table"), error); }
      return [];
    }
  }

  // ---- KPIs ----------------------------------------------------------------------------------------
  async function loadKpis(deviceStates) {
    const box = $("#kpis");
    try {
      const [counts, both] = await Promise.all([
        api("/analytics/metric_counts_by_format", { limit: 10 }),
        api("/analytics/metric_devices_both_formats", { limit: 1000 }),
      ]);
      const get = (fmtName) => counts.rows.find((r) => r.source_format === fmtName) || { reading_count: 0, device_count: 0 };
      const legacy = get("legacy"), fresh = get("new");
      const total = legacy.reading_count + fresh.reading_count;
      const latest = deviceStates[deviceStates.length - 1];
      const cards = [
        ["readings in legacy ticks", legacy.reading_count.toLocaleString("en")],
        ["readings in new mm", fresh.reading_count.toLocaleString("en")],
        ["share of readings on mm", total ? pct(fresh.reading_count / total) : "—"],
        ["devices on both formats", both.rows.length.toLocaleString("en") + (both.page.next_offset ? "+" : "")],
        ["devices migrated / total", latest ? `${latest.migrated_devices} / ${latest.total_devices}` : "—"],
      ];
      box.replaceChildren(...cards.map(([label, value]) => el("div", { class: "kpi" },
        el("div", { class: "value", text: value }), el("div", { class: "label", text: label }))));
    } catch (error) { if (!handleAuth(error)) showError(box, error); }
  }

  // ---- metric tables -------------------------------------------------------------------------------
  async function setupMetrics() {
    const index = await api("/analytics/");
    state.metrics = index.metrics;
    const select = $("#metric-select");
    select.replaceChildren(...index.metrics.map((m) => el("option", { value: m.name, text: `${m.title} (${m.name})` })));
    state.metric = state.metric || "metric_counts_by_format";
    select.value = state.metric;
  }

  async function loadMetricTable() {
    const box = $("#metric-table");
    const meta = state.metrics.find((m) => m.name === state.metric);
    if (!meta) return;
    $("#metric-description").textContent = meta.description;
    const device = $("#metric-device");
    device.disabled = !meta.device_filter;
    const limit = Number($("#metric-limit").value);
    try {
      const page = await api(meta.path, { limit, offset: state.offset, device_id: meta.device_filter ? device.value : "" });
      box.replaceChildren(table(meta.columns, page.rows, meta.name));
      $("#metric-page").textContent = page.rows.length
        ? `rows ${state.offset + 1}–${state.offset + page.rows.length}${page.page.next_offset ? "" : " (last page)"}`
        : "no rows";
      $("#metric-prev").disabled = state.offset === 0;
      $("#metric-next").disabled = page.page.next_offset === null;
    } catch (error) { if (!handleAuth(error)) showError(box, error); }
  }

  // ---- examples ------------------------------------------------------------------------------------
  async function loadExamples() {
    const list = $("#example-list");
    let examples;
    try { examples = (await api("/analytics/examples")).examples; } catch (error) {
      if (!handleAuth(error)) showError(list, error);
      return;
    }
    const results = await Promise.all(examples.map((e) => api(e.path).catch((error) => error)));
    list.replaceChildren(...examples.map((e, i) => {
      const r = results[i];
      const result = el("div", { class: "result table-wrap" });
      if (r instanceof Error) { if (!handleAuth(r)) showError(result, r); } else {
        result.append(table(r.columns, r.rows, `example:${e.name}`));
      }
      const count = r instanceof Error ? "" : ` · ${r.row_count} row${r.row_count === 1 ? "" : "s"}${r.truncated ? " (truncated)" : ""}`;
      return el("article", { class: "example", "data-example": e.name },
        el("h3", {}, e.title + " ", el("code", { class: "muted", text: e.name }), el("span", { class: "muted", text: count })),
        el("p", { class: "muted", text: e.description }),
        el("details", {}, el("summary", { text: "SQL" }), el("pre", {}, el("code", { text: e.sql }))),
        result);
    }));
  }

  // ---- auth ----------------------------------------------------------------------------------------
  function handleAuth(error) {
    if (!(error instanceof ApiError) || error.status !== 401) return false;
    state.needKey = true;
    $("#key-form").hidden = false;
    $("#key-message").textContent = sessionStorage.getItem(KEY_STORAGE) ? "that key was refused" : "this API needs a key";
    return true;
  }

  // ---- refresh loop --------------------------------------------------------------------------------
  // The status first: before the first build there is nothing to draw; after it, everything is
  // reloaded only when a newer build has replaced the models.
  function showStatus(text, isError = false) {
    const status = $("#status");
    status.classList.toggle("error", isError);
    status.textContent = text;
  }

  async function loadAll() {
    if (!state.metrics.length) await setupMetrics();
    const [deviceStates] = await Promise.all([loadDeviceStates(), loadFormatShare(), loadErrors(), loadMetricTable(), loadExamples()]);
    await loadKpis(deviceStates);
    state.loads += 1;
    document.body.dataset.loads = String(state.loads);
  }

  let running = false;
  async function refresh() {
    if (running) return;
    running = true;
    state.needKey = false;
    try {
      const status = await api("/analytics/status");
      const notice = $("#notice");
      if (!status.built) {
        document.body.dataset.state = "not-built";
        notice.hidden = false;
        notice.replaceChildren(el("strong", { text: status.detail }), el("span", { class: "muted",
          text: refreshSeconds > 0 ? " · this page shows the data once the build has finished" : " · reload this page once it has finished" }));
        $("main").hidden = true;
        showStatus("not built yet");
      } else {
        notice.hidden = true;
        $("main").hidden = false;
        if (status.built_at !== state.builtAt) {
          await loadAll();
          state.builtAt = status.built_at;
          document.body.dataset.builtAt = status.built_at;
        }
        document.body.dataset.state = state.needKey ? "needs-key" : "ready";
        showStatus(state.needKey ? "waiting for a key" : `data as of ${fmt(status.built_at)} (last dbt build)`);
      }
    } catch (error) {
      if (handleAuth(error)) {
        document.body.dataset.state = "needs-key";
        showStatus("waiting for a key");
      } else {
        document.body.dataset.state = "error";
        showStatus(message(error), true);
      }
    } finally {
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      running = false;
    }
  }

  function wire() {
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
      $("#key-input").value = "";
      $("#key-form").hidden = true;
      state.builtAt = null; // reload everything with the new key
      refresh();
    });
    document.querySelectorAll("[data-granularity]").forEach((button) => button.addEventListener("click", () => {
      state.granularity = button.dataset.granularity;
      document.querySelectorAll("[data-granularity]").forEach((b) => b.classList.toggle("active", b === button));
      loadFormatShare();
    }));
    $("#metric-select").addEventListener("change", (event) => { state.metric = event.target.value; state.offset = 0; loadMetricTable(); });
    $("#metric-device").addEventListener("change", () => { state.offset = 0; loadMetricTable(); });
    $("#metric-limit").addEventListener("change", () => { state.offset = 0; loadMetricTable(); });
    $("#metric-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - Number($("#metric-limit").value)); loadMetricTable(); });
    $("#metric-next").addEventListener("click", () => { state.offset += Number($("#metric-limit").value); loadMetricTable(); });
    $("#metric-form").addEventListener("submit", (event) => event.preventDefault());
  }

  wire();
  refresh();
  if (refreshSeconds > 0) setInterval(refresh, refreshSeconds * 1000);
})();
