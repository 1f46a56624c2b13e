"""The CLI's rich consoles: on a terminal as rich draws them; elsewhere (a log, CI, a pipe) as wide as the
content, so tables keep whole pool and machine names instead of cutting them at 80 columns ("linux-…").

Text a user, a file or an error wrote is printed with `markup=False` or `rich.markup.escape`, never as markup:
rich would swallow `[pools.hosts]` as a style tag (rich docs, "Console Markup": a tag is `[` + a style name;
escape with a backslash or `rich.markup.escape`). May import rich only.
"""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions

#: Columns when the output is not a terminal and COLUMNS is unset: wider than any line the CLI prints, so no
#: table column is cut; tables and text are only as wide as their content (nothing expands to this width).
PIPED_WIDTH = 1000


class CliConsole(Console):
    """A `Console` that stops wrapping and truncating at 80 columns when its file is not a terminal.

    rich falls back to 80 columns when it cannot ask a terminal, and reads `COLUMNS` first (rich
    `rich/console.py`, `Console.size`); `COLUMNS`, when set, still wins here too.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._writes_to_a_tty():
            return size
        # COLUMNS is read now, not when the console was built: a module-level console outlives the environment
        # it was imported in (a test runner's isolated env, a parent shell's width).
        columns = os.environ.get("COLUMNS", "")
        return ConsoleDimensions(int(columns) if columns.isdigit() else PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def _writes_to_a_tty(self) -> bool:
        """Whether the file itself is a terminal: rich's `is_terminal` also says yes when FORCE_COLOR or
        TTY_COMPATIBLE is set (rich `Console.is_terminal`): a request for colour, not for an 80-column cut."""
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty is not None and isatty())
        except ValueError:  # a closed file
            return False
