"""`sdprune models`'s table: counted without weights, cached under a key of what the counts depend on."""

from __future__ import annotations

import json

import pytest

from sdprune.errors import SdpruneError
from sdprune.nets import catalog
from sdprune.nets.catalog import CACHE_FILE, describe_models
from sdprune.nets.registry import describe_model


def test_rows_are_counted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    rows = describe_models(["resnet20", "mobilenet_v2"], 10, cache=tmp_path)
    assert rows == [describe_model("resnet20", 10), describe_model("mobilenet_v2", 10)]

    def no_counting(*args):
        raise AssertionError("counted again")
    monkeypatch.setattr(catalog, "describe_model", no_counting)
    assert describe_models(["mobilenet_v2", "resnet20"], 10, cache=tmp_path) == rows[::-1]
    # another class count, or changed network code or libraries (another key), is counted afresh
    monkeypatch.setattr(catalog, "describe_model", lambda name, classes: {**describe_model(name, classes), "n": 1})
    assert describe_models(["resnet20"], 7, cache=tmp_path)[0]["params"] == describe_model("resnet20", 7)["params"]
    monkeypatch.setattr(catalog, "fingerprint", lambda: "another-version")
    assert describe_models(["resnet20"], 10, cache=tmp_path)[0]["n"] == 1
    assert list(json.loads((tmp_path / CACHE_FILE).read_text())) == ["another-version"]  # old rows dropped


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": {"resnet20/10": {"name": "resnet20"}}}'])
def test_a_damaged_cache_is_recounted(tmp_path, content):
    (tmp_path / CACHE_FILE).write_text(content.replace("KEY", catalog.fingerprint()))
    assert describe_models(["resnet20"], 10, cache=tmp_path) == [describe_model("resnet20", 10)]


def test_an_unwritable_cache_is_no_error(tmp_path):
    (tmp_path / "file").write_text("x")
    assert describe_models(["resnet20"], 10, cache=tmp_path / "file")[0]["blocks"] == 9


def test_an_unknown_name_fails_before_counting(tmp_path):
    with pytest.raises(SdpruneError, match="unknown model 'resnet21'"):
        describe_models(["resnet20", "resnet21"], 10, cache=tmp_path)
    assert not (tmp_path / CACHE_FILE).exists()


def test_huge_heads_are_counted_without_memory():
    """On the meta device a 10^6-class head costs nothing (a real one would take 8 GB for tv_resnet50)."""
    one, million = describe_model("tv_resnet50", 1), describe_model("tv_resnet50", 10**6)
    assert million["params"] == one["params"] + 2049 * (10**6 - 1)  # 2048 weights and a bias per class


def test_the_models_table_counts_blocks(tmp_path, monkeypatch, capsys):
    """`sdprune models` says "blocks", the word prune --keep and every other command use."""
    from sdprune.cli import main

    monkeypatch.setenv("SDPRUNE_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["models", "resnet20", "vit_cifar"]) == 0
    out = capsys.readouterr().out
    assert "blocks" in out and "units" not in out
    cells = [[c for c in line.replace("│", " ").split()][:2] for line in out.splitlines()]
    assert [c for c in cells if c[:1] in (["resnet20"], ["vit_cifar"])] == [["resnet20", "9"], ["vit_cifar", "12"]]
