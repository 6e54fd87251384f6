"""Reading and running an exported ONNX classifier (what a device gets).

An sdprune classifier has one 4-D float input (batch, C, H, W), one 2-D output (batch,
classes) and its preprocessing in ``metadata_props``, so it can be evaluated, benchmarked
and deployed without the checkpoint it came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdprune.errors import SdpruneError
from sdprune.files import input_path
from sdprune.report import Reporter

if TYPE_CHECKING:
    from torch import Tensor

# metadata_props values that are JSON (everything else is a plain string)
JSON_KEYS = ("classes", "input_shape", "mean", "std", "kept_blocks", "removed_blocks", "params", "flops", "resize")
REQUIRED_KEYS = ("classes", "input_shape", "mean", "std", "dataset")


def default_threads() -> int:
    """The CPUs this process may run on (what ONNX Runtime's intra-op pool should use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def open_session(path: str | Path, threads: int | None = None, spinning: bool = False):
    """An ONNX Runtime CPU session with an explicit intra-op thread count (so it can be reported).

    ``spinning`` keeps ONNX Runtime's default of worker threads that busy-wait after a run:
    right for a latency benchmark, ruinous when PyTorch computes in between (the two
    fight for the same cores), so it is off unless asked for.
    """
    import onnxruntime as ort

    path = input_path(path, "model file", file=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3  # errors only: warnings would clutter the user's terminal
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        raise SdpruneError(f"ONNX Runtime cannot load {path}: {_first_line(err)}") from None


def check_classifier(session, path: str | Path) -> tuple[str, list]:
    """(input name, input shape) of a session that is an image classifier, else SdpruneError."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
        shapes = [i.shape for i in inputs], [o.shape for o in outputs]
        raise SdpruneError(f"{path} is not an image classifier (inputs/outputs {shapes[0]} -> {shapes[1]}; "
                           "expected one 4-D input and one 2-D output)")
    if inputs[0].type != "tensor(float)":
        raise SdpruneError(f"{path} takes {inputs[0].type}, expected a float32 image batch")
    return inputs[0].name, list(inputs[0].shape)


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The sdprune metadata of an ONNX file (class names, input shape, normalisation, blocks ...)."""
    import onnx

    from sdprune.train.schema import check_data_meta

    path = input_path(path, "model file", file=True)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise SdpruneError(f"{path} is not a readable ONNX file ({_first_line(err)})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "sdprune_version" not in props:
        raise SdpruneError(f"{path} has no sdprune metadata (not exported by `sdprune export`)")
    meta: dict[str, Any] = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value) if key in JSON_KEYS else value
        except json.JSONDecodeError:
            raise SdpruneError(f"{path}: metadata {key!r} is not valid JSON") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise SdpruneError(f"{path}: sdprune metadata lacks {', '.join(missing)}")

    def bad(message: str) -> None:
        raise SdpruneError(f"{path}: {message}")

    check_data_meta(meta, bad, "metadata ")  # the checkpoint's rules: a device normalises with these
    for key in ("params", "flops"):
        if key in meta and not (isinstance(meta[key], int) and not isinstance(meta[key], bool)):
            bad(f"metadata {key} must be a whole number, got {meta[key]!r}")
    meta["opset"] = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return meta


def onnx_logits(session, images: Tensor, mean: list[float], std: list[float], batch_size: int = 256,
                progress=None) -> Tensor:
    """Float32 logits of ``session`` for uint8 images (N, C, H, W), normalised as in training."""
    import torch

    from sdprune.data.images import normalize

    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size], mean, std)
        out.append(torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float())
        if progress is not None:
            progress.update(1)
    return torch.cat(out) if out else torch.zeros(0)


def non_finite_rows(logits: Tensor) -> int:
    """How many images (rows) have a NaN or infinite logit: such outputs never pass a check.

    Comparisons must count them apart: NaN compares false with everything, so a
    ``max(worst, nan)`` or ``diff <= atol`` test would silently pass a broken model.
    """
    import torch

    return int((~torch.isfinite(logits)).any(dim=1).sum())


