"""Small inline SVG charts for report.html: no plotting library, no external files, crisp at any zoom."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.3g}"
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def halo_text(x: float, y: float, text: str, anchor: str = "start", color: str = "#222") -> str:
    """Text over a white outline of itself, so that it stays legible over bars and lines.

    Two elements rather than paint-order, which not every SVG renderer honours.
    """
    where = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"'
    return (
        f'<text {where} fill="#fff" stroke="#fff" stroke-width="3">{escape(text)}</text>'
        f'<text {where} fill="{color}">{escape(text)}</text>'
    )


class Frame:
    """A plot area with linear axes; maps data to pixels and draws the axes."""

    def __init__(self, width: int, height: int, x_range, y_range, left=64, right=16, top=28, bottom=44):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def x(self, value: float) -> float:
        span = self.width - self.left - self.right
        return self.left + (value - self.x0) / (self.x1 - self.x0) * span

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - self.y0) / (self.y1 - self.y0) * span

    def open(self, title: str) -> list[str]:
        return [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{escape(title)}" {FONT}>',
            f"<title>{escape(title)}</title>",
            f'<text x="{self.width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
            f"{escape(title)}</text>",
        ]

    def reference_line(self, value: float, text: str) -> list[str]:
        """A dashed horizontal line across the plot (a budget, a limit) with its label at the right end."""
        y = self.y(value)
        right = self.width - self.right
        return [
            f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#C44E52" stroke-dasharray="5,3"/>',
            halo_text(right, y - 4, text, anchor="end", color="#C44E52"),
        ]

    def y_axis(self, label: str, ticks: list[float] | None = None, tick_text=fmt) -> list[str]:
        out = [
            f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.height - self.bottom}" stroke="#333"/>'
        ]
        for t in ticks if ticks is not None else nice_ticks(self.y0, self.y1):
            y = self.y(t)
            out.append(
                f'<line x1="{self.left - 4}" y1="{y:.1f}" x2="{self.width - self.right}" y2="{y:.1f}" stroke="#ddd"/>'
            )
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(tick_text(t))}</text>')
        mid = (self.top + self.height - self.bottom) / 2
        out.append(
            f'<text x="12" y="{mid:.1f}" transform="rotate(-90 12 {mid:.1f})" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
        return out

    def x_axis(self, label: str, ticks: list[float] | None = None, tick_text=fmt) -> list[str]:
        base = self.height - self.bottom
        out = [f'<line x1="{self.left}" y1="{base}" x2="{self.width - self.right}" y2="{base}" stroke="#333"/>']
        for t in ticks if ticks is not None else nice_ticks(self.x0, self.x1):
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{escape(tick_text(t))}</text>')
        out.append(
            f'<text x="{(self.left + self.width - self.right) / 2:.1f}" y="{self.height - 6}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
        return out


def _padded(lo: float, hi: float, include_zero: bool = False) -> tuple[float, float]:
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return (lo if include_zero and lo == 0 else lo - pad), hi + pad


def bar_chart(
    labels: list[str],
    values: list[float],
    title: str,
    y_label: str,
    errors: list[tuple[float, float] | None] | None = None,
    line: tuple[float, str] | None = None,
    width: int = 420,
    height: int = 260,
) -> str:
    """Vertical bars, optional error bars (absolute low/high) and one horizontal reference line."""
    lows = [e[0] for e in errors or [] if e] + list(values) + ([line[0]] if line else [])
    highs = [e[1] for e in errors or [] if e] + list(values) + ([line[0]] if line else [])
    frame = Frame(width, height, (0, max(len(values), 1)), _padded(min(lows), max(highs), include_zero=True), bottom=36)
    out = frame.open(title) + frame.y_axis(y_label)
    base = frame.height - frame.bottom
    out.append(f'<line x1="{frame.left}" y1="{base}" x2="{width - frame.right}" y2="{base}" stroke="#333"/>')
    slot = (width - frame.left - frame.right) / max(len(values), 1)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = frame.left + i * slot + slot * 0.15
        top, bottom = sorted((frame.y(value), frame.y(0)))
        out.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" height="{bottom - top:.1f}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)}: {fmt(value)}</title></rect>'
        )
        # Name and value under the bar: above it, the value would collide with the error bar.
        out.append(f'<text x="{x + slot * 0.35:.1f}" y="{base + 14}" text-anchor="middle">{escape(label)}</text>')
        out.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{base + 27}" text-anchor="middle" font-weight="600">'
            f"{fmt(value)}</text>"
        )
        if errors and errors[i]:
            lo, hi = errors[i]
            cx = x + slot * 0.35
            out.append(
                f'<line x1="{cx:.1f}" y1="{frame.y(lo):.1f}" x2="{cx:.1f}" y2="{frame.y(hi):.1f}" '
                'stroke="#000" stroke-width="1.5"/>'
            )
    if line:
        out += frame.reference_line(*line)
    out.append("</svg>")
    return "\n".join(out)


def scatter(
    points: list[tuple[float, float, str]],
    title: str,
    x_label: str,
    y_label: str,
    connect: bool = False,
    line: tuple[float, str] | None = None,
    width: int = 420,
    height: int = 260,
) -> str:
    """Labelled points, optionally joined in order, with an optional horizontal reference line."""
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] + ([line[0]] if line else []) or [0.0]
    frame = Frame(width, height, _padded(min(xs), max(xs)), _padded(min(ys), max(ys)))
    out = frame.open(title) + frame.y_axis(y_label) + frame.x_axis(x_label)
    if connect and len(points) > 1:
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y, _ in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="#8C8C8C"/>')
    if line:
        out += frame.reference_line(*line)
    labels: dict[tuple[float, float], list[str]] = {}  # points within a few pixels share one label
    anchors: dict[str, tuple[float, float]] = {}
    for x, y, label in points:
        px, py = frame.x(x), frame.y(y)
        near = next((a for a in labels if abs(a[0] - px) < 14 and abs(a[1] - py) < 10), None)
        if near is None:
            labels[(px, py)] = [label]
            anchors[label] = (px, py)
        else:
            labels[near].append(label)
    for i, (x, y, label) in enumerate(points):
        px, py = frame.x(x), frame.y(y)
        out.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{PALETTE[i % len(PALETTE)]}">'
            f"<title>{escape(label)}: {fmt(x)}, {fmt(y)}</title></circle>"
        )
        if label in anchors:
            shared = labels[anchors[label]]
            anchor = "end" if px > width * 0.7 else "start"
            dx = -7 if anchor == "end" else 7
            out.append(halo_text(px + dx, py - 6, ", ".join(shared), anchor=anchor))
    out.append("</svg>")
    return "\n".join(out)


def sensitivity_strip(
    names: list[str], values: list[float], worst: set[str], title: str, width: int = 860, height: int = 240
) -> str:
    """One thin bar per node in graph order (SQNR, dB); the worst nodes in red."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    frame = Frame(width, height, (0, max(len(values), 1)), (0.0, max(finite) * 1.08 or 1.0), bottom=30)
    out = frame.open(title) + frame.y_axis("SQNR (dB), higher is better")
    base = frame.height - frame.bottom
    slot = (width - frame.left - frame.right) / max(len(values), 1)
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        top = frame.y(max(value, 0.0))
        color = "#C44E52" if name in worst else "#4C72B0"
        out.append(
            f'<rect x="{frame.left + i * slot:.2f}" y="{top:.1f}" width="{max(slot * 0.85, 0.5):.2f}" '
            f'height="{base - top:.1f}" fill="{color}"><title>{escape(name)}: {value:.1f} dB</title></rect>'
        )
    out.append(
        f'<text x="{(frame.left + width - frame.right) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        "quantized nodes in graph order (red: most sensitive)</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def histogram_plot(
    lo: float,
    hi: float,
    counts: list[int],
    markers: list[tuple[float, str, str]],
    title: str,
    width: int = 420,
    height: int = 240,
) -> str:
    """A calibration histogram on a log count axis, with vertical lines at the candidate range ends."""
    logs = [math.log10(c) if c > 0 else 0.0 for c in counts] or [0.0]
    x_lo = min([lo] + [m[0] for m in markers])
    x_hi = max([hi] + [m[0] for m in markers])
    frame = Frame(width, height, _padded(x_lo, x_hi), (0.0, max(logs) * 1.1 or 1.0))
    ticks = list(range(int(max(logs)) + 1))
    out = frame.open(title) + frame.y_axis("count", [float(t) for t in ticks], lambda t: f"1e{int(t)}")
    out += frame.x_axis("activation value")
    width_bin = (hi - lo) / max(len(counts), 1)
    base = frame.height - frame.bottom
    for i, value in enumerate(logs):
        if counts[i] == 0:
            continue
        x0, x1 = frame.x(lo + i * width_bin), frame.x(lo + (i + 1) * width_bin)
        top = frame.y(value)
        out.append(
            f'<rect x="{x0:.2f}" y="{top:.1f}" width="{max(x1 - x0, 0.5):.2f}" height="{base - top:.1f}" '
            f'fill="#4C72B0"/>'
        )
    legend = 0
    for value, text, color in markers:
        x = frame.x(value)
        out.append(
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{base}" stroke="{color}" '
            'stroke-dasharray="4,2" stroke-width="1.5"/>'
        )
        if text:  # a legend in the top left corner: range lines often fall on top of each other
            y = frame.top + 10 + 13 * legend
            out.append(
                f'<line x1="{frame.left + 6}" y1="{y - 4}" x2="{frame.left + 22}" y2="{y - 4}" '
                f'stroke="{color}" stroke-dasharray="4,2" stroke-width="1.5"/>'
            )
            out.append(halo_text(frame.left + 26, y, text, color=color))
            legend += 1
    out.append("</svg>")
    return "\n".join(out)
