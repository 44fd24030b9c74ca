"""GDAL's warnings, each said once.

GDAL reports a malformed-but-readable GeoTIFF (``TIFFReadDirectory: Sum of Photometric
type-related color channels and ExtraSamples doesn't match SamplesPerPixel``, tags out of order,
unknown GeoKeys) every time the file is opened, and rasterio passes each report to the logger
``rasterio._env`` as a WARNING, sometimes twice (once naming the file, once not). Ingest opens a
file once per strip and scoring once per block, so one harmless quirk of a provider's files
became dozens of identical lines.

:func:`say_gdal_warnings_once` installs a filter on that logger: a warning is shown the first
time its text (file name removed) is seen in this process, and never again; the text keeps the
file name of the first report. Inside a Dask worker the reports are dropped: the command opened
the same file in its own process first (to check it) and said them there. Errors are never
filtered. It is installed when :mod:`pipeline` is imported, so every process that runs
damwatch code, workers included, has it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

__all__ = ["say_gdal_warnings_once", "GDAL_LOGGER"]

GDAL_LOGGER = "rasterio._env"
# "CPLE_AppDefined in survey.tif: TIFFReadDirectory:..." and "CPLE_AppDefined in TIFFReadDirectory:..."
_PREFIX = re.compile(r"^(?P<code>CPLE_\w+) in (?:(?P<file>[^:]+\.(?:tiff?|TIFF?|vrt|img|jp2)): )?")


class _OncePerMessage(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if _in_dask_worker():
            return False
        text = record.getMessage()
        key = _PREFIX.sub(lambda m: f"{m.group('code')} in ", text)
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        return True


def _in_dask_worker() -> bool:
    distributed = sys.modules.get("distributed")  # never imported: not a worker (and no 0.4 s import)
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def say_gdal_warnings_once() -> None:
    """Install the filter (module docstring) on ``rasterio._env``; calling it again does nothing."""
    logger = logging.getLogger(GDAL_LOGGER)
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())
