"""What the benchmark tools share: evenly spaced block removal (B3, B7), random weights an
export's parity check can judge (B7), and the resumable
runner of sdprune command lines (B5 on real networks, B7's accuracy part).

Imported from beside the scripts (``tools/`` is on ``sys.path`` when one of them runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


# Parity is judged as |logit diff| <= atol x max(1, largest |logit|): on logits under 0.1 the
# 1e-4 bound would pass a 0.1% relative error unseen, and on zeros anything.
MIN_LOGIT_SCALE = 0.1


def fill_zero_weights(model, std: float = 0.02) -> None:
    """Fill every all-zero parameter of two or more dimensions with N(0, ``std``) values.

    torchvision zero-initialises some (ViT's head and class token), and a random-weight
    network with a zero head computes logits of 0, on which any export passes its parity
    check. Biases (one dimension) stay zero. Latency does not change.
    """
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, std)


def evenly_removed(model, keep: float, input_shape: tuple[int, int, int]) -> list[str]:
    """Blocks to remove so that `sdprune prune --keep`'s count remains (``target_count``: at least
    ``keep`` of them), kept blocks evenly spaced in forward order (0.5 of an even count: every
    other), and, as `sdprune prune` requires by default, at least one block per stage."""
    from sdprune.depth.select import removed_blocks, select_blocks, target_count
    from sdprune.depth.structure import block_layout

    rows = block_layout(model, input_shape)
    n_keep = target_count(len(rows), keep, None)
    even = {int(i * len(rows) / n_keep) for i in range(n_keep)}
    # The library's own selection, with "evenly spaced" as the importance: it removes the
    # unwanted blocks (deepest first) and spares a stage's last one, then meets the count by
    # dropping the deepest evenly spaced ones: exactly the even set whenever no stage empties.
    scored = [{**r, "survival": 1.0 if r["position"] in even else 0.0} for r in rows]
    return removed_blocks(rows, select_blocks(scored, "survival", keep=keep))


@dataclass
class Task:
    """One unit of a benchmark: sdprune command lines run in order (each prints one JSON object)."""

    name: str
    commands: list[list[str]]
    needs: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def run_tasks(tasks: list[Task], out: Path, jobs: int, threads: int,
              figures: Callable[[Task, list[dict]], dict], extra: dict | None = None) -> None:
    """Run the tasks without a ``out/results/<name>.json`` yet, ``jobs`` at once (each with
    ``threads`` OpenMP threads), then write that file: the task's info, ``figures(task,
    outputs)``, ``extra``, wall time and commands.

    A result made by other commands (other settings under the same name) is refused, not reused.
    Each step logs its command line and stderr to ``out/logs/<name>.<step>.log`` and its JSON
    output to ``.json`` beside it; a step whose JSON is there for the same command is not run
    again (an interrupted task resumes at its first unfinished step: a finished `sdprune
    train` would refuse its own --out folder). Fails at the end if any task failed; tasks
    needing a failed one are not started.
    """
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    names = {t.name for t in tasks}
    for t in tasks:  # a finished task is reused only for the same commands, never for other settings
        saved = out / "results" / f"{t.name}.json"
        if saved.exists() and json.loads(saved.read_text())["commands"] != [" ".join(c) for c in t.commands]:
            raise SystemExit(f"{saved} was made by other commands than this run's {t.name}: give another --out "
                             "(or remove that file to run it again)")
    pending = [t for t in tasks if not (out / "results" / f"{t.name}.json").exists()]
    done = names - {t.name for t in pending}
    running: dict[str, tuple[subprocess.Popen, Task, int, float, list]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    failed: set[str] = set()

    def advance(task: Task, step: int, outputs: list) -> None:
        """Start ``step`` of ``task``, reusing the recorded output of steps already done."""
        while step < len(task.commands):
            saved = out / "logs" / f"{task.name}.{step}.json"
            record = json.loads(saved.read_text()) if saved.exists() else None
            if not record or record["command"] != task.commands[step]:
                break
            outputs.append(record["output"])
            step += 1
        if step == len(task.commands):
            finish(task, outputs)
            return
        log = open(out / "logs" / f"{task.name}.{step}.log", "w")
        log.write(" ".join(task.commands[step]) + "\n")
        log.flush()
        proc = subprocess.Popen(task.commands[step], stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        running[task.name] = (proc, task, step, time.time(), outputs)

    def finish(task: Task, outputs: list) -> None:
        result = {"task": task.name, **task.info, **figures(task, outputs), **(extra or {}),
                  "wall_s": sum(o["_wall_s"] for o in outputs), "commands": [" ".join(c) for c in task.commands]}
        tmp = out / "results" / f".{task.name}.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out / "results" / f"{task.name}.json")
        done.add(task.name)
        summary = f"test {result['test_acc']:.2f}%, " if isinstance(result.get("test_acc"), float) else ""
        print(f"done {task.name}: {summary}{result['wall_s']:.0f}s", flush=True)

    while pending or running:
        for task in list(pending):
            if len(running) >= jobs:
                break
            if any(n in failed for n in task.needs):
                pending.remove(task)
                failed.add(task.name)
            elif all(n in done for n in task.needs):
                pending.remove(task)
                print(f"start {task.name}", flush=True)
                advance(task, 0, [])
        if not running:
            if pending and not any(all(n in done or n in failed for n in t.needs) for t in pending):
                raise SystemExit(f"tasks wait on tasks not planned: {', '.join(t.name for t in pending)}")
            continue
        time.sleep(1)
        for name, (proc, task, step, t0, outputs) in list(running.items()):
            if proc.poll() is None:
                continue
            stdout = proc.stdout.read()
            del running[name]
            if proc.returncode != 0:
                print(f"FAILED {name} (exit {proc.returncode}): see {out / 'logs'}/{name}.{step}.log", flush=True)
                failed.add(name)
                continue
            output = {**json.loads(stdout), "_wall_s": time.time() - t0}
            record = out / "logs" / f"{name}.{step}.json"
            record.write_text(json.dumps({"command": task.commands[step], "output": output}, indent=1))
            outputs.append(output)
            advance(task, step + 1, outputs)
    if failed:
        raise SystemExit(f"{len(failed)} task(s) failed: {', '.join(sorted(failed))}")
