"""Progress bars and run logs are silent under DCLS_QUIET (the book build) and shown otherwise."""

from __future__ import annotations

import io

from dcls_lib.progress import QUIET_ENV, note, progress_bar, quiet


def test_quiet_follows_the_environment(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert not quiet()
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(QUIET_ENV, value)
        assert quiet() is expected


def test_bars_and_logs_are_silent_when_quiet(monkeypatch, capsys):
    monkeypatch.setenv(QUIET_ENV, "1")
    out = io.StringIO()
    assert list(progress_bar(range(3), file=out)) == [0, 1, 2]
    note("epoch 1: loss 0.5")
    assert out.getvalue() == "" and capsys.readouterr().out == ""


def test_bars_and_logs_show_otherwise(monkeypatch, capsys):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    out = io.StringIO()
    assert list(progress_bar(range(3), file=out, desc="steps")) == [0, 1, 2]
    assert "steps" in out.getvalue() and "3/3" in out.getvalue()
    assert progress_bar(range(3), file=out, disable=True).disable
    note("epoch 1: loss 0.5")
    assert "epoch 1: loss 0.5" in capsys.readouterr().out
