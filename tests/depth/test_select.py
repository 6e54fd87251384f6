"""Block selection is a pure function of statistics rows: criteria, budgets, constraints."""

from __future__ import annotations

import math

import pytest

from sdprune.choices import CRITERIA
from sdprune.depth.select import (
    check_budget,
    importance,
    needs_statistics,
    removed_blocks,
    select_blocks,
    target_count,
)
from sdprune.errors import SdpruneError


def make_rows(per_stage: int = 5, stages: int = 3) -> list[dict]:
    """Rows shaped like a CIFAR ResNet's: stage s block 0 is a transition (except s = 0)."""
    rows = []
    for s in range(stages):
        for i in range(per_stage):
            pos = len(rows)
            rows.append({"name": f"stages.{s}.{i}", "stage": s, "index": i, "position": pos,
                         "transition": s > 0 and i == 0, "survival": 1.0 - pos / 30,
                         "delta_loss": 0.0, "delta_acc": 0.0, "influence": 0.0, "residual_ratio": 0.0,
                         "params": 1000 * 2 ** s, "flops": 100_000})
    return rows


def test_keep_fraction_is_rounded_up_to_whole_blocks():
    assert target_count(15, 0.5, None) == 8
    assert target_count(15, 0.25, None) == 4
    assert target_count(15, 1.0, None) == 15
    assert target_count(15, 0.5, 6) == 6  # the tighter of the two
    rows = make_rows()
    assert len(select_blocks(rows, "depth", keep=0.5)) == 8
    assert [r["name"] for r in rows] == select_blocks(rows, "depth", keep=1.0)


@pytest.mark.parametrize("field,criterion", [("survival", "survival"), ("delta_loss", "ablation"),
                                             ("influence", "influence"), ("residual_ratio", "norm")])
def test_score_criteria_remove_the_lowest_scores(field, criterion):
    rows = make_rows()
    low = {"stages.0.3", "stages.1.2", "stages.2.4"}
    for r in rows:
        r[field] = 0.01 * (r["position"] + 1) if r["name"] in low else 10.0 + r["position"]
    kept = select_blocks(rows, criterion, keep_blocks=12)
    assert set(removed_blocks(rows, kept)) == low
    assert kept == [r["name"] for r in rows if r["name"] not in low]  # forward order


def test_depth_drops_the_deepest_and_keeps_every_stage():
    rows = make_rows()
    assert removed_blocks(rows, select_blocks(rows, "depth", keep_blocks=12)) == \
        ["stages.2.2", "stages.2.3", "stages.2.4"]
    kept = select_blocks(rows, "depth", keep_blocks=7)
    assert "stages.2.0" in kept and "stages.2.1" not in kept  # last stage keeps one block
    assert kept == ["stages.0.0", "stages.0.1", "stages.0.2", "stages.0.3", "stages.0.4",
                    "stages.1.0", "stages.2.0"]


def test_every_other_removes_odd_indices_then_spares_transitions():
    rows = make_rows()
    removed = removed_blocks(rows, select_blocks(rows, "every-other", keep=0.6))  # keep 9, remove 6
    assert removed == [f"stages.{s}.{i}" for s in range(3) for i in (1, 3)]
    removed = removed_blocks(rows, select_blocks(rows, "every-other", keep_blocks=4))
    assert not {"stages.1.0", "stages.2.0"} & set(removed)  # transitions go last


def test_random_is_seeded():
    rows = make_rows()
    a = select_blocks(rows, "random", keep=0.5, seed=1)
    assert a == select_blocks(rows, "random", keep=0.5, seed=1)
    others = {tuple(select_blocks(rows, "random", keep=0.5, seed=s)) for s in range(2, 8)}
    assert len(others | {tuple(a)}) > 1


def test_stage_constraint_and_its_release():
    rows = make_rows()
    for r in rows:  # ablation says the whole middle stage is useless
        r["delta_loss"] = 0.0 if r["stage"] == 1 else 1.0 + r["position"]
    kept = select_blocks(rows, "ablation", keep_blocks=10)
    assert [n for n in kept if n.startswith("stages.1.")] == ["stages.1.0"]
    kept = select_blocks(rows, "ablation", keep_blocks=10, keep_stages=False)
    assert not [n for n in kept if n.startswith("stages.1.")]
    with pytest.raises(SdpruneError, match="at least 3 must stay"):
        select_blocks(rows, "ablation", keep_blocks=2)
    assert len(select_blocks(rows, "ablation", keep_blocks=2, keep_stages=False)) == 2
    # even with empty stages allowed, a budget that needs every block gone is an error
    with pytest.raises(SdpruneError, match="--max-params"):
        select_blocks(rows, "ablation", max_params=600, model_params=35_500, keep_stages=False)
    assert select_blocks(rows, "ablation", max_params=4500, model_params=35_500, keep_stages=False) == ["stages.2.4"]


