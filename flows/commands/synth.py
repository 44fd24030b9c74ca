"""Write a synthetic aerial survey of an area with beaver dams: the built-in demo and test data.

For each date, a GeoTIFF as a survey provider delivers it (red, green, blue and near-infrared
uint8; WGS 84 / UTM zone 18N; SIZE x SIZE pixels of --pixel-size metres; 512-px tiles,
deflate), a PNG quicklook with the truth drawn on it, and for the area one ground-truth GeoJSON
(WGS84 lon/lat): every dam with its status relative to the first date (new, persisting, gone),
its context (main_stream, side_channel, lake_outlet) and the dates it stands, and every hard
negative (road_crossing, culvert, fallen_tree, narrows, pond_without_dam). The scene holds
about 2.4 dams per km^2.

The same --seed and --size always give the same bytes, whatever --block or --workers; memory
does not grow with --size. Between dates dams are built and breached, crops rotate, the season,
sun and exposure change, and later dates are misregistered by a few metres.

--layout balanced makes an evaluation area: as many side-channel and lake-outlet dams as
main-stream ones, many look-alikes of each kind, more small lakes and side channels; at
--pixel-size 2, --size 3072 (6 km) holds at least 40 standing dams of each context and 20
look-alikes of each kind on each date. The manifest (synth.json) counts them per date.

Defaults: --area creek --dates 2023-06-01 2024-06-01 --size 4096 (4 km at 1 m, ~40 dams,
about 15 s) --seed 7 --pixel-size 1 --block 1024 --layout natural, workers = one per core.

  damwatch synth --out synth-data
  damwatch synth --area creek --dates 2023-06-01 2024-06-01 --size 8192 --seed 7 --out DIR
  damwatch synth --area heldout --layout balanced --pixel-size 2 --size 3072 --seed 11 --out DIR
  damwatch ingest DIR/creek-2023-06-01.tif --area creek --date 2023-06-01
"""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "write synthetic aerial surveys with beaver dams and their ground truth"
ORDER = 5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    parser.add_argument("--area", default="creek", help="area name, used in file names and survey ids (default: creek)")
    parser.add_argument(
        "--dates",
        nargs="+",
        default=["2023-06-01", "2024-06-01"],
        metavar="YYYY-MM-DD",
        help="survey dates, oldest first (default: 2023-06-01 2024-06-01)",
    )
    parser.add_argument("--size", type=int, default=4096, help="raster edge in pixels (default: 4096; at least 512)")
    parser.add_argument("--seed", type=int, default=7, help="scene seed (default: 7)")
    parser.add_argument("--pixel-size", type=float, default=1.0, metavar="METRES", help="pixel size in metres (default: 1)")
    parser.add_argument("--no-nir", action="store_true", help="write RGB only, without the near-infrared band")
    parser.add_argument(
        "--block", type=int, default=1024, help="block edge in pixels rendered per task: 512, 1024, 2048, 4096 (default: 1024)"
    )
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synth output in --out")
    parser.add_argument(
        "--layout",
        default="natural",
        metavar="NAME",
        help="natural (default: dams where they fall, mostly on main channels) or balanced (as many dams "
        "in each context, many look-alikes: for evaluation)",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.synthetic import generate_area

    result = generate_area(
        args.out,
        area=args.area,
        dates=args.dates,
        size=args.size,
        seed=args.seed,
        pixel_size=args.pixel_size,
        nir=not args.no_nir,
        block=args.block,
        workers=args.workers,
        overwrite=args.overwrite,
        layout=args.layout,
    )
    scene = result.scene
    statuses = {s: sum(d.status == s for d in scene.dams) for s in ("new", "persisting", "gone")}
    km = scene.extent / 1000
    print(
        f"wrote {len(result.surveys)} surveys of {result.area} ({scene.size} x {scene.size} px, "
        f"{km:.2f} x {km:.2f} km, EPSG:{scene.epsg}) in {result.seconds:.1f} s to {result.out_dir}"
    )
    print(
        f"  {len(scene.dams)} dams ({statuses['new']} new, {statuses['persisting']} persisting, "
        f"{statuses['gone']} gone), {len(scene.negatives)} hard negatives"
    )
    for date, path in result.surveys.items():
        print(f"  {date}: {path.name}  quicklook {result.quicklooks[date].name}")
    print(f"  truth: {result.truth.name}")
    return 0
