"""Learned layer survival: the network's own training run decides which blocks it needs.

Mechanism (chosen by measurement, see BENCHMARKS.md "Learned survival"):

* Natural experiments. In batch mode every step already is a randomised experiment: each
  block was independently kept or dropped, and we observe the batch loss. An
  exponentially-weighted least-squares fit  loss_t ~ a + sum_l b_l g_{t,l} + c t  over
  recent steps estimates each block's effect; importance_l = -b_l is how much the loss
  rises when block l is missing from the current (randomly thinned) network. It costs
  nothing: no extra forward pass, no probe set. Independent gates make the estimate
  unbiased; fitting all blocks jointly removes the other gates' noise, and the time term
  removes the downward trend of the loss. In row mode every sample has its own mask, so
  every sample is an experiment: one row per sample (its mask, its loss), each step
  weighing one unit. (The batch-mean mask would barely vary and rank blocks by noise.)
* Budgeted mapping. Importances (z-scored) become target survivals
  p_l = p_min + (1 - p_min) sigmoid(z_l - tau), with tau found by bisection so that the
  FLOP-weighted mean survival equals the budget (default: linear's, so training costs
  what linear costs). Survivals move towards their targets smoothly.
* Prune-aware (``target_keep``): the lowest-ranked blocks (at least one block kept per
  stage) are annealed to survival 0 between ``WARMUP`` and ``ANNEAL_END`` of training and
  stay there; the rest of training then trains exactly the network that
  ``sdprune prune --keep`` will cut out (with the paper's scaling a block at survival 0
  evaluates to act(shortcut(x)), the removed block). The budget still holds over the
  whole network: the kept blocks are fitted so that the FLOP-weighted mean over all
  blocks, the excluded ones at their annealed survival, is the budget. Where even the
  kept blocks always on execute less (keep 0.25 of a 0.75 budget), they run at 1 and
  ``summary()`` reports the executed fraction obtained and ``budget_feasible: False``.

* Retrofit (a network that is already trained, ``start`` and ``ranking`` given): the
  blocks to exclude are chosen once, at step 0, from ``ranking`` (the caller's: `sdprune
  train` ranks with ``prune.retrofit``: the best of the measured criteria on validation, or
  with `--criterion C` prune's one-shot choice), and annealed from their trained survival
  towards 0 from step 0 (the target falls linearly; survivals follow it with the ``RELAX``
  lag) and cut to exactly 0 at ``anneal_end`` (default ``RETROFIT_ANNEAL_END``); the kept blocks keep
  their trained survival (the default budget: what the pruned network executes) or are
  fitted to ``target_survival``. Waiting for the regression to warm up would spend the
  short fine-tune on a network that is about to lose blocks anyway; the trained network
  already says which blocks it needs.

The feedback is deliberate: a block that gets lower survival is dropped more often, the
network learns to do without it, and its measured importance falls further. After
training the blocks with low survival are the ones the network has learned to live
without.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sdprune.choices import RETROFIT_ANNEAL_END  # retrofit: excluded blocks reach survival 0 here
from sdprune.depth.schedule import get_survival, set_survival, survival_schedule
from sdprune.depth.select import select_blocks, target_count
from sdprune.depth.structure import all_block_names, block_layout
from sdprune.errors import SdpruneError

WARMUP = 0.15        # fraction of training with the initial (linear) survival, gathering data
ANNEAL_END = 0.6     # prune-aware: excluded blocks reach survival 0 here
HALF_LIFE = 0.08     # of total steps: memory of the regression
RELAX = 0.05         # of total steps: time constant of survival moving to its target
RIDGE = 1e-3


def budget_mean(survival: Tensor, weights: Tensor) -> float:
    """The FLOP-weighted mean survival: the expected fraction of block compute executed."""
    return float((survival * weights).sum() / weights.sum())


def fit_budget(scores: Tensor, target: float, weights: Tensor, p_min: float) -> Tensor:
    """Survivals p_min + (1 - p_min) sigmoid(scores - tau) whose weighted mean is ``target``."""
    if scores.numel() == 0:
        return scores.clone()
    target = min(max(target, p_min), 1.0)
    lo, hi = float(scores.min()) - 50.0, float(scores.max()) + 50.0
    for _ in range(80):  # bisection on tau: the weighted mean decreases as tau grows
        tau = 0.5 * (lo + hi)
        p = p_min + (1 - p_min) * torch.sigmoid(scores - tau)
        if budget_mean(p, weights) > target:
            lo = tau
        else:
            hi = tau
    return p_min + (1 - p_min) * torch.sigmoid(scores - 0.5 * (lo + hi))


def shift_to_budget(survival: Tensor, target: float, weights: Tensor, p_min: float) -> Tensor:
    """Add one constant to every survival (clipped to [p_min, 1]) to meet the budget."""
    lo, hi = -1.0, 1.0
    for _ in range(60):
        c = 0.5 * (lo + hi)
        if budget_mean((survival + c).clamp(p_min, 1.0), weights) > target:
            hi = c
        else:
            lo = c
    return (survival + 0.5 * (lo + hi)).clamp(p_min, 1.0)


def select_kept(importance: Tensor, layout: list[dict], n_keep: int) -> list[int]:
    """Indices of the blocks ``sdprune prune --keep-blocks n_keep`` would keep if survival
    ranked them like ``importance``: the same selection code, so the two always agree."""

    rows = [{**row, "survival": float(v)} for row, v in zip(layout, importance)]
    kept = set(select_blocks(rows, "survival", keep_blocks=n_keep))
    return [i for i, row in enumerate(layout) if row["name"] in kept]


class LearnedSurvival:
    """Owns the survival probabilities of a model during training (see module doc).

    ``p_last`` sets the linear schedule it starts from (and the default budget, its
    mean); ``target_survival`` the budget; ``target_keep`` the fraction of blocks a
    prune-aware run keeps; ``p_min`` the lowest survival a block may get.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], *, p_last: float = 0.5,
                 target_survival: float | None = None, target_keep: float | None = None,
                 p_min: float = 0.05, start: Sequence[float] | None = None,
                 ranking: Sequence[float] | None = None, anneal_end: float | None = None) -> None:
        self.model = model
        # a retrofit's (its ranking may come later, from a resumed state): in (0, 1]
        if anneal_end is not None and not 0.0 < anneal_end <= 1.0:
            raise ValueError(f"anneal_end must be in (0, 1], got {anneal_end}")
        self.retrofit_anneal_end = RETROFIT_ANNEAL_END if anneal_end is None else anneal_end
        self.layout = block_layout(model, input_shape)
        self.names = [row["name"] for row in self.layout]
        n = len(self.names)
        flops = torch.tensor([float(row["flops"]) for row in self.layout])
        self.weights = flops if float(flops.sum()) > 0 else torch.ones(n)
        linear = torch.tensor(survival_schedule("linear", n, p_last))
        self.p_min = p_min
        # --target-keep is a fraction of the architecture's blocks, as `sdprune prune --keep` is
        # (a network adopted already pruned has fewer left)
        total = len(all_block_names(model))
        self.n_keep = target_count(total, target_keep, None, present=n) if target_keep is not None else None
        # Retrofit: survivals start where the trained network has them; with a ranking and a
        # keep target, the excluded blocks are fixed now (see the module doc).
        self.start = torch.tensor(list(start), dtype=torch.float64) if start is not None else None
        self.ranking = torch.tensor(list(ranking), dtype=torch.float64) if ranking is not None else None
        if self.ranking is not None and (self.start is None or self.n_keep is None or len(self.ranking) != n):
            raise ValueError("a step-0 ranking needs start survivals, a keep target and one score per block")
        self.excluded: list[int] = []
        if self.ranking is not None:
            kept = select_kept(self.ranking.float(), self.layout, self.n_keep)
            self.excluded = [i for i in range(n) if i not in kept]
        self.hold_kept = self.ranking is not None and target_survival is None
        if target_survival is not None:
            self.target = target_survival
        elif self.ranking is not None:  # what the pruned network executes at its trained survivals
            kept_start = self.start.float().clone()
            kept_start[self.excluded] = 0.0
            self.target = budget_mean(kept_start, self.weights)
        else:
            self.target = budget_mean(linear, self.weights)
        if n and self.target < p_min:  # fit_budget would silently run above the budget
            raise SdpruneError(f"--p-min {p_min} is above the survival budget {self.target:.4g}; "
                               "lower --p-min or raise --target-survival")
        stages = len({row["stage"] for row in self.layout})
        if self.n_keep is not None and self.n_keep < stages:  # fail now, not when annealing starts
            raise SdpruneError(f"--target-keep {target_keep} keeps {self.n_keep} blocks; "
                               f"this network needs at least {stages} (one per stage)")
        if self.start is not None:
            initial = self.start.float()
        else:
            initial = shift_to_budget(linear, self.target, self.weights, self.p_min) if n else linear
        set_survival(model, initial.tolist())
        # The survivals in float64 on the CPU: reading the float32 buffers back would sync a
        # GPU and round them, so a resumed run would drift from an uninterrupted one.
        self.current = initial.double()
        # regression sufficient statistics over x = [1, g_1..g_L, t]
        self.xtx = torch.zeros(n + 2, n + 2, dtype=torch.float64)
        self.xty = torch.zeros(n + 2, dtype=torch.float64)
        self.importance = torch.zeros(n, dtype=torch.float64)
        self.feasible = True  # prune-aware: whether the kept blocks can carry the budget

    # -- the trainer's hooks ---------------------------------------------------------
    def observe(self, step: int, gates: Tensor, loss: float | Tensor, total_steps: int) -> Tensor | None:
        """Record step ``step`` (of ``total_steps``)'s natural experiment; after warm-up, move the survivals.

        Batch mode: ``gates`` (L,) and the batch's mean ``loss``. Row mode: ``gates`` (L, N)
        and the N per-sample losses (a CPU tensor), one experiment per sample.
        Returns the new survival probabilities when they changed (for the gate sampler).
        """
        n = len(self.names)
        if n == 0:
            return None
        progress = step / total_steps
        x, y = self._design(progress, gates, loss)
        # Decay per step, and a step weighs one unit whatever its batch size: the memory
        # (HALF_LIFE) means the same in both modes.
        decay = 0.5 ** (1.0 / max(1.0, HALF_LIFE * total_steps))
        self.xtx.mul_(decay).add_(x.T @ x, alpha=1.0 / len(x))
        self.xty.mul_(decay).add_(x.T @ y, alpha=1.0 / len(x))
        every = max(1, total_steps // 400)
        warmup = 0.0 if self.ranking is not None else WARMUP  # retrofit anneals from step 0
        if progress < warmup or step % every:
            return None
        ridge = RIDGE * (float(self.xtx.diagonal().mean()) + 1e-12)
        coef = torch.linalg.solve(self.xtx + ridge * torch.eye(n + 2, dtype=torch.float64), self.xty)
        self.importance = -coef[1:n + 1]
        rate = min(1.0, every / max(1.0, RELAX * total_steps))
        new = self.current + rate * (self.update_targets(progress) - self.current)
        # the last update zeroes them too: an anneal_end past it (1, or near 1 in a short run)
        # still leaves exactly the network the prune cuts out
        if (progress >= self.anneal_end or step + every >= total_steps) and self.excluded:
            new[self.excluded] = 0.0  # exactly 0: these blocks now evaluate as removed
        self.current = new
        set_survival(self.model, new.tolist())
        return new

    @staticmethod
    def _design(t: float, gates: Tensor, loss: float | Tensor) -> tuple[Tensor, Tensor]:
        """Regression rows [1, g_1..g_L, t] and their losses: one row, or one per sample."""
        g = gates.double()
        if g.dim() == 2:  # row mode: (L, N) masks
            losses = loss.detach().double().flatten() if isinstance(loss, Tensor) else None
            if losses is None or losses.numel() != g.shape[1]:
                raise ValueError(f"row-mode gates of {g.shape[1]} samples need {g.shape[1]} per-sample losses")
            g = g.T
        else:
            losses = torch.tensor([float(loss.mean()) if isinstance(loss, Tensor) else float(loss)],
                                  dtype=torch.float64)
            g = g.unsqueeze(0)
        ones = torch.ones(len(g), 1, dtype=torch.float64)
        return torch.cat([ones, g, torch.full_like(ones, t)], dim=1), losses

    def update_targets(self, progress: float) -> Tensor:
        """Target survival of every block at this point of training.

        Prune-aware, before ``ANNEAL_END``, it also re-selects the excluded blocks from the
        current importances; from then on the selection is fixed.
        """
        # Retrofit: the trained network's ranking stands in for the regression until it warms up.
        imp = (self.ranking if self.ranking is not None and progress < WARMUP else self.importance).float()
        spread = float((imp - imp.median()).abs().median()) * 1.4826 + 1e-8  # robust std
        scores = (imp - imp.median()) / spread
        w = self.weights
        if self.n_keep is None:
            return fit_budget(scores, self.target, w, self.p_min).double()
        if self.ranking is not None:
            return self._retrofit_targets(progress, scores)
        if progress < ANNEAL_END or not self.excluded:
            kept = select_kept(imp, self.layout, self.n_keep)
            self.excluded = [i for i in range(len(imp)) if i not in kept]
        kept = [i for i in range(len(imp)) if i not in self.excluded]
        p = torch.zeros(len(imp))
        anneal = max(0.0, 1.0 - (progress - WARMUP) / (ANNEAL_END - WARMUP))
        if self.excluded:
            ex = torch.tensor(self.excluded)
            p[ex] = anneal * fit_budget(scores, self.target, w, self.p_min)[ex]
        # The budget is the whole network's: the kept blocks carry what the excluded ones no
        # longer execute, up to always on.
        carry = (self.target * float(w.sum()) - float((p * w).sum())) / float(w[kept].sum())
        self.feasible = carry <= 1.0 + 1e-9
        p[kept] = fit_budget(scores[kept], carry, w[kept], self.p_min) if carry < 1.0 else 1.0
        return p.double()

    @property
    def anneal_end(self) -> float:
        """Fraction of training at which the excluded blocks reach survival 0."""
        return self.retrofit_anneal_end if self.ranking is not None else ANNEAL_END

    def _retrofit_targets(self, progress: float, scores: Tensor) -> Tensor:
        """Excluded blocks: their trained survival, annealed linearly to 0 by ``anneal_end``.
        Kept blocks: the budget as it will be once the excluded blocks are gone."""
        w = self.weights
        kept = [i for i in range(len(scores)) if i not in self.excluded]
        p = torch.zeros(len(scores))
        anneal = max(0.0, 1.0 - progress / self.anneal_end)
        p[self.excluded] = anneal * self.start.float()[self.excluded]
        carry = self.target * float(w.sum()) / float(w[kept].sum())
        self.feasible = self.hold_kept or carry <= 1.0 + 1e-6
        if self.hold_kept:  # the default budget: the trained survivals stand
            p[kept] = self.start.float()[kept]
        elif carry >= 1.0:
            p[kept] = 1.0
        else:
            p[kept] = fit_budget(scores[kept], carry, w[kept], self.p_min)
        return p.double()

    # -- resume ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly (copies: ``observe`` updates in place)."""
        return {"current": self.current.clone(), "xtx": self.xtx.clone(), "xty": self.xty.clone(),
                "importance": self.importance.clone(), "excluded": list(self.excluded), "target": self.target,
                "budget_feasible": self.feasible, "executed_fraction": self.executed_fraction(),
                "start": None if self.start is None else self.start.clone(),
                "ranking": None if self.ranking is None else self.ranking.clone(), "hold_kept": self.hold_kept}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s copy; the model's survivals are set to match."""
        if not state:
            return
        self.xtx, self.xty = state["xtx"].clone(), state["xty"].clone()
        self.importance = state["importance"].clone()
        self.excluded = list(state["excluded"])
        self.target = float(state["target"])
        self.feasible = bool(state.get("budget_feasible", True))  # absent before it was recorded
        if state.get("ranking") is not None:  # a retrofit: its step-0 ranking, not a new one
            n = len(self.names)
            if any(len(state[k]) != n for k in ("start", "ranking")) or \
                    any(not 0 <= i < n for i in state["excluded"]):
                raise SdpruneError(f"the saved retrofit state does not fit this network's {n} blocks")
            self.start, self.ranking = state["start"].clone(), state["ranking"].clone()
            self.hold_kept = bool(state["hold_kept"])
        if "current" in state:
            self.current = state["current"].clone()
            set_survival(self.model, self.current.tolist())
        else:  # a checkpoint from before it was saved: the (rounded) survivals of its weights
            self.current = torch.tensor(get_survival(self.model), dtype=torch.float64)

    def executed_fraction(self) -> float:
        """The expected fraction of block compute executed now (the budget, where feasible)."""
        return budget_mean(self.current, self.weights.double()) if len(self.names) else 1.0

    def summary(self) -> dict:
        """What metrics.jsonl records of the controller each epoch (JSON-able)."""
        return {"importance": [round(float(v), 6) for v in self.importance],
                "target_survival": self.target, "executed_fraction": round(self.executed_fraction(), 6),
                "budget_feasible": self.feasible, "excluded": [self.names[i] for i in self.excluded]}
