"""Progress reporting that suits where the output goes.

On a terminal, a tqdm bar redraws in place. When stderr is a file or a pipe (a batch job, CI, ``make ... 2> log``),
redraws would flood the log with carriage returns and cursor escapes; :class:`LogProgress` writes one plain line every
``interval`` seconds instead (and one at the end).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

DEFAULT_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
    """``"2 h 50 min"``, ``"12 min"``, ``"45 s"``.

    Example:
      >>> format_duration(10200), format_duration(720), format_duration(44.6)
      ('2 h 50 min', '12 min', '45 s')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class LogProgress:
    """A tqdm-like progress reporter that prints a plain line every ``interval`` seconds.

    Supports what fsl_jax uses of tqdm: iteration, ``update``, ``set_postfix``, ``write``, ``close`` and ``with``.

    Example:
      >>> import io
      >>> out = io.StringIO()
      >>> bar = LogProgress(total=4, desc="train", interval=0.0, file=out)
      >>> bar.update(2); bar.set_postfix({"loss": "0.5"}); bar.update(2); bar.close()
      >>> out.getvalue().splitlines()[-1].startswith("train: 4/4 (100 %)")
      True
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        initial: int = 0,
        desc: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        file: Any = None,
        **_: Any,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.desc = desc or "progress"
        self.interval = interval
        self.file = file if file is not None else sys.stderr
        self.postfix: dict = {}
        self.start = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        parts = [
            f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f} %)" if self.total else "")
        ]
        done = self.n - self.start_n
        if done > 0:
            rate = elapsed / done
            parts.append(f"{rate:.3g} s/it" if rate >= 1e-3 else f"{1 / rate:.3g} it/s")
            if self.total:
                parts.append(f"~{format_duration(rate * (self.total - self.n))} left")
        parts.append(f"{format_duration(elapsed)} elapsed")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.interval:
            self._emit()

    def set_postfix(self, values: dict | None = None, **kwargs: Any) -> None:
        self.postfix = {**(values or {}), **kwargs}

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, message: str) -> None:
        print(message, file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._emit()


class _Silent(LogProgress):
    def _emit(self) -> None:
        pass

    def write(self, message: str) -> None:
        pass


def progress(iterable: Iterable | None = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`LogProgress` otherwise, a silent one when ``disable``.

    ``FSL_JAX_PROGRESS_SECONDS`` sets the log interval (default 30 s).
    """
    if disable:
        return _Silent(iterable, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    interval = float(os.environ.get("FSL_JAX_PROGRESS_SECONDS", DEFAULT_INTERVAL))
    for tqdm_only in ("dynamic_ncols", "leave", "delay", "unit", "position", "mininterval"):
        kwargs.pop(tqdm_only, None)
    return LogProgress(iterable, interval=interval, **kwargs)
