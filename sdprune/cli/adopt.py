"""`sdprune adopt`: weights trained elsewhere become an sdprune run on your data, untrained.

The weights' architecture is recognised from their tensors: the public CIFAR ResNets
(ResNet-20 ... 1202, as published, `{"best_prec1", "state_dict"}` with `module.` keys),
torchvision's ResNets, MobileNetV2 and ConvNeXts, or another sdprune run. Afterwards `eval`,
`stats`, `prune`, `sweep`, `export` and `train --init` work on the run folder.
"""

from __future__ import annotations


def add_parser(sub):
    from sdprune.cli.common import floats
    from sdprune.choices import BAD_IMAGES, DATA_MODES, DATASETS, FOLDER_IMAGE_SIZE
    from sdprune.train.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("adopt", help="bind weights trained elsewhere to a dataset, as a run (no training)",
                       description=__doc__)
    a = p.add_argument
    a("weights", help="a state dict file (.pth, .th, .pt) or an sdprune run folder / checkpoint")
    a("--model", help="the weights' architecture (default: recognised from the tensors)")
    a("--dataset", default=d.dataset, help=f"{' | '.join(DATASETS)} (default {d.dataset})")
    a("--data-dir", help="dataset folder (default ~/.cache/sdprune/data/<dataset>)")
    a("--download", action="store_true", help="download the dataset if missing")
    a("--image-size", type=int,
      help=f"image side in pixels (default {FOLDER_IMAGE_SIZE} for imagefolder, 32 for synthetic; others: their own)")
    a("--mean", type=floats, help="input normalisation mean per channel, e.g. 0.49,0.48,0.45 (default: what the "
                                  "weights expect: ImageNet's for a state dict, the run's own for an sdprune run)")
    a("--std", type=floats, help="input normalisation std per channel (with --mean; default: as --mean)")
    a("--data-mode", choices=DATA_MODES, default=d.data_mode, help=f"imagefolder: see train (default {d.data_mode})")
    a("--workers", type=int, default=d.workers, help=f"image decoding processes (default {d.workers})")
    a("--bad-images", choices=BAD_IMAGES, default=d.bad_images, help=f"imagefolder: see train (default {d.bad_images})")
    a("--eval-resize", type=int, help="imagefolder: see train (default: as train)")
    a("--seed", type=int, default=d.seed, help=f"seed of a new classifier when the classes differ (default {d.seed})")
    a("--device", default=d.device, help=f"auto | cpu | cuda | cuda:N (default {d.device})")
    a("--out", help="run folder (default runs/<model>-<dataset>-adopted-<time>)")
    return p


def run(args, reporter) -> int:
    from sdprune.train.adoption import adopt_run
    from sdprune.train.config import resolve_config

    flags = ("model", "dataset", "data_dir", "download", "image_size", "mean", "std", "data_mode", "workers",
             "bad_images", "eval_resize", "seed", "device", "out")
    config = resolve_config(None, {"init": args.weights, "epochs": 0, **{k: getattr(args, k) for k in flags}})
    summary = adopt_run(config, reporter)
    reporter.info(f"done: {summary['checkpoint']}  test {summary['test_acc']:.2f}%  val {summary['val_acc']:.2f}%; "
                  f"next: `sdprune prune {summary['run']} --keep 0.5`")
    reporter.result(summary)
    return 0
