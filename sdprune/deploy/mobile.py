"""ONNX Runtime's mobile format (.ort) through ONNX Runtime's own converter.

``python -m onnxruntime.tools.convert_onnx_models_to_ort`` runs in a child process: it
prints freely and holds native state, and the parent's stdout belongs to --json. It
writes, next to the .ort files, the operator config a reduced-size runtime build takes
(``build.py --include_ops_by_config required_operators.config``); sdprune keeps both and
proves each .ort file loads and runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdprune.errors import SdpruneError
from sdprune.report import Reporter

CONFIG_NAME = "required_operators.config"
# "Fixed" bakes the optimisations into the file: the converter's advice for the plain CPU
# execution provider (the "Runtime" style is for NNAPI / CoreML).
OPTIMIZATION_STYLE = "Fixed"
# The converter bakes platform-specific optimisations in: "arm" (phones) lets int8 QDQ
# graphs fuse into integer kernels with signed activations; "amd64" is for x86 devices.
PLATFORMS = ("arm", "amd64")


def convert_to_ort(onnx_paths: Sequence[str | Path], out_dir: str | Path, reporter: Reporter | None = None,
                   target_platform: str = "arm", timeout_s: int = 900) -> dict[str, Any]:
    """Write ``<name>.ort`` for each ONNX file and one operator config covering all of them.

    ``target_platform`` is the device's CPU family: the file is optimised for it (an
    arm-optimised int8 file runs on x86 too, just slowly, so the check below still works).
    """
    reporter = reporter or Reporter(quiet=True)
    if target_platform not in PLATFORMS:
        raise SdpruneError(f"unknown ORT target platform {target_platform!r}; choose from {', '.join(PLATFORMS)}")
    paths = [Path(p) for p in onnx_paths]
    if not paths:
        raise SdpruneError("no ONNX file to convert")
    for p in paths:
        if not p.is_file():
            raise SdpruneError(f"model file {p} not found")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=out_dir) as work:
        src, dst = Path(work, "src"), Path(work, "out")
        src.mkdir()
        for p in paths:  # the converter takes a folder: give it exactly these models
            _link_or_copy(p, src / p.name)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
               "--output_dir", str(dst), "--optimization_style", OPTIMIZATION_STYLE,
               "--target_platform", target_platform]
        with reporter.progress("converting to ONNX Runtime's mobile format", 1) as bar:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise SdpruneError(f"the ORT converter did not finish in {timeout_s} s") from None
            bar.update(1)
        if proc.returncode != 0:
            raise SdpruneError(f"the ORT converter failed: {_last_line(proc.stderr or proc.stdout)}")
        made = [dst / p.with_suffix(".ort").name for p in paths]
        config = dst / CONFIG_NAME
        missing = [m.name for m in made + [config] if not m.is_file()]
        if missing:
            raise SdpruneError(f"the ORT converter did not write {', '.join(missing)}")
        checks = [run_once(m) for m in made]
        _name_models_in_config(config)
        files = []
        for m in made + [config]:
            os.replace(m, out_dir / m.name)
            files.append(str(out_dir / m.name))
        for c in checks:
            c["file"] = str(out_dir / Path(c["file"]).name)
    operators = read_operator_config(out_dir / CONFIG_NAME)
    reporter.table("ONNX Runtime mobile format", ["file", "loads and runs", "output"],
                   [[Path(c["file"]).name, "yes", "x".join(map(str, c["output_shape"]))] for c in checks],
                   caption=f"operator config for a reduced build: {CONFIG_NAME} "
                           f"({sum(len(v) for v in operators.values())} operators)")
    return {"files": files[:-1], "config": files[-1], "optimization_style": OPTIMIZATION_STYLE,
            "target_platform": target_platform,
            "operators": operators, "checks": checks}


def run_once(path: str | Path) -> dict[str, Any]:
    """Load an .ort file with an InferenceSession and run one batch-1 input through it."""
    import onnxruntime as ort

    path = Path(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        shape = [1 if not isinstance(d, int) else d for d in inp.shape]
        out = session.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})[0]
    except Exception as err:  # onnxruntime's own exception types
        raise SdpruneError(f"the ORT-format model {path.name} does not run: {_last_line(str(err))}") from None
    if not np.isfinite(out).all():
        raise SdpruneError(f"the ORT-format model {path.name} produced non-finite outputs")
    return {"file": str(path), "input_shape": shape, "output_shape": list(out.shape)}


def read_operator_config(path: str | Path) -> dict[str, list[str]]:
    """Operators per 'domain;opset' in a converter config ('# comments', 'domain;opset;Op1,Op2')."""
    ops: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(";")
        if len(parts) >= 3:
            ops[f"{parts[0]};{parts[1]}"] = sorted(o.split("{")[0] for o in parts[2].split(",") if o)
    return ops


def _name_models_in_config(config: Path) -> None:
    """The converter lists the models it read by their (temporary) paths: keep just the names."""
    lines = config.read_text().splitlines()
    lines = [f"# - {Path(l[4:]).name}" if l.startswith("# - ") else l for l in lines]
    config.write_text("\n".join(lines) + "\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _last_line(text: str) -> str:
    lines = [s for s in (text or "").strip().splitlines() if s.strip()]
    return lines[-1][:300] if lines else "no message"
