"""The inbox (area/date of a file, settling) and its ledger (claims, done, stale takeover)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading

import pytest

from flows.inbox import Ledger, scan_inbox, survey_identity
from pipeline.errors import InputError


@pytest.mark.parametrize(
    "name, area, date",
    [
        ("creek_2024-06-01.tif", "creek", "2024-06-01"),  # the documented pattern
        ("creek-2024-06-01.tif", "creek", "2024-06-01"),  # a survey id as the file name
        ("north_fork_2023-05-30.tiff", "north_fork", "2023-05-30"),  # '_' inside the area
        ("north-fork-20230530-rgb.tif", "north-fork", "2023-05-30"),  # compact date + suffix
        ("Creek_2024-06-01.TIF", "creek", "2024-06-01"),  # case-insensitive, area lower-cased
        ("creek_2024-06-01_2025-01-01.tif", "creek", "2024-06-01"),  # the first date wins
        ("creek.tif", None, None),  # no date
        ("2024-06-01.tif", None, None),  # no area
        ("creek_2024-6-1.tif", None, None),  # not zero-padded: not a date we read
    ],
)
def test_area_and_date_from_file_name(tmp_path, name, area, date):
    found = survey_identity(tmp_path / name)
    assert found.area == area
    assert found.date == (dt.date.fromisoformat(date) if date else None)


@pytest.mark.parametrize("sidecar", ["survey.json", "survey.tif.json"])
def test_sidecar_wins_over_file_name(tmp_path, sidecar):
    (tmp_path / sidecar).write_text(json.dumps({"area": "pond", "date": "2022-07-04"}))
    found = survey_identity(tmp_path / "survey.tif")
    assert (found.area, found.date) == ("pond", dt.date(2022, 7, 4))
    assert "sidecar" in found.source


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a JSON object"),
        (json.dumps({"area": "pond"}), "not a JSON object"),
        (json.dumps({"area": "pond", "date": "2022-13-01"}), "not a real calendar date"),
    ],
)
def test_malformed_sidecar_is_an_input_error(tmp_path, content, message):
    (tmp_path / "creek_2024-06-01.json").write_text(content)
    with pytest.raises(InputError, match=message):
        survey_identity(tmp_path / "creek_2024-06-01.tif")


def test_scan_lists_geotiffs_sorted_and_waits_for_files_to_settle(tmp_path):
    for name in ("b_2024-01-02.tif", "a_2024-01-01.tif", "notes.txt", ".hidden_2024-01-01.tif", "x.json"):
        (tmp_path / name).write_bytes(b"x")
    now = os.path.getmtime(tmp_path / "a_2024-01-01.tif")
    assert [f.path.name for f in scan_inbox(tmp_path, now=now)] == ["a_2024-01-01.tif", "b_2024-01-02.tif"]
    assert scan_inbox(tmp_path, settle_seconds=5, now=now + 1) == []  # still being copied
    assert len(scan_inbox(tmp_path, settle_seconds=5, now=now + 6)) == 2


def test_scan_reports_a_bad_sidecar_instead_of_raising(tmp_path):
    (tmp_path / "creek_2024-06-01.tif").write_bytes(b"x")
    (tmp_path / "creek_2024-06-01.json").write_text("[]")
    (found,) = scan_inbox(tmp_path)
    assert not found.understood and "sidecar" in found.source


def test_missing_inbox_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        scan_inbox(tmp_path / "nope")


def test_exactly_one_of_many_concurrent_claims_wins(tmp_path):
    ledger = Ledger(tmp_path)
    barrier = threading.Barrier(8)
    wins = []

    def contend(i):
        barrier.wait()
        wins.append(Ledger(tmp_path).claim("ab" * 32, tmp_path / "f.tif", run=f"run{i}"))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert ledger.holder("ab" * 32)["pid"] == os.getpid()


def test_done_is_recorded_before_the_claim_is_released(tmp_path):
    ledger = Ledger(tmp_path)
    sha = "cd" * 32
    assert ledger.claim(sha, tmp_path / "f.tif")
    ledger.mark_done(sha, {"survey_id": "creek-2024-06-01"})
    assert ledger.holder(sha) is None
    assert ledger.status(sha) == {"state": "done", "survey_id": "creek-2024-06-01"}
    # A later run can claim it again (the watch flow then sees the done record and lets go).
    assert ledger.claim(sha, tmp_path / "f.tif")


def test_claim_of_a_dead_process_is_taken_over_but_a_live_one_is_not(tmp_path):
    ledger = Ledger(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    sha = "ef" * 32
    import socket

    stale = {"pid": dead_pid, "host": socket.gethostname(), "run": "crashed"}
    (ledger.claims / f"{sha}.json").write_text(json.dumps(stale))
    assert ledger.claim(sha, tmp_path / "f.tif", run="new")
    assert ledger.holder(sha)["run"] == "new"

    live = {"pid": os.getppid(), "host": socket.gethostname(), "run": "alive"}  # our parent: alive
    (ledger.claims / f"{sha}.json").write_text(json.dumps(live))
    assert not ledger.claim(sha, tmp_path / "f.tif", run="newer")
    assert ledger.holder(sha)["run"] == "alive"


def test_content_hash_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    import flows.inbox
    from pipeline.files import file_sha256

    ledger = Ledger(tmp_path / "ledger")
    path = tmp_path / "creek_2024-06-01.tif"
    path.write_bytes(b"first version")
    assert ledger.content_hash(path) == file_sha256(path)

    calls = []
    real = flows.inbox.file_sha256
    monkeypatch.setattr(flows.inbox, "file_sha256", lambda p: calls.append(p) or real(p))
    assert ledger.content_hash(path) == file_sha256(path) and calls == []  # unchanged: cached

    path.write_bytes(b"second, longer version")
    assert ledger.content_hash(path) == real(path) and len(calls) == 1

