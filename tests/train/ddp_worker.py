"""A process of the distributed tests, started by torchrun (tests/train/test_distributed.py).

``ddp_worker.py train GRAD_SYNC OUT [TrainConfig key=value ...]``: train through the library
with that gradient averaging. ``ddp_worker.py diverge``: every rank reports a different
checksum; exits 3 on the SdpruneError every rank must raise.
"""

from __future__ import annotations

import json
import sys

from sdprune.errors import SdpruneError
from sdprune.train.config import TrainConfig
from sdprune.train.distributed import check_agreement, distributed_session
from sdprune.train.loop import train


def main(argv: list[str]) -> int:
    if argv[0] == "diverge":
        with distributed_session("cpu") as (world, _):
            try:
                check_agreement(world, {"survival": 1.0, "gates drawn": float(world.rank)}, "cpu")
            except SdpruneError as err:
                print(f"rank {world.rank}: {err}", file=sys.stderr)
                return 3
        return 0
    _, grad_sync, out, *pairs = argv
    values = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}
    train(TrainConfig(device="cpu", out=out, **values), grad_sync=grad_sync)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
