"""`core.lazy.lazy_exports`: a package's names imported on first use, then bound in the package."""

from __future__ import annotations

import sys
import types

import pytest

from core.lazy import lazy_exports


def test_a_name_is_imported_on_first_use_and_bound() -> None:
    package = types.ModuleType("lazy_probe")
    package.__getattr__ = lazy_exports("lazy_probe", {"dumps": "json"})  # type: ignore[method-assign]
    sys.modules["lazy_probe"] = package
    try:
        import json

        assert package.dumps is json.dumps
        assert "dumps" in vars(package)  # bound: the next read does not go through __getattr__
        with pytest.raises(AttributeError, match="module 'lazy_probe' has no attribute 'loads'"):
            _ = package.loads
    finally:
        del sys.modules["lazy_probe"]


def test_the_packages_that_use_it_import_their_heavy_names_lazily() -> None:
    import embedding
    import embedding.export
    import trainer.churn

    assert embedding.Event.__module__ == "embedding.events"
    assert embedding.export.Manifest.__module__ == "embedding.export.manifest"
    assert trainer.churn.ChurnSettings.__module__ == "trainer.churn.settings"
    with pytest.raises(AttributeError, match="module 'trainer.churn' has no attribute 'nothing'"):
        _ = trainer.churn.nothing
