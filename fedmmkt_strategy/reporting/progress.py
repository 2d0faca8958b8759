"""Progress of the long loops, alike on a terminal and in a log: pre-training phases, a round's
generation and fine-tuning, the runs of ``fedmmkt compare`` and of the experiment and benchmark scripts.

On a terminal (stderr is a TTY) a loop draws a tqdm bar with its elapsed time and an estimate of
what is left, and console log lines are written above the open bars rather than through them.
Anywhere else (a log file, CI, the ServerApp, whose output Flower captures) a bar would write a
carriage-return update per refresh, so the same loop logs a plain line through Flower's logger at
most every `every` seconds, and a last one when it ends if it ran that long. Both show the same
estimate (`remaining_seconds`, or `remaining_by_kind` when units differ in cost), so a bar and a
log line of one loop agree.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from logging import INFO
from types import TracebackType
from typing import TypeVar

from flwr.common.logger import FLOWER_LOGGER, log
from tqdm import tqdm

T = TypeVar("T")

#: The bar of every loop: name, percentage, bar, units done of total, elapsed and (as the postfix) left.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed{postfix}]"
#: Seconds between two log lines of a loop of short units (a training loop's steps).
EVERY_S = 30.0


def remaining_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Mean time of the finished units times the units left (None before the first has finished).

    The mean over the whole loop, not a recent rate: the steps of a training loop cost the same,
    and the first ones (allocator, lazy initialisation) are too few to bias it for long."""
    if done <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def remaining_by_kind(finished: Sequence[tuple[Hashable, float]], pending: Sequence[Hashable]) -> float | None:
    """Each pending unit costs the mean duration of the finished units of its kind, or of all the
    finished units while none of its kind has finished (None before any has).

    The runs of ``fedmmkt compare`` differ by orders of magnitude (a `local` run takes seconds, a
    `fedmmkt` run minutes), while one variant costs about the same on every seed: by kind, the
    estimate is close from the second seed on, where a plain mean is off by the mix that is left."""
    if not finished:
        return None
    by_kind: dict[Hashable, list[float]] = {}
    for kind, seconds in finished:
        by_kind.setdefault(kind, []).append(seconds)
    overall = sum(seconds for _, seconds in finished) / len(finished)
    return sum(sum(by_kind[k]) / len(by_kind[k]) if k in by_kind else overall for k in pending)


def format_seconds(seconds: float | None) -> str:
    """``MM:SS`` or ``H:MM:SS`` as tqdm writes its elapsed time, ``?`` when unknown."""
    return "?" if seconds is None else tqdm.format_interval(seconds)


def progress_line(desc: str, done: int, total: int, unit: str, elapsed: float, left: float | None) -> str:
    """The log line of a loop: ``judge: 24/60 epoch (40 %), 00:12 elapsed, ~00:18 left``, and once
    every unit is done ``judge: 60/60 epoch (100 %) in 00:30``."""
    head = f"{desc}: {done}/{total} {unit} ({100 * done / total if total else 100:.0f} %)"
    if done >= total:
        return f"{head} in {format_seconds(elapsed)}"
    return f"{head}, {format_seconds(elapsed)} elapsed, ~{format_seconds(left)} left"


