"""Label a survey's tiles: 1 positive, 0 negative, -1 unknown, from a GeoJSON file or a band expression.

From a file (--from FILE): GeoJSON objects in WGS84 (RFC 7946) or in the CRS named by a legacy
`crs` member or --crs, reprojected to the survey. A tile is positive when a selected object lies
in it: a point inside it, a line touching it, or a polygon covering at least --min-cover of the
tile (default 0.2) or having at least half its own area in it. Select the objects with
--where KEY=VALUE[,VALUE...] (repeatable) and --on-date (keep objects whose `dates` property
lists that date; "survey" = the survey's date), e.g. the dams standing on the survey's date in a
damwatch synth truth file. --region FILE (polygons) limits the labelled area: tiles not wholly
inside it are unknown unless positive. Objects outside the raster are counted and reported.

From the survey itself (--expr EXPR): a per-pixel condition over band names, b1..bN, ndvi and
ndwi, with numbers, + - * /, abs(), comparisons and and/or/not; a tile is positive when it holds
on at least --min-fraction (default 0.2) of the tile's valid pixels. Band values are raw pixel
values. Computed per chunk on a Dask cluster.

Tiles with less than --min-valid (default 0.5) valid pixels are unknown. The grid is --size px
tiles (default 128) at --stride px (default 128). Stored under
labels/<SURVEY>/<NAME>/size<SIZE>_stride<STRIDE> (--name, default "default"), replacing earlier
labels of that name. A run whose survey, file and settings are unchanged since the same labels
were made, and whose stored labels are still those, is skipped and says so.

Runs the Prefect flow `labels`, so the run appears in Prefect's run history (on the server
PREFECT_API_URL names, else on Prefect's temporary local server); its record goes to
<store>/runs/<run_id>/.

  damwatch labels creek-2023-06-01 --from synth/creek-truth.geojson --where class=dam --on-date survey
  damwatch labels naip-2015-09-26 --expr "ndwi > 0" --min-fraction 0.2 --name water
"""

from __future__ import annotations

import argparse

from flows.commands._common import (
    add_cluster_arguments,
    add_store_argument,
    open_store,
    prepare_flow_run,
    run_flow,
    stage_status,
)

NAME = "labels"
HELP = "label a survey's tiles from a GeoJSON file or a band expression (e.g. \"ndwi > 0\")"
ORDER = 21


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("survey", metavar="SURVEY", help="survey id in the store, e.g. creek-2024-06-01")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="path", metavar="FILE", help="GeoJSON file of labelled objects")
    source.add_argument("--expr", metavar="EXPR", help='per-pixel band condition, e.g. "ndwi > 0"')
    parser.add_argument("--where", metavar="KEY=VALUE", action="append", default=[],
                        help="with --from: keep objects whose property KEY is VALUE (or one of VALUE,VALUE,...)")
    parser.add_argument("--on-date", metavar="DATE", default=None,
                        help='with --from: keep objects whose `dates` list DATE (YYYY-MM-DD, or "survey")')
    parser.add_argument("--min-cover", type=float, default=0.2, metavar="F",
                        help="with --from: fraction of a tile a polygon must cover (default: 0.2)")
    parser.add_argument("--region", metavar="FILE", default=None,
                        help="with --from: GeoJSON polygons of the labelled area (default: the whole survey)")
    parser.add_argument("--crs", metavar="CRS", default=None,
                        help="with --from: CRS of the file's coordinates, e.g. EPSG:26914 (default: WGS84)")
    parser.add_argument("--min-fraction", type=float, default=0.2, metavar="F",
                        help="with --expr: fraction of a tile's valid pixels that must satisfy EXPR (default: 0.2)")
    parser.add_argument("--min-valid", type=float, default=0.5, metavar="F",
                        help="tiles with a smaller valid fraction are unknown (default: 0.5)")
    parser.add_argument("--name", default="default", help='name of the label set in the store (default: "default")')
    parser.add_argument("--stride", type=int, default=128, metavar="N", help="tile stride in pixels (default: 128)")
    parser.add_argument("--size", type=int, default=128, metavar="N", help="tile edge in pixels (default: 128)")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def parse_where(items: list[str]) -> dict[str, object]:
    from pipeline.errors import InputError

    where: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--where {item!r} is not KEY=VALUE; write e.g. --where class=dam")
        values = value.split(",")
        where[key] = values if len(values) > 1 else value
    return where


def run(args: argparse.Namespace) -> int:
    from pipeline.tiling import TileGrid

    store = open_store(args)
    survey = store.survey(args.survey)
    grid = TileGrid.for_survey(survey, size=args.size, stride=args.stride)
    where = parse_where(args.where) or None
    # What a user can get wrong fails here, before Prefect or a cluster starts: unreadable files
    # and expressions over bands the survey lacks (the labelling stage checks the rest).
    if args.path:
        from pipeline.geojson import read_features
        from pipeline.labels import crs_hint

        read_features(args.path, what="label file", crs=args.crs, fix_crs=crs_hint(survey))
        if args.region:
            read_features(args.region, what="region file", crs=args.crs, fix_crs=crs_hint(survey))
    else:
        from pipeline.expressions import parse_expression

        parse_expression(args.expr, survey.bands, f"survey {args.survey}")
    prepare_flow_run()
    from flows.labels import labels_flow

    summary = run_flow(
        labels_flow,
        surveys=[args.survey], store=str(store.root), truth=args.path, expr=args.expr, where=where,
        on_date=args.on_date, min_cover=args.min_cover, region=args.region, crs=args.crs,
        min_fraction=args.min_fraction, min_valid=args.min_valid, name=args.name, stride=args.stride,
        size=args.size, cluster=args.cluster, workers=args.workers,
    )
    labels = summary["labels"][args.survey]
    detail = ""
    if args.path:
        r = labels["report"]
        detail = (
            f"; {r['selected']} of {r['objects']} objects selected"
            + (f", {r['outside']} of them outside the raster" if r["outside"] else ", none outside the raster")
        )
    status = stage_status(summary, "labels", f"{args.survey}/")
    print(
        f"labels {args.survey} {args.name!r} from {labels['source']}{detail}: {labels['positive']} positive, "
        f"{labels['negative']} negative, {labels['unknown']} unknown of {grid.n_rows} x {grid.n_cols} tiles "
        f"({grid.size} px, stride {grid.stride}) -> {store.zarr_path / labels['path']}"
        + ("" if status == "done" else f" ({status})")
    )
    print(f"run record: {summary['run_dir']}")
    return 0
