"""`sdprune export`: a checkpoint to a verified ONNX model (+ int8, + ONNX Runtime mobile format).

Writes to <checkpoint folder>/export/ (export-NAME/ for a checkpoint file NAME.pt) unless --out
is given: model.onnx, model.int8.onnx
(--int8), model.ort / model.int8.ort and required_operators.config (--ort), export.json.
"""

from __future__ import annotations

import argparse


def add_parser(sub):
    from sdprune.deploy.export import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_SAMPLES
    from sdprune.deploy.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_CLEAR_AGREEMENT
    from sdprune.deploy.quantize import DEFAULT_CALIB_BATCHES, DEFAULT_METHOD, METHODS, TARGETS

    p = sub.add_parser("export", help="export a checkpoint to verified ONNX (int8, mobile format)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", nargs="?", metavar="CKPT",
      help="checkpoint or run folder (default: the newest pruned model, else the newest run)")
    a("--out", metavar="DIR", help="output folder (default: <checkpoint folder>/export)")
    a("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    a("--atol", type=float, default=DEFAULT_ATOL,
      help=f"largest |logit difference| ONNX Runtime may show against PyTorch, times the largest "
           f"|logit| when that is above 1 (default {DEFAULT_ATOL:g})")
    a("--samples", type=int, default=DEFAULT_SAMPLES,
      help=f"test images (a seeded random subset) for the parity and .ort checks (default {DEFAULT_SAMPLES})")
    a("--int8", action="store_true", help="also write model.int8.onnx (static QDQ, per-channel weights)")
    a("--calib-batches", type=int, default=DEFAULT_CALIB_BATCHES,
      help=f"batches of 32 training images that calibrate int8 (default {DEFAULT_CALIB_BATCHES})")
    a("--calib-method", choices=list(METHODS), default=DEFAULT_METHOD,
      help=f"how activation ranges are calibrated: ONNX Runtime's MinMax or Percentile (default {DEFAULT_METHOD})")
    a("--int8-float-ends", action=argparse.BooleanOptionalAction, default=None,
      help="leave the first and the last layer in float (default: on for --target arm, where int8 hurts them "
           "most; off for x86, where it would break ONNX Runtime's all-int8 graph)")
    a("--int8-min-clear-agreement", type=float, default=None, metavar="PCT",
      help="least top-1 agreement (%%) of int8 with fp32 on the test images fp32 decides clearly (its two best "
           "logits more than 5%% of its largest |logit| apart); below it no int8 file is written and the export "
           f"fails (default {DEFAULT_MIN_CLEAR_AGREEMENT:g})")
    a("--int8-max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="POINTS",
      help="the export fails when int8 is less accurate than fp32 on the test split by more than this many points "
           f"beyond doubt: the whole 95%% interval of the change below -POINTS (default {DEFAULT_MAX_DROP:g})")
    a("--int8-min-agreement", type=float, default=None, dest="int8_min_agreement", help=argparse.SUPPRESS)
    a("--target", choices=list(TARGETS), default="arm",
      help="the device's CPU: arm (phones: int8 with s8 activations, .ort optimised for ARM) or x86 "
           "(int8 with u8 activations and 7-bit weights for CPUs without VNNI, .ort for amd64); default arm")
    a("--ort", action="store_true", help="also write ONNX Runtime's mobile format (.ort) and its operator config")
    return p


def run(args, reporter) -> int:
    from sdprune.deploy.package import export_checkpoint
    from sdprune.train.runs import resolve_checkpoint

    min_clear = args.int8_min_clear_agreement
    if args.int8_min_agreement is not None:  # the gate's flag before issue 21, kept as an alias
        reporter.warn("--int8-min-agreement is deprecated: it now sets --int8-min-clear-agreement (agreement on "
                      "the clearly decided test images; the accuracy change is gated by --int8-max-drop)")
        if min_clear is None:
            min_clear = args.int8_min_agreement
    checkpoint = resolve_checkpoint(args.checkpoint, prefer_pruned=True, reporter=reporter)
    record = export_checkpoint(checkpoint, args.out, opset=args.opset, atol=args.atol, samples=args.samples,
                               int8=args.int8, calib_batches=args.calib_batches, target=args.target,
                               ort=args.ort, reporter=reporter, int8_min_clear_agreement=min_clear,
                               int8_max_drop=args.int8_max_drop, calib_method=args.calib_method,
                               int8_float_ends=args.int8_float_ends)
    reporter.result(record)
    return 0
