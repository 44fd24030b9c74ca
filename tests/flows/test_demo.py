"""The whole demo flow at a small size, under Prefect's test harness.

References: the object-level figures of ``summary.json`` recomputed from the written
``detections.geojson`` and the evaluation area's truth file by a matcher written here (nearest
unmatched dam within the radius, strongest detection first); the counts per context from the
truth file itself; a re-run must skip every stage and give the same figures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.warp import transform as warp_transform

from flows.demo import demo_flow, training_settings

pytestmark = pytest.mark.slow

# 1024 px of 2 m: ~15 dams per area and date. A few epochs keep the test quick; the flow is the same.
SIZE, SEED, EVAL_SEED = 1024, 3, 4
TEST_SETTINGS = {"training": {"config": {"max_epochs": 4, "patience": 4}, "mining_rounds": 0}, "classic": False}


@pytest.fixture(scope="module")
def demo(prefect, tmp_path_factory, dask_client):
    """The demo run once for the module: (its output directory, its summary)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, demo_flow(out=str(out), size=SIZE, seed=SEED, eval_seed=EVAL_SEED,
                          cluster=dask_client.scheduler.address, **TEST_SETTINGS)


def _match(det_xy, det_p, truth_xy, radius):
    """Greedy one-to-one matching, written independently of pipeline.evaluate."""
    order = sorted(range(len(det_p)), key=lambda i: -det_p[i])
    free = set(range(len(truth_xy)))
    hits = 0
    for i in order:
        best, best_d = None, None
        for j in free:
            d = float(np.hypot(*(np.asarray(det_xy[i]) - np.asarray(truth_xy[j]))))
            if d <= radius and (best_d is None or d < best_d):
                best, best_d = j, d
        if best is not None:
            free.remove(best)
            hits += 1
    return hits


def test_demo_scores_the_evaluation_area_at_object_level(demo):
    out, summary = demo
    run_dir = out / "runs" / summary["run_id"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    ev = on_disk["evaluation"]
    assert set(ev) >= {"seed", "area_km2", "detection", "change", "radius_m"} and ev["seed"] == EVAL_SEED
    assert ev["area_km2"] == pytest.approx((SIZE * 2.0 / 1000) ** 2, abs=1e-3)
    assert set(ev["change"]) == {"new", "gone", "persisting"}
    truth = json.loads((out / "synth" / "ridge" / "ridge-truth.geojson").read_text())
    for sid in on_disk["surveys"]["ridge"]:
        date = sid[-10:]
        d = ev["detection"][date]
        assert set(d) == {"object", "tile", "by_context", "lookalikes", "calibration"}
        dams = [f for f in truth["features"] if f["properties"]["class"] == "dam" and date in f["properties"]["dates"]]
        assert d["object"]["n_truth"] == len(dams)
        for ctx, v in d["by_context"].items():
            assert v["n_objects"] == sum(f["properties"]["context"] == ctx for f in dams)
        # recompute precision and recall from the files a scientist gets
        folder = run_dir / "cnn" / "detect" / sid
        fc = json.loads((folder / "detections.geojson").read_text())
        crs = json.loads((folder / "provenance.json").read_text())["inputs"]["survey"]["crs"]
        det = [f["geometry"]["coordinates"] for f in fc["features"]]
        p = [f["properties"]["probability"] for f in fc["features"]]
        dx, dy = warp_transform("EPSG:4326", crs, [c[0] for c in det], [c[1] for c in det]) if det else ([], [])
        tx, ty = warp_transform("EPSG:4326", crs, [f["geometry"]["coordinates"][0] for f in dams],
                                [f["geometry"]["coordinates"][1] for f in dams])
        hits = _match(list(zip(dx, dy)), p, list(zip(tx, ty)), ev["radius_m"])
        assert d["object"]["n_detections"] == len(det)
        assert d["object"]["recall"] == pytest.approx(hits / len(dams))
        assert d["object"]["precision"] == (pytest.approx(hits / len(det)) if det else None)


def test_a_rerun_skips_every_stage_and_gives_the_same_figures(demo, dask_client, capsys):
    out, summary = demo
    again = demo_flow(out=str(out), size=SIZE, seed=SEED, eval_seed=EVAL_SEED, cluster=dask_client.scheduler.address,
                      **TEST_SETTINGS)
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert again["evaluation"] == summary["evaluation"] and again["model_id"] == summary["model_id"]
    printed = capsys.readouterr().out
    assert "Where to look:" in printed and "cnn on the evaluation area" in printed


def test_stage_flows_on_the_demo_store_find_the_demo_s_work_done(demo, dask_client):
    """train/detect/change flows with the demo's settings are the same stages: all skipped."""
    from flows.change import change_flow
    from flows.detect import detect_flow
    from flows.train import train_flow

    out, demo = demo
    cluster = dask_client.scheduler.address
    truth = demo["maps"]["truth (training area)"]
    trained = train_flow(demo["surveys"]["creek"], store=str(out), truth=truth, where={"class": "dam"},
                         settings=training_settings(TEST_SETTINGS["training"]).to_dict(), cluster=cluster)
    assert trained["model_id"] == demo["model_id"] and {s["status"] for s in trained["stages"]} == {"skipped"}
    first, last = demo["surveys"]["ridge"]
    eval_truth = demo["maps"]["truth (evaluation area)"]
    detected = detect_flow([first, last], model="latest", store=str(out), truth=eval_truth, cluster=cluster,
                           where={"class": "dam"})
    assert {s["status"] for s in detected["stages"]} == {"skipped"}
    changed = change_flow(first, last, model=demo["model_id"], store=str(out), truth=eval_truth, cluster=cluster,
                          where={"class": "dam"})
    assert {s["status"] for s in changed["stages"]} == {"skipped"}
    assert changed["change"]["metrics"]["new"]["n_truth"] == demo["evaluation"]["change"]["new"]["n_truth"]
