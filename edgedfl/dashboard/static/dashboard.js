// The edgedfl dashboard page: renders the server's view (/api/state, then /api/events) with
// uPlot (charts) and cytoscape.js (the cluster graph). Every section renders on its own, so
// one bad value never blanks the page. window.edgedfl exposes the state for tests and debugging.
(function () {
  "use strict";

  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const slotColor = (s) => (s === null || s === undefined ? "#9ca3af" : COLORS[s % COLORS.length]);
  const api = { state: null, renders: 0, cy: null, charts: {} };
  window.edgedfl = api;

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(n < 10 ? 2 : 1) : String(n)) + " " + units[i];
  }
  const fmt = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else if (k === "style") e.setAttribute("style", v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function setStat(id, value, text) {
    const e = document.getElementById(id);
    e.dataset.value = String(value);
    e.textContent = text === undefined ? String(value) : text;
  }

  // -- header and device table ---------------------------------------------------------------

  function header(st) {
    document.getElementById("swarm").textContent = st.swarm;
    const devs = st.devices;
    setStat("round", Math.max(0, ...devs.map((d) => d.round || 0)));
    setStat("device-count", devs.length);
    const sent = devs.reduce((a, d) => a + (d.bytes_sent || 0), 0);
    setStat("bytes-total", sent, fmtBytes(sent));
    setStat("refused", st.refused_total);
    const where = st.source === "run" ? "run directory" : "live" + (st.broker ? " · " + st.broker : "");
    document.getElementById("source").textContent = (st.finished ? "finished · " : "") + where;
  }

  function devicesTable(st) {
    const body = document.querySelector("#devices tbody");
    body.replaceChildren(...st.devices.map((d) => el("tr", {
      "data-node": d.node, "data-state": d.state, "data-round": d.round, "data-bytes": d.bytes_sent,
      "data-slot": d.slot, class: d.online === false && st.source === "live" ? "offline" : null,
    },
      el("td", {}, el("span", { class: "swatch", style: "background:" + slotColor(d.slot) }), d.node),
      el("td", {}, el("span", { class: "state " + d.state.split(" ")[0] }, d.state)),
      el("td", { class: "num" }, d.round),
      el("td", {}, d.device_profile || d.profile || "–"),
      el("td", {}, d.task_label),
      el("td", { class: "num" }, d.slot === null ? "–" : d.slot),
      el("td", { class: "num" }, fmt(d.loss, 3)),
      el("td", { class: "num" }, fmt(d.accuracy, 2)),
      el("td", { class: "num" }, fmtBytes(d.memory_bytes)),
      el("td", { class: "num" }, d.step_ms === null ? "–" : fmt(d.step_ms, 0) + " ms"),
      el("td", { class: "num" }, fmtBytes(d.bytes_sent)),
      el("td", { class: "num" }, fmtBytes(d.bytes_received)),
      el("td", {}, (d.experts || []).join(", ") || "–"),
    )));
  }

  // -- the cluster graph ---------------------------------------------------------------------------

  function linkWeights(devs) {
    const by = Object.fromEntries(devs.map((d) => [d.node, d]));
    const edges = {};
    for (const d of devs) {
      for (const [peer, [sent, recv]] of Object.entries(d.links || {})) {
        if (!(peer in by) || peer === d.node) continue;
        const key = d.node < peer ? d.node + "|" + peer : peer + "|" + d.node;
        const e = edges[key] || (edges[key] = { a: key.split("|")[0], b: key.split("|")[1], recv: 0, sent: 0 });
        e.recv += recv; // what arrived at d from peer
        e.sent += sent; // what d addressed to peer
      }
    }
    return Object.values(edges).map((e) => ({ ...e, bytes: e.recv || e.sent })).filter((e) => e.bytes > 0);
  }

  function graph(st) {
    const devs = st.devices;
    const slots = [...new Set(devs.filter((d) => d.slot !== null).map((d) => d.slot))].sort((a, b) => a - b);
    const clusters = document.getElementById("clusters");
    clusters.replaceChildren(...slots.map((s) => {
      const members = devs.filter((d) => d.slot === s).map((d) => d.node).sort();
      const task = st.slot_tasks[String(s)] || "";
      return el("li", { "data-slot": s, "data-members": members.join(" ") },
        el("span", { class: "swatch", style: "background:" + slotColor(s) }),
        `cluster ${s}${task ? " (" + task + ")" : ""}: ${members.join(", ")}`);
    }));
    const slotOf = Object.fromEntries(devs.map((d) => [d.node, d.slot]));
    const links = linkWeights(devs);
    const elements = [];
    for (const s of slots) {
      const task = st.slot_tasks[String(s)];
      elements.push({ data: { id: "cluster-" + s, label: `cluster ${s}${task ? " · " + task : ""}`, slot: s } });
    }
    for (const d of devs) {
      elements.push({ data: { id: d.node, label: d.node, slot: d.slot, color: slotColor(d.slot),
        parent: d.slot === null ? undefined : "cluster-" + d.slot } });
    }
    for (const e of links) {
      const same = slotOf[e.a] !== null && slotOf[e.a] === slotOf[e.b];
      elements.push({ data: { id: e.a + "|" + e.b, source: e.a, target: e.b, bytes: e.bytes, label: fmtBytes(e.bytes),
        width: 1 + 2.5 * Math.log10(1 + e.bytes / 1000), same: same ? 1 : 0 } });
    }
    const structure = JSON.stringify(elements.map((x) => [x.data.id, x.data.parent || "", x.data.source || ""]));
    if (!api.cy) {
      api.cy = cytoscape({
        container: document.getElementById("graph"),
        wheelSensitivity: 0.3,
        style: [
          { selector: "node", style: { "background-color": "data(color)", label: "data(label)", "font-size": 11,
            "text-valign": "center", color: "#fff", "text-outline-width": 1.5, "text-outline-color": "data(color)",
            width: 44, height: 44 } },
          { selector: ":parent", style: { "background-opacity": 0.06, "border-width": 2, "border-color": "#94a3b8",
            label: "data(label)", "text-valign": "top", color: "#334155", "text-outline-width": 0, "font-size": 12,
            padding: 14 } },
          { selector: "edge", style: { width: "data(width)", "line-color": "#64748b", label: "data(label)",
            "font-size": 9, "text-background-color": "#fff", "text-background-opacity": 0.85,
            "curve-style": "bezier", opacity: 0.9 } },
          { selector: "edge[same = 0]", style: { "line-style": "dashed", opacity: 0.3, label: "" } },
        ],
      });
    }
    const cy = api.cy;
    if (structure !== api.graphStructure) {
      api.graphStructure = structure;
      cy.elements().remove();
      cy.add(elements);
      cy.layout({ name: "preset", positions: positions(devs, slots), fit: true, padding: 24, animate: false }).run();
      if (cy.zoom() > 1.6) { cy.zoom(1.6); cy.center(); }
    } else {
      for (const x of elements) cy.getElementById(x.data.id).data(x.data);
    }
  }

  // clusters on a ring, each cluster's members on a small ring of their own, the unclustered below:
  // the same picture every time (a force layout lets cross-cluster join traffic pull clusters together)
  function positions(devs, slots) {
    const pos = {};
    const ringR = slots.length > 1 ? 90 + 25 * slots.length : 0;
    slots.forEach((s, i) => {
      const a = (2 * Math.PI * i) / slots.length + Math.PI;  // two clusters side by side
      const cx = ringR * Math.cos(a), cy = ringR * Math.sin(a);
      const members = devs.filter((d) => d.slot === s).map((d) => d.node).sort();
      const r = members.length > 1 ? 34 + 10 * members.length : 0;
      members.forEach((n, j) => {
        const b = (2 * Math.PI * j) / members.length + Math.PI / 4;
        pos[n] = { x: cx + r * Math.cos(b), y: cy + r * Math.sin(b) };
      });
    });
    const loose = devs.filter((d) => d.slot === null).map((d) => d.node).sort();
    loose.forEach((n, j) => { pos[n] = { x: (j - (loose.length - 1) / 2) * 70, y: ringR + 130 }; });
    return (node) => pos[node.id()] || { x: 0, y: 0 };
  }

  // -- charts ------------------------------------------------------------------------------------

  function rounds(devs) {
    const rs = new Set();
    for (const d of devs) for (const r of d.history || []) rs.add(r[0]);
    return [...rs].sort((a, b) => a - b);
  }

  function perTask(devs, xs, column) {
    const tasks = [...new Set(devs.map((d) => d.task_label))].sort();
    return tasks.map((t) => ({
      label: t,
      values: xs.map((r) => {
        const vals = devs.filter((d) => d.task_label === t)
          .map((d) => (d.history || []).find((h) => h[0] === r)).filter((h) => h && h[column] !== null)
          .map((h) => h[column]);
        return vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null;
      }),
    }));
  }

  function chart(id, xs, series, yLabel, yRange) {
    const box = document.getElementById(id);
    const key = series.map((s) => s.label).join("|");
    const data = [xs, ...series.map((s) => s.values)];
    let c = api.charts[id];
    if (c && c.key !== key) { c.plot.destroy(); c = null; }
    if (!xs.length) { if (c) { c.plot.destroy(); delete api.charts[id]; } box.textContent = "waiting for the first round…"; return; }
    if (!c) {
      box.textContent = "";
      const opts = {
        width: Math.max(320, box.clientWidth || 440), height: 230, legend: { live: false },
        scales: { x: { time: false, range: (u, lo, hi) => [lo, Math.max(hi, lo + 1)] },
          y: yRange ? { range: yRange } : {} },
        axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50] }, { label: yLabel, size: 60 }],
        series: [{ label: "round" }, ...series.map((s, i) => ({ label: s.label, stroke: s.color || COLORS[i % COLORS.length],
          width: 2, dash: s.dash, spanGaps: true, points: { show: true, size: 6 } }))],
      };
      c = api.charts[id] = { key, plot: new uPlot(opts, data, box) };
    } else {
      c.plot.setData(data);
    }
  }

  function charts(st) {
    const devs = st.devices;
    const xs = rounds(devs);
    chart("chart-accuracy", xs, perTask(devs, xs, 2), "exact-match accuracy", [0, 1]);
    chart("chart-loss", xs, perTask(devs, xs, 1), "loss");
    let total = 0;
    const actual = xs.map((r) => {
      for (const d of devs) { const h = (d.history || []).find((x) => x[0] === r); if (h) total += h[3]; }
      return total / 1e6;
    });
    const series = [{ label: "edgedfl (MB)", values: actual, color: "#2563eb" }];
    const lora = devs.map((d) => d.lora_update_bytes);
    const note = document.getElementById("bytes-note");
    if (devs.length && lora.every((x) => x !== null && x !== undefined)) {
      const perRound = lora.reduce((a, b) => a + b, 0);
      const join = xs.length ? actual[0] : 0;
      series.push({ label: "standard LoRA (MB)", color: "#dc2626", dash: [6, 4],
        values: xs.map((r, i) => (r === 0 ? actual[i] : join + r * perRound / 1e6)) });
      note.textContent = "standard LoRA: each device sends one dense A+B update of the same rank, layers and " +
        "precision every round (" + fmtBytes(perRound / devs.length) + " per device), after the same join; " +
        "acks and headers not counted.";
    } else {
      note.textContent = "";
    }
    chart("chart-bytes", xs, series, "MB");
  }

  // -- rejections, restarts, routing -----------------------------------------------------------------

  function rejections(st) {
    const body = document.querySelector("#rejections tbody");
    body.replaceChildren(...st.devices.map((d) => {
      const kinds = Object.entries(d.rejects || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
      return el("tr", { "data-node": d.node, "data-restarts": d.restarts },
        el("td", {}, d.node), el("td", { class: "num" }, d.restarts), el("td", {}, kinds.join(", ") || "none"));
    }));
    const here = Object.entries(st.refused).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
    document.getElementById("refused-here").textContent =
      "refused by this dashboard (malformed, unsigned or forged status messages): " + (here.join(", ") || "none");
  }

  function routing(st) {
    const box = document.getElementById("routing");
    const tasks = Object.keys(st.routing).sort();
    if (!tasks.length) return;
    const slots = [...new Set(tasks.flatMap((t) => Object.keys(st.routing[t])))].map(Number).sort((a, b) => a - b);
    const head = el("tr", {}, el("th", {}, "prompts of task ↓ / answered by →"),
      ...slots.map((s) => el("th", {}, `expert ${s}` + (st.slot_tasks[String(s)] ? ` (${st.slot_tasks[String(s)]})` : ""))));
    const rows = tasks.map((t) => {
      const row = st.routing[t];
      const n = Object.values(row).reduce((a, b) => a + b, 0) || 1;
      return el("tr", { "data-task": t }, el("th", {}, t), ...slots.map((s) => {
        const k = row[String(s)] || 0;
        return el("td", { class: "cell", "data-count": k,
          style: `background: rgba(37, 99, 235, ${(0.08 + 0.7 * k / n).toFixed(3)})` },
        `${k} (${Math.round(100 * k / n)}%)`);
      }));
    });
    box.replaceChildren(el("table", { id: "routing-matrix" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  // -- the loop ------------------------------------------------------------------------------------------

  function render(st) {
    api.state = st;
    for (const part of [header, devicesTable, graph, charts, rejections, routing]) {
      try { part(st); } catch (err) { console.error("dashboard: " + part.name + ": " + err); }
    }
    api.renders += 1;
    document.body.dataset.renders = String(api.renders);
  }

  fetch("/api/state").then((r) => r.json()).then(render).catch((e) => console.error(e));
  const events = new EventSource("/api/events");
  events.addEventListener("state", (e) => render(JSON.parse(e.data)));
  events.onerror = () => {
    if (api.state) document.getElementById("source").textContent = api.state.finished ? "finished" : "reconnecting…";
  };
})();
