"""The demo's log capture: the live view owns the terminal, so scaler warnings become one-line notes
and INFO and above go to demo.log, stamped with simulated time.

Part of `runner-scaler demo` (toolkit.devtools.demo); imports the standard library and the demo's clock.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.devtools.demo_clock import AcceleratedClock
from toolkit.devtools.demo_report import clock_text


class _NoteHandler(logging.Handler):
    """Warnings and errors of the scaler become one-line notes under the live view."""

    _KEYS = ("pool", "instance_id", "job_id", "handler", "reason", "error")

    def __init__(self, notes: deque[str]) -> None:
        super().__init__(logging.WARNING)
        self._notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        extras = " ".join(f"{k}={_first_line(getattr(record, k))}" for k in self._KEYS if hasattr(record, k))
        self._notes.append(f"{record.levelname.lower()}: {_first_line(record.getMessage())} {extras}"[:160])


def _first_line(value: object) -> str:
    """A note is one line: tracebacks and multi-line errors stay in demo.log."""
    lines = str(value).strip().splitlines()
    return lines[0] if lines else ""


class _WithContext(logging.Formatter):
    """demo.log's line: the message, then the record's context (pool, error, ...), so a "reconcile failed"
    line says which pool and why; a multi-line error keeps its lines (demo.log is where tracebacks go)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={getattr(record, k)}" for k in _NoteHandler._KEYS if hasattr(record, k))
        return f"{line} {extras}" if extras else line


class _SimTime(logging.Filter):
    """Stamps each record with the simulated time, which is what the log reader compares with the timeline."""

    def __init__(self, clock: AcceleratedClock) -> None:
        super().__init__()
        self._clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.sim = clock_text(self._clock.elapsed())
        return True


@contextmanager
def platform_quiet(notes: deque[str], log_path: Path, clock: AcceleratedClock) -> Iterator[None]:
    """Keep the terminal for the live view: scaler warnings go to notes, INFO and above to `log_path`,
    moto's request log is dropped and EMF metrics (printed to stdout by powertools) are switched off."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root, scaler, werkzeug = (
        logging.getLogger(),
        logging.getLogger("chalicelib"),
        logging.getLogger("werkzeug"),
    )
    notes_handler = _NoteHandler(notes)
    file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    file_handler.addFilter(_SimTime(clock))
    file_handler.setFormatter(_WithContext("sim %(sim)s %(levelname)s %(name)s: %(message)s"))
    saved = (scaler.level, werkzeug.level, os.environ.get("POWERTOOLS_METRICS_DISABLED"))
    root.addHandler(notes_handler)
    scaler.addHandler(file_handler)
    scaler.setLevel(logging.INFO)
    werkzeug.setLevel(logging.ERROR)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    try:
        yield
    finally:
        root.removeHandler(notes_handler)
        scaler.removeHandler(file_handler)
        file_handler.close()
        scaler.setLevel(saved[0])
        werkzeug.setLevel(saved[1])
        if saved[2] is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = saved[2]
