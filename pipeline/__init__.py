"""damwatch's geospatial library: survey store, tiling, features, labels, detection, change, maps.

Nothing here imports Prefect, so every stage can run from a notebook or a plain Dask script.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("damwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
