"""HTML pieces of the review page: tables, plots as data URLs, colour bars (no trame, no MRML writes)."""
from __future__ import annotations

import base64
import html


def table_html(header: list[str], rows: list[list[str]], caption: str = "", css_class: str = "ss-table") -> str:
    """A plain HTML table (every cell escaped)."""
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{css_class}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def colour_stops(color_node, n: int = 9) -> list[str]:
    """n CSS colours sampled evenly along an MRML colour node (its lookup table from index 0 to the last)."""
    count = max(int(color_node.GetNumberOfColors()), 1)
    out = []
    for i in range(n):
        k = round(i * (count - 1) / max(n - 1, 1))
        rgba = [0.0, 0.0, 0.0, 1.0]
        color_node.GetColor(k, rgba)
        out.append("rgb({},{},{})".format(*(int(round(255 * c)) for c in rgba[:3])))
    return out


def colour_bar_css(stops: list[str]) -> str:
    return f"background: linear-gradient(to right, {', '.join(stops)}); height: 12px; border: 1px solid #888;"


def fmt(v: float) -> str:
    return f"{v:.3g}"
