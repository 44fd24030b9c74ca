"""`damwatch synth`: what it prints and writes, refusals of bad arguments, and ingest of its output.

A refusal must be one clear paragraph (exit status 2, no traceback) and leave the file system
exactly as it was: no output directory, no temporary directory beside it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from flows.cli import main


def _entries(path):
    return sorted(p.name for p in path.iterdir())


def test_synth_command_writes_surveys_truth_and_quicklooks(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["synth", "--out", str(out), "--size", "512", "--seed", "3", "--dates", "2022-05-20", "2022-08-30", "2023-09-15", "--workers", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 3 surveys of creek" in printed and "dams" in printed
    assert _entries(out) == sorted(
        [f"creek-{d}{suffix}" for d in ("2022-05-20", "2022-08-30", "2023-09-15") for suffix in (".tif", "-quicklook.png")]
        + ["creek-truth.geojson", "creek-shapes.geojson", "synth.json"]
    )
    assert _entries(tmp_path) == ["demo"]  # no temporary directory left beside it
    # With three dates a dam's `dates` is a run: new dams stand from some date on, gone ones until.
    truth = json.loads((out / "creek-truth.geojson").read_text())
    all_dates = ["2022-05-20", "2022-08-30", "2023-09-15"]
    for f in truth["features"]:
        p = f["properties"]
        if p["class"] != "dam":
            continue
        present = [d in p["dates"] for d in all_dates]
        if p["status"] == "new":
            assert not present[0] and present == sorted(present)
        elif p["status"] == "gone":
            assert present[0] and present == sorted(present, reverse=True) and not present[-1]
        else:
            assert all(present)


def test_overwrite_replaces_an_earlier_synth_output_only(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["synth", "--out", str(out), "--size", "512", "--dates", "2024-06-01", "--workers", "1"]) == 0
    with rasterio.open(out / "creek-2024-06-01.tif") as ds:
        first = ds.read(1, window=((0, 64), (0, 64)))
    assert main(["synth", "--out", str(out), "--size", "512", "--dates", "2024-06-01", "--seed", "9", "--workers", "1", "--overwrite"]) == 0
    with rasterio.open(out / "creek-2024-06-01.tif") as ds:
        assert not np.array_equal(ds.read(1, window=((0, 64), (0, 64))), first)
    assert _entries(tmp_path) == ["o"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--size", "300"], ["--size 300", "512"]),  # too small for a stream, a dam and a pond
        (["--size", "512", "--pixel-size", "0.5"], ["256 m", "raise --size"]),
        (["--dates", "2024-06-01", "2023-06-01"], ["out of order", "oldest first"]),
        (["--dates", "2023-06-01", "2023-06-01"], ["2023-06-01", "twice"]),
        (["--dates", "2023-13-01"], ["2023-13-01", "YYYY-MM-DD"]),
        (["--area", "Creek One"], ["'Creek One'", "lower-case"]),
        (["--block", "768"], ["--block 768", "512, 1024"]),
        (["--seed", "-1"], ["--seed -1"]),
        (["--workers", "0"], ["--workers 0"]),
        (["--layout", "grid"], ["--layout 'grid'", "natural, balanced"]),
    ],
)
def test_bad_arguments_are_refused_with_exit_2_and_nothing_written(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    code = main(["synth", "--out", str(out), "--size", "512", *args] if "--size" not in args else ["synth", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("damwatch synth: error: ") and "Traceback" not in err
    for word in words:
        assert word in err.replace("\n", " "), (word, err)
    assert _entries(tmp_path) == []


def test_layout_balanced_is_written_to_the_manifest_with_its_counts(tmp_path, capsys):
    out = tmp_path / "b"
    args = ["synth", "--out", str(out), "--size", "768", "--pixel-size", "2", "--layout", "balanced", "--dates", "2024-06-01"]
    assert main([*args, "--seed", "4", "--workers", "1"]) == 0
    manifest = json.loads((out / "synth.json").read_text())
    truth = json.loads((out / "creek-truth.geojson").read_text())["features"]
    assert manifest["layout"] == "balanced"
    # One date: every dam persists, so each context's count is its number of dams in the truth.
    contexts = [f["properties"]["context"] for f in truth if f["properties"]["class"] == "dam"]
    counts = manifest["counts"]["standing_by_date"]["2024-06-01"]["dams"]
    assert counts == {c: contexts.count(c) for c in ("main_stream", "side_channel", "lake_outlet")}
    assert min(counts.values()) >= 3  # 1.5 km square: 2.36 km^2 x 1.55 per km^2 = 4 of each wanted


def test_an_output_directory_holding_other_files_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):  # --overwrite never deletes files synth did not write
        code = main(["synth", "--out", str(out), "--size", "512", "--workers", "1", *extra])
        err = capsys.readouterr().err.replace("\n", " ")
        assert code == 2 and "not empty" in err and "notes.txt" in err
        assert _entries(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
        assert _entries(tmp_path) == ["mine"]


def test_an_earlier_output_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["synth", "--out", str(out), "--size", "512", "--dates", "2024-06-01", "--workers", "1"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["synth", "--out", str(out), "--size", "512", "--dates", "2024-06-01", "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_synthetic_surveys_ingest_into_the_store_with_their_band_names(tmp_path, store):
    from pipeline.ingest import ingest
    from pipeline.synthetic import generate_area

    result = generate_area(tmp_path / "s", "creek", ["2023-06-01", "2024-06-01"], 640, 5, workers=1, progress=False)
    for date, path in result.surveys.items():
        survey = ingest(path, "creek", date, store).survey
        assert survey.id == f"creek-{date}"
        assert survey.bands == ("red", "green", "blue", "nir")  # from the band descriptions
        with rasterio.open(path) as ds:
            assert survey.crs == ds.crs and survey.transform == ds.transform
            np.testing.assert_array_equal(np.asarray(survey.image()[:, 100:640, 30:600]), ds.read(window=((100, 640), (30, 600))))
