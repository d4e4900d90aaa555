"""The built-in pruning methods: every module of this package registers one on import, so a new
method is a new module here (found by name, no list to edit)."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
