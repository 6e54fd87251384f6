"""ONNX Runtime CPU latency of exported classifiers, several models interleaved.

Machines are noisy, so models are never timed one after the other: every round runs each
model once (round-robin, starting model rotated per round), after a warm-up, and a
model's ratio to the first is the median of its per-round ratios. Latency is p50 / p90
of single runs at each batch size, with the intra-op thread count stated.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from sdprune.errors import SdpruneError
from sdprune.report import Reporter

DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 50
DEFAULT_BATCH_SIZES = (1, 32)
MAX_INPUT_BYTES = 2**31  # one timed input batch; larger ones time the allocator, or exhaust memory


def cpu_name() -> str:
    """The CPU model as the kernel names it (for benchmark records)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")) -> dict[str, bool]:
    """Which int8-relevant instruction sets the CPU reports (VNNI decides int8 speed on x86)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), []))
    return {f: f in flags for f in wanted}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def check_bench(threads: int | None = None, warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> None:
    """Reject timing settings no benchmark can use (callers check before any other work)."""
    if warmup < 0 or repeats < 1:
        raise SdpruneError(f"need --warmup >= 0 and --repeats >= 1 (got {warmup}, {repeats})")
    if not batch_sizes or min(batch_sizes) < 1:
        raise SdpruneError("batch sizes must be positive integers")
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        raise SdpruneError(f"--threads must be 1 to {cpus} (the CPUs of this machine), got {threads}")


def bench_onnx(paths: Sequence[str | Path], threads: int | None = None, warmup: int = DEFAULT_WARMUP,
               repeats: int = DEFAULT_REPEATS, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
               reporter: Reporter | None = None, spinning: bool | None = None) -> dict[str, Any]:
    """Latency (ms, p50/p90) of each ONNX classifier per batch size, and its ratio to the first.

    Inputs are random normal images of each model's own input shape; ONNX Runtime keeps
    its defaults (graph optimisations on) except the thread count, set explicitly
    (``threads`` or every CPU this process may use), and spinning: by default worker
    threads busy-wait after a run (ONNX Runtime's default) for a single model, but not
    when several are interleaved, where an idle session's spinning workers would steal
    the cores of the session being timed.
    """
    import numpy as np
    import onnxruntime as ort

    from sdprune.deploy.runtime import check_classifier, default_threads, open_session

    reporter = reporter or Reporter(quiet=True)
    if not paths:
        raise SdpruneError("no model to benchmark")
    check_bench(threads, warmup, repeats, batch_sizes)
    threads = threads or default_threads()
    spinning = len(paths) == 1 if spinning is None else spinning
    models = []
    for p in paths:
        session = open_session(p, threads, spinning=spinning)
        name, shape = check_classifier(session, p)
        if not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise SdpruneError(f"{p} has a symbolic image size {shape[1:]}; cannot make an input for it")
        if isinstance(shape[0], int) and any(b != shape[0] for b in batch_sizes):
            raise SdpruneError(f"{p} has a fixed batch size {shape[0]}; cannot run batch "
                               f"{next(b for b in batch_sizes if b != shape[0])}")
        if 4 * max(batch_sizes) * math.prod(shape[1:]) > MAX_INPUT_BYTES:
            raise SdpruneError(f"batch {max(batch_sizes)} of {p}'s {shape[1:]} images needs more than "
                               f"{MAX_INPUT_BYTES // 2**30} GiB of input; use smaller --batch-sizes")
        models.append({"path": str(p), "session": session, "input": name, "shape": shape,
                       "file_bytes": Path(p).stat().st_size, "latency": {}})
    rng = np.random.default_rng(0)
    with reporter.progress("benchmarking", len(batch_sizes) * (warmup + repeats)) as bar:
        for batch in batch_sizes:
            feeds = [_feed(m, batch, rng, p) for m, p in zip(models, paths)]
            times = _time_interleaved([m["session"] for m in models], feeds, warmup, repeats, bar, batch)
            for m, t in zip(models, times):
                ratios = [a / b for a, b in zip(t, times[0])]
                m["latency"][str(batch)] = {"p50_ms": 1e3 * _percentile(t, 50), "p90_ms": 1e3 * _percentile(t, 90),
                                            "ratio": statistics.median(ratios)}
    for m in models:
        del m["session"]
    result = {"threads": threads, "spinning": spinning, "warmup": warmup, "repeats": repeats, "batch_sizes": list(batch_sizes),
              "input": "random normal float32", "provider": "CPUExecutionProvider",
              "onnxruntime": ort.__version__, "cpu": cpu_name(), "models": models}
    _show(reporter, result)
    return result


def _feed(model: dict, batch: int, rng, path) -> dict:
    fixed = model["shape"][0]
    if isinstance(fixed, int) and fixed != batch:
        raise SdpruneError(f"{path} has a fixed batch size {fixed}; cannot run batch {batch}")
    x = rng.standard_normal((batch, *model["shape"][1:])).astype("float32")
    return {model["input"]: x}


def _time_interleaved(sessions: list, feeds: list, warmup: int, repeats: int, bar, batch: int) -> list[list[float]]:
    """Seconds per run of each session: warm-up rounds, then timed round-robin rounds."""
    n = len(sessions)
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
        bar.update(1, f"batch {batch}: warm-up")
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(repeats):
        for k in range(n):
            i = (r + k) % n  # rotate who goes first, so no model always follows the same one
            t0 = time.perf_counter()
            sessions[i].run(None, feeds[i])
            times[i].append(time.perf_counter() - t0)
        bar.update(1, f"batch {batch}")
    return times


def _show(reporter: Reporter, result: dict[str, Any]) -> None:
    from sdprune.report import human

    names = [Path(m["path"]).name for m in result["models"]]
    unique = len(set(names)) == len(names)  # same file names in different folders: show paths
    rows = []
    for m, name in zip(result["models"], names):
        for batch, lat in m["latency"].items():
            rows.append([name if unique else m["path"], batch,
                         f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['ratio']:.3f}", f"{human(m['file_bytes'])}B"])
    reporter.table("ONNX Runtime latency (CPU)", ["model", "batch", "p50 ms", "p90 ms", "ratio to first", "file"],
                   rows, caption=f"{result['cpu']}, {result['threads']} intra-op threads "
                                 f"({'spinning' if result['spinning'] else 'no spinning'}), "
                                 f"{result['warmup']} warm-up + {result['repeats']} interleaved rounds")
