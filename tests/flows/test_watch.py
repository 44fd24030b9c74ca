"""The watch flow under Prefect's test harness: what it processes, skips and records.

The reference is the inbox itself: which files are new (by content), which are understood,
which are claimed by another live run, and what the store holds afterwards.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from flows.inbox import Ledger
from flows.watch import watch_flow
from pipeline.files import file_sha256
from pipeline.store import Store


@pytest.fixture
def cluster(dask_client):
    return dask_client.scheduler.address


def test_watch_processes_new_files_once_and_leaves_the_rest(prefect, tmp_path, write_survey, cluster):
    inbox, store = tmp_path / "inbox", Store(tmp_path / "st")
    inbox.mkdir()
    write_survey(inbox / "creek_2024-06-01.tif", height=200, width=256, seed=31)
    write_survey(inbox / "flight-0042.tif", height=200, width=256, seed=32)  # named by its sidecar
    (inbox / "flight-0042.json").write_text(json.dumps({"area": "pond", "date": "2023-05-30"}))
    write_survey(inbox / "mystery.tif", height=200, width=256, seed=33)  # neither: left alone
    (inbox / "not-a-raster_2024-01-01.tif").write_text("this is text")  # bad input: recorded

    first = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster=cluster)
    assert sorted(p["survey_id"] for p in first["processed"]) == ["creek-2024-06-01", "pond-2023-05-30"]
    assert [u["file"] for u in first["unknown"]] == ["mystery.tif"]
    assert [f["file"] for f in first["failed"]] == ["not-a-raster_2024-01-01.tif"]
    assert store.survey_ids() == ["creek-2024-06-01", "pond-2023-05-30"]
    assert store.survey("pond-2023-05-30").source_sha256 == file_sha256(inbox / "flight-0042.tif")
    ledger = Ledger(store.root / "state" / "watch")
    assert ledger.status(file_sha256(inbox / "creek_2024-06-01.tif"))["state"] == "done"
    assert "not a" in ledger.status(file_sha256(inbox / "not-a-raster_2024-01-01.tif"))["error"].lower()

    # Same bytes under a new name: known by content, not processed again; bad input not retried.
    shutil.copy(inbox / "creek_2024-06-01.tif", inbox / "creek_2024-06-01-copy.tif")
    second = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster=cluster)
    assert second["processed"] == [] and second["failed"] == []
    assert sorted(s["file"] for s in second["skipped"]) == [
        "creek_2024-06-01-copy.tif", "creek_2024-06-01.tif", "flight-0042.tif", "not-a-raster_2024-01-01.tif",
    ]
    assert {s["reason"] for s in second["skipped"]} == {"done", "failed"}
    assert not any(p.name.startswith("creek_2024-06-01-copy") for p in (store.root / "runs").rglob("*.tif"))


def test_a_file_claimed_by_another_live_run_is_skipped(prefect, tmp_path, write_survey, cluster):
    inbox, store = tmp_path / "inbox", Store(tmp_path / "st")
    inbox.mkdir()
    write_survey(inbox / "creek_2024-06-01.tif", height=200, width=256, seed=34)
    sha = file_sha256(inbox / "creek_2024-06-01.tif")
    ledger = Ledger(store.root / "state" / "watch")
    assert ledger.claim(sha, inbox / "creek_2024-06-01.tif", run="other-run")  # held by this (live) process

    result = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster=cluster)
    assert result["processed"] == []
    assert result["skipped"] == [{"file": "creek_2024-06-01.tif", "sha256": sha, "reason": "claimed by other-run"}]
    assert store.survey_ids() == []

    ledger.release(sha)  # the other run gave up (crashed, released): the next run takes it
    result = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster=cluster)
    assert [p["survey_id"] for p in result["processed"]] == ["creek-2024-06-01"]
    assert os.listdir(ledger.claims) == []


def test_an_empty_inbox_is_nothing_to_do(prefect, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    result = watch_flow(str(inbox), store=str(tmp_path / "st"), settle_seconds=0)
    assert (result["processed"], result["skipped"], result["failed"], result["unknown"]) == ([], [], [], [])


def test_a_missing_model_fails_the_run_and_leaves_the_files_unclaimed(prefect, tmp_path, write_survey):
    from pipeline.errors import InputError

    inbox, store = tmp_path / "inbox", Store(tmp_path / "st")
    inbox.mkdir()
    write_survey(inbox / "creek_2024-06-01.tif", height=200, width=256, seed=35)
    with pytest.raises(InputError, match="holds no model yet"):
        watch_flow(str(inbox), store=str(store.root), model="latest", settle_seconds=0)
    ledger = Ledger(store.root / "state" / "watch")
    assert ledger.status(file_sha256(inbox / "creek_2024-06-01.tif")) is None
    assert os.listdir(ledger.claims) == [] and store.survey_ids() == []
