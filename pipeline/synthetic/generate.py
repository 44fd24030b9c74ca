"""Writing a synthetic area: one GeoTIFF per date, the truth, quicklooks and a manifest.

:func:`generate_area` builds the scene once, renders its blocks (in worker processes when
``workers > 1``) and writes them in the canonical Morton order (:mod:`pipeline.synthetic.morton`),
so the files are byte-identical whatever the block size or worker count. Each survey is what a
provider delivers: red, green, blue (and near-infrared) uint8, WGS 84 / UTM 18N, 512-px tiles,
deflate. Beside them: the truth GeoJSON and the dams' shapes (:mod:`pipeline.synthetic.truth`),
a PNG quicklook per date with the truth drawn where the date's geotransform puts it, and
``synth.json`` (the manifest: settings, the layout, what stands on each date per dam context
and look-alike kind, and per date its transform, footprint shift and misregistration).

Everything is written into a staging directory beside ``out_dir`` and renamed into place at
the end (:func:`pipeline.files.staged_directory`), so a failed run leaves nothing; an existing
``out_dir`` is replaced only when it holds an earlier synth output and ``overwrite`` is set.

Peak memory is a few blocks per process (about 0.4 GB with the default 1024-px block), not the
survey: 4096 px (two dates, 4 km at 1 m, ~40 dams) takes about 13 s on one idle core. Worker
processes cannot be started from a daemonic process (e.g. inside a Dask worker task): call it
with ``workers=1`` there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.files import staged_directory, write_json
from pipeline.progress import progress_bar
from pipeline.synthetic.layout import get_layout
from pipeline.synthetic.morton import TILE, check_block, morton_blocks, tile_order
from pipeline.synthetic.objects import Scene
from pipeline.synthetic.render import render_block
from pipeline.synthetic.scene import build_scene, check_scene_args, parse_dates
from pipeline.synthetic.truth import shapes_geojson, standing_counts, truth_geojson

__all__ = ["BAND_NAMES", "SynthResult", "generate_area"]

BAND_NAMES = ("red", "green", "blue", "nir")
MANIFEST = "synth.json"  # its presence marks a directory as synth's own (see overwrite)
QUICKLOOK_MAX = 1024  # px: quicklooks are shrunk by powers of two to at most this edge


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate_area` wrote. Paths are inside ``out_dir``; keys are ISO dates."""

    out_dir: Path
    area: str
    surveys: dict[str, Path]
    truth: Path
    shapes: Path
    quicklooks: dict[str, Path]
    manifest: Path
    scene: Scene = field(repr=False)
    seconds: float = 0.0

    @property
    def survey_ids(self) -> list[str]:
        return [f"{self.area}-{d}" for d in self.surveys]


