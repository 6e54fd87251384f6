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


def strict(text: str):
    """Parse JSON as strict parsers do: a bare NaN or Infinity is an error."""
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_never_holds_nan_or_infinity(capsys):
    import numpy as np
    import torch

    from sdprune.report import json_text

    value = {"loss": float("nan"), "rows": [{"x": float("inf")}, (float("-inf"), 1.5)], 3: torch.tensor([1.0, np.nan]),
             "n": np.float32(2.5), "flag": True, "none": None}
    assert strict(json_text(value)) == {"loss": None, "rows": [{"x": None}, [None, 1.5]], "3": [1.0, None],
                                        "n": 2.5, "flag": True, "none": None}
    assert value["loss"] != value["loss"]  # the caller's object is left as it was
    Reporter(json_mode=True).result({"acc": float("nan")})
    assert strict(capsys.readouterr().out) == {"acc": None}


def test_json_files_hold_no_nan(tmp_path):
    from sdprune.train.checkpoint import write_json

    write_json(tmp_path / "x.json", {"val_loss": float("nan"), "ok": 1})
    assert strict((tmp_path / "x.json").read_text()) == {"val_loss": None, "ok": 1}
