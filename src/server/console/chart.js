// portcullis console: a small SVG chart renderer (no library). Charts are drawn with DOM
// calls (no markup strings), so nothing from the data is ever parsed as HTML.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg"; // the SVG namespace name (an identifier, never fetched)
  const W = 480, H = 200, L = 52, R = 10, T = 22, B = 26;
  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function frame(title, ymax, fmt, xLabels) {
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
    svg.appendChild(el("title", {}, title));
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y, y2: y, class: i ? "grid" : "axis" }));
      svg.appendChild(el("text", { x: L - 4, y: y + 3, "text-anchor": "end", class: "tick" }, fmt(ymax * i / 4)));
    }
    const n = xLabels.length;
    const step = Math.max(1, Math.ceil(n / 6));
    for (let i = 0; i < n; i += step) {
      const x = L + (W - L - R) * (n > 1 ? i / (n - 1) : 0.5);
      svg.appendChild(el("text", { x: x, y: H - 8, "text-anchor": "middle", class: "tick" }, xLabels[i]));
    }
    return svg;
  }
  function legend(svg, names) {
    let x = L;
    names.forEach(function (name, i) {
      svg.appendChild(el("rect", { x: x, y: 6, width: 10, height: 10, class: "bar s" + (i % 4) }));
      svg.appendChild(el("text", { x: x + 14, y: 15, class: "legend" }, name));
      x += 22 + name.length * 6.5;
    });
  }
  function wrap(container, title, svg) {
    const box = document.createElement("figure");
    box.className = "chart";
    const h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
    box.appendChild(svg);
    container.appendChild(box);
    return box;
  }
  // series: [{name, values: [number|null]}], one value per x label
  // counts: integer ticks (the axis spans at least 0..4)
  function line(container, title, xLabels, series, fmt, counts) {
    fmt = fmt || String;
    let max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v != null && v > max) max = v; }); });
    const ymax = counts ? niceMax(Math.max(max, 4)) : niceMax(max);
    const svg = frame(title, ymax, fmt, xLabels);
    const n = xLabels.length;
    series.forEach(function (s, si) {
      const pts = [];
      s.values.forEach(function (v, i) {
        if (v == null) return;
        const x = L + (W - L - R) * (n > 1 ? i / (n - 1) : 0.5);
        const y = T + (H - T - B) * (1 - v / ymax);
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
        const c = el("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: "s" + (si % 4) });
        c.appendChild(el("title", {}, s.name + " " + xLabels[i] + ": " + fmt(v)));
        svg.appendChild(c);
      });
      if (pts.length > 1) svg.appendChild(el("polyline", { points: pts.join(" "), class: "s" + (si % 4) }));
    });
    if (max === 0) svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no calls in this window"));
    legend(svg, series.map(function (s) { return s.name; }));
    return wrap(container, title, svg);
  }
  // items: [{label, value}]
  function bars(container, title, items) {
    let max = 0;
    items.forEach(function (it) { if (it.value > max) max = it.value; });
    const ymax = niceMax(Math.max(max, 4));
    const svg = frame(title, ymax, function (v) { return String(Math.round(v)); }, []);
    const n = Math.max(1, items.length);
    const bw = (W - L - R) / n;
    items.forEach(function (it, i) {
      const h = (H - T - B) * it.value / ymax;
      const x = L + i * bw + bw * 0.15;
      const r = el("rect", { x: x, y: T + (H - T - B) - h, width: bw * 0.7, height: h, class: "bar s" + (i % 4) });
      r.appendChild(el("title", {}, it.label + ": " + it.value));
      svg.appendChild(r);
      svg.appendChild(el("text", { x: x + bw * 0.35, y: H - 8, "text-anchor": "middle", class: "tick" }, it.label.slice(0, 22)));
    });
    if (!items.length) svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "none in this window"));
    return wrap(container, title, svg);
  }
  window.PcsChart = { line: line, bars: bars };
})();
