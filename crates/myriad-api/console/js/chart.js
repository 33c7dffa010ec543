// Time-series charts with the vendored uPlot (global `uPlot`, loaded by index.html).

const COLORS = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2'];

/**
 * A line chart in `container`: series names, data [[ts_seconds...], [values...], ...].
 * Returns {setData(data), destroy()}; the chart follows the container's width.
 */
export function lineChart(container, title, names, data, { height = 200 } = {}) {
  const width = () => Math.max(280, container.clientWidth - 8);
  const opts = {
    title,
    width: width(),
    height,
    series: [{}, ...names.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5 }))],
    axes: [{}, { size: 60 }],
    scales: { x: { time: true } },
  };
  /* global uPlot */
  const chart = new uPlot(opts, data, container);
  const observer = new ResizeObserver(() => chart.setSize({ width: width(), height }));
  observer.observe(container);
  return {
    setData(next) { chart.setData(next); },
    destroy() { observer.disconnect(); chart.destroy(); },
  };
}
