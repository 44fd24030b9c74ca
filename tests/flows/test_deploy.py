"""deploy/prefect.yaml and the serve/run commands, checked against the flows they name."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.deployments import TRAIN_DEPLOYMENT, WATCH_DEPLOYMENT

REPO = Path(__file__).resolve().parents[2]


def _load_entrypoint(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(f"_deploy_check_{Path(path).stem}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_prefect_yaml_declares_the_served_deployments_with_valid_flows_parameters_and_schedules():
    from prefect.client.schemas.schedules import CronSchedule

    config = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {WATCH_DEPLOYMENT, TRAIN_DEPLOYMENT}
    for d in deployments.values():
        flow = _load_entrypoint(d["entrypoint"])
        signature = inspect.signature(flow.fn)
        assert set(d["parameters"]) <= set(signature.parameters), d["name"]
        required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
        assert d["work_pool"]["name"] == "damwatch"
        if d["name"] == WATCH_DEPLOYMENT:
            assert required <= set(d["parameters"])  # a scheduled run has nobody to ask
            (schedule,) = d["schedules"]
            CronSchedule(cron=schedule["cron"])  # raises on a malformed expression
        else:
            assert "schedules" not in d  # training runs on demand


def test_serve_refuses_to_start_without_a_prefect_server(tmp_path, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["serve", "--inbox", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "`damwatch server start`" in err and "PREFECT_API_URL" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cron", "every morning"], "not a cron expression"),
        (["--interval", "-5"], "positive number of seconds"),
    ],
)
def test_bad_schedules_are_refused_before_anything_is_registered(tmp_path, args, message):
    from flows.deployments import watch_deployment
    from pipeline.errors import InputError

    cron = args[1] if args[0] == "--cron" else None
    interval = float(args[1]) if args[0] == "--interval" else None
    with pytest.raises(InputError, match=message):
        watch_deployment(tmp_path, store=tmp_path / "st", cron=cron, interval=interval)


def test_watch_deployment_runs_by_module_path_with_absolute_paths(tmp_path, monkeypatch):
    from flows.deployments import DEFAULT_CRON, watch_deployment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    deployment = watch_deployment("inbox", store="st", parameters={"model": "latest"})
    assert deployment.entrypoint == "flows.watch.watch_flow"
    assert deployment.parameters == {"inbox": str(tmp_path / "inbox"), "store": str(tmp_path / "st"), "model": "latest"}
    assert [s.schedule.cron for s in deployment.schedules] == [DEFAULT_CRON]


def test_run_command_runs_the_survey_pipeline_flow(prefect, tmp_path, write_survey, dask_client, capsys):
    from pipeline.store import Store

    pixels = write_survey(tmp_path / "creek.tif", height=200, width=256, seed=41)
    code = main([
        "run", str(tmp_path / "creek.tif"), "--area", "creek", "--date", "2024-06-01",
        "--store", str(tmp_path / "st"), "--cluster", dask_client.scheduler.address, "--stride", "128",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "survey creek-2024-06-01: ingest done" in out  # no model: the run stops after ingest
    import numpy as np

    np.testing.assert_array_equal(Store(tmp_path / "st").survey("creek-2024-06-01").image()[...], pixels)
    (run_dir,) = (tmp_path / "st" / "runs").iterdir()
    assert f"run record: {run_dir}" in out


def test_run_command_reports_bad_input_without_a_traceback(prefect, tmp_path, capsys):
    code = main(["run", str(tmp_path / "missing.tif"), "--area", "creek", "--date", "2024-06-01", "--store", str(tmp_path / "st")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing.tif does not exist" in " ".join(err.split()) and "Traceback" not in err
