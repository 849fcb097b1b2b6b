"""Tables for the terminal (`caches`, `runs`): columns padded to their widest cell, the last one left
ragged; every cell made printable, since names and values may come from files anyone wrote (a newline
in a folder name or a metrics.json would otherwise forge a line of the table)."""
from __future__ import annotations


def printable(text) -> str:
    """`text` as one printable line: any other character (newline, TAB, escape) shown as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def aligned(rows: list) -> list:
    """Lines of `rows` (lists of cells, the first row the header), columns two spaces apart."""
    cells = [[printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in cells]
