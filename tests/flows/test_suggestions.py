"""Every command an error suggests works when pasted: each is run here, as a user would.

A suggestion is a backticked ``damwatch ...`` in an error message. Each is run in a process of its
own (``damwatch`` being ``python -m flows.cli``) and must succeed; where it makes what was
missing, the original command's check must then pass.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main

REPO = Path(__file__).resolve().parents[2]


def _suggestions(err: str) -> list[str]:
    text = " ".join(err.split())  # undo the CLI's line wrapping
    return re.findall(r"`(damwatch [^`]+)`", text)


def _paste(command: str, prefect: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] == "damwatch"
    return subprocess.run([sys.executable, "-m", "flows.cli", *words[1:]], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PREFECT_API_URL": prefect, "PYTHONPATH": str(REPO)})


@pytest.fixture
def creek(tmp_path, write_survey):
    from pipeline.ingest import ingest
    from pipeline.labels import labels_from_expression
    from pipeline.store import Store
    from pipeline.tiling import TileGrid

    store = Store(tmp_path / "store")
    write_survey(tmp_path / "a.tif", height=300, width=400)
    survey = ingest(tmp_path / "a.tif", "creek", "2024-06-01", store).survey
    labels_from_expression(store, survey.id, "red > 128", TileGrid.for_survey(survey, 128, 128), min_fraction=0.5)
    return store


def test_train_suggests_the_features_and_labels_it_needs_and_they_work(prefect, creek, tmp_path, capsys):
    from pipeline.features import open_features
    from pipeline.labels import open_labels

    store, sid = creek, "creek-2024-06-01"
    cnn = ["train", "--survey", sid, "--size", "64", "--stride", "64", "--store", str(store.root)]
    assert main(cnn) == 2  # the cnn (default) reads pixels: it needs only the labels on this grid
    (labels,) = _suggestions(capsys.readouterr().err)
    assert labels.startswith("damwatch labels ") and "--size 64 --stride 64" in labels

    train = [*cnn, "--model-type", "classic"]  # the classic model needs features too, asked for first
    assert main(train) == 2
    (features,) = _suggestions(capsys.readouterr().err)
    assert "--size 64 --stride 64" in features and f"--store {store.root}" in features
    done = _paste(features, prefect, tmp_path)
    assert done.returncode == 0, done.stderr
    open_features(store, sid, "default", stride=64, size=64)

    assert main(train) == 2  # now the labels on this grid
    (labels,) = _suggestions(capsys.readouterr().err)
    assert "--expr 'red > 128'" in labels and "--min-fraction 0.5" in labels and "--size 64" in labels
    done = _paste(labels, prefect, tmp_path)
    assert done.returncode == 0, done.stderr
    made = open_labels(store, sid, "default", stride=64, size=64)
    assert made.report["expression"] == "red > 128" and made.report["min_fraction"] == 0.5


@pytest.mark.parametrize(
    "argv",
    [
        ["features", "creek-2099-01-01"],  # no such survey
        ["detect", "creek-2024-06-01", "--model", "latest"],  # no model yet
        ["labels", "creek-2024-06-01", "--expr", "nir > 0"],  # a band the survey lacks (no suggestion)
        ["train", "--survey", "creek-2024-06-01", "--labels", "dams"],  # labels never made from a band expression
    ],
)
def test_every_other_suggested_command_works_when_pasted(argv, prefect, creek, tmp_path, capsys):
    if argv[0] == "train":  # features on the default grid exist, so the labels are what is missing
        from pipeline.features import compute_features

        compute_features(creek, "creek-2024-06-01", "default", stride=128, size=128)
    assert main([*argv, "--store", str(creek.root)]) == 2
    for command in _suggestions(capsys.readouterr().err):
        done = _paste(command, prefect, tmp_path)
        assert done.returncode == 0, (command, done.stderr)


def test_change_of_two_areas_suggests_a_listing_that_works(prefect, creek, tmp_path, write_survey, capsys):
    from pipeline.ingest import ingest

    write_survey(tmp_path / "b.tif", seed=3)
    ingest(tmp_path / "b.tif", "otter", "2024-07-01", creek)
    assert main(["change", "creek-2024-06-01", "otter-2024-07-01", "--model", "x", "--store", str(creek.root)]) == 2
    (listing,) = _suggestions(capsys.readouterr().err)
    done = _paste(listing, prefect, tmp_path)
    assert done.returncode == 0 and "creek-2024-06-01" in done.stdout and "otter" not in done.stdout