def on_terminal() -> bool:
    """Whether bars can be drawn: stderr, where tqdm writes, is a TTY."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """One loop of `total` units, shown as a bar on a terminal and as log lines elsewhere.

    Use it as a context manager and call `advance` after each finished unit (or `track` for a loop
    whose body is one unit).

    Parameters
    ----------
    desc : str
        The loop's name, first on its bar or line: a phase ("judge", "denoiser") or a command ("compare").
    total : int
        The number of units.
    unit : str, default "step"
        What one unit is: "step", "epoch", "batch", "run".
    enabled : bool, default True
        False shows nothing (``fedmmkt pretrain --quiet``; library calls that did not ask for progress).
    every : float, default `EVERY_S`
        In a log, the least seconds between two lines; 0 logs a line per unit (loops of long runs).
    kinds : sequence, optional
        The kind of each unit, in order, to estimate what is left by kind (`remaining_by_kind`); by
        default every unit costs the same (`remaining_seconds`).
    terminal : bool, optional
        Draw a bar (True) or log lines (False); by default a bar when stderr is a TTY (`on_terminal`).
    clock : callable, default `time.monotonic`
        Seconds; tests pass a fake one.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "step",
        *,
        enabled: bool = True,
        every: float = EVERY_S,
        kinds: Sequence[Hashable] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if kinds is not None and len(kinds) != total:
            raise ValueError(f"{desc}: {len(kinds)} kinds for {total} units")
        self.desc, self.total, self.unit, self.enabled, self.every = desc, total, unit, enabled, every
        self.kinds, self.terminal, self.clock = kinds, terminal, clock
        self.done = 0
        self.finished: list[tuple[Hashable, float]] = []
        self._bar: tqdm | None = None
        self._stack = ExitStack()

    def __enter__(self) -> Progress:
        self.started = self._last_unit = self._last_line = self.clock()
        if self.enabled and (on_terminal() if self.terminal is None else self.terminal):
            self._stack.enter_context(_logs_above_bars())
            self._bar = self._stack.enter_context(
                tqdm(
                    total=self.total,
                    desc=self.desc,
                    unit=self.unit,
                    bar_format=BAR_FORMAT,
                    leave=None,  # a top-level bar stays, a nested one (a round's, inside compare's) goes
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            )
        return self

    def remaining(self) -> float | None:
        """The estimate of what is left, from the units finished so far."""
        if self.kinds is not None:
            return remaining_by_kind(self.finished, self.kinds[self.done :])
        return remaining_seconds(self._last_unit - self.started, self.done, self.total)

    def advance(self, n: int = 1) -> None:
        """`n` more units are finished."""
        now = self.clock()
        if self.kinds is not None:
            self.finished += [(kind, (now - self._last_unit) / n) for kind in self.kinds[self.done : self.done + n]]
        self.done, self._last_unit = self.done + n, now
        if self._bar is not None:
            left = f"~{format_seconds(self.remaining())} left" if self.done < self.total else ""
            self._bar.set_postfix_str(left, refresh=False)
            self._bar.update(n)
        elif self.enabled and self.done < self.total and now - self._last_line >= self.every:
            self._log(now)

    def _log(self, now: float) -> None:
        self._last_line = now
        log(INFO, progress_line(self.desc, self.done, self.total, self.unit, now - self.started, self.remaining()))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stack.close()
        now = self.clock()
        if self._bar is None and self.enabled and exc_type is None and now - self.started >= self.every:
            self._log(now)


def track(
    items: Iterable[T],
    desc: str,
    unit: str = "step",
    *,
    total: int | None = None,
    enabled: bool = True,
    every: float = EVERY_S,
    kinds: Sequence[Hashable] | None = None,
) -> Iterator[T]:
    """Yield `items`, advancing a `Progress` after each: the drop-in for ``tqdm(items)`` in a loop
    whose body is one unit. `total` defaults to ``len(items)``."""
    size = len(items) if total is None else total  # type: ignore[arg-type]
    with Progress(desc, size, unit, enabled=enabled, every=every, kinds=kinds) as bar:
        for item in items:
            yield item
            bar.advance()


def say(line: str) -> None:
    """Print a line for the reader (a script's per-run result) above any open bar, not through it."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class _AboveBars(logging.Handler):
    """A console handler's records, formatted by it, written with `tqdm.write` so open bars redraw below."""

    def __init__(self, inner: logging.StreamHandler) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.filters = list(inner.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.inner.format(record), file=self.inner.stream)
        except Exception:  # a log line must never break the loop it reports on
            self.handleError(record)


@contextmanager
def _logs_above_bars() -> Iterator[None]:
    """While a bar is open, route the console handlers of the root and Flower loggers through
    `_AboveBars`; only the handlers swapped here are restored, whatever else was added meanwhile.
    A nested bar finds them swapped already and leaves them."""
    swapped = []
    for logger in (logging.getLogger(), FLOWER_LOGGER):
        for i, handler in enumerate(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
                logger.handlers[i] = _AboveBars(handler)
                swapped.append((logger, handler, logger.handlers[i]))
    try:
        yield
    finally:
        for logger, handler, wrapper in swapped:
            logger.handlers = [handler if h is wrapper else h for h in logger.handlers]
