// The gatewaykit dashboard: polls /status every 2 s and redraws the page.
// Rates come from the difference between two polls. Plain DOM, no framework,
// no build step; every text goes in through textContent.
"use strict";

(() => {
  const POLL_MS = 2000;
  const CLASSES = ["2xx", "3xx", "4xx", "5xx", "other"];
  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });

  let previous = null; // { at: ms, status }

  function byId(id) {
    return document.getElementById(id);
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function number(value) {
    return el("td", { class: "number" }, value);
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  function sum(values) {
    return values.reduce((total, value) => total + value, 0);
  }

  function codeClass(code) {
    const first = String(code)[0];
    return ["2", "3", "4", "5"].includes(first) && String(code).length === 3 ? `${first}xx` : "other";
  }

  function byClass(requests) {
    const counts = Object.fromEntries(CLASSES.map((name) => [name, 0]));
    for (const [code, count] of Object.entries(requests || {})) counts[codeClass(code)] += count;
    return counts;
  }

  // What grew since the last poll; a counter that went down was reset (reload).
  function growth(now, before) {
    const out = {};
    for (const [key, value] of Object.entries(now || {})) {
      const old = before ? before[key] || 0 : 0;
      out[key] = value >= old ? value - old : value;
    }
    return out;
  }

  function formatUptime(seconds) {
    let rest = Math.floor(seconds);
    const days = Math.floor(rest / 86400);
    rest %= 86400;
    const hours = Math.floor(rest / 3600);
    rest %= 3600;
    const minutes = Math.floor(rest / 60);
    const parts = [];
    if (days) parts.push(`${days}d`);
    if (days || hours) parts.push(`${hours}h`);
    if (days || hours || minutes) parts.push(`${minutes}m`);
    parts.push(`${rest % 60}s`);
    return parts.join(" ");
  }

  function formatBytes(bytes) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${decimal.format(value)} ${units[unit]}`;
  }

  function statusMix(counts) {
    const total = sum(Object.values(counts));
    const bar = el("div", { class: "mix-bar", "aria-hidden": "true" });
    const words = [];
    for (const name of CLASSES) {
      if (!counts[name]) continue;
      const share = counts[name] / total;
      const segment = el("span", { class: `mix-${name}` });
      segment.style.flexGrow = String(share);
      bar.append(segment);
      words.push(`${name} ${percent.format(share)}`);
    }
    const cell = el("td", { class: "mix" });
    if (!total) {
      cell.append(el("span", { class: "muted" }, "no requests"));
      return cell;
    }
    cell.append(bar, el("span", { class: "mix-text" }, words.join(" · ")));
    return cell;
  }

  function drawHeader(status) {
    setText("node", status.node);
    setText("version", status.version);
    const digest = byId("digest");
    digest.textContent = String(status.config_digest || "").slice(0, 12);
    digest.title = `${status.config_source || ""} sha256 ${status.config_digest || ""}`;
    setText("uptime", formatUptime(status.uptime_seconds || 0));
    const workers = status.workers || [];
    setText("workers", `${workers.length} (pid ${workers.map((w) => w.pid).join(", ")})`);
    document.title = `gatewaykit ${status.node} · dashboard`;
  }

  function drawOverview(status, seconds, routeGrowth) {
    const all = byClass({});
    for (const requests of Object.values(routeGrowth)) {
      const counts = byClass(requests);
      for (const name of CLASSES) all[name] += counts[name];
    }
    const total = sum(Object.values(all));
    setText("request-rate", seconds ? decimal.format(total / seconds) : "–");
    setText("error-ratio", seconds && total ? percent.format(all["5xx"] / total) : "–");

    const lookups = (status.cache && status.cache.lookups) || {};
    const lookupTotal = sum(Object.values(lookups));
    setText("cache-ratio", lookupTotal ? percent.format((lookups.hit || 0) / lookupTotal) : "no lookups");

    const limited = sum((status.rate_limits || []).map((policy) => policy.limited));
    setText("limited", integer.format(limited));
    setText("connections", integer.format(sum((status.listeners || []).map((l) => l.connections))));
  }

  function targetState(target) {
    if (target.ejected) return "ejected";
    return target.healthy ? "healthy" : "unhealthy";
  }

  function drawUpstreams(status) {
    const holder = byId("upstreams");
    const upstreams = status.upstreams || [];
    if (!upstreams.length) {
      holder.replaceChildren(el("p", { class: "empty" }, "No upstreams."));
      return;
    }
    const tables = upstreams.map((upstream) => {
      const available = upstream.targets.filter((t) => targetState(t) === "healthy").length;
      const caption = el(
        "caption",
        {},
        el("strong", {}, upstream.name),
        ` · ${upstream.balancer} · ${available} of ${upstream.targets.length} targets available`,
        ` · ${integer.format(upstream.in_flight)} in flight`,
      );
      const head = el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["Target", "Weight", "Health", "In flight", "Latency (EWMA)", "Requests", "Failures"].map(
            (name, index) => el("th", { scope: "col", class: index === 0 || index === 2 ? null : "number" }, name),
          ),
        ),
      );
      const rows = upstream.targets.map((target) => {
        const state = targetState(target);
        return el(
          "tr",
          { "data-upstream": upstream.name, "data-target": target.address, "data-state": state },
          el("th", { scope: "row" }, el("code", {}, target.address)),
          number(target.weight),
          el("td", {}, el("span", { class: `state state-${state}` }, state)),
          number(integer.format(target.in_flight)),
          number(target.ewma_ms ? `${decimal.format(target.ewma_ms)} ms` : "–"),
          number(integer.format(target.requests)),
          number(integer.format(target.failures)),
        );
      });
      return el("table", { class: "targets", "data-upstream": upstream.name }, caption, head, el("tbody", {}, ...rows));
    });
    holder.replaceChildren(...tables);
  }

  function drawRoutes(status, seconds, routeGrowth) {
    const rows = (status.routes || []).map((route) => {
      const recent = routeGrowth[route.name] || {};
      const recentCount = sum(Object.values(recent));
      const total = sum(Object.values(route.requests || {}));
      const mix = statusMix(byClass(recentCount ? recent : route.requests));
      const action = route.upstream ? `upstream ${route.upstream}` : route.action;
      return el(
        "tr",
        { "data-route": route.name },
        el("th", { scope: "row" }, route.name || "(none)"),
        el("td", {}, el("code", {}, route.match)),
        el("td", {}, action),
        el("td", {}, (route.policies || []).join(", ") || "–"),
        number(seconds ? decimal.format(recentCount / seconds) : "–"),
        mix,
        number(integer.format(total)),
      );
    });
    byId("routes").tBodies[0].replaceChildren(...rows);
  }

  function drawListeners(status) {
    const rows = (status.listeners || []).map((listener) =>
      el(
        "tr",
        { "data-listener": listener.name },
        el("th", { scope: "row" }, listener.name),
        el("td", {}, listener.protocol),
        el("td", {}, el("code", {}, listener.bind)),
        number(integer.format(listener.connections)),
        number(listener.bytes_in === undefined ? "–" : formatBytes(listener.bytes_in)),
        number(listener.bytes_out === undefined ? "–" : formatBytes(listener.bytes_out)),
      ),
    );
    byId("listeners").tBodies[0].replaceChildren(...rows);
  }

  function drawRateLimits(status, seconds) {
    const before = new Map(
      ((previous && previous.status.rate_limits) || []).map((policy) => [policy.policy, policy]),
    );
    const policies = status.rate_limits || [];
    const rows = policies.map((policy) => {
      const old = before.get(policy.policy);
      const grown = old && policy.limited >= old.limited ? policy.limited - old.limited : 0;
      return el(
        "tr",
        { "data-policy": policy.policy },
        el("th", { scope: "row" }, policy.policy),
        number(integer.format(policy.allowed)),
        number(integer.format(policy.limited)),
        number(seconds && old ? decimal.format(grown / seconds) : "–"),
        number(integer.format(policy.degraded)),
      );
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5", class: "empty" }, "No rate_limit policies.")));
    byId("rate-limits").tBodies[0].replaceChildren(...rows);
  }

  function drawCache(status) {
    const cache = status.cache || { lookups: {}, bytes: 0 };
    const rows = Object.entries(cache.lookups || {}).map(([result, count]) =>
      el("tr", {}, el("th", { scope: "row" }, result), number(integer.format(count))),
    );
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "2", class: "empty" }, "No cache lookups.")));
    byId("cache").tBodies[0].replaceChildren(...rows);
    setText("cache-bytes", formatBytes(cache.bytes || 0));
  }

  function draw(status, at) {
    const seconds = previous ? (at - previous.at) / 1000 : 0;
    const before = new Map(((previous && previous.status.routes) || []).map((r) => [r.name, r.requests]));
    const routeGrowth = {};
    if (previous) {
      for (const route of status.routes || []) routeGrowth[route.name] = growth(route.requests, before.get(route.name));
    }
    drawHeader(status);
    drawOverview(status, seconds, routeGrowth);
    drawUpstreams(status);
    drawRoutes(status, seconds, routeGrowth);
    drawListeners(status);
    drawRateLimits(status, seconds);
    drawCache(status);
  }

  function setConnection(text, problem) {
    const line = byId("connection");
    line.textContent = text;
    line.classList.toggle("problem", problem);
  }

  async function poll() {
    try {
      const response = await fetch("/status", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        setConnection("Signed out: reload the page to sign in again.", true);
        return; // polling would only repeat the 401
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const status = await response.json();
      const at = performance.now();
      draw(status, at);
      previous = { at, status };
      document.body.dataset.updated = String((Number(document.body.dataset.updated) || 0) + 1);
      setConnection(`Updated ${new Date().toLocaleTimeString()}`, false);
    } catch (error) {
      setConnection(`Cannot reach the gateway (${error.message}); retrying.`, true);
    }
    window.setTimeout(poll, POLL_MS);
  }

  poll();
})();
