"""Whether an int8 model may stand in for its fp32 model, judged on what a user sees.

Both models classify the same test images; two figures decide:

* **clear agreement**: top-1 agreement on the images fp32 decides clearly, its two best
  logits further apart than the int8 near-tie margin (``decided`` and ``int8_margin``: 5% of
  its largest |logit|, about what int8 rounding moves a logit by).
  On a near-tie a changed class is rounding; on a clear image it is another decision.
* **the accuracy change, with its uncertainty**: the comparison is paired (the same images),
  so only the discordant images carry information: ``fp32_only`` right under fp32 alone,
  ``int8_only`` under int8 alone. Given their sum m, ``fp32_only`` is Binomial(m, pi), pi = 1/2
  when neither model is the more accurate (McNemar's exact test); the exact Clopper-Pearson
  interval on pi is a 95% interval on the change, m (1 - 2 pi) / n.

The gate fails when clear agreement is below ``min_clear_agreement`` %, or when the whole
interval lies below ``-max_drop`` points: int8 is then less accurate by more than that
beyond the test set's own uncertainty. A handful of near-tied images can no longer decide
the verdict (issue 21: healthy models were refused at 98.6% plain agreement while their
accuracy moved 0.3 points), and a broken int8 model still fails on both counts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sdprune.errors import SdpruneError

if TYPE_CHECKING:
    from torch import Tensor

# One clearly decided image in a hundred may change class. Healthy int8 models (the default
# recipe; resnet20s trained 1 to 4 epochs on digits, the README's pruned resnet32, a public
# CIFAR-10 resnet20 on 10,000 images, both targets) changed none; a weakly trained torchvision
# resnet18 (max |logit| 1.1) 2 of 447 (99.55%) on x86, and up to 5 (98.88%) under other
# recipes. Miscalibrated ones (constant images, the normalisation forgotten, ranges a quarter
# of the real ones) changed 10% to 83% of them and lost 8 to 71 points of accuracy (resnet20,
# digits). BENCHMARKS.md B4, "int8 recipe and gate" (2026-12-04).
DEFAULT_MIN_CLEAR_AGREEMENT = 99.0
# Points of accuracy int8 may be shown to lose: fails when the whole 95% interval of the change
# lies below -max_drop. 1 point, about the usual bar for int8 (99% of fp32 accuracy on a model
# near 90%); the least trained network the tests make (a resnet20 after 1 epoch, 31.8%) loses
# 2.5 points [-2.5, -0.8] on arm, its near-ties flipping one way: a real loss, within 1 point.
DEFAULT_MAX_DROP = 1.0
CONFIDENCE = 0.95
# Near-ties, the one definition (the int8 gate here and the .ort checks, deploy/mobile.py): an
# image is a near-tie when the reference's two best logits are within a margin of each other,
# the margin being how far the compared model may move a logit; there a changed top-1 class is
# rounding, not another decision. For int8 against float, the margin is NEAR_TIE_RTOL of the
# reference's largest |logit| on the images compared: int8 QDQ moves a resnet20's logits by a
# median 1% and a 99th percentile 4.6% of it on the digits test split (trained 3 epochs, arm
# and x86 targets, 2026-12-04), and the off-CPU .ort files (deploy/mobile.py) by up to 1.6%.
NEAR_TIE_RTOL = 0.05


def check_gate(min_clear_agreement: float | None, max_drop: float | None) -> None:
    """Reject gate settings no comparison can use (None: that figure is reported, not gated)."""
    if min_clear_agreement is not None and not 0 <= min_clear_agreement <= 100:  # also rejects NaN
        raise SdpruneError(f"--int8-min-clear-agreement must be between 0 and 100, got {min_clear_agreement:g}")
    if max_drop is not None and not 0 <= max_drop <= 100:
        raise SdpruneError(f"--int8-max-drop must be between 0 and 100 points, got {max_drop:g}")


def int8_margin(want: Tensor) -> float:
    """The near-tie margin of int8 against a float reference: NEAR_TIE_RTOL of ``want``'s largest |logit|."""
    return NEAR_TIE_RTOL * float(want.abs().max()) if want.numel() else 0.0


def decided(want: Tensor, margin: float) -> Tensor:
    """Which images (rows of the reference logits ``want``) are decided clearly: their two best
    logits more than ``margin`` apart. The others are near-ties, where a flip is rounding."""
    import torch

    if want.shape[1] < 2:  # one class: nothing to tie with
        return torch.ones(len(want), dtype=torch.bool)
    top2 = want.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) > margin


