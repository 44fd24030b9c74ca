"""Output folders: written whole or not at all, refused unless overwriting, provenance last."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import InputError
from pipeline.files import file_sha256
from pipeline.outputs import output_folder


def test_output_folder_refuses_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    files = {"a": "a.txt", "b": "b.txt"}
    with output_folder(out, files, {"kind": "test"}) as folder:
        folder.path("a").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["kind"] == "test" and prov["outputs"] == {"a": {"file": "a.txt", "sha256": file_sha256(out / "a.txt")}}
    assert folder.written() == {"a": out / "a.txt", "provenance": out / "provenance.json"}
    with pytest.raises(InputError, match="already holds results.*--overwrite"):
        with output_folder(out, files, {}):
            pass
    with pytest.raises(RuntimeError):
        with output_folder(out, files, {}, overwrite=True) as folder:
            folder.path("b").write_text("partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "provenance.json"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial directory left
    with output_folder(out, files, {}, overwrite=True) as folder:
        folder.path("b").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt", "provenance.json"]
