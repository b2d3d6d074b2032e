// The detail page's charts: throughput, latency and lag per topic, from the readings the page polls (htmx swaps
// the live section every few seconds; each swap carries one reading per topic in data- attributes). No library,
// no build step; text goes in through textContent only.
(function () {
  "use strict";
  var KEEP = 120; // readings per series: 6 minutes at one every 3 s
  var METRICS = [
    ["recordsPerSecond", "records/s"],
    ["latencyMs", "latency ms"],
    ["lagRecords", "lag records"],
  ];
  var history = new Map(); // topic -> {metric -> [numbers or null]}
  var SVG = "http://www.w3.org/2000/svg";

  function record() {
    var rows = document.querySelectorAll("#topics tr.topic");
    rows.forEach(function (row) {
      var topic = row.dataset.topic;
      if (!history.has(topic)) history.set(topic, {});
      var series = history.get(topic);
      METRICS.forEach(function (m) {
        var raw = row.dataset[m[0]];
        var values = series[m[0]] || (series[m[0]] = []);
        values.push(raw === "" || raw === undefined ? null : Number(raw));
        if (values.length > KEEP) values.shift();
      });
    });
    draw();
  }

  function polyline(values) {
    var numbers = values.filter(function (v) { return v !== null && isFinite(v); });
    var max = Math.max.apply(null, numbers.concat([1]));
    var points = [];
    values.forEach(function (v, i) {
      if (v === null || !isFinite(v)) return;
      var x = values.length === 1 ? 100 : (i / (values.length - 1)) * 100;
      var y = 30 - (v / max) * 28;
      points.push(x.toFixed(2) + "," + y.toFixed(2));
    });
    return { points: points.join(" "), max: max, last: numbers.length ? numbers[numbers.length - 1] : null };
  }

  function draw() {
    var container = document.getElementById("charts");
    if (!container) return;
    history.forEach(function (series, topic) {
      var id = "chart-" + encodeURIComponent(topic);
      var row = document.getElementById(id);
      if (!row) {
        row = document.createElement("div");
        row.className = "chart-row";
        row.id = id;
        var title = document.createElement("h3");
        title.textContent = topic;
        row.appendChild(title);
        var sparks = document.createElement("div");
        sparks.className = "sparks";
        METRICS.forEach(function (m) {
          var figure = document.createElement("figure");
          figure.className = "spark";
          figure.dataset.metric = m[0];
          var caption = document.createElement("figcaption");
          figure.appendChild(caption);
          var svg = document.createElementNS(SVG, "svg");
          svg.setAttribute("viewBox", "0 0 100 32");
          svg.setAttribute("preserveAspectRatio", "none");
          svg.appendChild(document.createElementNS(SVG, "polyline"));
          figure.appendChild(svg);
          sparks.appendChild(figure);
        });
        row.appendChild(sparks);
        container.appendChild(row);
      }
      METRICS.forEach(function (m) {
        var figure = row.querySelector('figure[data-metric="' + m[0] + '"]');
        var line = polyline(series[m[0]] || []);
        figure.querySelector("polyline").setAttribute("points", line.points);
        figure.querySelector("figcaption").textContent =
          m[1] + ": " + (line.last === null ? "–" : line.last.toLocaleString(undefined, { maximumFractionDigits: 1 }));
      });
    });
  }

  document.addEventListener("DOMContentLoaded", record);
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target && event.target.id === "live") record();
  });
})();
