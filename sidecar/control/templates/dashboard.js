// Refreshes the figures and draws the last hour, every few seconds. No library.
(function () {
  "use strict";
  var EVERY = 3000, HOUR = 3600, SVG = "http://www.w3.org/2000/svg";

  function text(el, value) { if (el && el.textContent !== String(value)) el.textContent = value; }

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds === 0) return "0 (walks in)";
    return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  }

  // the same wording as the page the server renders (admin.duration, admin.share)
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return "< 1 s";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }
  function share(f) { return f === null || f === undefined ? "–" : Math.round(f * 100) + " %"; }
  var SALE = { wait_p50: duration, wait_p90: duration, wait_p99: duration,
               admitted: function (n) { return n || 0; }, abandonment: share,
               estimate_within_range: share };

  function el(name, attrs) {
    var e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }

  // One series over the last hour, in the chart's own pixels (no stretching).
  function draw(svg, points, field, now) {
    var W = svg.clientWidth || 300, H = svg.clientHeight || 80, top = 8, bottom = 16;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = 1;
    points.forEach(function (p) { if (p[field] > max) max = p[field]; });
    // the last hour, or less while there is less history (at least ten minutes)
    var span = points.length ? Math.min(HOUR, Math.max(600, now - points[0].at)) : HOUR;
    span = Math.ceil(span / 300) * 300;
    var xy = points.map(function (p) {
      return [Math.max(0, (p.at - (now - span)) / span * W),
              H - bottom - (p[field] / max) * (H - top - bottom)];
    });
    svg.appendChild(el("line", { x1: 0, x2: W, y1: H - bottom, y2: H - bottom, "class": "axis" }));
    if (xy.length) {
      var pts = xy.map(function (c) { return c[0].toFixed(1) + "," + c[1].toFixed(1); }).join(" ");
      svg.appendChild(el("polygon", {
        points: xy[0][0].toFixed(1) + "," + (H - bottom) + " " + pts + " " +
                xy[xy.length - 1][0].toFixed(1) + "," + (H - bottom) }));
      svg.appendChild(el("polyline", { points: pts }));
      var last = xy[xy.length - 1];
      svg.appendChild(el("circle", { cx: last[0], cy: last[1], r: 3 }));
    }
    var left = el("text", { x: 2, y: H - 3 }); left.textContent = "−" + Math.round(span / 60) + " min";
    var right = el("text", { x: W - 2, y: H - 3, "text-anchor": "end" }); right.textContent = "now";
    svg.appendChild(left); svg.appendChild(right);
    var latest = points.length ? points[points.length - 1][field] : 0;
    var caption = svg.parentNode.querySelector(".peak");
    text(caption, "peak " + max);
    svg.setAttribute("aria-label", svg.getAttribute("aria-label").split(":")[0] + ": now " + latest + ", peak " + max);
  }

  function update(data) {
    data.queues.forEach(function (q) {
      var key = q.tenant + "/" + q.queue;
      var section = document.querySelector('section[data-queue="' + key + '"]');
      if (!section) return;
      ["waiting", "active", "invited", "admitted_last_minute", "serving", "tickets"].forEach(function (f) {
        text(section.querySelector('[data-field="' + f + '"]'), q[f]);
      });
      text(section.querySelector('[data-field="eta"]'), eta(q.eta_seconds));
      var mode = section.querySelector('[data-field="mode_label"]');
      if (mode) {
        text(mode, q.draining ? "draining" : q.mode);
        mode.className = "mode mode-" + q.mode;
      }
      var went = (data.sale || {})[key];
      if (went) {
        Object.keys(SALE).forEach(function (f) {
          text(section.querySelector('[data-sale-field="' + f + '"]'), SALE[f](went[f]));
        });
      }
      var points = data.history[key] || [];
      section.querySelectorAll("svg.chart").forEach(function (svg) {
        draw(svg, points, svg.getAttribute("data-series"), data.now);
      });
    });
    text(document.getElementById("updated"), "Live · updated " + new Date().toLocaleTimeString());
    document.body.setAttribute("data-refreshed", String(Date.now()));
  }

  function refresh() {
    fetch("/ui/data", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.href = "/login"; throw new Error("signed out"); }
        return r.json();
      })
      .then(update)
      .catch(function () { text(document.getElementById("updated"), "Not updating: admin listener unreachable"); })
      .then(function () { setTimeout(refresh, EVERY); });
  }

  // Date-times: entered and shown in the browser's own zone; the server gets the
  // zone's offset at that moment (summer time included) beside each value.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localValue(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
      "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
  document.querySelectorAll('input[type="datetime-local"]').forEach(function (input) {
    var unix = +input.getAttribute("data-unix");
    if (unix > 0) input.value = localValue(new Date(unix * 1000));
    var label = input.parentNode.querySelector(".zone");
    if (label) label.textContent = "(" + (zone || "local time") + ")";
    input.form.addEventListener("submit", function () {
      var offset = input.form.elements[input.name + "_offset"];
      var when = input.value ? new Date(input.value) : new Date();
      if (offset) offset.value = String(-when.getTimezoneOffset());
    });
  });

  refresh();
})();