def generate_area(
    out_dir: str | os.PathLike,
    area: str = "creek",
    dates: Sequence[str | dt.date] = ("2023-06-01", "2024-06-01"),
    size: int = 4096,
    seed: int = 7,
    pixel_size: float = 1.0,
    nir: bool = True,
    block: int = 1024,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    layout: str = "natural",
) -> SynthResult:
    """Write a synthetic area: one GeoTIFF per date, the truth GeoJSON, quicklooks, a manifest.

    ``size`` is the raster edge in pixels of ``pixel_size`` metres; ``block`` (512 * 2**k px)
    is the unit of work, rendered in ``workers`` processes (default: one per core; 1 renders in
    this process). ``layout`` is ``"natural"`` or ``"balanced"`` (:mod:`pipeline.synthetic.layout`).
    Output bytes depend only on (area, dates, size, seed, pixel_size, nir, layout).
    Memory is bounded by about 2 * workers blocks whatever the size. Everything is written to a
    temporary directory beside ``out_dir`` and renamed into place at the end, so a failed run
    leaves nothing. Raises :class:`InputError` for unusable arguments before writing anything.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_scene_args(area, size, seed, pixel_size)
    parsed = parse_dates(dates)
    check_block(block)
    get_layout(layout)
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError(f"--workers {workers!r} must be a whole number of at least 1")
    _check_out_dir(out_dir, overwrite)

    scene = build_scene(area, parsed, size, seed, pixel_size, layout)
    n_bands = 4 if nir else 3
    blocks = morton_blocks(size, block)
    n_workers = min(workers or os.cpu_count() or 1, len(blocks) * len(parsed))
    factor = 1
    while size // factor > QUICKLOOK_MAX:
        factor *= 2
    surveys, quicklooks = {}, {}
    bar = progress_bar(len(blocks) * len(parsed), f"synth {area}", unit="block", disable=None if progress is None else not progress)
    # A small GDAL block cache: written tiles go to disk in the order they were written
    # instead of piling up (the default cache is 5% of RAM), so memory is size-independent.
    with staged_directory(out_dir) as tmp, _render_pool(scene, n_workers) as pool, rasterio.Env(GDAL_CACHEMAX=64), bar:
        for k, date in enumerate(parsed):
            name = f"{area}-{date.isoformat()}"
            tasks = [(k, r0, c0, h, w, n_bands, factor) for r0, c0, h, w in blocks]
            rendered = _ordered(pool, tasks, 2 * n_workers)
            small = _write_survey(tmp / f"{name}.tif", scene, k, n_bands, zip(blocks, rendered), factor, bar)
            _write_quicklook(tmp / f"{name}-quicklook.png", small, scene, k, factor)
            surveys[date.isoformat()] = out_dir / f"{name}.tif"
            quicklooks[date.isoformat()] = out_dir / f"{name}-quicklook.png"
        truth, shapes = f"{area}-truth.geojson", f"{area}-shapes.geojson"
        write_json(tmp / truth, truth_geojson(scene), indent=1)
        write_json(tmp / shapes, shapes_geojson(scene), indent=1)
        write_json(tmp / MANIFEST, _manifest(scene, get_layout(layout).name, n_bands, surveys, truth, shapes, quicklooks))
    return SynthResult(
        out_dir=out_dir, area=area, surveys=surveys, truth=out_dir / truth, shapes=out_dir / shapes, quicklooks=quicklooks,
        manifest=out_dir / MANIFEST, scene=scene, seconds=time.perf_counter() - started,
    )  # fmt: skip


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory unless it is an earlier synth output and ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output directory {out_dir} is a file; give a new or empty directory with --out")
    if out_dir.is_dir():
        present = sorted(p.name for p in out_dir.iterdir())
        if present:
            ours = MANIFEST in present
            if overwrite and ours:
                return
            listing = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            hint = (
                "it holds an earlier synth output: pass --overwrite to replace it, or give a new directory"
                if ours
                else "give a new or empty directory with --out (synth never deletes files it did not write)"
            )
            raise InputError(f"output directory {out_dir} is not empty ({len(present)} entries: {listing}); {hint}")


# --- rendering in worker processes ----------------------------------------------------------

_WORKER_SCENE: Scene | None = None  # the scene a worker renders, sent once when it starts


def _init_worker(scene: Scene) -> None:
    global _WORKER_SCENE
    _WORKER_SCENE = scene


def _render_task(task: tuple[int, int, int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one block: its pixels (bands, h, w) and its shrunk RGB for the quicklook."""
    date_index, r0, c0, h, w, bands, factor = task
    pixels = render_block(_WORKER_SCENE, date_index, r0, c0, h, w, bands)
    return pixels, _shrink(pixels[:3], factor)


