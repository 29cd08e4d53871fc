"""Test rig (on PYTHONPATH of a child process only): the first import of each module named in
`CC_TEST_SLOW_IMPORT` ("netrc:1.5,...") takes that many seconds more, as on a loaded machine,
so that a fork during it is certain rather than one run in ten."""

import importlib.abc
import importlib.machinery
import os
import sys
import time
from types import ModuleType

_SLOW = {
    name: float(seconds)
    for name, _, seconds in (
        item.partition(":") for item in os.environ.get("CC_TEST_SLOW_IMPORT", "").split(",")
    )
    if name and seconds
}


class _SlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name not in _SLOW:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def slow_exec(module: ModuleType) -> None:
            time.sleep(_SLOW[name])
            run(module)

        spec.loader.exec_module = slow_exec  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _SlowFinder())
