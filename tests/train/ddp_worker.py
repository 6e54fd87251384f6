"""A process of the distributed tests, started by torchrun (tests/train/test_distributed.py).

``ddp_worker.py diverge``: every rank reports a different checksum to ``check_agreement``;
exits 3 on the SdpruneError every rank must raise.
"""

from __future__ import annotations

import sys

from sdprune.errors import SdpruneError
from sdprune.train.distributed import check_agreement, distributed_session


def main(argv: list[str]) -> int:
    if argv != ["diverge"]:
        print("usage: ddp_worker.py diverge", file=sys.stderr)
        return 2
    with distributed_session("cpu") as (world, _):
        try:
            check_agreement(world, {"survival": 1.0, "gates drawn": float(world.rank)}, "cpu")
        except SdpruneError as err:
            print(f"rank {world.rank}: {err}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
