"""The reporter: messages verbatim, JSON mode keeps stdout for the one result."""

from __future__ import annotations

import json

from sdprune.report import Reporter, fmt, human


def test_info_prints_user_text_verbatim_even_on_a_terminal(capsys):
    reporter = Reporter(rich=True)
    reporter.info("lr [0.1] [/bold] [red]x[/red]")  # as markup, "[/bold]" would raise and [red] vanish
    err = capsys.readouterr().err
    assert "lr [0.1] [/bold] [red]x[/red]" in err


def test_quiet_and_json_mode(capsys):
    Reporter(quiet=True).info("hidden")
    reporter = Reporter(json_mode=True)
    reporter.table("t", ["a", "b"], [["x", 1]])
    reporter.result({"n": 2})
    out = capsys.readouterr()
    assert "hidden" not in out.err
    assert json.loads(out.out) == {"n": 2}  # the table stayed off stdout


def test_numbers_are_formatted_for_tables():
    assert human(1234567) == "1.23M" and human(999) == "999"
    assert fmt(0.123456) == "0.1235" and fmt(25000) == "25k" and fmt(True) == "True"


def test_a_note_waits_for_the_next_message_and_never_precedes_an_error_alone(capsys):
    reporter = Reporter()
    reporter.note("using the newest run")
    assert capsys.readouterr().err == ""  # a command failing now ends with its error line alone
    reporter.info("pruning x")
    assert capsys.readouterr().err.splitlines() == ["using the newest run", "pruning x"]
    long = "y" * 300
    reporter.info(long)
    assert capsys.readouterr().err == long + "\n"  # one line, however long (not wrapped)
