"""Charts of the web console as inline SVG, drawn here in Python.

Why SVG from the server: no JavaScript, no vendored library and no build step; the page
is complete when it arrives (fast, printable, testable with an HTML parser or a browser),
and each chart carries `role="img"`, a `<title>` and a `<desc>` that says in words what
it shows (screen readers, alt text). Every function returns `Markup` ready for a Jinja
template; an empty series gives a short "no data" figure instead of an empty frame.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from itertools import count

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 14, 30
_ids = count(1)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100_000 or magnitude < 1e-4:
        return f"{value:.2e}"
    return f"{value:.3g}"


def _pct(value: float) -> str:
    return f"{value * 100:.3g} %"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _span(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo < 1e-12:  # a flat series: give it a visible band around its value
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _frame(title: str, desc: str, body: str, *, css: str, x_label: str = "", y_label: str = "",
           y_ticks: Sequence[tuple[float, str]] = (), x_ticks: Sequence[tuple[float, str]] = (),
           width: int = WIDTH, height: int = HEIGHT) -> Markup:
    n = next(_ids)
    parts = [f'<svg class="chart {css}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-labelledby="chart-t{n} chart-d{n}" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="chart-t{n}">{_esc(title)}</title>',
             f'<desc id="chart-d{n}">{_esc(desc)}</desc>',
             f'<rect class="plot-area" x="{PAD_L}" y="{PAD_T}" width="{width - PAD_L - PAD_R}"'
             f' height="{height - PAD_T - PAD_B}"/>']
    for y, label in y_ticks:
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{width - PAD_R}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_esc(label)}</text>')
    for x, label in x_ticks:
        # Labels at the ends grow inwards so they are never cut off at the frame.
        anchor = ("start" if x < PAD_L + 30 else "end" if x > width - PAD_R - 30
                  else "middle")
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - PAD_B + 14}" '
                     f'text-anchor="{anchor}">{_esc(label)}</text>')
    if y_label:
        parts.append(f'<text class="axis-label" x="{PAD_L + 4}" y="{PAD_T + 12}">'
                     f"↑ {_esc(y_label)}</text>")
    if x_label:
        parts.append(f'<text class="axis-label" x="{width - PAD_R}" y="{height - 2}" '
                     f'text-anchor="end">{_esc(x_label)}</text>')
    parts.append(body)
    parts.append("</svg>")
    return Markup("".join(parts))


def empty_chart(title: str, why: str) -> Markup:
    """A figure that says there is nothing to draw, and why."""
    body = (f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
            f'text-anchor="middle">{_esc(why)}</text>')
    return _frame(title, why, body, css="chart-empty")


class _Scale:
    def __init__(self, lo: float, hi: float, out_lo: float, out_hi: float) -> None:
        self.lo, self.hi = _span(lo, hi)
        self.out_lo, self.out_hi = out_lo, out_hi

    def __call__(self, v: float) -> float:
        return self.out_lo + (v - self.lo) / (self.hi - self.lo) * (self.out_hi - self.out_lo)

    def ticks(self, n: int = 4, fmt: Callable[[float], str] = _fmt) -> list[tuple[float, str]]:
        step = (self.hi - self.lo) / n
        return [(self(self.lo + i * step), fmt(self.lo + i * step)) for i in range(n + 1)]


def line_chart(title: str, series: Sequence[tuple[str, Sequence[float]]], *,
               labels: Sequence[str] = (), unit: str = "", css: str = "line",
               percent: bool = False) -> Markup:
    """Lines of equally spaced points (one per bar), each `(name, values)`; `labels`
    are the x-axis texts of the points (first, middle, last are shown); `percent`
    labels the y axis in per cent (fractions drawn as such)."""
    series = [(name, _finite(values)) for name, values in series]
    series = [(name, values) for name, values in series if values]
    if not series:
        return empty_chart(title, "no data yet")
    everything = [v for _, values in series for v in values]
    y = _Scale(min(everything), max(everything), HEIGHT - PAD_B, PAD_T)
    longest = max(len(values) for _, values in series)
    x = _Scale(0, max(longest - 1, 1), PAD_L, WIDTH - PAD_R)
    body = []
    for index, (name, values) in enumerate(series):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        body.append(f'<polyline class="series s{index}" points="{points}">'
                    f"<title>{_esc(name)}</title></polyline>")
    x_ticks = []
    if labels:
        for i in sorted({0, (len(labels) - 1) // 2, len(labels) - 1}):
            x_ticks.append((x(i), labels[i][:10]))
    names = ", ".join(f"{name}: {len(values)} points from {_fmt(values[0])} to "
                      f"{_fmt(values[-1])} (min {_fmt(min(values))}, max {_fmt(max(values))})"
                      for name, values in series)
    return _frame(title, f"{title}{' in ' + unit if unit else ''}. {names}.", "".join(body),
                  css=css, y_ticks=y.ticks(fmt=_pct if percent else _fmt), x_ticks=x_ticks)


def drawdown(equity: Sequence[float]) -> list[float]:
    """The fall from the running peak at each point, as a positive fraction.

    The peak starts at 1.0, the equity before the first bar (DESIGN.md's max_drawdown;
    OOS and live curves both start from it), so the chart's deepest point is the metric."""
    peak, out = 1.0, []
    for value in equity:
        peak = max(peak, value)
        out.append((peak - value) / peak if peak > 0 else 0.0)
    return out


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, unit: str = "") -> Markup:
    """Horizontal bars, largest first (e.g. mean |SHAP| per feature)."""
    bars = [(name, float(v)) for name, v in bars if v is not None and math.isfinite(float(v))]
    if not bars:
        return empty_chart(title, "no data yet")
    bars = sorted(bars, key=lambda b: -abs(b[1]))[:12]
    top = max(abs(v) for _, v in bars) or 1.0
    row = (HEIGHT - PAD_T - PAD_B) / len(bars)
    left = 150
    body = []
    for i, (name, value) in enumerate(bars):
        y0 = PAD_T + i * row
        width = abs(value) / top * (WIDTH - left - PAD_R - 50)
        body.append(f'<text class="tick" x="{left - 6}" y="{y0 + row * 0.7:.1f}" '
                    f'text-anchor="end">{_esc(name[:22])}</text>'
                    f'<rect class="bar" x="{left}" y="{y0 + row * 0.15:.1f}" '
                    f'width="{max(width, 1):.1f}" height="{row * 0.7:.1f}">'
                    f"<title>{_esc(name)}: {_fmt(value)}</title></rect>"
                    f'<text class="tick" x="{left + width + 4:.1f}" '
                    f'y="{y0 + row * 0.7:.1f}">{_esc(_fmt(value))}</text>')
    desc = "; ".join(f"{name} {_fmt(v)}" for name, v in bars)
    return _frame(title, f"{title}{' (' + unit + ')' if unit else ''}: {desc}.",
                  "".join(body), css="bars")


