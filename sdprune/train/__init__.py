"""Training: the config, one optimisation step (``Trainer``), the loop, checkpoints, runs
on disk and evaluation."""

from sdprune.train.config import TrainConfig
from sdprune.train.loop import train
from sdprune.train.trainer import Trainer, build_training

__all__ = ["TrainConfig", "Trainer", "build_training", "train"]
