"""Names of a package imported on first use (PEP 562), so a light import stays light.

    from core.lazy import lazy_exports

    _EXPORTS = {"Event": "embedding.events", ...}
    __getattr__ = lazy_exports(__name__, _EXPORTS)

The package keeps its literal `__all__` and a `TYPE_CHECKING` block importing the same names, so
type checkers and readers see what it exports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `exports[name]` is the module that defines `name`.

    The first use imports that module and binds the name in `package`, so later uses are plain
    attribute reads."""

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
