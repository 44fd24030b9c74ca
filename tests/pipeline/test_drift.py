"""The drift check: a survey unlike the training imagery is flagged, another date of it is not.

References: the synthetic generator's two dates of one area (what changes between flights),
and a copy of the second date with every band darkened by 40 % by NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from pipeline.drift import check_drift
from pipeline.ingest import ingest
from pipeline.synthetic import generate_area

BANDS = ("red", "green", "blue", "nir")


@pytest.fixture(scope="module")
def surveys(tmp_path_factory):
    from pipeline.store import Store

    root = tmp_path_factory.mktemp("drift")
    area = generate_area(root / "synth", "creek", ["2023-06-01", "2024-06-01"], size=768, seed=5, pixel_size=2.0,
                         workers=1, progress=False)
    store = Store(root / "store")
    first, second = (ingest(area.surveys[d], "creek", d, store).survey for d in ("2023-06-01", "2024-06-01"))
    dark = root / "dark.tif"
    with rasterio.open(area.surveys["2024-06-01"]) as src:
        profile = src.profile
        pixels = (src.read().astype(np.float32) * 0.6).round().astype(np.uint8)
        with rasterio.open(dark, "w", **profile) as dst:
            dst.write(pixels)
            dst.descriptions = src.descriptions
    darkened = ingest(dark, "creek", "2025-06-01", store).survey
    return first, second, darkened


def test_another_date_of_the_training_area_is_not_flagged(surveys):
    first, second, _ = surveys
    report = check_drift(second, {first.id: {**first.band_statistics, "dtype": "uint8"}}, BANDS)
    assert report["warning"] is None and report["drifted"] == []
    assert set(report["bands"]) == set(BANDS)


def test_a_survey_darkened_by_40_percent_is_flagged_naming_its_bands(surveys):
    first, second, darkened = surveys
    report = check_drift(darkened, {first.id: {**first.band_statistics, "dtype": "uint8"}}, BANDS)
    assert report["warning"] is not None and darkened.id in report["warning"]
    flagged = [b for b, r in report["bands"].items() if r["drifted"]]
    assert len(flagged) >= 3 and all(b in report["warning"] for b in flagged)
    assert "darker" in report["warning"]
    # the darkened copy's mean is 0.6 times the date it was made from (NumPy rounding aside)
    for i, b in enumerate(BANDS):
        assert report["bands"][b]["mean"] == pytest.approx(0.6 * second.band_statistics["mean"][i] / 255, rel=0.02)
