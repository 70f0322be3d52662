"""Progress of long jobs: a bar redrawn in place (count, rate, ETA) on a terminal, plain lines otherwise.
(A training stage's step lines: tests/test_registry.py; the data jobs' clip lines: test_extract, test_label_job.)"""

from __future__ import annotations

import io
import re

from ray_emer import progress
from ray_emer.progress import Progress, duration, say


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_bar_redrawn_in_place(monkeypatch):
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    with Progress("[label]", 40, "clips", "labelled", stream=term) as bar:
        for done in range(4, 41, 4):
            bar.update(done, f"ok {done}, error 0")
        say("[label] a message while the bar is drawn")
    text = term.getvalue()
    # one line redrawn in place ("\r"): ten updates, one message and the close make two line ends
    assert text.count("\r") >= 3 and text.count("\n") == 2 and " 0/40 [" in text, text
    assert re.search(r"\[label\] labelled: 100%\|.*\| 40/40 \[", text), text
    assert "clips/s" in text and "ok 40, error 0" in text and "<" in text  # rate, note, elapsed<remaining
    assert "[label] a message while the bar is drawn\n" in text
    assert not progress._BARS  # closed: say() prints plainly again


def test_not_a_terminal_gets_plain_lines_first_then_every_few_seconds_and_the_last(monkeypatch):
    lines: list[str] = []
    clock = iter([0.0, 1.0, 2.0, 3.0, 14.0, 15.0, 16.0]).__next__
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = Progress("[extract]", 6, "clips", log=lines.append, every_s=10.0)  # t0 = 0
    for done in range(1, 7):  # at t = 1, 2, 3, 14, 15, 16
        bar.update(done, f"ok {done}, error 0")
    assert lines == ["[extract] 1/6 clips (ok 1, error 0), 1.00 clips/s, ETA 5 s",
                     "[extract] 4/6 clips (ok 4, error 0), 0.29 clips/s, ETA 7 s",
                     "[extract] 6/6 clips (ok 6, error 0), 0.38 clips/s, ETA 0 s"]


def test_say_through_another_log_never_draws_a_bar(monkeypatch):
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    lines: list[str] = []
    with Progress("[train]", 2, "steps", log=lines.append) as bar:  # a caller's own log: lines, on a tty too
        bar.update(1)
        bar.update(2)
    with Progress("[train]", 2, "steps", bar=False) as bar:  # progress: false
        bar.update(2)
    assert lines[0].startswith("[train] 1/2 steps, ") and "\r" not in term.getvalue()
    assert term.getvalue().startswith("[train] 2/2 steps, ")


def test_durations_read_easily():
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0 s", "42 s", "3m05s", "1h02m"]
