"""The int8 gate's figures: clear agreement (near-ties set apart) and the paired accuracy change."""

from __future__ import annotations

import pytest
import torch

from sdprune.deploy.gate import (DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT, binom_cdf, check_gate,
                                 clopper_pearson, compare_decisions, paired_change, verdict)
from sdprune.errors import SdpruneError


def test_near_ties_are_set_apart_by_the_one_definition_the_ort_check_uses():
    from sdprune.deploy.gate import NEAR_TIE_RTOL, decided, int8_margin
    from sdprune.deploy.mobile import compare_logits

    fp32 = torch.tensor([[10.0, 0.0, 0.0],   # clear: gap 10 > 0.5 (5% of the largest |logit|, 10)
                         [3.0, 2.8, 0.0],    # near-tie: gap 0.2
                         [0.0, 4.0, 1.0],    # clear
                         [1.0, 0.0, 5.0]])   # clear
    int8 = torch.tensor([[9.0, 0.5, 0.0],    # same class
                         [2.8, 3.0, 0.0],    # near-tie flipped: rounding
                         [0.0, 1.0, 4.0],    # clear flipped: another decision
                         [1.0, 0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 2])
    assert int8_margin(fp32) == pytest.approx(NEAR_TIE_RTOL * 10.0)
    assert decided(fp32, int8_margin(fp32)).tolist() == [True, False, True, True]
    r = compare_decisions(fp32, int8, labels)
    assert r["n"] == 4 and r["near_ties"] == 1 and r["clear_images"] == 3 and r["clear_flips"] == 1
    assert r["clear_agreement"] == pytest.approx(200 / 3) and r["top1_agreement"] == 50.0
    assert r["near_tie_margin"] == pytest.approx(0.5)
    # paired: images 1 and 2 are right under fp32 only, none under int8 only
    assert (r["fp32_only"], r["int8_only"]) == (2, 0)
    assert r["fp32_acc"] == 100.0 and r["int8_acc"] == 50.0 and r["acc_change"] == pytest.approx(-50.0)
    # the .ort check counts the same near-tie at the same margin
    ort = compare_logits(int8, fp32, int8_margin(fp32), bound=False)
    assert ort["near_ties"] == r["near_ties"] and ort["flips"] == r["clear_flips"]


def test_paired_change_is_exact():
    stats = pytest.importorskip("scipy.stats")
    for k, m in [(0, 5), (2, 4), (6, 7), (14, 23), (100, 150), (1, 1)]:
        test = stats.binomtest(k, m)
        ci = test.proportion_ci(0.95, "exact")
        assert clopper_pearson(k, m) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert paired_change(k, m - k, 359)["mcnemar_p"] == pytest.approx(test.pvalue, rel=1e-9)
        assert binom_cdf(k, m, 0.3) == pytest.approx(stats.binom.cdf(k, m, 0.3), rel=1e-9)
    r = paired_change(10, 0, 359)  # 10 images lost, none gained: -2.79 points, and sure of a loss
    assert r["acc_change"] == pytest.approx(-1000 / 359)
    lo, hi = r["acc_change_ci"]
    assert lo == pytest.approx(-1000 / 359) and -1.1 < hi < -1.0 and r["mcnemar_p"] == pytest.approx(2 / 1024)
    same = paired_change(0, 0, 359)  # no discordant image: the models are equally accurate here
    assert same["acc_change"] == 0.0 and [f"{x:+.2f}" for x in same["acc_change_ci"]] == ["+0.00", "+0.00"]
    assert same["mcnemar_p"] == 1.0


def figures(clear_agreement: float, ci: tuple[float, float]) -> dict:
    return {"clear_agreement": clear_agreement, "clear_images": 300, "clear_flips": 1, "fp32_acc": 90.0,
            "int8_acc": 89.0, "acc_change_ci": list(ci), "confidence": 0.95}


def test_verdict_fails_on_changed_clear_decisions_or_an_accuracy_loss_beyond_doubt():
    ok = verdict(figures(DEFAULT_MIN_CLEAR_AGREEMENT, (-3.0, -DEFAULT_MAX_DROP)), DEFAULT_MIN_CLEAR_AGREEMENT,
                 DEFAULT_MAX_DROP)
    assert ok == {"min_clear_agreement": DEFAULT_MIN_CLEAR_AGREEMENT, "max_drop": DEFAULT_MAX_DROP, "passed": True,
                  "reasons": []}  # both at their limits: passes
    r = verdict(figures(99.0, (-1.2, +0.5)), 99.5, 0.5)
    assert not r["passed"] and r["reasons"] == [
        "top-1 agreement 99.00% < 99.5% on the 300 clearly decided test images (1 changed class)"]
    r = verdict(figures(100.0, (-1.2, -0.6)), 99.5, 0.5)
    assert not r["passed"] and r["reasons"] == [
        "accuracy 90.00% -> 89.00%, 95% interval of the change [-1.20, -0.60] points, all below -0.5"]
    assert len(verdict(figures(90.0, (-9.0, -8.0)), 99.5, 0.5)["reasons"]) == 2
    assert verdict(figures(0.0, (-99.0, -98.0)), None, None)["passed"]  # not gated: reported only


def test_gate_settings_are_checked():
    check_gate(0, 0)
    check_gate(None, None)
    for bad in (-1.0, 100.5, float("nan")):
        with pytest.raises(SdpruneError, match="--int8-min-clear-agreement must be between 0 and 100"):
            check_gate(bad, 1.0)
        with pytest.raises(SdpruneError, match="--int8-max-drop must be between 0 and 100 points"):
            check_gate(99.0, bad)
