// Refreshes the figures and draws the last hour, every few seconds. No library.
(function () {
  "use strict";
  var EVERY = 3000, HOUR = 3600, W = 300, H = 80, SVG = "http://www.w3.org/2000/svg";

  function text(el, value) { if (el && el.textContent !== String(value)) el.textContent = value; }

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  }

  function draw(svg, points, field, now) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = 1;
    points.forEach(function (p) { if (p[field] > max) max = p[field]; });
    var coords = points.map(function (p) {
      var x = Math.max(0, (p.at - (now - HOUR)) / HOUR * W);
      var y = H - 4 - (p[field] / max) * (H - 16);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "4"); label.setAttribute("y", "11");
    label.textContent = "max " + max;
    if (coords.length) {
      var area = document.createElementNS(SVG, "polygon");
      var first = coords[0].split(",")[0], last = coords[coords.length - 1].split(",")[0];
      area.setAttribute("points", first + "," + H + " " + coords.join(" ") + " " + last + "," + H);
      svg.appendChild(area);
      var line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", coords.join(" "));
      svg.appendChild(line);
    }
    svg.appendChild(label);
    var latest = points.length ? points[points.length - 1][field] : 0;
    svg.setAttribute("aria-label", svg.getAttribute("aria-label").split(":")[0] + ": now " + latest + ", highest " + max);
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

  refresh();
})();
