"""Fixtures shared by the whole suite.

- ``naip_dir``: the real NAIP surveys in ``../shared/data/naip`` (skips where absent; in CI,
  ``CI=true``, which always has them, their absence fails instead: a skip would hide it). Every
  test that uses them carries the ``naip`` marker (checked: ``tests/test_markers.py``).
- ``dask_client``: one real LocalCluster of two single-threaded process workers on 127.0.0.1,
  started once per test session (starting one costs a few seconds).
- ``store``: an empty damwatch store in a temporary directory.
- ``prefect``: Prefect's test harness (a temporary SQLite database behind a local API server,
  several seconds to start), started once per session by the first test that asks for it;
  yields the harness API URL. Flow tests and tests of commands that run flows use it, so no
  test starts a temporary server of its own.

Prefect gets its own home in a temporary directory (set here, before Prefect is first
imported), so a user's profiles and database are never touched.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Quiet, offline, and never touching a user's Prefect home or progress bars in test logs.
os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
_PREFECT_HOME = tempfile.mkdtemp(prefix="damwatch-test-prefect-")
atexit.register(functools.partial(shutil.rmtree, _PREFECT_HOME, ignore_errors=True))
os.environ["PREFECT_HOME"] = _PREFECT_HOME
# A damwatch server the user started (flows/server.py) must never receive the tests' runs.
_DAMWATCH_HOME = tempfile.mkdtemp(prefix="damwatch-test-home-")
atexit.register(functools.partial(shutil.rmtree, _DAMWATCH_HOME, ignore_errors=True))
os.environ["DAMWATCH_HOME"] = _DAMWATCH_HOME

REPO = Path(__file__).resolve().parents[1]
NAIP_DIR = Path(os.environ.get("DAMWATCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "naip"


@pytest.fixture(scope="session")
def naip_dir() -> Path:
    if not NAIP_DIR.is_dir() or not any(NAIP_DIR.glob("*.tif")):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"real NAIP surveys not found at {NAIP_DIR}; CI always has them in ../shared/data/naip")
        pytest.skip(f"real NAIP surveys not found at {NAIP_DIR} (CI has them in ../shared/data/naip)")
    return NAIP_DIR


@pytest.fixture(scope="session")
def naip_files(naip_dir) -> list[Path]:
    return sorted(naip_dir.glob("*.tif"))


@pytest.fixture(scope="session")
def dask_client():
    from pipeline.cluster import dask_client as make_client

    with make_client(n_workers=2, threads_per_worker=1, memory_limit="4GiB") as client:
        yield client


@pytest.fixture
def store(tmp_path):
    from pipeline.store import Store

    return Store(tmp_path / "damwatch-data")


@pytest.fixture(scope="session")
def prefect():
    """Prefect's test harness, started once per session; yields the harness API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


STAC_SCHEMAS = REPO / "tests" / "data" / "stac-schemas"


@pytest.fixture(scope="session")
def stac_schema_map() -> dict[str, str]:
    """Schema URL -> local file for every schema damwatch's STAC files need (tests/data/stac-schemas)."""
    import pystac

    bundled = Path(pystac.__file__).parent / "validation" / "jsonschemas"
    core = "https://schemas.stacspec.org/v1.1.0"
    mapping = {f"{core}/item-spec/json-schema/{f.name}": str(f) for f in (bundled / "stac-spec" / "v1.1.0").glob("*.json")}
    mapping[f"{core}/catalog-spec/json-schema/catalog.json"] = str(bundled / "stac-spec" / "v1.1.0" / "catalog.json")
    mapping[f"{core}/collection-spec/json-schema/collection.json"] = str(bundled / "stac-spec" / "v1.1.0" / "collection.json")
    for name in ("Feature", "Geometry"):
        mapping[f"https://geojson.org/schema/{name}.json"] = str(bundled / "geojson" / f"{name}.json")
    ext = "https://stac-extensions.github.io"
    mapping[f"{ext}/projection/v2.0.0/schema.json"] = str(STAC_SCHEMAS / "projection-v2.0.0.json")
    mapping[f"{ext}/mlm/v1.4.0/schema.json"] = str(STAC_SCHEMAS / "mlm-v1.4.0.json")
    mapping[f"{ext}/raster/v1.1.0/schema.json"] = str(STAC_SCHEMAS / "raster-v1.1.0.json")
    mapping[f"{ext}/eo/v1.1.0/schema.json"] = str(STAC_SCHEMAS / "eo-v1.1.0.json")
    mapping["https://proj.org/schemas/v0.7/projjson.schema.json"] = str(STAC_SCHEMAS / "projjson-v0.7.json")
    return mapping


@pytest.fixture(scope="session")
def stac_validate(stac_schema_map):
    """``validate(path) -> list[dict]``: stac-validator's report of one STAC file, offline.

    Runs the ``stac-validator`` command (the real tool) with a ``--schema-map`` for every
    schema, so nothing is fetched; asserts nothing itself.
    """
    import json
    import subprocess
    import sys

    executable = Path(sys.executable).parent / "stac-validator"

    def validate(path) -> list[dict]:
        args = [str(executable), "validate", str(path)]
        for url, local in stac_schema_map.items():
            args += ["--schema-map", url, local]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        start = done.stdout.find("[")  # the report is a JSON list between a greeting and a timing line
        if start < 0:
            return [{"valid_stac": False, "error": done.stdout + done.stderr}]
        return json.JSONDecoder().raw_decode(done.stdout[start:])[0]

    return validate
