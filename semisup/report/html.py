"""Plain HTML with inline CSS: no scripts, no external URLs; figures embedded as base64 data URIs (the
same PNGs also lie beside report.html). Every piece of text from a run goes through escape()."""
from __future__ import annotations

import base64
import struct
from html import escape

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d1f23; background: #fff; margin: 0 auto; padding: 20px 28px 48px; max-width: 1320px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 30px 0 8px; padding-top: 10px; border-top: 2px solid #e3e6ea; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #5b6270; margin: 0 0 14px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 3px 10px; text-align: left; }
th { background: #f4f6f8; font-weight: 600; }
td.num { text-align: right; }
.facts { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0 14px; }
.fact { background: #f4f6f8; border-radius: 6px; padding: 6px 12px; min-width: 110px; }
.fact b { display: block; font-size: 18px; }
.fact span { color: #5b6270; font-size: 12px; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eef0f2; }
figcaption { color: #5b6270; font-size: 12.5px; margin-top: 2px; }
.note { background: #fff7e0; border-left: 3px solid #f0b400; padding: 4px 10px; margin: 6px 0; }
.pair { display: flex; flex-wrap: wrap; gap: 0 20px; align-items: flex-start; }
.pair figure { min-width: 0; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
pre { background: #f4f6f8; padding: 8px 12px; font-size: 12px; max-height: 420px; overflow: auto; margin: 4px 0; }
a { color: #1a5fb4; }
"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return struct.unpack(">II", data[16:24])


def figure(key: str, data: bytes, rel_path: str, caption: str) -> str:
    w, h = png_size(data)
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    # in a .pair row, widths in proportion to aspect ratios give the figures one common height
    flex = f"flex: {w / h:.3f} 1 {320 * w / h:.0f}px"
    return (f'<figure id="fig-{escape(key)}" style="{flex}"><img data-figure="{escape(key)}" src="{src}" '
            f'width="{w}" height="{h}" alt="{escape(caption)}"><figcaption>{escape(caption)} '
            f'(<a href="{escape(rel_path)}">{escape(rel_path)}</a>)</figcaption></figure>')


def table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{escape(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(items: list[tuple[str, str]]) -> str:
    return '<div class="facts">' + "".join(f'<div class="fact"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
                                           for k, v in items) + "</div>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def page(title: str, subtitle: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n<h1>{escape(title)}</h1><p class=\"sub\">{escape(subtitle)}</p>\n"
            + "\n".join(body) + "\n</body></html>\n")
