"""The command line runs the Prefect flows: its runs are in Prefect's run history.

Under the session's test harness, `damwatch features` and `damwatch labels` are run through
``flows.cli.main``; the flow runs are then read back through the Prefect client (the reference:
Prefect's own record) and compared with the run record the command printed, and the stored
results with the pipeline functions called directly. Bad input found inside a flow still
reaches the user as one paragraph, exit 2, no traceback, and the flow run is recorded as failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from pipeline.ingest import ingest
from pipeline.store import Store


@pytest.fixture
def survey_store(tmp_path, write_survey, dask_client):
    write_survey(tmp_path / "creek.tif", height=260, width=390, seed=4)
    store = Store(tmp_path / "st")
    ingest(tmp_path / "creek.tif", "creek", "2024-06-01", store, client=dask_client)
    return store


def _run_record(printed: str) -> Path:
    return Path(printed.split("run record: ")[1].split()[0])


def _flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        flow = client.read_flow(run.flow_id)
    return run, flow


def test_a_command_line_run_is_in_prefect_s_run_history(prefect, survey_store, dask_client, tmp_path, capsys):
    from pipeline.features import compute_features, open_features

    store, sid = survey_store, "creek-2024-06-01"
    argv = ["features", sid, "--stride", "64", "--store", str(store.root), "--cluster", dask_client.scheduler.address]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((_run_record(printed) / "provenance.json").read_text())

    run, flow = _flow_run(record["prefect_flow_run_id"])
    assert flow.name == "features" and run.state.is_completed()
    assert run.name == record["prefect_flow_run_name"]
    assert run.parameters["surveys"] == [sid] and run.parameters["stride"] == 64
    assert record["run_id"].endswith(str(run.id).replace("-", "")[-8:])  # the run id leads back to Prefect

    # The features the flow stored are those the pipeline computes on its own, in another store.
    stored = open_features(store, sid, "default", stride=64)
    other = Store(tmp_path / "other")
    ingest(tmp_path / "creek.tif", "creek", "2024-06-01", other, client=dask_client)
    direct = compute_features(other, sid, "default", stride=64, client=dask_client)
    np.testing.assert_array_equal(np.asarray(stored.values[...]), np.asarray(direct.values[...]))
    assert f"{direct.grid.n_rows} x {direct.grid.n_cols} tiles of 128 px at stride 64" in printed


def test_labels_command_runs_the_labels_flow_and_skips_unchanged_inputs(prefect, survey_store, dask_client, capsys):
    from pipeline.labels import labels_from_expression, open_labels

    store, sid = survey_store, "creek-2024-06-01"
    argv = ["labels", sid, "--expr", "red > 128", "--min-fraction", "0.4", "--name", "bright",
            "--store", str(store.root), "--cluster", dask_client.scheduler.address]
    assert main(argv) == 0
    first = capsys.readouterr().out
    expected = labels_from_expression(store, sid, "red > 128", min_fraction=0.4, save=False, client=dask_client)
    np.testing.assert_array_equal(open_labels(store, sid, "bright").values, expected.values)
    assert f"{expected.n_positive} positive, {expected.n_negative} negative, {expected.n_unknown} unknown" in first
    run, flow = _flow_run(json.loads((_run_record(first) / "provenance.json").read_text())["prefect_flow_run_id"])
    assert flow.name == "labels" and run.state.is_completed() and run.parameters["expr"] == "red > 128"

    assert main(argv) == 0  # same survey, expression and settings: skipped, and says so
    assert "skipped: inputs unchanged" in capsys.readouterr().out
    assert main([*argv[:5], "0.5", *argv[6:]]) == 0  # another --min-fraction: labelled again
    again = capsys.readouterr().out
    assert "skipped" not in again
    expected = labels_from_expression(store, sid, "red > 128", min_fraction=0.5, save=False, client=dask_client)
    np.testing.assert_array_equal(open_labels(store, sid, "bright").values, expected.values)


def test_bad_input_found_inside_a_flow_is_one_paragraph_and_a_failed_run(prefect, survey_store, tmp_path):
    """In a process of its own (real stderr, as a user sees it), against the harness's server."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    truth = tmp_path / "truth.geojson"
    truth.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    # The date is checked by the labelling stage, inside the flow.
    argv = ["labels", "creek-2024-06-01", "--from", str(truth), "--on-date", "June 2024", "--store", str(survey_store.root)]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PREFECT_API_URL": prefect}, cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stderr
    assert "damwatch labels: error: --on-date 'June 2024' is not of the form YYYY-MM-DD" in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["labels"])))
    failed = [r for r in runs if r.parameters.get("on_date") == "June 2024"]
    assert len(failed) == 1 and failed[0].state.is_failed()


def test_a_temporary_prefect_server_that_never_answers_is_one_paragraph_exit_1(survey_store, tmp_path):
    """A busy machine: Prefect's temporary server misses its start-up deadline (forced here with
    a deadline of 0 s). That is the machine's fault, not the input's: exit 1, one paragraph that
    says how to avoid it, and no traceback; nothing is written to the store."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0", DAMWATCH_HOME=str(tmp_path / "home"))
    before = sorted(p.relative_to(survey_store.root) for p in survey_store.root.rglob("*"))
    argv = ["labels", "creek-2024-06-01", "--expr", "red > 0", "--name", "never", "--store", str(survey_store.root)]
    done = subprocess.run([sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, timeout=120,
                          env=env, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "temporary server did not answer within 0 s" in message and "`damwatch server start`" in message
    assert sorted(p.relative_to(survey_store.root) for p in survey_store.root.rglob("*")) == before
