"""Synthetic aerial surveys of beaver country, with known ground truth.

A *synthetic area* is a square of made-up landscape -- fields, forest, meadow, roads, farms, a
meandering stream network with side channels and lakes, beaver dams and things that look like
them -- drawn from a seed. A *synthetic survey* is one GeoTIFF of that area on one date, as a
survey provider would deliver it (RGB uint8 plus near-infrared, UTM, about 1 m pixels, tiled and
compressed), and the *truth* is one GeoJSON of every dam (and every hard negative) in the area.

The generator works in two stages, so that any size can be made in bounded memory and the bytes
never depend on how the work was cut up:

1. **Scene** (:func:`build_scene`, once, cheap): every object is vector geometry in scene
   metres, and each date's light, season and footprint are decided.
2. **Pixels** (:func:`render_block`, pure): the colour of a pixel is a function of the scene,
   the date and the pixel's global row and column only.

:func:`generate_area` renders the blocks, in worker processes if asked, and writes them in one
canonical order, so the files are byte-identical whatever the block size or worker count.

The modules, in the order the data flows (each one concept; the split follows the two stages,
with the pure pixel maths apart from the file writing):

- ``geometry``  plane geometry for drawing a scene: meandering paths, tangents, a point index
- ``objects``   the scene's objects as frozen values: streams, lakes, dams, look-alikes, dates
- ``layout``    how many objects of each kind a scene holds: ``natural`` or ``balanced``
- ``scene``     building a scene from a seed and a layout, one function per kind of object
- ``noise``     hashed noise: white, value and cellular noise of global coordinates only
- ``palette``   colours of each surface by season, and reflectance to digital numbers
- ``raster``    rasterizing shapes on a block's pixel grid: coverage, distance fields, blending
- ``draw``      drawing each kind of object onto a block: lakes, dams, look-alikes, buildings
- ``render``    a block's pixels in layers: land cover, water, objects, roads, the sensor
- ``morton``    the canonical write order: Morton (Z) order of the file's 512-px tiles
- ``truth``     the ground truth and the dams' shapes as RFC 7946 GeoJSON, counts per date
- ``generate``  writing an area: GeoTIFFs, truth, quicklooks and manifest, atomically
"""

from pipeline.synthetic.generate import BAND_NAMES, SynthResult, generate_area
from pipeline.synthetic.geometry import STEP_M
from pipeline.synthetic.layout import LAYOUTS, Layout
from pipeline.synthetic.morton import TILE, morton_blocks
from pipeline.synthetic.objects import (
    Building,
    Dam,
    DateConditions,
    HardNegative,
    Lake,
    Polylines,
    Scene,
    Stream,
)
from pipeline.synthetic.render import render_block
from pipeline.synthetic.scene import MIN_SIZE, build_scene
from pipeline.synthetic.truth import shapes_geojson, standing_counts, truth_geojson

__all__ = [
    "BAND_NAMES",
    "MIN_SIZE",
    "STEP_M",
    "TILE",
    "Scene",
    "Stream",
    "Lake",
    "Building",
    "Polylines",
    "Dam",
    "HardNegative",
    "DateConditions",
    "SynthResult",
    "build_scene",
    "render_block",
    "generate_area",
    "truth_geojson",
    "morton_blocks",
    "Layout",
    "LAYOUTS",
    "shapes_geojson",
    "standing_counts",
]
