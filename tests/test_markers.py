"""Tests that hide failures: a test needing the real NAIP surveys must never pass by skipping in CI.

The reference is pytest itself: a child pytest run with ``CI=true`` and no NAIP data must fail
(not skip) a test that needs them, and every test collected in this session that uses the NAIP
fixtures carries the ``naip`` marker (so ``-m naip`` selects them all).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NAIP_FIXTURES = {"naip_dir", "naip_files"}


def test_every_test_using_the_naip_surveys_is_marked(request):
    missing = [
        item.nodeid
        for item in request.session.items
        if NAIP_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("naip") is None
    ]
    assert missing == []


def test_missing_naip_data_fails_in_ci(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DAMWATCH_SHARED_DATA": str(tmp_path), "CI": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
         "tests/pipeline/test_store.py::test_real_naip_surveys_round_trip_exactly"],
        capture_output=True, text=True, cwd=repo, env=env, timeout=120,
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert "skipped" not in summary and ("1 failed" in summary or "1 error" in summary), done.stdout
    assert "CI always has them" in done.stdout and done.returncode != 0
