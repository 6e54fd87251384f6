"""Training configuration: recipes, command-line overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdprune.errors import SdpruneError
from sdprune.train.config import TrainConfig, resolve_config

MODELS = Path(__file__).resolve().parents[2] / "models"
RECIPES = sorted(MODELS.glob("*.toml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"quickstart.toml", "cifar10-resnet110.toml", "cifar100-resnet110.toml",
            "svhn-cifar_resnet152.toml", "fashion-mnist-resnet32.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_into_a_config(path):
    config = resolve_config(str(path), {})
    assert isinstance(config, TrainConfig)
    assert path.read_text().startswith("#")  # every recipe says where it comes from
    from sdprune.nets.registry import model_info
    model_info(config.model)  # names a registered architecture


def test_quickstart_is_the_default():
    assert resolve_config(str(MODELS / "quickstart.toml"), {}) == TrainConfig()


@pytest.mark.parametrize("name,dataset", [("cifar10-resnet110", "cifar10"), ("cifar100-resnet110", "cifar100")])
def test_paper_cifar_recipes(name, dataset):
    c = resolve_config(str(MODELS / f"{name}.toml"), {})
    assert (c.model, c.dataset, c.epochs, c.batch_size) == ("resnet110", dataset, 500, 128)
    assert (c.lr, c.lr_schedule, c.lr_milestones) == (0.1, "step", (250, 375))
    assert (c.momentum, c.nesterov, c.weight_decay) == (0.9, True, 1e-4)
    assert (c.survival, c.p_last, c.drop_mode) == ("linear", 0.5, "batch")


def test_paper_svhn_recipe():
    c = resolve_config(str(MODELS / "svhn-cifar_resnet152.toml"), {})
    assert (c.model, c.dataset, c.epochs, c.batch_size) == ("cifar_resnet152", "svhn", 50, 128)
    assert (c.lr, c.lr_milestones, c.survival, c.p_last) == (0.1, (30, 35), "linear", 0.5)
    assert (c.momentum, c.nesterov, c.weight_decay, c.drop_mode) == (0.9, True, 1e-4, "batch")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return str(path)


def test_flags_override_the_recipe_which_overrides_defaults(tmp_path):
    recipe = write(tmp_path, 'model = "resnet56"\nepochs = 7\np_last = 0.7\nlr_milestones = [3, 5]\n')
    c = resolve_config(recipe, {"epochs": 2, "p_last": None, "seed": 4})
    assert (c.model, c.epochs, c.p_last, c.seed, c.lr_milestones) == ("resnet56", 2, 0.7, 4, (3, 5))
    assert c.batch_size == TrainConfig().batch_size


def test_adamw_brings_its_own_rate_and_decay_unless_given(tmp_path):
    from sdprune.train.config import ADAMW_DEFAULTS, ADAMW_FINETUNE_LR, FINETUNE_DEFAULTS

    c = resolve_config(None, {"optimizer": "adamw"})
    assert (c.lr, c.weight_decay) == (ADAMW_DEFAULTS["lr"], ADAMW_DEFAULTS["weight_decay"]) != (0.1, 1e-4)
    assert resolve_config(None, {"optimizer": "adamw", "lr": 3e-3}).lr == 3e-3
    recipe = write(tmp_path, 'optimizer = "adamw"\nweight_decay = 0.3\n')
    assert resolve_config(recipe, {}).weight_decay == 0.3 and resolve_config(recipe, {}).lr == ADAMW_DEFAULTS["lr"]
    weights = tmp_path / "w.pt"
    tuned = resolve_config(None, {"optimizer": "adamw", "init": str(weights)})  # a fine-tune: a tenth
    assert tuned.lr == ADAMW_FINETUNE_LR and tuned.epochs == FINETUNE_DEFAULTS["epochs"]
    assert resolve_config(None, {"init": str(weights)}).lr == FINETUNE_DEFAULTS["lr"]  # SGD's unchanged
    assert resolve_config(None, {}).lr == TrainConfig().lr


def test_a_run_saved_before_later_fields_resumes_as_it_trained(tmp_path):
    import json

    from sdprune.train.runs import saved_config

    saved = TrainConfig(model="resnet20", epochs=1).to_dict()
    for added in ("optimizer", "criterion", "anneal_end"):  # fields later than the run
        del saved[added]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = saved_config(tmp_path / "config.json", TrainConfig())
    assert config.optimizer == "sgd" and config.model == "resnet20"
    assert config.criterion is None and config.anneal_end is None  # the retrofit as it was


def test_command_line_flags_override_the_recipe(tmp_path, monkeypatch):
    """Through the real parser and `sdprune train`'s own mapping from flags to config."""
    import sdprune.train.loop
    from sdprune.cli import build_parser
    from sdprune.report import Reporter

    seen = {}

    def fake_train(config, reporter=None, resume=None, rank_blocks=None):
        seen["config"] = config
        return {"final": {}}

    monkeypatch.setattr(sdprune.train.loop, "train", fake_train)
    recipe = write(tmp_path, 'model = "resnet56"\ndataset = "synthetic"\nepochs = 9\nlr = 0.05\n'
                             'drop_mode = "row"\namp = true\n')
    args = build_parser().parse_args(["train", "--recipe", recipe, "--epochs", "3", "--lr-milestones", "1,2",
                                      "--no-amp", "--drop-mode", "batch", "--download"])
    assert args.run(args, Reporter(quiet=True)) == 0
    c = seen["config"]
    assert (c.model, c.dataset, c.lr) == ("resnet56", "synthetic", 0.05)       # from the recipe
    assert (c.epochs, c.lr_milestones, c.amp, c.drop_mode, c.download) == (3, (1, 2), False, "batch", True)
    assert c.seed == 0                                                         # default


