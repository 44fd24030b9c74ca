"""Cut surveys into tiles and compute each tile's feature vector, in parallel on a Dask cluster.

Tiles are --size pixels square (default 128) every --stride pixels (default 128 = no overlap,
for training; use 64 for detection). The last row and column of tiles are shifted inward to end
at the survey's edge, so every pixel is covered and every tile is whole. The feature spec
(--spec, default "default") names the features and the bands they use, by name:

  default   bands red, green, blue: a 32 x 32 grayscale thumbnail in [0, 1], per-band mean
            and std, contrast, texture, edge strength and an 8-bin edge-orientation histogram
  rgbn      the same plus near-infrared mean/std and NDVI/NDWI mean/std (needs a nir band)

Features are stored raw (normalized at training) under
features/<SURVEY>/<SPEC>-v<VERSION>/size<SIZE>_stride<STRIDE> with the spec and the tile grid,
with each tile's valid (non-nodata) fraction; tiles without valid pixels get NaN. Features
already computed from the same survey file, spec and grid are reused unless --overwrite.

Runs the Prefect flow `features`, so the run appears in Prefect's run history (on the server
PREFECT_API_URL names, else on Prefect's temporary local server); its record (parameters, stages,
provenance) goes to <store>/runs/<run_id>/.

  damwatch features creek-2024-06-01
  damwatch features naip-2015-09-26 --spec rgbn --stride 64 --workers 2
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

NAME = "features"
HELP = "tile surveys and compute per-tile features with Dask (stored in the store)"
ORDER = 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("surveys", metavar="SURVEY", nargs="+", help="survey id(s) in the store, e.g. creek-2024-06-01")
    parser.add_argument("--spec", default="default", metavar="NAME", help="feature spec: default or rgbn (default: default)")
    parser.add_argument("--stride", type=int, default=128, metavar="N", help="tile stride in pixels (default: 128)")
    parser.add_argument("--size", type=int, default=128, metavar="N", help="tile edge in pixels, a multiple of 32 (default: 128)")
    parser.add_argument("--overwrite", action="store_true", help="recompute even if the store holds these features")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.features import get_spec, open_features, spec_band_indices

    store = open_store(args)
    spec = get_spec(args.spec)
    for survey_id in args.surveys:  # unknown ids and missing bands fail before Prefect or a cluster starts
        spec_band_indices(spec, store.survey(survey_id).bands, f"survey {survey_id}")
    prepare_flow_run()
    from flows.features import features_flow

    summary = run_flow(
        features_flow,
        surveys=list(args.surveys), store=str(store.root), spec=args.spec, stride=args.stride, size=args.size,
        cluster=args.cluster, workers=args.workers, overwrite=args.overwrite,
    )
    for survey_id, outcome in zip(args.surveys, summary["features"]):
        result = open_features(store, survey_id, spec, stride=args.stride, size=args.size)
        fraction = result.valid_fraction
        grid = result.grid
        status = stage_status(summary, "features", f"{survey_id}/")
        print(
            f"features {survey_id} ({status}): spec {spec.id} ({spec.n_features} features), "
            f"{grid.n_rows} x {grid.n_cols} tiles of {grid.size} px at stride {grid.stride}, "
            f"{int((fraction > 0).sum())} with data, {int((fraction == 0).sum())} all nodata, "
            f"{int(((fraction > 0) & (fraction < 0.5)).sum())} under half valid "
            f"-> {store.zarr_path / outcome['path']}"
        )
    print(f"run record: {summary['run_dir']}")
    return 0
