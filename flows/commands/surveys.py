"""List the surveys in the store: id, area, date, size in pixels, bands, CRS and pixel size.

  damwatch surveys
  damwatch surveys --store /data/damwatch --area creek
  damwatch surveys --json          # one JSON object per survey, for scripts
"""

from __future__ import annotations

import argparse
import json

from flows.commands._common import add_store_argument, open_store

NAME = "surveys"
HELP = "list the surveys in the store"
ORDER = 11


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--area", default=None, help="only surveys of this area")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    add_store_argument(parser)


def pixel_size(survey) -> str:
    """The pixel size as printed: in the CRS's units, and in metres for a geographic survey."""
    from pipeline.units import describe_size

    w, s, e, n = survey.bounds
    return describe_size(survey.crs, survey.res[0], survey.res[1], centre=((w + e) / 2, (s + n) / 2))


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    surveys = store.surveys(area=args.area)
    if args.json:
        for s in surveys:
            print(json.dumps(s.summary()))
        return 0
    if not surveys:
        from pipeline.errors import command

        print(f"no surveys in {store.root}; ingest one ({command('ingest', '--help')} shows how)")
        return 0
    rows = [("id", "area", "date", "size (px)", "bands", "crs", "pixel size")]
    for s in surveys:
        info = s.summary()
        rows.append(
            (
                s.id,
                s.area,
                info["date"],
                f"{s.width} x {s.height}",
                ",".join(s.bands),
                info["crs"],
                pixel_size(s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0
