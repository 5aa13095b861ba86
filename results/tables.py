"""How a results table reaches its docs page: every results/*/table.py prints its table from the JSON beside it,
and with --write puts it into its page between the markers <!-- table:NAME --> and <!-- /table:NAME -->.
tests/test_docs.py checks that each page holds exactly what its script prints."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def curve_at(points, x):
    """Accuracy of a baseline curve [(max_iou, acc), ...] at max-IoU x, linearly interpolated (None outside it)."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def markers(name: str) -> tuple[str, str]:
    return f"<!-- table:{name} -->", f"<!-- /table:{name} -->"


def section(page: Path, name: str) -> str:
    """The text a page holds between the table's markers."""
    text = page.read_text()
    start, end = markers(name)
    if start not in text or end not in text:
        raise ValueError(f"{page} has no {start} ... {end} markers")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def write(page: Path, name: str, table: str) -> None:
    text = page.read_text()
    start, end = markers(name)
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    page.write_text(f"{before}{start}\n{table.strip()}\n{end}{after}")


def main(tables: dict[str, tuple[Path, Callable[[], str]]]) -> None:
    """python table.py [NAME] [--write]: print the named table (all of them without a name), or write it into its
    page."""
    args = [a for a in sys.argv[1:] if a != "--write"]
    for name, (page, build) in tables.items():
        if args and name not in args:
            continue
        text = build()
        if "--write" in sys.argv:
            write(page, name, text)
            print(f"{name}: written into {page.relative_to(DOCS.parent)}")
        else:
            print(text)
