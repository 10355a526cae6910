"""Human output of the inspection commands, with ``rich``: tables and coloured lines on a terminal,
plain aligned columns without colour codes when piped (one row a line, never wrapped), so ``grep``
and ``awk`` work on it. ``--json`` does not come here.

Every value is passed to ``rich`` as :class:`rich.text.Text`, never as markup: a ``[red]`` or an
escape sequence in an id or in state is printed as written (control characters escaped by
:func:`shown`), it cannot style or move the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 100_000  # columns when stdout is not a terminal: a row is one line, however long

# styles by meaning; a terminal shows them, a pipe does not
STYLES = {
    "finished": "green",
    "interrupted": "yellow",
    "errored": "bold red",
    "added": "green",
    "removed": "red",
    "changed": "yellow",
    "error": "bold red",
    "interrupt": "yellow",
    "dim": "dim",
    "title": "bold",
}


def console() -> Console:
    """A console on the current ``sys.stdout`` (tests swap it), colour only on a terminal."""
    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        highlight=False,
        emoji=False,
        markup=False,
        width=None if tty else PIPED_WIDTH,
        no_color=not tty,
        color_system="auto" if tty else None,
    )


def shown(value: Any, width: int | None = None) -> str:
    """A value for a terminal: control characters escaped (an id or value cannot move the cursor
    or change colours), cut to ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 0)] + "…"
    return text


def line(text: str = "", style: str | None = None) -> None:
    """Print one line (already :func:`shown` where it holds values), in ``style`` on a terminal."""
    out = console()
    out.print(Text(text, style=STYLES.get(style or "", "")), soft_wrap=True)
    sys.stdout.flush()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int = 60,
    styles: Sequence[str | None] | None = None,
) -> None:
    """Print ``rows`` under ``headers``; each cell :func:`shown` and cut to ``width``. ``styles``:
    one style name per row (e.g. its status), or ``None``."""
    out = console()
    tty = out.is_terminal
    grid = Table(
        box=box.SIMPLE_HEAD if tty else None,
        show_header=True,
        header_style="bold" if tty else "",
        pad_edge=tty,
        padding=(0, 1) if tty else (0, 2, 0, 0),
        show_edge=tty,
    )
    for h in headers:
        grid.add_column(h if tty else h.upper(), no_wrap=not tty, overflow="fold")
    for i, row in enumerate(rows):
        style = STYLES.get(styles[i] or "", "") if styles else ""
        grid.add_row(*(Text(shown("" if c is None else c, width)) for c in row), style=style)
    if tty:
        out.print(grid)
    else:  # without the padding rich leaves at the end of each line
        with out.capture() as captured:
            out.print(grid)
        sys.stdout.write("".join(f"{row.rstrip()}\n" for row in captured.get().splitlines()))
    sys.stdout.flush()
