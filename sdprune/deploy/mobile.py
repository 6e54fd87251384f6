"""ONNX Runtime's mobile format (.ort) through ONNX Runtime's own converter.

``python -m onnxruntime.tools.convert_onnx_models_to_ort`` runs in a child process: it
prints freely and holds native state, and the parent's stdout belongs to --json. It
writes, next to the .ort files, the operator config a reduced-size runtime build takes
(``build.py --include_ops_by_config required_operators.config``). Each .ort file is then
checked on real test images against the ONNX file it was converted from; only files that
pass are put in place.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from sdprune.deploy.export import DEFAULT_ATOL
from sdprune.deploy.gate import decided, int8_margin
from sdprune.errors import SdpruneError
from sdprune.report import Reporter

CONFIG_NAME = "required_operators.config"
# "Fixed" bakes the optimisations into the file: the converter's advice for the plain CPU
# execution provider (the "Runtime" style is for NNAPI / CoreML).
OPTIMIZATION_STYLE = "Fixed"
# The converter bakes platform-specific optimisations in: "arm" (phones) lets int8 QDQ
# graphs fuse into integer kernels with signed activations; "amd64" is for x86 devices.
PLATFORMS = ("arm", "amd64")
# How far an .ort file's logits may be from those of the ONNX file it came from, on the same
# images. fp32: the converter only bakes graph optimisations in (measured max |diff| 4e-6
# and 6e-6, resnet20 on digits), so the export's --atol. So is an int8 file optimised for
# the CPU it is checked on: ONNX Runtime runs the ONNX file with the same fused kernels
# (measured difference 0 for amd64 on x86). An int8 file optimised for another CPU (arm,
# checked on x86) fuses and requantizes differently from the QDQ graph run here (measured
# max |diff| 0.7% to 1.6% of the largest |logit|, mean 1e-4, top-1 identical on all 359
# test images, over three int8 variants), so the int8 near-tie margin there (``gate.int8_margin``),
# as the margin of a top-1 check, not as a bound on every logit: on a barely trained resnet20
# (largest |logit| 0.55) the arm file differed by 0.12 with the same top-1 class on every image
# (2026-11-29, onnxruntime 1.32.0, AVX2 EPYC). Off its own CPU an int8 file is only shown to decide
# as its QDQ graph does; its exact logits can only be checked on the device.
# platform.machine() -> the converter's target platform of that CPU family
MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm", "arm64": "arm"}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def convert_to_ort(onnx_paths: Sequence[str | Path], out_dir: str | Path, data, samples: int | None = None,
                   reporter: Reporter | None = None, target_platform: str = "arm",
                   timeout_s: int = 900, atol: float = DEFAULT_ATOL) -> dict[str, Any]:
    """Write ``<name>.ort`` for each ONNX file and one operator config covering all of them.

    ``data`` (the export's DataBundle) supplies the ``samples`` real test images each .ort
    file is checked on against its ONNX file (``check_ort``, within the export's ``atol``);
    a failing check writes nothing. ``target_platform`` is the device's CPU
    family: the file is optimised for it (an arm-optimised int8 file runs on x86 too, just
    slowly, so the check still works).
    """
    from sdprune.deploy.export import DEFAULT_SAMPLES, sample_test_images

    reporter = reporter or Reporter(quiet=True)
    samples = DEFAULT_SAMPLES if samples is None else samples
    if samples < 1:
        raise SdpruneError(f"--samples must be at least 1, got {samples}")
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
        images, sample = sample_test_images(data, samples)
        checks = [{**check_ort(m, p, images, data, atol, target_platform), "sample": sample}
                  for m, p in zip(made, paths)]
        _name_models_in_config(config)
        files = []
        for m in made + [config]:
            os.replace(m, out_dir / m.name)
            files.append(str(out_dir / m.name))
        for c in checks:
            c["file"] = str(out_dir / Path(c["file"]).name)
    operators = read_operator_config(out_dir / CONFIG_NAME)
    reporter.table("ONNX Runtime mobile format vs the ONNX files", ["file", "vs", "images", "max |Δ logit|",
                   "atol", "top-1 agreement"],
                   [[Path(c["file"]).name, Path(c["reference"]).name, c["images"], f"{c['max_abs_diff']:.2e}",
                     f"{c['atol']:.2e}", f"{c['top1_agreement']:.2f}%"] for c in checks],
                   caption=f"real test images of {data.name}; operator config for a reduced build: {CONFIG_NAME} "
                           f"({sum(len(v) for v in operators.values())} operators)")
    return {"files": files[:-1], "config": files[-1], "optimization_style": OPTIMIZATION_STYLE,
            "target_platform": target_platform,
            "operators": operators, "checks": checks}


def check_ort(ort_path: str | Path, reference: str | Path, images, data, atol: float = DEFAULT_ATOL,
              target_platform: str = "arm") -> dict[str, Any]:
    """Run an .ort file and the ONNX file it was made from on the same uint8 ``images``.

    Passes when both give finite logits within ``ort_tolerance`` of each other, with the
    same top-1 class wherever the reference's top two logits are further apart than that
    (``compare_logits``); else SdpruneError with the figures.
    """
    import onnx

    from sdprune.deploy.runtime import non_finite_rows, onnx_logits, open_session

    ort_path, reference = Path(ort_path), Path(reference)
    try:
        got = onnx_logits(open_session(ort_path), images, data.mean, data.std)
    except SdpruneError:
        raise
    except Exception as err:  # onnxruntime's own exception types
        raise SdpruneError(f"the ORT-format model {ort_path.name} does not run: {_last_line(str(err))}") from None
    want = onnx_logits(open_session(reference), images, data.mean, data.std)
    bad = non_finite_rows(got) + non_finite_rows(want)
    if bad:
        raise SdpruneError(f"the ORT-format model {ort_path.name} or {reference.name}: non-finite logits on "
                           f"{bad} of {len(images)} test images; nothing written")
    ops = {n.op_type for n in onnx.load(str(reference), load_external_data=False).graph.node}
    int8 = bool(ops & QUANTIZED_OPS)
    native = MACHINES.get(platform.machine().lower()) == target_platform
    result = compare_logits(got, want, ort_tolerance(int8, target_platform, want, atol), bound=native or not int8)
    if not result["ok"]:
        raise SdpruneError(f"the ORT-format model {ort_path.name} does not compute what {reference.name} does: "
                           f"max |logit diff| {result['max_abs_diff']:.3g} (atol {result['atol']:.3g}), "
                           f"{result['flips']} of {len(images) - result['near_ties']} test images with another "
                           "top-1 class (near-ties aside); nothing written")
    return {"file": str(ort_path), "reference": str(reference), "kind": "int8" if int8 else "fp32",
            "images": len(images), **result}


def ort_tolerance(int8: bool, target_platform: str, want, atol: float) -> float:
    """The largest |logit difference| an .ort file may show against its ONNX file (the note above
    ``MACHINES``): ``atol``, or for an int8 file optimised for another CPU than this one,
    ``int8_margin(want)`` (the near-tie margin, ``sdprune.deploy.gate``)."""
    native = MACHINES.get(platform.machine().lower()) == target_platform
    return int8_margin(want) if int8 and not native else atol


def compare_logits(got, want, atol: float, bound: bool = True) -> dict[str, Any]:
    """Max |difference| and top-1 agreement of two logit tensors; ``ok`` when no image changes its
    top-1 class unless it is a near-tie (``decided(want, atol)`` is false: the reference's top two
    logits within ``atol``) and, with ``bound``, every difference is within ``atol``."""
    diff = float((got - want).abs().max())
    clear = decided(want, atol)
    same = got.argmax(1) == want.argmax(1)
    flips = int((~same & clear).sum())
    return {"max_abs_diff": diff, "atol": atol, "top1_agreement": 100.0 * float(same.float().mean()),
            "near_ties": int((~clear).sum()), "flips": flips, "bound": bound,
            "ok": (diff <= atol or not bound) and flips == 0}


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
