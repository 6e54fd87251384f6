"""`sdprune adopt`: a network trained elsewhere becomes an sdprune run, with no training.

The cheapest path there is: a user holding weights (the public CIFAR ResNets, torchvision's,
another sdprune run) binds them to a dataset, and `eval`, `stats`, `prune` (BatchNorm
healing or a distilled fine-tune), `sweep`, `export` and `train --init` then work on the
run folder as on any run. The checkpoint is an ordinary training checkpoint at epoch 0:
the weights as adopted (``sdprune.train.adopt``: the adopted network computes exactly what
the original does), the data's classes and the normalisation the weights expect (ImageNet's
for a state dict, which cannot say; ``--mean/--std`` override), and the validation and
test accuracy measured on that data. It holds no optimizer state: there is nothing to
resume, so `train --resume` refuses it, and `train --init RUN` starts a retrofit from it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sdprune.errors import SdpruneError
from sdprune.files import check_output, input_path
from sdprune.report import Reporter
from sdprune.train.adopt import adopt
from sdprune.train.checkpoint import save_checkpoint, write_json
from sdprune.train.config import TrainConfig
from sdprune.train.evaluate import evaluate, resolve_device
from sdprune.train.lock import locked_run
from sdprune.train.loop import adopted_normalization, open_data
from sdprune.train.runs import CHECKPOINT, CONFIG, new_run_dir, record_run, write_metrics
from sdprune.train.trainer import checkpoint_meta


def adopt_run(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Write a run folder holding ``config.init``'s network bound to ``config``'s dataset.

    ``config.epochs`` must be 0 (nothing is trained); ``config.model``, when given, must be
    the file's architecture; ``config.mean/std`` replace the normalisation the weights are
    assumed to expect. Every check (the file, the data, the output folder) runs before
    anything is written: a refused adoption leaves nothing behind. Returns the summary
    (run, checkpoint, model, source, accuracies).
    """
    reporter = reporter or Reporter(quiet=True)
    if config.init is None or config.epochs != 0:
        raise ValueError("adopt_run needs config.init and config.epochs == 0")
    input_path(config.init, "weights")
    run_dir = Path(config.out) if config.out else None
    if run_dir is not None:
        check_output(run_dir, folder=True, what="run folder")
        if (run_dir / CHECKPOINT).exists():
            raise SdpruneError(f"{run_dir} already holds a run; use another --out")
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    data = open_data(config, device)
    adopted = adopt(config.init, config.model, len(data.classes), data.input_shape[0], config.seed)
    # survival: how the weights were trained: an sdprune run's schedule; for a state dict "none"
    # when every survival is 1.0, else "prior" (the survivals its source trained with)
    config = dataclasses.replace(config, model=adopted.model_name, survival=adopted.source.get("survival") or "none")
    if config.mean is None:
        data = adopted_normalization(data, adopted, reporter)
    if adopted.source.get("new_head"):
        reporter.warn(f"the data has {len(data.classes)} classes, the weights {adopted.source['weights_classes']}: "
                      "a new, untrained classifier (fine-tune it: `sdprune train --init RUN`)")
    model = adopted.model.to(device)
    val = evaluate(model, data.val, data.mean, data.std, device, config.eval_batch_size)
    test = evaluate(model, data.test, data.mean, data.std, device, config.eval_batch_size)
    row = {"epoch": 0, "step": 0, "val_loss": val["loss"], "val_acc": val["acc"], "test_loss": test["loss"],
           "test_acc": test["acc"]}
    meta = checkpoint_meta(config, data, model, adopted, epoch=0, step=0, metrics=row)
    run_dir = run_dir or new_run_dir(config.model, config.dataset, "adopted")
    check_output(run_dir, folder=True, what="run folder")
    with locked_run(run_dir):
        if (run_dir / CHECKPOINT).exists():  # written by another process since the check above
            raise SdpruneError(f"{run_dir} already holds a run; use another --out")
        write_json(run_dir / CONFIG, config.to_dict())
        write_metrics(run_dir / "metrics.jsonl", [row])
        save_checkpoint(run_dir / CHECKPOINT, model.cpu(), meta, history=[row])
    record_run(run_dir, "train")
    source = adopted.source
    reporter.info(f"adopted {source['path']} ({source['kind']}) as {config.model} on {config.dataset} "
                  f"[{len(data.val)} val / {len(data.test)} test]: val {val['acc']:.2f}%  test {test['acc']:.2f}%  "
                  f"normalised with mean {_short(data.mean)} std {_short(data.std)}")
    return {"run": str(run_dir), "checkpoint": str(run_dir / CHECKPOINT), "model": config.model,
            "dataset": config.dataset, "source": source, "mean": data.mean, "std": data.std,
            "val_acc": val["acc"], "test_acc": test["acc"], "wall_s": time.perf_counter() - t0}


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