def scatter(title: str, points: Sequence[tuple[float, float, bool, str]], *,
            x_name: str, y_name: str, diagonal: bool = False, connect: bool = False) -> Markup:
    """Points `(x, y, highlighted, label)`; highlighted ones are drawn filled (the Pareto
    front, or bins with samples). `diagonal` draws y = x (a calibration plot); `connect`
    joins the points in x order (a reliability curve)."""
    pts = [(float(a), float(b), hi, label) for a, b, hi, label in points
           if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if not pts:
        return empty_chart(title, "no data yet")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if diagonal:
        lo, hi = min(0.0, *xs, *ys), max(1.0, *xs, *ys)
        x = _Scale(lo, hi, PAD_L, WIDTH - PAD_R)
        y = _Scale(lo, hi, HEIGHT - PAD_B, PAD_T)
    else:
        x = _Scale(min(xs), max(xs), PAD_L + 8, WIDTH - PAD_R - 8)
        y = _Scale(min(ys), max(ys), HEIGHT - PAD_B - 8, PAD_T + 8)
    body = []
    if diagonal:
        body.append(f'<line class="diagonal" x1="{x(x.lo):.1f}" y1="{y(y.lo):.1f}" '
                    f'x2="{x(x.hi):.1f}" y2="{y(y.hi):.1f}"/>')
    if connect:
        ordered = sorted(pts)
        body.append('<polyline class="series s0" points="' + " ".join(
            f"{x(a):.1f},{y(b):.1f}" for a, b, _, _ in ordered) + '"/>')
    for a, b, hi, label in pts:
        body.append(f'<circle class="point{" highlight" if hi else ""}" cx="{x(a):.1f}" '
                    f'cy="{y(b):.1f}" r="{5 if hi else 3.5}"><title>{_esc(label)}: '
                    f"{x_name} {_fmt(a)}, {y_name} {_fmt(b)}</title></circle>")
    x_ticks = [(px, text) for px, text in x.ticks()]
    highlighted = sum(1 for p in pts if p[2])
    desc = (f"{len(pts)} points, {highlighted} highlighted; {x_name} from {_fmt(min(xs))} "
            f"to {_fmt(max(xs))}, {y_name} from {_fmt(min(ys))} to {_fmt(max(ys))}.")
    return _frame(title, desc, "".join(body), css="scatter", x_label=f"{x_name} →",
                  y_label=y_name, y_ticks=y.ticks(), x_ticks=x_ticks)


def timeline(title: str, periods: Sequence[tuple[str, float, float, str]], *,
             labels: tuple[str, str] = ("", "")) -> Markup:
    """Bands on one time axis, `(version, start, end, tooltip)` with times as epoch
    seconds: which version was in production when. `labels` name the axis ends."""
    periods = [p for p in periods if p[2] >= p[1]]
    if not periods:
        return empty_chart(title, "never in production")
    lo, hi = min(p[1] for p in periods), max(p[2] for p in periods)
    width = 2 * WIDTH  # drawn across the page
    x = _Scale(lo, hi, PAD_L, width - PAD_R)
    versions = list(dict.fromkeys(p[0] for p in periods))[:12]
    periods = [p for p in periods if p[0] in versions]
    row = 24.0
    height = int(PAD_T + PAD_B + row * len(versions))
    body = []
    for version, start, end, tip in periods:
        y0 = PAD_T + versions.index(version) * row
        body.append(f'<rect class="band s{versions.index(version) % 6}" x="{x(start):.1f}" '
                    f'y="{y0 + 3:.1f}" width="{max(x(end) - x(start), 2):.1f}" '
                    f'height="{row - 6:.1f}"><title>{_esc(tip)}</title></rect>')
    for i, version in enumerate(versions):
        body.append(f'<text class="tick" x="{PAD_L + 4}" y="{PAD_T + i * row + row / 2 + 4:.1f}"'
                    f">{_esc(version)}</text>")
    desc = "; ".join(tip for *_, tip in periods)
    x_ticks = [(x(lo), labels[0]), (x(hi), labels[1])]
    return _frame(title, f"{title}: {desc}.", "".join(body), css="timeline", x_ticks=x_ticks,
                  width=width, height=height)
