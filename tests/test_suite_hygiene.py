"""The test suite writes nothing into the checkout: hypothesis keeps its database and caches elsewhere."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_hypothesis_storage_is_outside_the_checkout():
    from hypothesis import settings
    from hypothesis.configuration import storage_directory

    home = storage_directory(intent_to_write=False).path.resolve()
    database = settings.default.database
    assert REPO not in home.parents and home != REPO, home
    path = getattr(database, "path", None)  # None: no database at all, also fine
    assert path is None or REPO not in Path(path).resolve().parents, database
