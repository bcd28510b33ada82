// The operator console: polls /console/api/state and renders it. No framework, no build step.
// Every value from the server is put in the page as text (never as HTML).
"use strict";
(function () {
  const TOKEN = document.querySelector('meta[name="console-token"]').content;
  const REFRESH_MS = Number(document.querySelector('meta[name="console-refresh-ms"]').content) || 2000;
  const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d", "#e67700"];
  const charts = {};            // name -> {plot, keys}
  window.consoleCharts = charts; // read by the browser tests
  let state = null;
  let openJob = null;
  const armed = new Map();      // node -> time its Remove button was armed (survives re-renders)
  const ARM_MS = 6000;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = Object.assign({ "X-Console-Token": TOKEN }, opts.headers || {});
    const response = await fetch(path, opts);
    if (response.status === 401) { location.reload(); throw new Error("logged out"); }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { raw: text }; }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.status + " " + response.statusText;
      throw new Error(message);
    }
    return body;
  }

  const fmtMs = (s) => (s === null || s === undefined ? "-" : (s * 1000).toFixed(s < 0.1 ? 1 : 0) + " ms");
  const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "-");
  const fmtDur = (a, b) => (a && b ? ((b - a) * 1000).toFixed(0) + " ms" : "-");
  const badge = (text) => el("span", { class: "badge " + text }, text);

  function message(text, bad) {
    const node = document.getElementById("action-message");
    node.textContent = text;
    node.style.color = bad ? "var(--bad)" : "";
  }

  // --- nodes -------------------------------------------------------------------------------
  async function nodeAction(name, method, path, done) {
    try {
      message(done + " " + name + "...");
      await api(path, { method: method });
      message(done + " " + name + ": done.");
    } catch (error) {
      message(name + ": " + error.message, true);
    }
    poll();
  }

  function renderNodes(nodes) {
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren(...nodes.map((node) => {
      const health = node.draining ? "draining" : node.health;
      const enc = encodeURIComponent(node.name);
      const isArmed = armed.has(node.name) && Date.now() - armed.get(node.name) < ARM_MS;
      const remove = el("button", { class: "danger", "data-action": "remove", onclick: (event) => {
        if (armed.has(node.name) && Date.now() - armed.get(node.name) < ARM_MS) {
          armed.delete(node.name);
          nodeAction(node.name, "DELETE", "/admin/nodes/" + enc, "Removing");
        } else {
          armed.set(node.name, Date.now());
          event.target.textContent = "Confirm remove";
        }
      } }, isArmed ? "Confirm remove" : "Remove");
      return el("tr", { "data-node": node.name },
        el("td", {}, node.name), el("td", {}, node.engine || "-"), el("td", { class: "wrap" }, (node.models || []).join(", ")),
        el("td", { class: "health" }, badge(health)),
        el("td", {}, (node.in_flight ?? 0) + " / " + (node.limit ?? "-")), el("td", {}, node.queued ?? 0),
        el("td", {}, node.requests_total ?? 0), el("td", {}, node.errors_total ?? 0), el("td", {}, fmtMs(node.ttft_s)),
        el("td", { class: "wrap" }, node.last_error || ""),
        el("td", {},
          el("button", { "data-action": "drain", disabled: node.draining,
                         onclick: () => nodeAction(node.name, "POST", "/admin/nodes/" + enc + "/drain", "Draining") }, "Drain"),
          " ", remove));
    }));
  }

  function setupAddForm(engines) {
    const select = document.getElementById("add-engine");
    if (select.options.length) return;
    for (const engine of engines) select.append(el("option", { value: engine }, engine));
    document.getElementById("add-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      const config = {};
      for (const [key, value] of data.entries()) if (value !== "") config[key] = value;
      if (config.max_batch_size) config.max_batch_size = Number(config.max_batch_size);
      try {
        message("Adding " + config.model + "... (loading a model can take a while)");
        const added = await api("/admin/nodes", { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body: JSON.stringify(config) });
        message("Added " + added.name + ".");
        event.target.reset();
      } catch (error) {
        message("Add failed: " + error.message, true);
      }
      poll();
    });
  }

  // --- charts ------------------------------------------------------------------------------
  const CHARTS = [
    { name: "requests", title: "Requests/s by model", keyed: "requests_per_s" },
    { name: "tokens", title: "Output tokens/s by model", keyed: "output_tokens_per_s" },
    { name: "ttft", title: "Time to first token (ms)", lines: [["p50", "ttft_p50_s", 1000], ["p99", "ttft_p99_s", 1000]] },
    { name: "latency", title: "Latency (ms)", lines: [["p50", "latency_p50_s", 1000], ["p99", "latency_p99_s", 1000]] },
    { name: "queue", title: "Queue depth and 429s/s", lines: [["queued", "queue_depth", 1], ["429/s", "rejected_429_per_s", 1]] },
    { name: "cache", title: "Prefix-cache hit rate by node", keyed: "prefix_cache_hit_rate", floor: 1,
      empty: "No node reports prefix-cache counters (vLLM backends do)." },
    { name: "jobs", title: "Jobs/s (chain)", lines: [["jobs/s", "jobs_per_s", 1]], empty: "No chain jobs (serve only)." },
  ];

  function chartData(spec, series) {
    const t = series.t || [];
    let labels, columns;
    if (spec.keyed) {
      const group = series[spec.keyed] || {};
      labels = Object.keys(group).sort();
      columns = labels.map((key) => group[key]);
    } else {
      const present = spec.lines.filter(([, key]) => Array.isArray(series[key]) && series[key].some((v) => v !== null));
      labels = present.map(([label]) => label);
      columns = present.map(([, key, scale]) => series[key].map((v) => (v === null ? null : v * scale)));
    }
    return { labels, data: [t, ...columns] };
  }

  function renderCharts(series) {
    const host = document.getElementById("charts");
    for (const spec of CHARTS) {
      let box = document.getElementById("chart-" + spec.name);
      if (!box) {
        box = el("div", { class: "chart", id: "chart-" + spec.name }, el("h3", {}, spec.title), el("div", { class: "plot" }));
        host.append(box);
      }
      const { labels, data } = chartData(spec, series);
      const plotBox = box.querySelector(".plot");
      const points = data[0].length;
      box.dataset.points = String(points);
      box.dataset.series = labels.join(",");
      if (!labels.length || points < 2) {
        if (charts[spec.name]) { charts[spec.name].plot.destroy(); delete charts[spec.name]; }
        plotBox.replaceChildren(el("p", { class: "empty" }, points < 2 ? "Collecting..." : (spec.empty || "No data yet.")));
        continue;
      }
      const existing = charts[spec.name];
      if (existing && existing.keys === labels.join(",")) {
        existing.plot.setData(data);
        continue;
      }
      if (existing) existing.plot.destroy();
      plotBox.replaceChildren();
      const plot = new uPlot({
        width: chartWidth(box), height: 160, legend: { show: true, live: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.15, spec.floor || 1)] } },
        series: [{}, ...labels.map((label, i) => ({ label: label, stroke: COLORS[i % COLORS.length], width: 1.5,
                                                    spanGaps: false }))],
        axes: [{}, { size: 50 }],
      }, data, plotBox);
      charts[spec.name] = { plot: plot, keys: labels.join(",") };
    }
  }

  // The chart box is a grid cell that shrinks with the page (min-width: 0); the plot follows it.
  function chartWidth(box) { return Math.max(200, Math.floor(box.clientWidth || 320)); }

  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      const box = document.getElementById("chart-" + name);
      if (box) chart.plot.setSize({ width: chartWidth(box), height: 160 });
    }
  });

  // --- chain -------------------------------------------------------------------------------
  function txNode(hash) {
    if (!hash) return "-";
    const short = hash.slice(0, 10) + "...";
    if (state && state.tx_url) {
      return el("a", { href: state.tx_url.replace("{tx}", hash), target: "_blank", rel: "noopener noreferrer",
                       title: hash }, short);
    }
    return el("code", { title: hash }, short);
  }

  function fact(label, value) { return el("div", {}, el("span", {}, label), el("b", {}, value)); }

  function renderChain(chain) {
    const summary = document.getElementById("chain-summary");
    const jobsBody = document.querySelector("#jobs tbody");
    if (!chain) {
      summary.replaceChildren(el("p", { class: "muted" }, "No chain here: this node runs `serve` (the HTTP API alone)."));
      jobsBody.replaceChildren();
      return;
    }
    if (chain.error) {
      summary.replaceChildren(el("p", { class: "muted" }, "Chain data unavailable: " + chain.error));
      return;
    }
    const sharing = chain.sharing || {};
    const counts = Object.entries(chain.ledger || {}).filter(([, n]) => n).map(([s, n]) => s + " " + n).join(", ");
    summary.replaceChildren(
      fact("service", chain.service_id), fact("operator", chain.operator || "-"),
      fact("cursor / head", (chain.cursor_block ?? "-") + " / " + (chain.head_block ?? "-")),
      fact("head lag", chain.head_lag_blocks === null || chain.head_lag_blocks === undefined ? "-" : chain.head_lag_blocks + " blocks"),
      fact("ledger", counts || "empty"),
      fact("taken over by us", sharing.taken_over ?? "-"),
      fact("answered by another operator", sharing.answered_by_another ?? "-"),
      fact("skipped (not ours)", sharing.skipped ?? "-"),
      fact("standing by now", sharing.standby ?? "-"),
      fact("heartbeats sent", chain.heartbeats_sent === null || chain.heartbeats_sent === undefined ? "off" :
           chain.heartbeats_sent + (chain.heartbeat_failures ? " (" + chain.heartbeat_failures + " failed)" : "")),
      fact("transactions sent", chain.txs_sent ?? "-"),
      fact("operator balance", chain.balance_eth ?? "-"),
      fact("paid by the service (pending rewards)", chain.pending_rewards_eth ?? "-"));
    jobsBody.replaceChildren(...(chain.jobs || []).map((job) => {
      const key = job.service_id + "/" + job.call_id;
      const row = el("tr", { class: "clickable", "data-call": job.call_id, onclick: () => showJob(job.service_id, job.call_id) },
        el("td", {}, job.call_id), el("td", {}, job.job_kind || job.job_index), el("td", {}, badge(job.state)),
        el("td", {}, fmtTime(job.seen_at)), el("td", {}, fmtDur(job.started_at, job.answered_at)),
        el("td", {}, fmtDur(job.answered_at, job.confirmed_at || job.submitted_at)),
        el("td", {}, answeredBy(job)), el("td", {}, txNode(job.submit_tx_hash)));
      if (openJob === key) row.style.background = "#eef3ff";
      return row;
    }));
  }

  function answeredBy(job) {
    const who = (job.answered_by || "-") + (job.answered_by_operator ? " (" + job.answered_by_operator + ")" : "");
    return job.taken_over ? who + ", taken over" : who;
  }

  async function showJob(serviceId, callId) {
    const box = document.getElementById("job-detail");
    openJob = serviceId + "/" + callId;
    try {
      const job = await api("/console/api/jobs/" + serviceId + "/" + callId);
      const times = ["seen_at", "started_at", "answered_at", "submitted_at", "confirmed_at"]
        .map((k) => k.replace("_at", "") + " " + fmtTime(job[k])).join(" -> ");
      box.replaceChildren(...[
        el("h3", {}, "Job " + job.call_id + " (" + (job.job_kind || job.job_index) + "): ", badge(job.state)),
        el("p", {}, times),
        el("p", {}, "caller ", el("code", {}, job.caller || "-"), ", submitted in ", txNode(job.tx_hash),
           ", answer ", txNode(job.submit_tx_hash), job.answer_block ? " in block " + job.answer_block : ""),
        job.reason ? el("p", {}, "reason: " + job.reason) : null,
        el("p", {}, "answered by: " + answeredBy(job) + "; attempts: " + job.attempts),
        el("h4", {}, "request"), el("pre", {}, job.request_preview || "-"),
        el("h4", {}, "result"), el("pre", {}, job.result_preview || "-"),
        el("button", { onclick: () => { box.hidden = true; openJob = null; } }, "Close")].filter(Boolean));
      box.hidden = false;
    } catch (error) {
      box.replaceChildren(el("p", {}, "Job " + callId + ": " + error.message));
      box.hidden = false;
    }
  }

  // --- models ------------------------------------------------------------------------------
  function renderModels(models, quotes) {
    document.querySelector("#models tbody").replaceChildren(...models.map((m) => el("tr", {},
      el("td", {}, m.id), el("td", {}, m.context_length ?? "-"),
      el("td", {}, (m.pricing && m.pricing.prompt) || "0"), el("td", {}, (m.pricing && m.pricing.completion) || "0"),
      el("td", { class: "wrap" }, (m.supported_features || []).join(", ")), el("td", {}, m.is_ready === false ? "no" : "yes"))));
    document.getElementById("quotes").textContent =
      "Quotes issued: " + quotes.issued + (quotes.refused ? " (refused: " + quotes.refused + ")" : "");
    const recent = quotes.recent || [];
    document.getElementById("recent-quotes").hidden = recent.length === 0;
    document.querySelector("#recent-quotes tbody").replaceChildren(...recent.map((q) => el("tr", {},
      el("td", {}, fmtTime(q.time)), el("td", {}, q.model), el("td", {}, q.prompt_tokens + " / " + q.max_tokens),
      el("td", {}, q.price_wei), el("td", {}, fmtTime(q.expiry)), el("td", {}, el("code", {}, q.requester)))));
  }

  // --- the loop ----------------------------------------------------------------------------
  async function poll() {
    try {
      state = await api("/console/api/state");
      document.getElementById("strategy").textContent = state.strategy ? "(strategy " + state.strategy + ")" : "";
      setupAddForm(state.engines || []);
      renderNodes(state.nodes || []);
      renderCharts(state.series || {});
      renderChain(state.chain);
      renderModels(state.models || [], state.quotes || { issued: 0, refused: 0 });
      document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      document.getElementById("status").textContent = "error: " + error.message;
    }
  }

  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("/console/logout", { method: "POST" }); } finally { location.reload(); }
  });
  poll();
  setInterval(poll, REFRESH_MS);
})();
