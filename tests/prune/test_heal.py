"""Healing: BatchNorm re-estimation and distilled fine-tuning repair a damaged network."""

from __future__ import annotations

import copy

import pytest
import torch

from sdprune.data.images import iterate_batches, normalize
from sdprune.depth.block import GatedBlock
from sdprune.depth.gates import expected_gates
from sdprune.depth.structure import remove_blocks
from sdprune.prune.heal import HealSpec, bn_statistics, finetune, heal, heal_bn, recalibrate_bn
from sdprune.train.evaluate import evaluate

CUT = ["stages.0.1", "stages.1.1", "stages.1.2", "stages.2.1"]


def damaged(trained):
    model, data = trained
    return remove_blocks(copy.deepcopy(model), CUT), data


def test_bn_recalibration_heals_a_pruned_network(trained):
    model, data = damaged(trained)
    before = evaluate(model, data.val, data.mean, data.std)
    seen = recalibrate_bn(model, data, "cpu", batches=10, batch_size=64)
    after = evaluate(model, data.val, data.mean, data.std)
    assert seen == 640
    assert after["loss"] < before["loss"] - 0.05
    assert not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_bn_statistics_are_a_cumulative_average_of_eval_time_activations(trained):
    model, data = damaged(trained)
    recalibrate_bn(model, data, "cpu", batches=3, batch_size=50, seed=7)
    # the stem's BatchNorm must hold the plain mean of its inputs over the 3 batches
    gen = torch.Generator().manual_seed(7)
    batches = [images for _, (images, _) in zip(range(3), iterate_batches(data.train, 50, gen))]
    with torch.no_grad():
        conv = model.stem[0](normalize(torch.cat(batches), data.mean, data.std))
    assert torch.allclose(model.stem[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)


def test_expected_gates_train_the_evaluated_function():
    torch.manual_seed(0)
    block = GatedBlock(torch.nn.Linear(4, 4))
    block.survival.fill_(0.25)
    x = torch.randn(3, 4)
    expected = block.eval()(x)
    block.train()
    with expected_gates(block):
        assert torch.allclose(block(x), expected)
        assert block.training and block.branch.training  # nobody's mode is toggled
    assert block.gate is None
    assert torch.allclose(block(x), x + block.branch(x))  # plain training again after the scope


def test_distilled_finetune_improves_a_damaged_network(trained):
    teacher, _ = trained
    model, data = damaged(trained)
    recalibrate_bn(model, data, "cpu", batches=10)
    before = evaluate(model, data.val, data.mean, data.std)
    result = finetune(model, teacher, data, epochs=1, device="cpu", lr=0.02, batch_size=64)
    after = evaluate(model, data.val, data.mean, data.std)
    assert result["steps"] == len(data.train) // 64
    assert after["loss"] < before["loss"] and after["acc"] >= before["acc"]
    assert not model.training
    # the teacher is only read
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                  trained[0].state_dict().values()))


