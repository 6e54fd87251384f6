"""tools/gpu_runs.sh, dry-run on the CPU at a tiny scale: the day a GPU is lent (15 minutes,
start included), the script must run the first time. Every part it runs by default is run
here with the same commands, on generated images and random weights saved as the public
CIFAR ResNets are."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdprune.nets import create_model
from sdprune.nets.convert import from_gated

pytestmark = pytest.mark.long  # started first: tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]


def published(tmp: Path, depth: int) -> None:
    torch.manual_seed(depth)
    state = from_gated(create_model(f"resnet{depth}", 10).state_dict(), f"resnet{depth}")
    torch.save({"best_prec1": 90.0, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp / f"resnet{depth}-0000.th")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_the_gpu_script_runs_every_default_part_at_a_tiny_scale(tmp_path, subprocess_env):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in range(10):
            folder = tmp_path / "cifar10" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    with tarfile.open(tmp_path / "cifar10.tar.gz", "w:gz") as tar:  # as the data travels to the device
        tar.add(tmp_path / "cifar10", arcname="cifar10")
    weights = tmp_path / "pretrained"
    weights.mkdir()
    for depth in (20, 32, 56):
        published(weights, depth)
    out = tmp_path / "out"
    env = {**subprocess_env, "GPU_RUNS_SCALE": "tiny", "DEVICE": "cpu", "DATA_TAR": str(tmp_path / "cifar10.tar.gz"),
           "WEIGHTS": str(weights), "EPOCHS": "1", "SEEDS": "0", "JOBS": "2", "IMAGE_SIZE": "8",
           "PARTS": "env b1 b5", "WORK": str(tmp_path / "work"), "SDPRUNE_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_runs.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    log = (out / "gpu_runs.log").read_text()
    for part in ("env", "b1", "b5"):
        assert f"end {part} (exit 0)" in log, log[-3000:]
    assert "torch" in (out / "env.txt").read_text()
    b1 = json.loads((out / "b1-128.json").read_text())
    assert {a["arm"] for a in b1["arms"]} >= {"plain", "batch", "learned"}
    with tarfile.open(out / "b5.tgz") as tar:
        results = {Path(n).name for n in tar.getnames() if n.startswith("results/")}
    arms = {"e-s0", "d-k0.33-s0", "a0-k0.33", "a-k0.33-s0",  # keep 1/3 by default,
            "b-k0.33-s0-ablation-end0.1", "c-k0.33-s0"}    # (b) as chosen on the CPU
    assert {f"{a}.json" for a in arms} <= results
    assert not any(r.startswith(("a0i-", "ai-", "ae-")) for r in results)  # the levers: not by default
    table = (out / "b5-table.md").read_text()
    assert "(a) pruned + fine-tune" in table and "(b) retrofit + prune" in table
    assert len(list(out.iterdir())) <= 8  # the device returns at most 8 files
