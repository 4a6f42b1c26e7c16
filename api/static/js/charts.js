// Chart.js (vendored UMD build, window.Chart) with the dashboard's colours and defaults.

const PALETTE = [
  "#2563eb",
  "#16a34a",
  "#d97706",
  "#db2777",
  "#7c3aed",
  "#0891b2",
  "#dc2626",
  "#65a30d",
  "#9333ea",
  "#0d9488",
];

function css(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** A log axis only pays off when the values span more than a decade (and are all positive). */
export function wantsLog(values) {
  const v = values.filter((x) => x !== null && x !== undefined && Number.isFinite(x));
  if (!v.length || v.some((x) => x <= 0)) return false;
  return Math.max(...v) / Math.min(...v) > 10;
}

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function baseOptions({ xTitle, yTitle, yLog = false, legend = true, yPercent = false }) {
  const text = css("--text-muted", "#555");
  const grid = css("--border", "#ddd");
  return {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: { mode: "nearest", intersect: false },
    plugins: {
      legend: { display: legend, labels: { color: text, boxWidth: 12 } },
      tooltip: {
        callbacks: yPercent ? { label: (c) => `${c.dataset.label}: ${(c.parsed.y * 100).toFixed(2)}%` } : {},
      },
    },
    scales: {
      x: {
        type: "category",
        title: { display: Boolean(xTitle), text: xTitle, color: text },
        ticks: { color: text, autoSkip: true, maxRotation: 0 },
        grid: { color: grid, display: false },
      },
      y: {
        type: yLog ? "logarithmic" : "linear",
        title: { display: Boolean(yTitle), text: yTitle, color: text },
        ticks: {
          color: text,
          ...(yPercent ? { callback: (v) => `${Math.round(v * 100)}%` } : {}),
        },
        grid: { color: grid },
        ...(yPercent ? { min: 0, max: 1 } : {}),
      },
    },
  };
}

/** Whether the vendored Chart.js loaded (it is a classic deferred script, modules run after it). */
export function available() {
  return typeof window.Chart === "function";
}

/**
 * Draw a chart on `canvas`. kind: "bar" | "line" | "scatter". datasets: Chart.js datasets
 * (colours are filled in). Returns the Chart instance (call .destroy() when the view goes).
 */
export function draw(
  canvas,
  {
    kind = "bar",
    labels,
    datasets,
    xTitle,
    yTitle,
    yLog = false,
    yPercent = false,
    xLinear = false,
    xPercent = false,
  },
) {
  if (!available()) return null;
  // Past a dozen series a legend is a wall of swatches; the tooltip names each line instead.
  const options = baseOptions({
    xTitle,
    yTitle,
    yLog,
    yPercent,
    legend: datasets.length > 1 && datasets.length <= 12,
  });
  if (xLinear) {
    options.scales.x = {
      ...options.scales.x,
      type: "linear",
      grid: { color: css("--border", "#ddd") },
      ...(xPercent
        ? { min: 0, max: 1, ticks: { ...options.scales.x.ticks, callback: (v) => `${Math.round(v * 100)}%` } }
        : {}),
    };
  }
  const styled = datasets.map((d, i) => {
    const c = d.color || color(i);
    return {
      borderColor: c,
      backgroundColor: kind === "bar" ? `${c}cc` : c,
      borderWidth: kind === "bar" ? 0 : 2,
      pointRadius: kind === "scatter" ? 6 : kind === "line" && (d.data?.length || 0) > 40 ? 0 : 2,
      // Points on the axis limits (the dense model at 0%) are drawn whole, not cut in half.
      clip: kind === "scatter" ? false : undefined,
      tension: 0.15,
      ...d,
    };
  });
  if (kind === "scatter") options.layout = { padding: 8 };
  return new window.Chart(canvas, { type: kind, data: { labels, datasets: styled }, options });
}