def test_finetune_without_distillation_and_its_guard(trained):
    model, data = damaged(trained)
    result = finetune(model, None, data, epochs=0.25, device="cpu", distill=False, batch_size=64)
    assert result["steps"] == round(0.25 * (len(data.train) // 64)) and result["loss"] > 0
    with pytest.raises(ValueError):
        finetune(model, None, data, epochs=0.1, distill=True)


def test_heal_bn_keeps_re_estimated_statistics_that_help_validation(trained):
    model, data = damaged(trained)
    record = heal_bn(model, data, "cpu", batches=10)
    assert record["statistics"] == "recalibrated"
    assert record["after"]["val"]["acc"] > record["before"]["val"]["acc"]
    assert evaluate(model, data.val, data.mean, data.std) == record["after"]["val"]
    assert set(record["before"]) == set(record["after"]) == {"val", "test"}  # test reported, not used


def test_heal_bn_restores_trained_statistics_where_re_estimation_hurts(trained, zeros_only):
    model, data = copy.deepcopy(trained[0]), trained[1]  # whole, so its trained statistics fit
    saved = bn_statistics(model)
    record = heal_bn(model, zeros_only(data), "cpu", batches=10)
    assert record["after"]["val"]["acc"] < record["before"]["val"]["acc"]  # re-estimated on zeros: worse
    assert record["statistics"] == "trained" and not model.training
    after = bn_statistics(model)
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    assert evaluate(model, data.val, data.mean, data.std) == record["before"]["val"]


def test_heal_with_nothing_asked_does_nothing(trained):
    model, data = damaged(trained)
    untouched = copy.deepcopy(model)
    assert heal(model, data, HealSpec(bn=False)) == {"finetune": None, "bn": None}
    for a, b in zip(model.state_dict().values(), untouched.state_dict().values()):
        assert torch.equal(a, b)  # nothing asked, nothing done


@pytest.mark.parametrize("helps", [True, False])
def test_heal_ends_with_the_statistics_its_bn_step_chose(trained, monkeypatch, helps):
    """Fine-tune, then BN: re-estimated statistics when they help val, else the fine-tune's own."""
    from sdprune.prune import heal as heal_mod

    model, data = damaged(trained)
    monkeypatch.setattr(heal_mod, "improves", lambda new, old: helps)
    tuned = {}
    real_finetune = heal_mod.finetune

    def finetune_then_look(network, *args, **kwargs):
        record = real_finetune(network, *args, **kwargs)
        tuned.update(bn_statistics(network))
        return record

    monkeypatch.setattr(heal_mod, "finetune", finetune_then_look)
    steps = heal(model, data, HealSpec.of("finetune", 0.5), "cpu", teacher=trained[0])
    assert steps["finetune"]["steps"] > 0 and steps["bn"]["statistics"] == ("recalibrated" if helps else "trained")
    if helps:  # the last step re-estimated BN exactly: doing it again changes nothing
        expected = copy.deepcopy(model)
        recalibrate_bn(expected, data, "cpu")
        expected = bn_statistics(expected)
    else:  # the fine-tune's statistics are back, exactly
        expected = tuned
    final = bn_statistics(model)
    assert final.keys() == expected.keys()
    for name in final:
        assert torch.allclose(final[name].float(), expected[name].float(), atol=1e-5), name
    assert any(not torch.equal(tuned[n], final[n]) for n in final if "running" in n) == helps


def _tiny_images(n: int):
    """``n`` blank 8x8 grey images of 2 classes: tv_resnet18 shrinks them to a 1x1 feature map."""
    from sdprune.data.bundle import DataBundle
    from sdprune.data.images import ImageSet

    images = ImageSet(torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.arange(n) % 2)
    return DataBundle("imagefolder", images, images, images, ["a", "b"], [0.5], [0.25])


def test_bn_recalibration_leaves_out_a_last_batch_of_one_image():
    """129 images in batches of 128: the one-image remainder cannot give BatchNorm statistics (1x1 maps)."""
    from sdprune.nets.registry import create_model

    model = create_model("tv_resnet18", num_classes=2, in_channels=1)
    assert recalibrate_bn(model, _tiny_images(129), "cpu", batches=20, batch_size=128) == 128
    assert not model.training


def test_a_finetune_whose_batches_leave_batchnorm_one_value_is_refused_up_front():
    from sdprune.errors import SdpruneError
    from sdprune.nets.registry import create_model

    model = create_model("tv_resnet18", num_classes=2, in_channels=1)
    with pytest.raises(SdpruneError, match="fine-tuning on batches of 1 images leaves BatchNorm one value"):
        finetune(model, None, _tiny_images(1), distill=False)


def test_a_network_without_batchnorm_says_bn_healing_does_not_apply():
    """ConvNeXt (LayerNorm) has no statistics to re-estimate: the record and the table say so, nothing pretends."""
    from sdprune.cli.prune import _caption, _rows
    from sdprune.data.bundle import DataBundle, channel_stats
    from sdprune.data.images import ImageSet
    from sdprune.nets.registry import create_model
    from sdprune.prune.heal import NO_BATCHNORM
    from sdprune.prune.pipeline import cut_and_heal, reference

    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = ImageSet(images, torch.arange(12) % 3)
    data = DataBundle("random", split, split, split, ["a", "b", "c"], *channel_stats(images))
    torch.manual_seed(0)
    model = create_model("tv_convnext_tiny", 3, block_setting=[[8, 16, 2], [16, None, 2]]).eval()
    before = copy.deepcopy(model.state_dict())
    record = heal_bn(model, data)
    assert record["statistics"] == "none" and record["note"] == NO_BATCHNORM
    assert record["before"] == record["after"]  # one measurement, not a heal
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ref = reference(model, data, HealSpec())
    assert ref.statistics == "none" and ref.healed == ref.trained
    pruned = cut_and_heal(model, ["features.1.1"], data, HealSpec())
    assert pruned.bn["statistics"] == "none" and pruned.after == pruned.unhealed
    summary = {"blocks": {"before": 4, "after": 3}, "params": {"before": 1, "after": 1},
               "flops": {"before": 1, "after": 1}, "reference": ref.record(), **pruned.record(ref)}
    names = [row[0] for row in _rows(summary)]
    assert names == ["unpruned, as trained *", "pruned, unhealed *"]  # no "BN re-estimated" row
    assert NO_BATCHNORM in _caption(summary)