@contextlib.contextmanager
def _render_pool(scene: Scene, n_workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``n_workers`` processes that hold ``scene``, or None (render here) for one."""
    if n_workers <= 1:
        _init_worker(scene)
        yield None
        return
    pool = ProcessPoolExecutor(
        n_workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_init_worker, initargs=(scene,)
    )
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _ordered(pool: ProcessPoolExecutor | None, tasks: list, window: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Results of ``_render_task`` over tasks, in order, with at most ``window`` in flight."""
    if pool is None:
        for task in tasks:
            yield _render_task(task)
        return
    pending = deque()
    it = iter(tasks)
    for task in it:
        pending.append(pool.submit(_render_task, task))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        for task in it:
            pending.append(pool.submit(_render_task, task))
            break
        yield result


# --- files ----------------------------------------------------------------------------------


def _write_survey(path: Path, scene: Scene, k: int, n_bands: int, rendered, factor: int, bar) -> np.ndarray:
    """Write date ``k``'s GeoTIFF from ((row0, col0, h, w), (pixels, shrunk)) in Morton order,
    tile by tile; return the quicklook's pixels (3, size // factor, size // factor)."""
    size = scene.size
    profile = dict(
        driver="GTiff", width=size, height=size, count=n_bands, dtype="uint8",
        crs=CRS.from_epsg(scene.epsg), transform=scene.transform(k), tiled=True,
        blockxsize=TILE, blockysize=TILE, compress="deflate", predictor=2, zlevel=6,
        interleave="pixel", bigtiff="IF_SAFER",
    )  # fmt: skip
    small = np.zeros((3, size // factor, size // factor), np.uint8)
    tiles_in = {}
    with rasterio.open(path, "w", **profile) as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined][:n_bands]
        for b, band_name in enumerate(BAND_NAMES[:n_bands], start=1):
            dst.set_band_description(b, band_name)
        for (r0, c0, h, w), (pixels, shrunk) in rendered:
            for tr, tc in tiles_in.setdefault((h, w), tile_order(h, w)):
                th, tw = min(TILE, h - tr), min(TILE, w - tc)
                dst.write(pixels[:, tr : tr + th, tc : tc + tw], window=Window(c0 + tc, r0 + tr, tw, th))
            small[:, r0 // factor : r0 // factor + shrunk.shape[1], c0 // factor : c0 // factor + shrunk.shape[2]] = shrunk
            bar.update(1)
    return small


def _manifest(
    scene: Scene, layout: str, n_bands: int, surveys: dict[str, Path], truth: str, shapes: str, quicklooks: dict[str, Path]
) -> dict:
    """The manifest: what was generated with which settings, what stands when, each date's geometry."""
    return {
        "generator": "damwatch synth",
        "version": __version__,
        "area": scene.area,
        "seed": scene.seed,
        "size": scene.size,
        "pixel_size_m": scene.pixel_size,
        "layout": layout,
        "crs": f"EPSG:{scene.epsg}",
        "bands": list(BAND_NAMES[:n_bands]),
        "truth": truth,
        "shapes": shapes,
        "counts": {
            "dams": len(scene.dams),
            "hard_negatives": len(scene.negatives),
            "streams": len(scene.streams),
            "lakes": len(scene.lakes),
            "buildings": len(scene.buildings),
            "standing_by_date": standing_counts(scene),  # dams per context, look-alikes per kind
        },
        "surveys": [
            {
                "survey_id": f"{scene.area}-{c.date.isoformat()}",
                "date": c.date.isoformat(),
                "file": surveys[c.date.isoformat()].name,
                "quicklook": quicklooks[c.date.isoformat()].name,
                "transform": list(scene.transform(k))[:6],
                "footprint_offset_px": list(c.offset_px),
                "misregistration_m": {"east": c.misregistration[0], "north": -c.misregistration[1]},
                "greenness": round(c.greenness, 3),
                "gain": round(c.gain, 3),
            }
            for k, c in enumerate(scene.conditions)
        ],
    }


# --- quicklooks -----------------------------------------------------------------------------

_STATUS_COLOURS = {"persisting": (255, 220, 0), "new": (60, 255, 60), "gone": (255, 60, 60)}


def _shrink(rgb: np.ndarray, f: int) -> np.ndarray:
    """Block means over f x f pixels (3, h // f, w // f) uint8, for the quicklook."""
    _, h, w = rgb.shape
    h2, w2 = h // f, w // f
    small = rgb[:, : h2 * f, : w2 * f].reshape(3, h2, f, w2, f).mean(axis=(2, 4))
    return np.floor(small + 0.5).astype(np.uint8)


def _write_quicklook(path: Path, small: np.ndarray, scene: Scene, k: int, factor: int) -> None:
    """PNG of the date at 1/factor scale with the truth drawn where the geotransform puts it."""
    img = Image.fromarray(np.ascontiguousarray(np.moveaxis(small, 0, -1)), "RGB")
    draw = ImageDraw.Draw(img)
    ox, oy = scene.conditions[k].offset_px
    scale = 1.0 / (factor * scene.pixel_size)

    def pix(x, y):  # declared position (geotransform), as a GIS would draw the truth
        return (x / scene.pixel_size - ox) / factor, (y / scene.pixel_size - oy) / factor

    for neg in scene.negatives:
        cx, cy = pix(neg.x, neg.y)
        r = max(3.0, 12 * scale)
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], outline=(0, 220, 255), width=1)
    for dam in scene.dams:
        cx, cy = pix(dam.x, dam.y)
        r = max(5.0, (dam.pond_length + 10) * scale)
        colour = _STATUS_COLOURS[dam.status]
        if dam.exists[k]:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        else:  # absent on this date: a thin cross where it was or will be
            draw.line([cx - r, cy - r, cx + r, cy + r], fill=colour, width=1)
            draw.line([cx - r, cy + r, cx + r, cy - r], fill=colour, width=1)
    legend = (
        f"{scene.area} {scene.conditions[k].date.isoformat()}  {scene.size} px @ {scene.pixel_size:g} m  "
        f"dams: yellow persisting, green new, red gone (circle = standing, x = absent); cyan = hard negatives"
    )
    draw.rectangle([0, 0, min(img.width, 7 * len(legend) + 8), 14], fill=(0, 0, 0))
    draw.text((4, 2), legend, fill=(255, 255, 255))
    img.save(path, optimize=False)
