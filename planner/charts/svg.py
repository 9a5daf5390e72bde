"""A small, deterministic SVG writer: the drawing primitives the plan charts need, nothing else.

Why not matplotlib: importing it costs about half a second and 40 MB of dependencies for three
charts of rectangles, lines and text; its SVG output embeds a date and random clip-path ids unless
configured, which would break golden tests. These charts need exact control of what is drawn
(each number drawn is a plan's number, and the tests read them back from `data-*` attributes),
so a writer of a few primitives is the simpler honest choice. Same input, same bytes.
"""

from __future__ import annotations

from html import escape

FONT = "font-family:DejaVu Sans,Helvetica,Arial,sans-serif"

# one colour per memory term, distinguishable for the common colour-vision deficiencies
# (Okabe-Ito palette), in the order the terms stack
TERM_COLOURS = {
    "weights": "#0072B2",
    "kv_cache": "#E69F00",
    "state": "#CC79A7",
    "activations": "#009E73",
    "overhead": "#999999",
    "non_torch": "#56B4E9",
    "activation_peak": "#009E73",
    "cudagraph": "#D55E00",
}
TEXT = "#222222"
GRID = "#dddddd"
USABLE = "#C0392B"


def num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros: stable across platforms."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def attrs(**values) -> str:
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        text = num(value) if isinstance(value, float) else str(value)
        parts.append(f'{name}="{escape(text, quote=True)}"')
    return " ".join(parts)


class Svg:
    """Elements appended in drawing order; `text()` returns the whole document."""

    def __init__(self, width: int, height: int, title: str, chart: str):
        self.width, self.height = width, height
        self.parts: list[str] = []
        self.title, self.chart = title, chart

    def rect(self, x, y, w, h, fill, **extra) -> None:
        box = attrs(x=float(x), y=float(y), width=float(max(w, 0)), height=float(max(h, 0)), fill=fill, **extra)
        self.parts.append(f"<rect {box}/>")

    def line(self, x1, y1, x2, y2, stroke, width=1.0, dash=None, **extra) -> None:
        ends = attrs(x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2))
        look = attrs(stroke=stroke, stroke_width=float(width), stroke_dasharray=dash, **extra)
        self.parts.append(f"<line {ends} {look}/>")

    def polyline(self, points, stroke, width=2.0, **extra) -> None:
        coords = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        self.parts.append(
            f"<polyline {attrs(points=coords, fill='none', stroke=stroke, stroke_width=float(width), **extra)}/>"
        )

    def circle(self, x, y, r, fill, **extra) -> None:
        self.parts.append(f"<circle {attrs(cx=float(x), cy=float(y), r=float(r), fill=fill, **extra)}/>")

    def label(self, x, y, text, size=12, anchor="start", weight=None, fill=TEXT, rotate=None, **extra) -> None:
        transform = f"rotate({rotate} {num(x)} {num(y)})" if rotate else None
        style = FONT + (f";font-weight:{weight}" if weight else "")
        where = attrs(x=float(x), y=float(y), transform=transform)
        look = attrs(font_size=size, text_anchor=anchor, fill=fill, style=style, **extra)
        self.parts.append(f"<text {where} {look}>{escape(str(text))}</text>")

    def group(self, element: str) -> None:
        self.parts.append(element)

    def text(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" {attrs(width=self.width, height=self.height)} '
            f'viewBox="0 0 {self.width} {self.height}" role="img" {attrs(data_chart=self.chart)}>'
        )
        body = [head, f"<title>{escape(self.title)}</title>", '<rect width="100%" height="100%" fill="#ffffff"/>']
        return "\n".join([*body, *self.parts, "</svg>"]) + "\n"


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 x 10^k) giving about `ticks` intervals over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** int(f"{raw:e}".split("e")[1])
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def legend(svg: Svg, x: float, y: float, items: list[tuple[str, str]], size: int = 12) -> float:
    """Coloured squares with labels in one row; returns the x where it ended."""
    for colour, text in items:
        svg.rect(x, y - size + 2, size, size, colour)
        svg.label(x + size + 4, y, text, size=size)
        x += size + 10 + 7 * len(text)
    return x
