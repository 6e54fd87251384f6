"""Every torchvision family's full-size variants, on the meta device only (shapes: nothing
initialised, nothing downloaded), through the table of tests/nets/family_rows.py: each
variant's prior survivals are torchvision's default drop rates and its keys convert both ways
and are told apart from its siblings'; one variant per family (the row's own) is also built by
torchvision's public constructor and converted from that network's own state."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.regnet import BlockParams

from sdprune.nets import detect_arch, from_gated, to_gated
from sdprune.nets.layout import Layout, torchvision_layout
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, families, guess_torchvision
from tests.nets.family_rows import (COVERED_ELSEWHERE, IDS, ROWS, Row, check_rule, endpoint, maxvit_rates, residual_rates,
                                    swin_rates)

FULL_SIZE = [(row, name) for row in ROWS for name in row.defaults]


def test_every_family_with_stochastic_depth_has_a_row():
    assert {f.name for f in families()} == {r.family for r in ROWS} | COVERED_ELSEWHERE
    for row in ROWS:
        family = next(f for f in families() if f.name == row.family)
        assert set(row.defaults) == set(family.archs)  # every variant is checked on the meta device
        assert row.model in row.defaults  # the variant built by torchvision's constructor below


@pytest.fixture
def regnet_on_meta(monkeypatch):
    """torchvision's RegNet builders compute their widths with tensors, which the meta device
    cannot read back: here they compute them on the CPU (as sdprune's RegNet adapter does)."""
    init = BlockParams.from_init_params.__func__

    def on_cpu(cls, **kwargs):
        with torch.device("cpu"):
            return init(cls, **kwargs)
    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.fixture
def no_init(monkeypatch):
    """torch.nn.init's functions leave their tensor as it is: on the meta device they draw
    nothing, yet their decompositions cost most of a build (EfficientNet-B7: 2.7 s, 0.7 s
    without). Shapes, keys and drop rates are the same either way."""
    for name in dir(nn.init):
        if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name)):
            monkeypatch.setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)


def convert_both_ways(state: dict, name: str, lay: Layout) -> None:
    """``state`` (torchvision's keys) converts to exactly the gated network's keys and back, and
    is recognised as ``name``."""
    gated = to_gated(state, name)
    assert list(gated) == list(lay.gated_keys)  # every key of the gated network, nothing else
    assert sum(v.numel() for k, v in gated.items() if k not in lay.made and not k.endswith(".survival")) == \
        sum(v.numel() for v in state.values())  # torchvision's tensors, no more
    back = from_gated(gated, name)
    assert list(back) == list(state) and all(back[k].shape == v.shape for k, v in state.items())
    assert name in guess_torchvision(state) and detect_arch(state) == name


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_one_variant_per_family_converts_from_torchvisions_own_constructor(row, regnet_on_meta, no_init):
    name = row.model
    with torch.device("meta"):
        tv = getattr(tvm, TORCHVISION_ARCHS[name])(weights=None)
    lay = torchvision_layout(name)  # built as the registry's builder builds it (test_nets runs that one)
    check_rule(row, tv, row.defaults[name])  # torchvision's linear rule, up to the variant's rate
    # each gated unit's torchvision rate (the tiny configurations check by a forward that the
    # row reads the ones torchvision applies)
    rates = row.rates(tv) or [0.0] * len(lay.blocks)
    assert [b.prior for b in lay.blocks] == pytest.approx([1 - p for p in rates])
    assert rates == pytest.approx(rates_from_layout(row, lay, row.defaults[name]))  # what the test below relies on
    convert_both_ways(tv.state_dict(), name, lay)


def rates_from_layout(row: Row, lay: Layout, drop: float) -> list[float]:
    """Each gated unit's drop rate by the row's rule up to ``drop``, from the layout's names alone."""
    names = [b.name for b in lay.blocks]
    if not drop:
        return [0.0] * len(names)
    if row.rates in (swin_rates, maxvit_rates):  # a rate per Swin block (2 units) or MaxViT layer (5)
        per = 2 if row.rates is swin_rates else 5
        return [endpoint(drop, i // per, len(names) // per) for i in range(len(names))]
    if row.rates is residual_rates:  # counted over every MBConv / FusedMBConv block, residual or not
        every = list(dict.fromkeys(k.partition(".block.")[0] for k in lay.shapes if ".block." in k))
        return [row.rule(drop, every.index(n), len(every)) for n in names]
    assert row.rule is not None, f"{row.family}: a rule to read its rates from the layout"
    return [row.rule(drop, i, len(names)) for i in range(len(names))]


@pytest.mark.parametrize("row,name", FULL_SIZE, ids=[n for _, n in FULL_SIZE])
def test_every_full_size_variant_has_torchvisions_priors_and_converts(row, name, no_init):
    """One meta-device build per variant (the layout's); its torchvision-keyed state is made from
    the layout's shapes, which the test above checks against torchvision's own network."""
    lay = torchvision_layout(name)
    rates = rates_from_layout(row, lay, row.defaults[name])
    assert [b.prior for b in lay.blocks] == pytest.approx([1 - p for p in rates])
    assert len(lay.gated_keys) == len(lay.shapes) + len(lay.blocks) + len(lay.made)  # + a survival per block
    convert_both_ways({k: torch.empty(s, device="meta") for k, s in lay.shapes.items()}, name, lay)
