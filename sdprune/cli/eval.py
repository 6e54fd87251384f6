"""`sdprune eval`: accuracy and loss of a checkpoint (full or pruned) or an ONNX model."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("eval", help="accuracy, loss, parameters and FLOPs of a model", description=__doc__)
    p.add_argument("model", help="checkpoint (.pt), run folder, or exported .onnx model")
    p.add_argument("--dataset", help="evaluate on another dataset (default: the model's own)")
    p.add_argument("--data-dir", help="dataset folder (default: the model's own, else ~/.cache/sdprune/data/<dataset>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (checkpoints; default auto)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    return p


def run(args, reporter) -> int:
    from sdprune.errors import SdpruneError
    from sdprune.report import human

    if args.batch_size < 1:
        raise SdpruneError("--batch-size must be at least 1")
    if str(args.model).endswith(".ort"):
        raise SdpruneError(f"{args.model}: .ort files carry no sdprune metadata; evaluate the .onnx "
                           "it was converted from (same graph)")
    if str(args.model).endswith(".onnx"):
        from sdprune.deploy.runtime import evaluate_onnx

        result = evaluate_onnx(args.model, dataset=args.dataset, data_dir=args.data_dir,
                               batch_size=args.batch_size, reporter=reporter)
    else:
        from sdprune.train.evaluate import evaluate_checkpoint
        from sdprune.train.runs import resolve_checkpoint

        result = evaluate_checkpoint(resolve_checkpoint(args.model), args.dataset, args.data_dir,
                                     args.device, args.batch_size, reporter)
    rows = []
    for split in ("test", "val"):
        if isinstance(result.get(split), dict):
            rows.append([split, f"{result[split]['acc']:.2f}%", f"{result[split]['loss']:.4f}"])
    extra = [f"{k} {human(result[k])}" for k in ("params", "flops") if isinstance(result.get(k), (int, float))]
    if isinstance(result.get("blocks"), dict):
        extra.append(f"blocks {result['blocks']['kept']}/{result['blocks']['total']}")
    reporter.table(f"{result.get('model', args.model)} on {result.get('dataset', '?')}", ["split", "accuracy", "loss"],
                   rows, caption=", ".join(extra) or None)
    reporter.result(result)
    return 0
