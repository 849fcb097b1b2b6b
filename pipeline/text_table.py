"""Tables for the terminal (`caches`, `runs`): columns padded to their widest cell, the last one left
ragged; every cell escaped (one printable line that reads back), since names and values may come from
files anyone wrote (a newline in a folder name or a metrics.json would otherwise forge a line of the table)."""
from __future__ import annotations

import datetime


def escaped(text) -> str:
    """`text` (a path, say) as one printable line that reads back exactly: a backslash as \\\\, TAB, newline
    and carriage return as \\t, \\n, \\r, any other unprintable character (an escape, a byte of a file
    name that is not UTF-8) as its bytes, \\xNN; the rest as it is (so the escapes, read as bytes and
    decoded as file names are, give `text` back)."""
    s = str(text)
    if s.isprintable() and "\\" not in s:
        return s
    named = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(named[c] if c in named else c if c.isprintable() else
                   "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogateescape")) for c in s)


def aligned(rows: list) -> list:
    """Lines of `rows` (lists of cells, the first row the header), columns two spaces apart; each cell one
    printable line that reads back (`escaped`)."""
    cells = [[escaped(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in cells]


def utc(seconds: float) -> str:
    """A file time (seconds since the epoch) as the caches' own `created` is written: ISO 8601 in UTC, to the second."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def file_size(n: float) -> str:
    """Bytes as a file's size is read: `7.74 GB`, `6.6 MB`, `1.20 TB`."""
    if n >= 999.995e9:                                                       # never "1000.00 GB"
        return f"{n / 1e12:,.2f} TB"
    return f"{n / 1e9:.2f} GB" if n >= 999.95e6 else f"{n / 1e6:.1f} MB"      # never "1000.0 MB"


def minute(iso: str) -> str:
    """An ISO time as a table shows it: `2026-12-03 11:55`."""
    return iso[:16].replace("T", " ")