def compare_decisions(fp32: Tensor, int8: Tensor, labels: Tensor) -> dict[str, Any]:
    """The gate's figures for two models' logits on the same labelled images (see the module doc)."""
    n = len(labels)
    margin = int8_margin(fp32)
    clear = decided(fp32, margin)
    same = fp32.argmax(1) == int8.argmax(1)
    right32, right8 = fp32.argmax(1) == labels, int8.argmax(1) == labels
    n_clear = int(clear.sum())
    flips = int((clear & ~same).sum())
    paired = paired_change(int((right32 & ~right8).sum()), int((right8 & ~right32).sum()), n)
    return {"n": n, "top1_agreement": 100.0 * int(same.sum()) / n if n else 100.0,
            "near_tie_margin": margin, "near_ties": n - n_clear, "clear_images": n_clear, "clear_flips": flips,
            "clear_agreement": 100.0 * (n_clear - flips) / n_clear if n_clear else 100.0,
            "fp32_acc": 100.0 * int(right32.sum()) / n if n else 0.0,
            "int8_acc": 100.0 * int(right8.sum()) / n if n else 0.0, **paired}


def paired_change(fp32_only: int, int8_only: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Accuracy change (points, int8 - fp32) of two models on the same ``n`` images, its exact
    ``confidence`` interval and McNemar's exact two-sided p-value, from the discordant counts."""
    m = fp32_only + int8_only
    lo, hi = clopper_pearson(fp32_only, m, confidence)
    scale = 100.0 * m / n if n else 0.0
    return {"fp32_only": fp32_only, "int8_only": int8_only, "acc_change": scale * (1 - 2 * fp32_only / m) if m else 0.0,
            "acc_change_ci": [scale * (1 - 2 * hi), scale * (1 - 2 * lo)] if m else [0.0, 0.0],
            "confidence": confidence,
            "mcnemar_p": min(1.0, 2 * binom_cdf(min(fp32_only, int8_only), m, 0.5)) if m else 1.0}


def verdict(figures: dict[str, Any], min_clear_agreement: float | None, max_drop: float | None) -> dict[str, Any]:
    """The gate's settings, ``passed`` and, when it fails, ``reasons`` (one clause per failed figure)."""
    reasons = []
    if min_clear_agreement is not None and figures["clear_agreement"] < min_clear_agreement:
        reasons.append(f"top-1 agreement {figures['clear_agreement']:.2f}% < {min_clear_agreement:g}% on the "
                       f"{figures['clear_images']} clearly decided test images "
                       f"({figures['clear_flips']} changed class)")
    if max_drop is not None and figures["acc_change_ci"][1] < -max_drop:
        lo, hi = figures["acc_change_ci"]
        reasons.append(f"accuracy {figures['fp32_acc']:.2f}% -> {figures['int8_acc']:.2f}%, "
                       f"{100 * figures['confidence']:g}% interval of the change [{lo:+.2f}, {hi:+.2f}] points, "
                       f"all below -{max_drop:g}")
    return {"min_clear_agreement": min_clear_agreement, "max_drop": max_drop, "passed": not reasons,
            "reasons": reasons}


def clopper_pearson(k: int, m: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided ``confidence`` interval of a binomial proportion, ``k`` successes in ``m`` trials."""
    if m == 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    # P(X >= k | p) grows with p, P(X <= k | p) falls: bisect each to its tail probability
    lo = 0.0 if k == 0 else _bisect(lambda p: 1 - binom_cdf(k - 1, m, p) - tail)
    hi = 1.0 if k == m else _bisect(lambda p: tail - binom_cdf(k, m, p))
    return lo, hi


def binom_cdf(k: int, m: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(m, p), summed in log space (exact for any m a test split has)."""
    import torch

    if k < 0:
        return 0.0
    if k >= m or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = torch.arange(k + 1, dtype=torch.float64)
    log_pmf = (math.lgamma(m + 1) - torch.lgamma(i + 1) - torch.lgamma(m - i + 1)
               + i * math.log(p) + (m - i) * math.log1p(-p))
    return min(1.0, float(torch.logsumexp(log_pmf, 0).exp()))


def _bisect(f, lo: float = 0.0, hi: float = 1.0, steps: int = 60) -> float:
    """The root of an increasing ``f`` on [lo, hi]."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2
