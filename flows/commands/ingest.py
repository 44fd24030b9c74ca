"""Ingest a GeoTIFF into the survey store as the survey <AREA>-<DATE>.

The raster is read by windows aligned with its internal blocks, in parallel on a Dask cluster,
and written as Zarr v3 (zstd, chunks of 1024 x 1024 pixels holding all bands) with its CRS and
transform, so it never has to fit in memory. Any band count; uint8, uint16, int16, uint32,
int32, float32 or float64; any projected or geographic CRS; with or without nodata.

Ingesting the same file again does nothing and says so. A different file under an existing
survey id is refused unless --overwrite. An interrupted ingest leaves no survey behind.

Band names come from --bands, else from the file's band descriptions, else from its colour
interpretation; otherwise the bands are called band1..bandN. Features such as NDWI need named
bands (red, green, blue, nir), so name them for files that do not:

  damwatch ingest m_4709963_se_14_1_20090818.tif --area pothole --date 2009-08-18 \\
      --bands red,green,blue,nir
  damwatch ingest creek.tif --area creek --date 2024-06-01 --store /data/damwatch --workers 4
"""

from __future__ import annotations

import argparse

from flows.commands._common import add_cluster_arguments, add_store_argument, open_store, prepare_flow_run, run_flow

NAME = "ingest"
HELP = "ingest a GeoTIFF into the store as a georeferenced Zarr survey"
ORDER = 10


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the GeoTIFF to ingest")
    parser.add_argument("--area", required=True, help="area name: lower-case letters, digits, '-', '_'")
    parser.add_argument("--date", required=True, help="survey date, YYYY-MM-DD")
    parser.add_argument(
        "--bands",
        metavar="NAMES",
        default=None,
        help="comma-separated band names in file order, e.g. red,green,blue,nir",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing survey from another file")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.files import file_sha256, survey_id_for
    from pipeline.ingest import check_input, check_replacing

    # Everything a user can get wrong is checked before Prefect or a cluster starts, including
    # a different file under an existing survey id (one hash of the file, passed on).
    store = open_store(args)
    survey_id = survey_id_for(args.area, args.date)
    bands = args.bands.split(",") if args.bands else None
    check_input(Path(args.path), bands)
    sha256 = file_sha256(args.path)
    check_replacing(store, survey_id, args.path, sha256, bands, args.overwrite)
    prepare_flow_run()
    from flows.ingest import ingest_flow

    summary = run_flow(
        ingest_flow,
        path=args.path, area=args.area, date=args.date, store=args.store, bands=bands,
        overwrite=args.overwrite, cluster=args.cluster, workers=args.workers, sha256=sha256,
    )
    skipped = all(stage["status"] == "skipped" for stage in summary["stages"])
    status = "unchanged" if skipped else summary["ingest"]["status"]
    print(describe_ingest(store.survey(survey_id), status, store))
    print(f"run record: {summary['run_dir']}")
    return 0


def describe_ingest(survey, status: str, store) -> str:
    from flows.commands.surveys import pixel_size

    if status == "unchanged":
        return f"survey {survey.id} already holds {survey.source_name} (same sha256): nothing to do"
    verb = "replaced" if status == "replaced" else "ingested"
    info = survey.summary()
    return (
        f"{verb} {survey.source_name} as survey {survey.id} in {store.root}: {survey.width} x "
        f"{survey.height} px, {len(survey.bands)} band(s) ({', '.join(survey.bands)}), "
        f"{survey.dtype}, {info['crs']}, pixel {pixel_size(survey)}"
    )
