"""What several commands parse alike: comma-separated numbers, and the options `prune` and
`sweep` share (written once, so the two commands cannot drift apart)."""

from __future__ import annotations

import argparse


def ints(text: str) -> tuple[int, ...]:
    """'1,32' -> (1, 32)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def floats(text: str) -> tuple[float, ...]:
    """'0.5,0.25' -> (0.5, 0.25)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def image_count(text: str) -> int | None:
    """'1000' -> 1000; 'all' -> None (every validation image)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}") from None


def add_pruning_args(parser: argparse.ArgumentParser) -> None:
    """How blocks are chosen, scored and healed: the options every pruned network is made with."""
    from sdprune.choices import HEAL_MODES, STATS_IMAGES

    a = parser.add_argument
    a("--allow-empty-stage", dest="keep_stages", action="store_false",
      help="allow removing every block of a stage (default: each stage keeps one)")
    a("--heal", choices=HEAL_MODES, default="bn",
      help="bn: re-estimate BatchNorm statistics, kept only where they improve the validation slice (default); "
           "finetune: a distilled fine-tune first")
    a("--no-heal", dest="heal", action="store_const", const="none", help="same as --heal none")
    a("--finetune-epochs", type=float,
      help="epochs of fine-tuning (with the default --heal bn: fine-tune too; default 1 with --heal finetune)")
    a("--no-distill", dest="distill", action="store_false",
      help="fine-tune on labels only (default: distil from the unpruned network)")
    a("--seed", type=int, default=0, help="seed of the random criterion, BN batches and fine-tuning (default 0)")
    a("--device", default="auto", help="auto | cpu | cuda (default auto)")
    a("--batch-size", type=int, default=128, help="batch size of the statistics (default 128)")
    a("--stats-images", type=image_count, default=STATS_IMAGES, metavar="N",
      help=f"score on a seeded random subset of N validation images, or all (default {STATS_IMAGES})")


def heal_spec(args: argparse.Namespace):
    """The HealSpec the parsed pruning options name."""
    from sdprune.prune.heal import HealSpec

    return HealSpec.of(args.heal, args.finetune_epochs, args.distill)
