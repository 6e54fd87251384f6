"""`sdprune` command line: one thin module per subcommand (parse, build a config, call)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from sdprune import __version__

COMMANDS = ("models", "adopt", "train", "stats", "prune", "eval", "export", "bench", "sweep")


class Parser(argparse.ArgumentParser):
    """argparse, with every usage error one line on stderr (exit 2), as sdprune's own errors are."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(prog="sdprune", description="Train deep with stochastic depth, ship shallow.")
    parser.add_argument("--version", action="version", version=f"sdprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        # No fallback: a command whose import fails must fail loudly, not vanish from --help.
        module = importlib.import_module(f"sdprune.cli.{name}")
        p = module.add_parser(sub)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress or messages")
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sdprune.errors import SdpruneError
    from sdprune.report import Reporter

    args = build_parser().parse_args(argv)
    other_rank = False
    if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun: rank 0 speaks for every rank
        from sdprune.train.distributed import launched_world

        try:
            other_rank = not launched_world().main
        except SdpruneError as err:
            print(f"sdprune {args.command}: error: {err}", file=sys.stderr)
            return 2
        if args.command != "train":  # N copies would each do the whole job and write the same files
            if not other_rank:
                print(f"sdprune {args.command}: error: only `sdprune train` runs under torchrun; "
                      f"run `sdprune {args.command}` as one process (--device picks its GPU)", file=sys.stderr)
            return 2
    reporter = Reporter(quiet=args.quiet, json_mode=args.json, silent=other_rank)
    name = f"sdprune {args.command}" + (f" (rank {os.environ.get('RANK')})" if other_rank else "")
    try:
        return int(args.run(args, reporter) or 0)
    except SdpruneError as err:
        _say(f"{name}: error: {' '.join(str(err).split())}", other_rank)  # one line
        return 2
    except OSError as err:  # the machine's, not sdprune's: a disk that filled up, a folder that went away
        where = f": {err.filename}" if err.filename else ""
        _say(f"{name}: error: {err.strerror or err}{where}", other_rank)
        return 2
    except KeyboardInterrupt as err:  # sdprune.errors.Interrupted says what to do next
        _say(f"{name}: interrupted{'; ' + str(err) if str(err) else ''}", other_rank)
        return 130


# Under torchrun, a rank other than 0 waits this long (seconds) before its error line: bad input
# fails every rank alike, rank 0's line comes first, and torchrun stops this process meanwhile
# (its own report follows); an error of this rank alone is still said, a moment later.
OTHER_RANK_DELAY_S = 3.0


def _say(line: str, other_rank: bool) -> None:
    """The one line a failed command ends with, on stderr (after a pause on a rank other than 0)."""
    if other_rank:
        import time

        time.sleep(OTHER_RANK_DELAY_S)
    print(line, file=sys.stderr, flush=True)