def test_parameter_and_flop_budgets():
    rows = make_rows()
    total_params = sum(r["params"] for r in rows) + 500
    total_flops = sum(r["flops"] for r in rows) + 50_000
    kept = select_blocks(rows, "depth", max_params=12_000, model_params=total_params)
    left = total_params - sum(r["params"] for r in rows if r["name"] not in kept)
    assert left <= 12_000
    assert left + 2000 > 12_000  # the last removal (a 2000-parameter block) was needed
    kept = select_blocks(rows, "depth", max_flops=1_000_000, model_flops=total_flops)
    assert total_flops - 100_000 * (15 - len(kept)) <= 1_000_000 < total_flops - 100_000 * (14 - len(kept))
    both = select_blocks(rows, "depth", keep=0.9, max_params=30_000, model_params=total_params)
    assert len(both) <= 14


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_params=10), "--max-params"),
    (dict(max_flops=10), "--max-flops"),
])
def test_budgets_no_network_can_meet_are_errors(kwargs, message):
    rows = make_rows()
    with pytest.raises(SdpruneError, match=message):
        select_blocks(rows, "depth", model_params=50_000, model_flops=2_000_000, **kwargs)


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_bad_keep_is_rejected(keep):
    with pytest.raises(SdpruneError, match="--keep"):
        select_blocks(make_rows(), "depth", keep=keep)


def test_other_bad_input():
    rows = make_rows()
    with pytest.raises(SdpruneError, match="leaves no block"):
        select_blocks(rows, "depth", keep_blocks=0)
    with pytest.raises(SdpruneError, match="unknown criterion"):
        select_blocks(rows, "magnitude", keep=0.5)
    with pytest.raises(SdpruneError, match="say how much"):
        select_blocks(rows, "depth")
    for r in rows:
        r["delta_loss"] = None
    with pytest.raises(SdpruneError, match="drop-one"):
        select_blocks(rows, "ablation", keep=0.5)


def test_keep_is_a_fraction_of_the_architecture_when_re_pruning():
    rows = make_rows()[:9]  # a network already pruned from 15 blocks
    assert len(select_blocks(rows, "depth", keep=0.4, total_blocks=15)) == 6
    assert len(select_blocks(rows, "depth", keep=0.6, total_blocks=15)) == 9  # exactly what is there


@pytest.mark.parametrize("kwargs,message", [
    ({"keep": 1.0, "total_blocks": 15}, "already pruned to 9 of 15 blocks: cannot keep 15"),
    ({"keep": 0.61, "total_blocks": 15}, "already pruned to 9 of 15 blocks: cannot keep 10"),
    ({"keep_blocks": 10}, "has 9 blocks: cannot keep 10"),
])
def test_a_keep_above_the_blocks_present_is_refused(kwargs, message):
    """Re-pruning 9 of 15 blocks to keep 10 would silently remove nothing."""
    with pytest.raises(SdpruneError, match=message):
        select_blocks(make_rows()[:9], "depth", **kwargs)
    with pytest.raises(SdpruneError, match=message):
        target_count(kwargs.get("total_blocks", 9), kwargs.get("keep"), kwargs.get("keep_blocks"), present=9)


def test_budget_checks_are_the_selections_own():
    with pytest.raises(SdpruneError, match="say how much"):
        check_budget(None, None, None, None)
    with pytest.raises(SdpruneError, match="--max-flops must be positive"):
        check_budget(None, None, None, 0)
    check_budget(0.5, None, None, None)


def test_which_criteria_need_measured_statistics():
    assert needs_statistics(["depth", "ablation"]) and needs_statistics(["influence"]) and needs_statistics(["norm"])
    assert not needs_statistics(["survival", "depth", "every-other", "random"])


def test_every_criterion_returns_forward_ordered_names():
    rows = make_rows()
    for i, r in enumerate(rows):
        r.update(delta_loss=(i * 7) % 5, influence=(i * 3) % 4, residual_ratio=(i * 5) % 7)
    positions = {r["name"]: r["position"] for r in rows}
    for criterion in CRITERIA:
        kept = select_blocks(rows, criterion, keep=0.5, seed=3)
        assert len(kept) == 8 and [positions[n] for n in kept] == sorted(positions[n] for n in kept)
        assert len(importance(rows, criterion, seed=3)) == len(rows)
