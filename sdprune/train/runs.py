"""Where runs live on disk, and how commands find the newest one without being told.

Runs made without ``--out`` live under the runs folder (``runs/``, or ``$SDPRUNE_RUNS``);
every run `sdprune train` or `sdprune prune` writes, wherever it is, is also listed in
``<runs folder>/index.jsonl`` (one line appended per run), so "the newest run" includes
runs written elsewhere with ``--out``. Newest means the most recently written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

from sdprune.errors import SdpruneError
from sdprune.files import atomic_write, input_path
from sdprune.report import Reporter, json_text
from sdprune.train.config import TrainConfig

RUNS_DIR = "runs"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
INDEX = "index.jsonl"
PRUNED_PREFIX = "pruned"  # `sdprune prune` names its folders pruned-...; export looks for them


def runs_root() -> Path:
    return Path(os.environ.get("SDPRUNE_RUNS", RUNS_DIR))


def new_run_dir(model: str, dataset: str, survival: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_root() / f"{model}-{dataset}-{survival}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def record_run(folder: str | Path, kind: str) -> None:
    """List a run folder (``kind`` "train" or "pruned") in the runs index.

    One line appended by a single ``write`` (atomic against other writers; a reader skips
    a line it cannot parse). An index that cannot be written costs only the listing.
    """
    line = json.dumps({"run": str(Path(folder).resolve()), "kind": kind, "time": time.time()}) + "\n"
    try:
        runs_root().mkdir(parents=True, exist_ok=True)
        fd = os.open(runs_root() / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def indexed_runs() -> dict[Path, str]:
    """Run folders listed in the index that still exist, with their kind (the last line wins)."""
    try:
        lines = (runs_root() / INDEX).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    runs: dict[Path, str] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            runs[Path(entry["run"])] = str(entry["kind"])
        except (ValueError, TypeError, KeyError):
            continue  # a torn or foreign line
    return {folder: kind for folder, kind in runs.items() if folder.is_dir()}


def find_checkpoints(root: Path | None = None, pruned: bool | None = None) -> list[Path]:
    """Checkpoints under the runs folder and in the runs it indexes, newest first.

    ``pruned=True/False`` keeps only pruned / only trained ones (the index's kind, else a
    folder named ``pruned-...``). With ``root`` only that folder is scanned.
    """
    found: dict[Path, tuple[Path, str]] = {}  # the same file found twice counts once
    scan = root or runs_root()
    if scan.is_dir():
        for p in scan.rglob(CHECKPOINT):
            found[p.resolve()] = (p, "pruned" if p.parent.name.startswith(PRUNED_PREFIX) else "train")
    if root is None:
        for folder, kind in indexed_runs().items():
            p = folder / CHECKPOINT
            found[p.resolve()] = (found.get(p.resolve(), (_relative(p), kind))[0], kind)
    picked = [p for p, kind in found.values() if p.is_file() and (pruned is None or (kind == "pruned") == pruned)]
    return sorted(picked, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_checkpoint(path: str | None, prefer_pruned: bool = False, reporter: Reporter | None = None) -> Path:
    """A checkpoint path from the user's argument, a run folder, or the newest run.

    When it picks the newest run, it says which one through ``reporter``.
    """
    if path:
        p = input_path(path, "checkpoint")
        return input_path(p / CHECKPOINT, "checkpoint") if p.is_dir() else p
    candidates = (find_checkpoints(pruned=True) if prefer_pruned else []) or find_checkpoints(pruned=False)
    if not candidates:
        raise SdpruneError(f"no checkpoint given and no run found under {runs_root()}/ or in its {INDEX} "
                           "(run `sdprune train` first)")
    picked = candidates[0]
    if reporter is not None:  # said once the command starts its work (not before a one-line error)
        reporter.note(f"no checkpoint given: using the newest run, {picked} "
                      f"(written {time.strftime('%Y-%m-%d %H:%M', time.localtime(picked.stat().st_mtime))})")
    return picked


def resolve_resume(path: str | None, reporter: Reporter | None = None) -> Path:
    """What `train --resume` continues: a checkpoint, or a run folder interrupted before its
    first checkpoint (it holds only its ``config.json``; the run starts over from it)."""
    if path and Path(path).is_dir() and not (Path(path) / CHECKPOINT).exists() and (Path(path) / CONFIG).is_file():
        return Path(path)
    return resolve_checkpoint(path, reporter=reporter)


def _relative(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    """The metrics lines of epochs 1..``upto_epoch`` (a resumed run's later lines are lost work)."""
    if upto_epoch == 0 or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.jsonl``, one strict-JSON line per epoch, replaced atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.writelines(json_text(r, indent=None) + "\n" for r in rows)
    atomic_write(path, write)


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir``."""
    return f"sdprune train --resume {shlex.quote(str(run_dir))}"


RESUME_MAY_SET = ("device", "workers")  # what a resume may change: how it runs, never what it trains
# Fields added after runs were saved without them, with the value those runs trained with.
ADDED_FIELDS = {"optimizer": "sgd", "criterion": None, "anneal_end": None}


def saved_config(path: Path, given: TrainConfig) -> TrainConfig:
    """The config a run folder saved, complete (only device and workers may change on resume)."""
    if not path.is_file():
        raise SdpruneError(f"{path.parent} holds no run to resume (no {CHECKPOINT} and no {CONFIG})")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SdpruneError(f"{path} is not readable ({type(err).__name__})") from None
    if not isinstance(saved, dict):
        raise SdpruneError(f"{path} is not a run's config")
    # train writes every field: one missing would silently take its default (a run without
    # its model would restart as a resnet32), so the config must be whole
    saved = {**ADDED_FIELDS, **saved}
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in saved and f.name not in RESUME_MAY_SET]
    if missing:
        raise SdpruneError(f"{path} lacks {', '.join(missing)}: not the config a run saved; start a new run "
                           "or restore the file")
    return TrainConfig.from_dict({**saved, "device": given.device, "workers": given.workers})
