"""The tensorizer fixtures in the repository are the files their JSON ground truth describes,
and the damaged ones are what their recipes rebuild (tests/fixtures/tensorizer/fixtures.py)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "tensorizer" / "fixtures.py"


def test_fixtures_match_their_ground_truth():
    spec = importlib.util.spec_from_file_location("tensorizer_fixtures", SCRIPT)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    assert len(list(fixtures.HERE.glob("*.tensors"))) == 28
    assert fixtures.problems() == []
