"""The ingest and survey_pipeline flows under Prefect's test harness, on small rasters.

References: the pixels in the store against the GeoTIFF read by rasterio; the features a flow
stores against the NumPy feature function on tiles cut by hand from the GeoTIFF; skip/redo
decisions against the stage records and the store's own timestamps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.ingest import ingest_flow
from flows.survey_pipeline import survey_pipeline
from pipeline.errors import InputError
from pipeline.store import Store


@pytest.fixture
def cluster(dask_client):
    """The session's LocalCluster, passed to flows as --cluster (saves a cluster start per flow)."""
    return dask_client.scheduler.address


def artifacts_of(flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def test_ingest_flow_stores_the_pixels_and_records_the_run(prefect, tmp_path, write_survey, cluster):
    pixels = write_survey(tmp_path / "creek_2024-06-01.tif")
    result = ingest_flow(str(tmp_path / "creek_2024-06-01.tif"), "creek", "2024-06-01", store=str(tmp_path / "st"), cluster=cluster)

    store = Store(tmp_path / "st")
    survey = store.survey("creek-2024-06-01")
    np.testing.assert_array_equal(survey.image()[...], pixels)

    run_dir = store.runs_dir / result["run_id"]
    summary = json.loads((run_dir / "summary.json").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert summary["survey_id"] == "creek-2024-06-01"
    assert summary["stages"] == [{"stage": "ingest", "subject": "creek-2024-06-01", "status": "done", "seconds": summary["seconds"]["ingest"]}]
    assert provenance["status"] == "completed"
    assert provenance["parameters"]["area"] == "creek"
    assert provenance["stages"][0]["inputs"]["sha256"] == survey.source_sha256

    artifacts = artifacts_of(provenance["prefect_flow_run_id"])
    assert set(artifacts) == {"ingest-summary", "ingest-top-detections", "ingest-maps"}
    assert "creek-2024-06-01" in artifacts["ingest-summary"].data
    assert str(run_dir) in artifacts["ingest-maps"].data


def test_unchanged_inputs_skip_the_stage_and_changed_inputs_redo_it(prefect, tmp_path, write_survey, cluster, caplog):
    path = tmp_path / "creek_2024-06-01.tif"
    write_survey(path, seed=1)
    store = Store(tmp_path / "st")
    ingest_flow(str(path), "creek", "2024-06-01", store=str(store.root), cluster=cluster)
    first = store.survey("creek-2024-06-01").ingested_at

    again = ingest_flow(str(path), "creek", "2024-06-01", store=str(store.root), cluster=cluster)
    assert again["stages"][0]["status"] == "skipped"
    assert "inputs unchanged since run" in caplog.text
    assert store.survey("creek-2024-06-01").ingested_at == first  # the store was not touched

    pixels = write_survey(path, seed=2)  # new bytes under the same name: a new fingerprint
    redone = ingest_flow(str(path), "creek", "2024-06-01", store=str(store.root), overwrite=True, cluster=cluster)
    assert redone["stages"][0]["status"] == "done" and redone["ingest"]["status"] == "replaced"
    np.testing.assert_array_equal(store.survey("creek-2024-06-01").image()[...], pixels)


def test_rerun_after_a_crash_redoes_only_the_stage_that_did_not_finish(prefect, tmp_path, write_survey, cluster, monkeypatch):
    import flows.tasks

    path = tmp_path / "creek_2024-06-01.tif"
    write_survey(path, height=260, width=390, seed=3)
    store = Store(tmp_path / "st")
    model_id = _save_untrained_classic(store)
    real = flows.tasks.compute_features

    def crash(*args, **kwargs):
        raise RuntimeError("worker machine rebooted")  # not transient by our rule: no retry

    monkeypatch.setattr(flows.tasks, "compute_features", crash)
    with pytest.raises(RuntimeError, match="rebooted"):
        survey_pipeline(str(path), "creek", "2024-06-01", store=str(store.root), model=model_id, stride=128, cluster=cluster)
    failed_run = max(store.runs_dir.iterdir())
    assert json.loads((failed_run / "provenance.json").read_text())["status"] == "failed"

    monkeypatch.setattr(flows.tasks, "compute_features", real)
    result = survey_pipeline(str(path), "creek", "2024-06-01", store=str(store.root), model=model_id, stride=128, cluster=cluster)
    assert [(s["stage"], s["status"]) for s in result["stages"]] == [("ingest", "skipped"), ("features", "done"), ("detect", "done")]

    # The stored features equal the NumPy feature function on the GeoTIFF as rasterio reads it,
    # cut into the 128-px tiles at stride 128 by hand (no store, no Dask, no block mapping).
    import rasterio

    from pipeline.features import get_spec, tile_features

    with rasterio.open(path) as ds:
        pixels = ds.read().astype(np.float32) / 255  # (3, 260, 390) uint8 scaled to [0, 1]
    # ceil((260 - 128) / 128) + 1 = 3 rows and ceil((390 - 128) / 128) + 1 = 4 columns, the last
    # of each shifted inward to end at the edge (260 - 128 = 132, 390 - 128 = 262).
    starts_y, starts_x = [0, 128, 132], [0, 128, 256, 262]
    tiles = np.stack([pixels[:, y : y + 128, x : x + 128] for y in starts_y for x in starts_x])
    expected = tile_features(tiles, None, get_spec("default")).reshape(3, 4, -1)
    got = flows.tasks.open_features(store, "creek-2024-06-01", "default", stride=128)
    np.testing.assert_allclose(np.asarray(got.values[...]), expected, rtol=1e-5, atol=1e-6)
    assert result["features"]["grid"] == [3, 4]


def test_transient_failures_are_retried_and_bad_input_is_not(prefect, tmp_path, write_survey, cluster, monkeypatch):
    import flows.tasks

    path = tmp_path / "creek_2024-06-01.tif"
    write_survey(path, seed=4)
    real = flows.tasks.ingest
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("NFS hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(flows.tasks, "ingest", flaky)
    result = ingest_flow(str(path), "creek", "2024-06-01", store=str(tmp_path / "st"), cluster=cluster)
    assert len(calls) == 2 and result["ingest"]["status"] == "ingested"

    calls.clear()

    def refuse(*args, **kwargs):
        calls.append(1)
        raise InputError("input is not a raster")

    monkeypatch.setattr(flows.tasks, "ingest", refuse)
    with pytest.raises(InputError, match="not a raster"):
        ingest_flow(str(path), "creek", "2024-06-02", store=str(tmp_path / "st"), cluster=cluster)
    assert len(calls) == 1


def _save_model_for(store, survey_id, stride):
    """A small random network whose threshold is the median probability of the survey's tiles.

    Features are computed here with the pipeline directly (so the flow finds them in the store);
    returns (model_id, classifier).
    """
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from pipeline.features import compute_features, get_spec

    spec = get_spec("default")
    X, _, _ = compute_features(store, survey_id, spec, stride=stride).as_table(min_valid=0.5)
    net = MLP(spec.n_features, hidden=(8,), seed=5)
    clf = Classifier(net, Standardizer.fit(X), spec.to_dict(), threshold=0.5)
    clf = Classifier(net, clf.standardizer, spec.to_dict(), threshold=float(np.median(clf.predict_proba(X))))
    return save_model(clf, store.models_dir), clf


def _save_untrained_classic(store) -> str:
    """A classic model of the default spec with random weights (the flow's plumbing is under test)."""
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from pipeline.features import get_spec

    spec = get_spec("default")
    net = MLP(spec.n_features, hidden=(4,), seed=1)
    return save_model(Classifier(net, Standardizer(np.zeros(spec.n_features), np.ones(spec.n_features)), spec.to_dict(), 0.5,
                                 {"tile_size": 128}), store.models_dir)


def test_survey_pipeline_detects_and_compares_with_the_previous_survey(prefect, tmp_path, write_survey, cluster):
    from pipeline.change import ChangeThresholds, compare_maps
    from pipeline.detect import open_probability_map
    from pipeline.features import open_features
    from pipeline.ingest import ingest
    from pipeline.maps import probability_map
    from pipeline.results import detections_of

    store = Store(tmp_path / "st")
    first, second = tmp_path / "creek_2023-06-01.tif", tmp_path / "creek_2024-06-01.tif"
    write_survey(first, height=320, width=384, seed=21)
    write_survey(second, height=320, width=384, seed=22)
    ingest(first, "creek", "2023-06-01", store)
    model_id, clf = _save_model_for(store, "creek-2023-06-01", stride=64)

    early = survey_pipeline(str(first), "creek", "2023-06-01", store=str(store.root), model="latest", cluster=cluster)
    assert [(s["stage"], s["status"]) for s in early["stages"]] == [
        ("ingest", "skipped"), ("features", "skipped"), ("detect", "done"),  # made outside the flow: reused
    ]
    assert early["change"] is None  # the first survey of the area

    late = survey_pipeline(str(second), "creek", "2024-06-01", store=str(store.root), model=model_id, cluster=cluster)
    assert [s["stage"] for s in late["stages"]] == ["ingest", "features", "detect", "change"]

    # Probabilities: the model applied to the stored features of each scored tile, then the
    # overlap rule of the map.
    for sid in ("creek-2023-06-01", "creek-2024-06-01"):
        feats = open_features(store, sid, "default", stride=64)
        X, rows, cols = feats.as_table(min_valid=0.5)
        tiles = np.full(feats.grid.shape, np.nan, np.float32)
        tiles[rows, cols] = clf.predict_proba(X)
        expected, _ = probability_map(tiles, feats.grid, cell=64)
        got = open_probability_map(store, model_id, sid).values
        np.testing.assert_allclose(got, expected[: got.shape[0], : got.shape[1]], rtol=1e-5, atol=1e-6, equal_nan=True)

    # Detections and change: the pipeline functions on the stored maps.
    before, after = (open_probability_map(store, model_id, s) for s in ("creek-2023-06-01", "creek-2024-06-01"))
    expected = detections_of(after, clf.threshold)
    geojson = json.loads(open(late["detect"]["files"]["detections"]).read())
    assert late["detect"]["n_detections"] == len(expected) == len(geojson["features"])
    assert late["change"]["counts"] == compare_maps(before, after, ChangeThresholds.for_model(clf.threshold)).counts()
    assert late["change"]["before"] == "creek-2023-06-01"

    # The run's artifacts: the summary names the change, the table lists the top detections.
    provenance = json.loads((store.runs_dir / late["run_id"] / "provenance.json").read_text())
    artifacts = artifacts_of(provenance["prefect_flow_run_id"])
    assert "creek-2023-06-01 → creek-2024-06-01" in artifacts["survey-pipeline-summary"].data
    table = artifacts["survey-pipeline-top-detections"].data
    table = json.loads(table) if isinstance(table, str) else table
    peaks = sorted((round(float(p), 6) for p in expected.probability), reverse=True)[:10]
    assert [row["probability"] for row in table] == peaks
    assert late["detect"]["files"]["probability"] in artifacts["survey-pipeline-maps"].data

    # Nothing changed: every stage is skipped, and the maps are those of the earlier run.
    again = survey_pipeline(str(second), "creek", "2024-06-01", store=str(store.root), model=model_id, cluster=cluster)
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert again["detect"]["files"] == late["detect"]["files"]
