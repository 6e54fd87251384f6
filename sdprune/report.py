"""The one place that talks to the user: progress, tables, messages, JSON.

The library takes a ``Reporter`` and never prints. Human output goes to stderr (progress,
messages) and stdout (tables); with ``json_mode=True`` stdout carries exactly one JSON
object and nothing else. On a terminal progress is a rich bar; when piped it is plain lines.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence


class Reporter:
    """Where a command's output goes.

    ``quiet`` silences messages, progress and tables (warnings still show); ``json_mode``
    keeps stdout for ``result``'s one JSON object; ``rich`` forces the terminal bar on or
    off (default: on when stderr is a terminal). ``silent`` shows nothing at all, warnings
    and result included: the other ranks of a torchrun run, where rank 0 speaks for all.
    """

    def __init__(self, quiet: bool = False, json_mode: bool = False, rich: bool | None = None,
                 silent: bool = False) -> None:
        from rich.console import Console

        self.silent = silent
        self.quiet = quiet or silent
        self.json_mode = json_mode
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False, soft_wrap=True)
        self.rich = self.err.is_terminal if rich is None else rich
        self._notes: list[str] = []

    # -- messages ---------------------------------------------------------------------
    def info(self, message: str) -> None:
        """A progress message on stderr, one line, verbatim (text such as ``[0.5]`` is not rich markup)."""
        self._flush()
        if not self.quiet:
            self.err.print(message, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A warning on stderr, shown even when quiet."""
        self._flush()
        if self.silent:
            return
        self.err.print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)

    def note(self, message: str) -> None:
        """An ``info`` message held back until the command shows something else (a message or
        progress): a command that fails first ends with its error alone, on one line."""
        self._notes.append(message)

    def _flush(self) -> None:
        notes, self._notes = self._notes, []
        for message in notes:
            self.info(message)

    # -- progress ---------------------------------------------------------------------
    @contextmanager
    def progress(self, description: str, total: int) -> Iterator["Progress"]:
        """A progress bar of ``total`` steps for the scope (a no-op when quiet or piped)."""
        self._flush()
        if self.quiet or not self.rich:
            yield Progress()  # piped or quiet: the per-epoch lines from info() are the progress
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                          console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total, status="")
            yield Progress(bar, task)

    # -- results ----------------------------------------------------------------------
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              caption: str | None = None) -> None:
        """A table on stdout (not in JSON mode or when quiet); numbers are formatted by ``fmt``."""
        if self.json_mode or self.quiet:
            return
        from rich.table import Table

        table = Table(title=title, caption=caption)
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*[fmt(v) for v in row])
        self.out.print(table)

    def bars(self, title: str, labels: Sequence[str], values: Sequence[float], width: int = 30) -> None:
        """A compact horizontal bar per value in [0, 1] (e.g. survival per block)."""
        if self.json_mode or self.quiet:
            return
        lines = [title]
        pad = max((len(s) for s in labels), default=0)
        for label, v in zip(labels, values):
            n = int(round(max(0.0, min(1.0, v)) * width))
            lines.append(f"  {label:<{pad}} {'█' * n}{'·' * (width - n)} {v:.3f}")
        self.out.print("\n".join(lines), markup=False)

    def result(self, obj: dict[str, Any]) -> None:
        """The command's machine-readable result: printed only in --json mode."""
        if self.json_mode and not self.silent:
            sys.stdout.write(json_text(obj) + "\n")  # strict JSON: NaN and infinities as null
            sys.stdout.flush()


class Progress:
    """Handle for one progress bar (a no-op without one): ``update(advance, status)``."""

    def __init__(self, bar=None, task=None) -> None:
        self.bar, self.task = bar, task

    def update(self, advance: int = 1, status: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, status=status)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None and tensors/arrays as lists (a copy)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return json_safe(obj.tolist())
    return str(obj)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON for ``obj`` (see ``json_safe``); never contains NaN or Infinity.

    The one way sdprune writes JSON, ``--json`` output and every JSON file alike: Python's
    ``json`` would write a bare ``NaN``, which JavaScript, jq and most parsers reject.
    """
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits for floats, 1.23M-style for large integers."""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return human(v)
    return str(v)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"

