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

from flows.demo import demo_flow

pytestmark = pytest.mark.slow

# 1536 px, seed 4: the smallest scene found with dams in the training, validation and test
# bands of the first date (1, 1 and 2 dams).
SIZE, SEED = 1536, 4


def test_demo_end_to_end_at_a_small_size(prefect, tmp_path, dask_client, capsys):
    out = tmp_path / "demo"
    summary = demo_flow(out=str(out), size=SIZE, seed=SEED, cluster=dask_client.scheduler.address)

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

    printed = capsys.readouterr().out
    assert "Where to look:" in printed and str(run_dir / "summary.json") in printed

    again = demo_flow(out=str(out), size=SIZE, seed=SEED, cluster=dask_client.scheduler.address)
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert again["detection"] == summary["detection"] and again["model_id"] == summary["model_id"]
