"""The values a user chooses among are defined once, and the modules that act on them use those."""

from __future__ import annotations

import inspect

import pytest

from sdprune import choices
from sdprune.errors import SdpruneError


def test_the_modules_that_act_on_a_choice_hold_the_same_values():
    from sdprune.data import bundle
    from sdprune.depth import gates, schedule, select
    from sdprune.prune import heal, stats, sweep
    from sdprune.train import config, distributed

    assert bundle.DATASETS is choices.DATASETS and bundle.DATA_MODES is choices.DATA_MODES
    assert schedule.SCHEDULES is choices.SCHEDULES and gates.DROP_MODES is choices.DROP_MODES
    assert select.CRITERIA is choices.CRITERIA and heal.HEAL_MODES is choices.HEAL_MODES
    assert distributed.GRAD_SYNCS is choices.GRAD_SYNCS and config.check_seed is choices.check_seed
    default = {f: {k: v.default for k, v in inspect.signature(f).parameters.items()}
               for f in (stats.score_checkpoint, sweep.sweep_checkpoint)}
    assert default[stats.score_checkpoint]["max_images"] == choices.STATS_IMAGES
    assert default[sweep.sweep_checkpoint]["keeps"] == choices.SWEEP_KEEPS
    assert default[sweep.sweep_checkpoint]["criteria"] == choices.SWEEP_CRITERIA
    assert set(choices.SWEEP_CRITERIA) <= set(choices.CRITERIA)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, "3", True])
def test_a_seed_no_generator_takes_is_refused(seed):
    with pytest.raises(SdpruneError, match="--seed must be a whole number"):
        choices.check_seed(seed)


def test_the_largest_seed_is_taken_by_torch():
    import torch

    choices.check_seed(choices.MAX_SEED)
    torch.Generator().manual_seed(choices.MAX_SEED)  # what the bound promises
