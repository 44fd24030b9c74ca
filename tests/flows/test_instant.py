"""Commands answer at once when they can: refusals before Prefect or Dask, small work in-process,
one vocabulary, quiet logs.

Speed itself is measured in benchmarks/overhead.py, never here: these tests check *what* runs
(which modules a refusal imported, whether a cluster started), which does not depend on load.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.cli import build_parser, main
from pipeline.cluster import IN_PROCESS_MAX_BYTES, runs_in_process

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **env})


def test_refusing_a_different_file_under_an_existing_survey_starts_neither_prefect_nor_dask(tmp_path, write_survey):
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif", seed=0)
    write_survey(tmp_path / "b.tif", seed=1)
    ingest(tmp_path / "a.tif", "creek", "2024-06-01", store)
    argv = ["ingest", str(tmp_path / "b.tif"), "--area", "creek", "--date", "2024-06-01", "--store", str(store.root)]
    done = _run(
        "import sys; from flows.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, [m for m in ('prefect', 'distributed', 'dask.array') if m in sys.modules])"
    )
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr
    assert "already exists" in done.stderr and "pass --overwrite" in done.stderr


@pytest.mark.parametrize(
    "work_bytes, address, workers, expected",
    [
        (4 * 1000 * 1000, None, None, True),  # a 1000 x 1000 x 4 uint8 survey: threads in this process
        (IN_PROCESS_MAX_BYTES, None, None, True),  # the bound itself is small
        (IN_PROCESS_MAX_BYTES + 1, None, None, False),  # above it: a LocalCluster
        (4 * 1000 * 1000, None, 2, False),  # --workers asks for worker processes
        (4 * 1000 * 1000, "tcp://127.0.0.1:8786", None, False),  # --cluster: the user's cluster
        (None, None, None, False),  # size unknown: the cluster, as before
    ],
)
def test_the_in_process_rule(work_bytes, address, workers, expected):
    assert runs_in_process(work_bytes, address, workers) is expected


def test_a_small_session_gives_stages_no_client_and_starts_no_cluster(monkeypatch):
    from flows import session

    monkeypatch.delenv("DAMWATCH_CLUSTER", raising=False)
    started = []
    monkeypatch.setattr(session, "dask_client", lambda *a, **k: started.append(1))  # would start a LocalCluster
    with session.cluster_session(work_bytes=10 * 2**20):
        with session.stage_client() as client:
            assert client is None
        assert session.in_process()
    assert started == []


def test_small_work_on_threads_equals_the_cluster_result(tmp_path, write_survey, dask_client):
    from pipeline.features import compute_features
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif")
    sid = ingest(tmp_path / "a.tif", "creek", "2024-06-01", store).survey.id
    threads = np.asarray(compute_features(store, sid, "default", stride=64, size=128).values[...])
    cluster = np.asarray(compute_features(store, sid, "default", stride=64, size=128, client=dask_client,
                                          overwrite=True).values[...])
    np.testing.assert_array_equal(threads, cluster)


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sub.format_help()


def test_one_vocabulary_for_the_tile_grid():
    for command in ("features", "labels", "train"):
        text = _help(command)
        assert "--size N" in text and "--stride N" in text, command
        assert "--tile-size" not in text, command
    assert "latest" in _help("detect") and "--model latest" in _help("detect")
    assert "latest" in _help("change")
    # The old spelling still parses, to the same setting.
    args = build_parser().parse_args(["train", "--survey", "x", "--tile-size", "32"])
    assert args.size == 32


def test_progress_bars_only_on_a_terminal_and_erased_when_work_fails(monkeypatch):
    from pipeline import progress

    monkeypatch.delenv("DAMWATCH_NO_PROGRESS", raising=False)
    log = io.StringIO()  # a log file: not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    with progress.progress_bar(5, "work") as bar:
        bar.update(5)
    assert log.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with pytest.raises(RuntimeError):
        with progress.progress_bar(5, "work") as bar:
            bar.update(2)
            raise RuntimeError("lost")
    assert "40%" not in term.getvalue().split("\r")[-1]  # the unfinished bar was erased from the last line


def test_gdal_warnings_about_a_file_are_said_once(tmp_path, caplog):
    """A GeoTIFF whose ExtraSamples tag is missing: GDAL warns on every open, damwatch says it once."""
    import struct

    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "rgbn.tif"
    pixels = np.zeros((4, 64, 64), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32614",
                       transform=from_origin(500000, 5000000, 1, 1), photometric="RGB") as dst:
        dst.write(pixels)
    raw = bytearray(path.read_bytes())
    first_ifd = struct.unpack_from("<I", raw, 4)[0]
    for i in range(struct.unpack_from("<H", raw, first_ifd)[0]):
        entry = first_ifd + 2 + 12 * i
        if struct.unpack_from("<H", raw, entry)[0] == 338:  # ExtraSamples -> an unknown private tag
            struct.pack_into("<H", raw, entry, 65000)
    path.write_bytes(bytes(raw))
    import pipeline  # noqa: F401 - installs the filter

    with caplog.at_level(logging.WARNING, logger="rasterio._env"):
        for _ in range(4):
            with rasterio.open(path) as ds:
                ds.read(1)
    messages = [r.getMessage() for r in caplog.records if r.name == "rasterio._env"]
    extra = [m for m in messages if "ExtraSamples" in m]
    assert len(extra) == 1, messages
    assert "rgbn.tif" in extra[0]


def test_bad_input_inside_a_flow_prints_no_prefect_error_lines(prefect, tmp_path, write_survey):
    """The one paragraph, and none of Prefect's ERROR lines repeating it (real stderr)."""
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif")
    ingest(tmp_path / "a.tif", "creek", "2024-06-01", store)
    truth = tmp_path / "truth.geojson"
    truth.write_text('{"type": "FeatureCollection", "features": []}')
    argv = ["labels", "creek-2024-06-01", "--from", str(truth), "--on-date", "June 2024", "--store", str(store.root)]
    done = subprocess.run([sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_API_URL": prefect}, cwd=REPO)
    assert done.returncode == 2
    assert "damwatch labels: error: --on-date 'June 2024'" in done.stderr
    assert "| ERROR" not in done.stderr and "Failed(" not in done.stderr, done.stderr
    assert "Still processing items" not in done.stderr


def test_main_returns_2_for_the_refusal_in_process(tmp_path, write_survey, capsys):
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif", seed=0)
    write_survey(tmp_path / "b.tif", seed=1)
    ingest(tmp_path / "a.tif", "creek", "2024-06-01", store)
    rc = main(["run", str(tmp_path / "b.tif"), "--area", "creek", "--date", "2024-06-01", "--store", str(store.root)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, write_survey):
    """`damwatch surveys | head -1`: the pipe closes before the command has written everything.
    The command stops quietly with 141 (128 + SIGPIPE), as a shell tool does."""
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif", height=64, width=64)
    ingest(tmp_path / "a.tif", "creek", "2024-06-01", store)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "surveys", "--store", str(store.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    proc.stdout.close()  # before the child (still importing) writes a byte
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
