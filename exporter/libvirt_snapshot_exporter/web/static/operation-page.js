// The operation page's charts: one uPlot per chart of the inlined trace data
// (operation_page.py derives every figure; this only draws), the operation shaded from its
// start to its end. When done, #charts says data-state="drawn"; on any error it says so in
// words instead of a blank page.
"use strict";
(function () {
  const box = document.getElementById("charts");
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

  function fail(message) {
    box.dataset.state = "error";
    box.textContent = "The charts could not be drawn: " + message;
  }

  // The operation's span, under the series: shaded, its start and end as dashed lines.
  function operationSpan(end) {
    return {
      hooks: {
        drawAxes: [(u) => {
          const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
          const x0 = u.valToPos(0, "x", true), x1 = u.valToPos(end, "x", true);
          ctx.save();
          ctx.fillStyle = "rgba(255, 190, 0, 0.13)";
          ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
          ctx.strokeStyle = "#c60";
          ctx.lineWidth = devicePixelRatio;
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.fillStyle = "#c60";
          ctx.font = 11 * devicePixelRatio + "px sans-serif";
          ctx.textAlign = "left";  // uPlot's axes leave theirs set
          ctx.textBaseline = "top";
          for (const [x, label] of [[x0, "start"], [x1, "end"]]) {
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.fillText(label, x + 3 * devicePixelRatio, top + 2 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
  }

  function number(value, unit) {
    return value == null ? "-" : value.toFixed(value >= 100 ? 0 : 1) + " " + unit;
  }

  try {
    const data = JSON.parse(document.getElementById("trace-data").textContent);
    box.textContent = "";
    const width = Math.max(600, Math.min(1200, box.clientWidth));
    for (const chart of data.charts) {
      const element = document.createElement("div");
      element.className = "chart";
      box.appendChild(element);
      const series = chart.series.map((s, i) => ({
        // thinner as they come: a series drawn over an equal one leaves it visible
        label: s.label, stroke: COLORS[i % COLORS.length], width: Math.max(1, 2.5 - 0.5 * i),
        value: (u, v) => number(v, chart.unit),
      }));
      new uPlot({
        title: chart.title, width: width, height: 230,
        scales: { x: { time: false } },
        axes: [{ label: "seconds from the start" }, { label: chart.unit, size: 70 }],
        series: [{ label: "time", value: (u, v) => number(v, "s") }, ...series],
        plugins: [operationSpan(data.end)],
      }, [data.x, ...chart.series.map((s) => s.values)], element);
    }
    box.dataset.charts = String(data.charts.length);
    box.dataset.state = "drawn";
  } catch (error) {
    fail(error.message);
  }
})();
