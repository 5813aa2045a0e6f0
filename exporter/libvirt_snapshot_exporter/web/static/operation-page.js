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

  // Where the "start" and "end" labels go, each by its dashed line, on the plot's top line:
  // inside the span (right of each line) when "start" fits between the lines; else "start"
  // left of its line and "end" right of its own, so that they never overlap on a short
  // operation; where a side has no room, "end" goes on a second line. Positions in canvas
  // pixels: [x, y, textAlign] for each.
  function labelPlaces(x0, x1, left, right, top, widths, pad, line) {
    const [start, end] = widths;
    const y = top + pad;
    const endPlace = x1 + pad + end <= right ? [x1 + pad, "left"] : [x1 - pad, "right"];
    const endLeft = endPlace[1] === "left" ? endPlace[0] : endPlace[0] - end;
    if (x0 + pad + start + pad <= endLeft) {
      return [[x0 + pad, y, "left"], [endPlace[0], y, endPlace[1]]];
    }
    if (endPlace[1] === "left" && x0 - pad - start >= left) {
      return [[x0 - pad, y, "right"], [endPlace[0], y, "left"]];
    }
    return [[x0 + pad, y, "left"], [endPlace[0], y + line, endPlace[1]]];
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
          ctx.textBaseline = "top";  // uPlot's axes leave theirs set
          const labels = ["start", "end"];
          const places = labelPlaces(
            x0, x1, u.bbox.left, u.bbox.left + u.bbox.width, top,
            labels.map((l) => ctx.measureText(l).width), 3 * devicePixelRatio,
            13 * devicePixelRatio);
          for (const [i, x] of [x0, x1].entries()) {
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.textAlign = places[i][2];
            ctx.fillText(labels[i], places[i][0], places[i][1]);
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
