"""The ``damwatch`` command line.

Subcommands live in ``flows/commands/<name>.py`` and are discovered at start-up, so adding a
command never means editing this file. A user mistake (:class:`pipeline.errors.DamwatchError`
or :class:`ann.errors.AnnError`) is printed as one paragraph with exit status 2; a fault of the
machine (:class:`pipeline.errors.ResourceError`: a full disk, an unreachable cluster) the same
way with exit status 1; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import textwrap
from collections.abc import Sequence

import flows.commands
from ann.errors import AnnError
from pipeline import __version__
from pipeline.errors import DamwatchError, ResourceError

__all__ = ["main", "build_parser"]

DESCRIPTION = """\
damwatch finds things in aerial surveys and shows how they change.

A survey (a GeoTIFF) is ingested into a Zarr store, cut into tiles, turned into features,
scored by a small neural network, and written as maps a scientist opens in QGIS: probability
rasters (COG), detections (GeoJSON) and a report. Two surveys of one area at two dates are
compared to flag change. Everything runs on this machine by default (a Dask LocalCluster and
Prefect's temporary server); --cluster ADDRESS or DAMWATCH_CLUSTER points at a real cluster.
"""

EPILOG = """\
Start with `damwatch demo`, which runs the whole pipeline on built-in synthetic data.
Every command has its own --help with defaults, units and examples.
"""


def _command_modules():
    modules = []
    for info in pkgutil.iter_modules(flows.commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"flows.commands.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damwatch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"damwatch {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in _command_modules():
        doc = textwrap.dedent(module.__doc__ or module.HELP).strip()
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (DamwatchError, AnnError) as exc:
        message = textwrap.fill(str(exc), width=100, break_long_words=False, break_on_hyphens=False)
        print(f"damwatch {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(exc, ResourceError) else 2
    except KeyboardInterrupt:
        print(f"damwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `damwatch ... | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
