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

from flows.commands._common import add_cluster_arguments, add_store_argument, open_store

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
    from pipeline.cluster import dask_client
    from pipeline.store import ingest

    store = open_store(args)
    bands = args.bands.split(",") if args.bands else None
    with dask_client(args.cluster, n_workers=args.workers) as client:
        result = ingest(
            args.path, args.area, args.date, store, bands=bands, overwrite=args.overwrite, client=client
        )
    print(describe_ingest(result, store))
    return 0


def describe_ingest(result, store) -> str:
    s = result.survey
    if result.status == "unchanged":
        return f"survey {s.id} already holds {s.source_name} (same sha256): nothing to do"
    verb = "replaced" if result.status == "replaced" else "ingested"
    return (
        f"{verb} {s.source_name} as survey {s.id} in {store.root}: {s.width} x {s.height} px, "
        f"{len(s.bands)} band(s) ({', '.join(s.bands)}), {s.dtype}, {s.summary()['crs']}, "
        f"pixel {s.res[0]:g} x {s.res[1]:g} {s.summary()['units']}"
    )
