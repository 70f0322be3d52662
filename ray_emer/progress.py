"""Progress of long jobs: one style everywhere. It goes to stderr, so stdout carries only a command's result
(the summary JSON that scripts read); every ``run_*`` function takes ``log=`` and defaults to ``say``.

``Progress`` is one stage's count (clips extracted or labelled, optimizer steps) against its total, with the
rate and the time left: a bar (tqdm) redrawn in place when stderr is a terminal and the job logs with ``say``,
else plain lines through ``log`` (the first, then at most one every ``every_s`` seconds, and the last), which a
log file, ``ray job logs`` or a test reads one by one. While a bar is drawn, ``say`` prints above it.
"""

from __future__ import annotations

import sys
import time

_BARS: list = []  # tqdm bars drawn now: say() prints above them instead of through them


def say(message: str) -> None:
    if _BARS:
        _BARS[-1].write(message, file=sys.stderr)
        return
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``42 s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``tag`` (``[label]``) ``done``/``total`` ``unit`` (``clips``), ``verb`` (``labelled``), rate and ETA.

    ``bar``: ``None`` draws a bar when ``log`` is ``say`` and ``stream`` (stderr) is a terminal; ``False`` never
    (plain lines). ``start``: already done before (a resumed run). Use it as a context manager, or call ``close``."""

    def __init__(self, tag: str, total: int, unit: str, verb: str = "", log=say, every_s: float = 10.0,
                 bar: bool | None = None, stream=None, start: int = 0) -> None:
        self.tag, self.total, self.unit, self.verb, self.log, self.every_s = tag, total, unit, verb, log, every_s
        self.stream = stream or sys.stderr
        self.t0, self.last_line, self.done, self.start = time.perf_counter(), None, start, start
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.bar = None
        if bar is not False and log is say and isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=f" {unit}", desc=f"{tag} {verb}".strip(), file=self.stream,
                            dynamic_ncols=True, smoothing=0.1, initial=start)
            _BARS.append(self.bar)

    def rate(self, now: float | None = None) -> float:
        return (self.done - self.start) / max((now or time.perf_counter()) - self.t0, 1e-9)

    def line(self, note: str = "", now: float | None = None) -> str:
        """The plain line: ``[label] 12/48 clips labelled (ok 12, error 0), 1.50 clips/s, ETA 24 s``."""
        rate = self.rate(now)
        eta = duration((self.total - self.done) / rate) if rate > 0 and self.done < self.total else "0 s"
        what = " ".join(p for p in (f"{self.done}/{self.total}", self.unit, self.verb) if p)
        return (f"{self.tag} {what}" + (f" ({note})" if note else "")
                + f", {rate:.2f} {self.unit}/s, ETA {eta}")

    def update(self, done: int, note: str = "") -> None:
        """``done`` of ``total`` now (a count, not an increment); ``note``: e.g. ``ok 12, error 0``."""
        step, self.done = done - self.done, done
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(step)
            return
        now = time.perf_counter()
        if self.last_line is None or done >= self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            self.log(self.line(note, now))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            if self.bar in _BARS:
                _BARS.remove(self.bar)
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
