"""damwatch's geospatial library: from a survey's pixels to maps a scientist opens.

Nothing here imports Prefect, so every stage can run from a notebook or a plain Dask script.
Data flows one way: flows → pipeline → ann. The modules, one concept each:

Surveys and files
  ``errors``       the user-facing errors (one paragraph: what is wrong and what to do)
  ``files``        atomic writes, JSON, file hashes, dates and area names
  ``store``        the store: surveys and derived groups, read complete and written staged
  ``ingest``       a GeoTIFF becomes a survey in the store
  ``synthetic``    synthetic surveys with known ground truth (a package)
  ``cluster``      the connection to a Dask cluster (local by default)
  ``progress``     progress bars on long work (on a terminal only)
  ``gdal_messages`` GDAL's warnings about a file, each said once

Tiles and what is computed from them
  ``tiling``       tile grids over a survey's pixel grid (all tile constants live here)
  ``bands``        bands by name: pixel scale, grayscale, NDVI/NDWI
  ``blocks``       a NumPy function over a survey's tiles, one Dask task per block of tiles
  ``features``     per-tile feature vectors (the classic model's input)
  ``expressions``  the safe band-expression language (``"ndwi > 0"``)
  ``labels``       tile labels from GeoJSON objects or a band expression
  ``coords``       tile-centre coordinates and grid mapping of tile groups (for xarray/rioxarray)

Training and detection
  ``examples``     labelled tiles cut into training, validation and test regions
  ``training``     training settings in, a saved model and its report out
  ``detect``       a model's probability for every tile of a survey
  ``change``       new, gone and persisting between two dates
  ``evaluate``     scores against ground truth

Outputs
  ``maps``         map maths: tile probabilities to map cells
  ``detections``   flagged tiles grouped into detections
  ``geojson``      GeoJSON in and out (RFC 7946, WGS84)
  ``shapes``       adjacent cells of one class dissolved into polygons
  ``units``        sizes in map units said in metres (degrees at a latitude)
  ``render``       Cloud-Optimized GeoTIFFs (band names, units, class names) and quicklook PNGs
  ``stac``         STAC items of outputs and models (MLM), and a catalog per run
  ``provenance``   what made an output, from which inputs
  ``outputs``      one output folder, written whole or not at all
  ``results``      the files of a detection or a change, composed
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("damwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

from pipeline.gdal_messages import say_gdal_warnings_once  # noqa: E402 - a logging filter, no heavy import

say_gdal_warnings_once()
