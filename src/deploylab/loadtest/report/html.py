"""HTML building blocks for the reports: the page with its inline style, tables, numbers,
verdict badges and plot figures. Everything is escaped here; nothing refers outside the file."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

CSS = """
:root { --ok: #1b7f3b; --bad: #c62828; --unknown: #8a6d00; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; color: #1a1a1a;
       line-height: 1.4; }
h1 { font-size: 1.6rem; margin: 0.2em 0; }
h2 { font-size: 1.25rem; margin: 1.6em 0 0.5em; border-bottom: 1px solid var(--line);
     padding-bottom: 0.2em; }
h3 { font-size: 1.05rem; margin: 1.2em 0 0.4em; }
.muted { color: var(--muted); }
.verdict { border-radius: 8px; padding: 12px 18px; margin: 12px 0 8px; font-size: 1.35rem;
           font-weight: 700; color: #fff; }
.verdict.met { background: var(--ok); } .verdict.missed { background: var(--bad); }
.verdict.unknown { background: var(--unknown); }
.verdict small { display: block; font-size: 0.95rem; font-weight: 400; opacity: 0.95; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.92rem; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f6f6; font-weight: 600; }
td.pass, span.pass { color: var(--ok); font-weight: 600; }
td.fail, span.fail { color: var(--bad); font-weight: 600; }
td.na { color: var(--unknown); }
td.better { color: var(--ok); } td.worse { color: var(--bad); }
table.kv td, table.errors td:last-child { text-align: left; }
table.kv td:first-child { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 150px; }
.card b { display: block; font-size: 1.3rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
figure.plot { margin: 8px 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
figure.plot svg { width: 100%; height: auto; display: block; }
figure.plot figcaption { font-size: 0.85rem; color: var(--muted); margin-top: 2px; }
pre { background: #f6f6f6; padding: 10px; overflow: auto; font-size: 0.82rem;
      max-height: 420px; border-radius: 6px; }
details summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"""


def esc(value: object) -> str:
    """HTML-escape anything printable."""
    return html.escape(str(value), quote=True)


def num(value: float | int | None, digits: int = 1) -> str:
    """A number for a table cell; '-' for nothing measured."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "-"
    if abs(value) >= 10000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage."""
    return "-" if value is None else f"{100 * value:.{digits}f} %"


Cell = str | tuple[str, str]  # html, or (html, css class)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """A table; cells are HTML already (escape text with `esc`). A cell given as
    `(html, css_class)` gets that class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):  # a Cell with a class
                cells.append(f'<td class="{esc(cell[1])}">{cell[0]}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def plot(plot_id: str, svg: str, caption: str) -> str:
    """A chart with its caption; `data-plot` marks it for tests and tools."""
    return (
        f'<figure class="plot" id="plot-{esc(plot_id)}" data-plot="{esc(plot_id)}">{svg}'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def verdict_banner(passed: bool | None, detail: str) -> str:
    """The SLO verdict, up front."""
    cls, word = {True: ("met", "SLO met"), False: ("missed", "SLO missed")}.get(
        passed,  # type: ignore[arg-type]
        ("unknown", "SLO verdict unknown"),
    )
    return (
        f'<div class="verdict {cls}" id="slo-verdict" data-verdict="{cls}">{word}'
        f"<small>{esc(detail)}</small></div>"
    )


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
