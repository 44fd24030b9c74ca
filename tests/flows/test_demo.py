"""The whole demo flow at a small size, under Prefect's test harness.

References: the held-out detection metrics the demo computes on the detection grid from the
stored predictions and the truth GeoJSON must equal the test-region metrics the training
computed on its own from the features and the tile labels (two independent routes, same
tiles); the change figures must equal the change outputs; a re-run must skip every stage and
give the same figures.
"""

from __future__ import annotations

import json

import pytest

from flows.demo import demo_flow, training_settings
from pipeline.tiling import DETECTION_STRIDE

pytestmark = pytest.mark.slow

# 1536 px, seed 4: the smallest scene found with dams in the training, validation and test
# bands of the first date (1, 1 and 2 dams).
SIZE, SEED = 1536, 4
# Training on the detection grid makes the training's own test metrics (tiles of the training
# grid) a second, independent route to the demo's held-out figures (tiles of the detection grid).
# Fewer epochs than the demo's default keep the test quick; the flow is the same.
TEST_SETTINGS = {"training": {"stride": DETECTION_STRIDE, "config": {"max_epochs": 60, "patience": 20}}}


@pytest.fixture(scope="module")
def demo(prefect, tmp_path_factory, dask_client):
    """The demo run once for the module: (its output directory, its summary)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, demo_flow(out=str(out), size=SIZE, seed=SEED, cluster=dask_client.scheduler.address, **TEST_SETTINGS)


def test_demo_end_to_end_at_a_small_size(demo, dask_client, capsys):
    out, summary = demo

    run_dir = out / "runs" / summary["run_id"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["detection"] == summary["detection"]
    assert set(on_disk["seconds"]) == {"synth", "ingest", "features", "labels", "train", "detect", "change", "total"}

    # Held-out metrics on date 1, by the demo's route, equal the training's own test metrics.
    train = on_disk["train"]
    first = on_disk["detection"]["2023-06-01"]["overall"]
    assert first["n_tiles"] == train["test"]["n"] and first["n_positive"] == train["test"]["n_positive"] > 0
    for key in ("precision", "recall", "f1"):
        assert first[key] == pytest.approx(train["test"][key], abs=1e-12)
    assert train["epochs"] >= 1 and train["seconds"] > 0 and "f1" in train["validation"]
    assert set(on_disk["detection"]) == {"2023-06-01", "2024-06-01"}

    # Change figures are the change outputs'.
    change_dir = run_dir / "change" / "creek-2023-06-01..creek-2024-06-01"
    assert on_disk["change"] == json.loads((change_dir / "metrics.json").read_text())
    assert set(on_disk["change"]["classes"]) == {"new", "gone", "persisting"}
    for name in ("change.tif", "change.geojson", "change.png"):
        assert (change_dir / name).is_file()
    for sid in ("creek-2023-06-01", "creek-2024-06-01"):
        for name in ("probability.tif", "detections.geojson", "quicklook.png", "metrics.json"):
            assert (run_dir / "detect" / sid / name).is_file()

    again = demo_flow(out=str(out), size=SIZE, seed=SEED, cluster=dask_client.scheduler.address, **TEST_SETTINGS)
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert again["detection"] == summary["detection"] and again["model_id"] == summary["model_id"]
    printed = capsys.readouterr().out
    assert "Where to look:" in printed and str(out / "runs" / again["run_id"] / "summary.json") in printed


def test_stage_flows_on_the_demo_store_find_the_demo_s_work_done(demo, dask_client):
    """train/detect/change flows with the demo's settings are the same stages: all skipped."""
    from flows.change import change_flow
    from flows.detect import detect_flow
    from flows.train import train_flow

    out, demo = demo
    truth = demo["maps"]["truth"]
    cluster = dask_client.scheduler.address
    first, last = demo["surveys"]

    trained = train_flow([first], store=str(out), truth=truth, where={"class": "dam"},
                         settings=training_settings(TEST_SETTINGS["training"]).to_dict(), cluster=cluster)
    assert trained["model_id"] == demo["model_id"] and {s["status"] for s in trained["stages"]} == {"skipped"}
    assert trained["train"] == demo["train"]

    detected = detect_flow([first, last], model="latest", store=str(out), truth=truth, cluster=cluster)
    assert {s["status"] for s in detected["stages"]} == {"skipped"}
    assert detected["detect"][first]["metrics"] == demo["detection_whole_area"]["2023-06-01"]

    from flows.demo import change_thresholds

    changed = change_flow(first, last, model=demo["model_id"], store=str(out), truth=truth,
                          thresholds=change_thresholds(demo["train"]["threshold"]), cluster=cluster)
    assert changed["change"]["metrics"] == demo["change"] and changed["change"]["counts"] == demo["change_counts"]