def labelled_logits(sessions: list, data, mean: list[float], std: list[float], batch_size: int = 256,
                    progress=None) -> tuple[list[Tensor], Tensor]:
    """Each session's float32 logits over every readable image of ``data`` (an ImageSet or a
    streamed FolderSet, decoded a batch at a time, once for all sessions) and their labels.

    The labels come with the decoded batches, so they stay aligned with the logits when a
    folder's unreadable files are skipped.
    """
    import torch

    logits: list[list[Tensor]] = [[] for _ in sessions]
    labels = []
    for images, batch_labels in data.load_batches(torch.arange(len(data)).split(batch_size)):
        for out, session in zip(logits, sessions):
            out.append(onnx_logits(session, images, mean, std, len(images)))
            if progress is not None:
                progress.update(1)
        labels.append(batch_labels)
    if not labels:
        return [torch.zeros(0) for _ in sessions], torch.zeros(0, dtype=torch.long)
    return [torch.cat(out) for out in logits], torch.cat(labels)


def evaluate_onnx(path: str | Path, dataset: str | None = None, data_dir: str | None = None,
                  batch_size: int = 256, reporter: Reporter | None = None) -> dict[str, Any]:
    """Accuracy (%) and loss of the ONNX artifact itself on a test split.

    The dataset is the one named in the file's metadata unless another is given; images
    are normalised with the metadata's mean/std, exactly as a device would.
    """
    from sdprune.data.bundle import data_for_checkpoint
    from sdprune.train.evaluate import score_logits

    reporter = reporter or Reporter(quiet=True)
    if batch_size < 1:
        raise SdpruneError(f"batch size must be at least 1, got {batch_size}")
    path = Path(path)
    meta = read_onnx_meta(path)
    session = open_session(path)
    _, shape = check_classifier(session, path)
    if any(isinstance(d, int) and d != m for d, m in zip(shape[1:], meta["input_shape"])):
        raise SdpruneError(f"{path}: metadata input_shape {meta['input_shape']} but the graph takes {shape[1:]}")
    if len(meta["classes"]) != _num_classes(session, len(meta["classes"])):
        raise SdpruneError(f"{path}: metadata lists {len(meta['classes'])} classes, the graph outputs "
                           f"{session.get_outputs()[0].shape[1]}")
    # the file's metadata plays the checkpoint's part: its dataset, shape and normalisation, classes
    as_checkpoint = {"data": {k: meta[k] for k in ("dataset", "classes", "input_shape", "mean", "std", "mode", "resize")
                              if k in meta}, "config": {}}
    data = data_for_checkpoint(as_checkpoint, dataset, data_dir)
    test = data.test
    steps = -(-len(test) // batch_size)
    with reporter.progress(f"eval {path.name} on {data.name}", steps) as bar:
        (logits,), labels = labelled_logits([session], test, meta["mean"], meta["std"], batch_size, bar)
    scores = score_logits(logits, labels)
    bad = non_finite_rows(logits)
    if bad:
        reporter.warn(f"{path}: non-finite logits on {bad} of {len(labels)} test images: its loss and accuracy "
                      "are not meaningful")
    result = {"path": str(path), "model": meta.get("model", path.name), "dataset": data.name, "split": "test",
              "n": len(labels), "acc": scores["acc"], "loss": scores["loss"],
              "test": {"acc": scores["acc"], "loss": scores["loss"], "n": len(labels)},
              "file_bytes": path.stat().st_size,
              "opset": meta["opset"], "kept_blocks": meta.get("kept_blocks")}
    if meta.get("params") is not None:  # the PyTorch count, recorded at export (BN folding hides it)
        result["params"] = meta["params"]
    return result


def _num_classes(session, default: int) -> int:
    dim = session.get_outputs()[0].shape[1]
    return dim if isinstance(dim, int) else default


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