def test_the_retrofit_mechanism_flags_reach_the_config_and_momentum_under_adamw_warns(tmp_path, monkeypatch,
                                                                                       capsys):
    import sdprune.train.loop
    from sdprune.cli import build_parser
    from sdprune.report import Reporter

    seen = []
    monkeypatch.setattr(sdprune.train.loop, "train", lambda config, *a, **k: seen.append(config) or {"final": {}})
    parse = build_parser().parse_args
    args = parse(["train", "--init", "w.th", "--dataset", "digits", "--survival", "learned", "--target-keep", "0.5",
                  "--criterion", "ablation", "--anneal-end", "0.2"])
    assert args.run(args, Reporter(quiet=True)) == 0
    assert (seen[0].criterion, seen[0].anneal_end) == ("ablation", 0.2)
    capsys.readouterr()
    for flags, warned in ((["--optimizer", "adamw", "--momentum", "0.8"], True), (["--optimizer", "adamw"], False),
                          (["--momentum", "0.8"], False)):
        args = parse(["train", "--dataset", "digits", *flags])
        assert args.run(args, Reporter(quiet=True)) == 0
        assert ("--momentum is SGD's" in capsys.readouterr().err) == warned


@pytest.mark.parametrize("text,message", [
    ('model = "resnet20"\nepoch = 3\n', "unknown key.*epoch"),
    ('model = "resnet20"\nepochs = \n', "not valid TOML"),
    ('epochs = 0\n', "--epochs"),
    ('p_last = 1.5\n', "--p-last"),
    ('survival = "cubic"\n', "--survival"),
])
def test_bad_recipes_are_rejected(tmp_path, text, message):
    with pytest.raises(SdpruneError, match=message):
        resolve_config(write(tmp_path, text), {})


def test_missing_recipe(tmp_path):
    with pytest.raises(SdpruneError, match="not found"):
        resolve_config(str(tmp_path / "nope.toml"), {})


@pytest.mark.parametrize("values,message", [
    ({"epochs": 0}, "--epochs"), ({"batch_size": 0}, "--batch-size"), ({"lr": 0.0}, "--lr"),
    ({"eval_batch_size": 0}, "^eval_batch_size must be at least 1"),
    ({"image_size": 0}, "--image-size"), ({"image_size": -8}, "--image-size"),
    ({"lr": float("nan")}, "--lr"), ({"p_last": 0.0}, "--p-last"), ({"p_last": 1.5}, "--p-last"),
    ({"momentum": -0.1}, "--momentum"), ({"momentum": 1.0}, "--momentum"), ({"momentum": float("nan")}, "--momentum"),
    ({"weight_decay": -1e-4}, "--weight-decay"), ({"weight_decay": float("nan")}, "--weight-decay"),
    ({"drop_mode": "pixel"}, "--drop-mode"), ({"lr_schedule": "poly"}, "--lr-schedule"),
    ({"optimizer": "adam"}, "--optimizer must be one of sgd, adamw, got 'adam'"),
    ({"label_smoothing": 1.0}, "--label-smoothing"), ({"target_keep": 0.5}, "needs --survival learned"),
    ({"target_survival": 0.5}, "needs --survival learned"),
    ({"survival": "learned", "target_survival": 0.0}, "--target-survival"), ({"p_min": 1.0}, "--p-min"),
    ({"survival": "learned", "target_keep": float("nan")}, "--target-keep"),
    ({"survival": "learned", "target_survival": 0.04}, "--target-survival 0.04 is below --p-min 0.05"),
    ({"survival": "learned", "target_survival": 0.3, "p_min": 0.4}, "is below --p-min 0.4"),
    ({"lr_milestones": (5, -1)}, "--lr-milestones"),
    ({"criterion": "ablation"}, "^--criterion shapes a prune-aware retrofit: it needs --init with"),
    ({"anneal_end": 0.2, "init": "w.th", "survival": "learned"}, "^--anneal-end shapes a prune-aware retrofit"),
    ({"criterion": "depth"}, "^--criterion must be one of best, ablation, influence, norm, got 'depth'"),
    ({"anneal_end": 0.0}, r"^--anneal-end must be in \(0, 1\]"), ({"anneal_end": float("nan")}, "--anneal-end"),
])
def test_validation_names_the_flag(values, message):
    with pytest.raises(SdpruneError, match=message) as err:
        TrainConfig(**values)
    assert "\n" not in str(err.value)  # one line


def test_edge_values_are_legal():
    """Plain SGD (momentum 0, Nesterov on by default: trained without it), no decay, a budget at p_min."""
    TrainConfig(momentum=0.0)
    TrainConfig(weight_decay=0.0, image_size=1, eval_batch_size=1)
    TrainConfig(survival="learned", target_survival=0.05, p_min=0.05)


def test_config_round_trips_through_a_dict():
    c = TrainConfig(model="resnet44", lr_milestones=(3, 4), survival="uniform", p_last=0.9)
    d = c.to_dict()
    assert d["lr_milestones"] == [3, 4]
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(SdpruneError, match="unknown config key"):
        TrainConfig.from_dict({**d, "colour": "red"})


def test_train_refuses_zero_epochs_pointing_at_adopt():
    from sdprune.train.config import refuse_no_training

    refuse_no_training({"epochs": None})  # not given: the default
    with pytest.raises(SdpruneError, match=r"^--epochs must be at least 1; .* use `sdprune adopt WEIGHTS`$"):
        refuse_no_training({"epochs": 0, "init": "run"})
