"""``import modal`` as an alias of ``vivace``, so apps written for Modal run unchanged.

``install()`` puts a finder at the front of ``sys.meta_path`` that answers ``modal`` and every
``modal.X`` with the module object of ``vivace`` / ``vivace.X`` itself: ``sys.modules["modal"] is
sys.modules["vivace"]``, so classes, exceptions and ``isinstance`` checks are shared. Being first, it
wins over a real ``modal`` package if one is installed.

Only Vivace's own entry points call ``install()`` (``vivace run``, ``vivace deploy``, ``vivace python``
and the container runtime); ``import vivace`` never does, and no ``modal`` package or ``.pth`` file is
shipped, so a plain ``python -c "import modal"`` behaves as it would without Vivace.

The container runtime imports this module, so it stays 3.10-compatible and imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

ALIAS = "modal"
TARGET = "vivace"


def _target_name(fullname: str) -> str | None:
    """``modal`` -> ``vivace``, ``modal.x.y`` -> ``vivace.x.y``; None for any other name."""
    if fullname == ALIAS or fullname.startswith(ALIAS + "."):
        return TARGET + fullname[len(ALIAS) :]
    return None


def _is_alias_name(name: str) -> bool:
    return _target_name(name) is not None


class ModalAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``modal[.X]`` and loads it as the already-imported ``vivace[.X]`` module object."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        real = _target_name(fullname)
        if real is None:
            return None
        try:
            if importlib.util.find_spec(real) is None:
                return None  # let the other finders report the missing module under its own name
        except ModuleNotFoundError:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        real = _target_name(spec.name)
        assert real is not None
        module = importlib.import_module(real)
        # importlib overwrites __spec__ on the module we return; keep vivace's own to restore it.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        alias_spec = module.__spec__
        if alias_spec is not None and isinstance(alias_spec.loader, ModalAliasFinder):
            module.__spec__ = alias_spec.loader_state


def _finders() -> list[ModalAliasFinder]:
    return [f for f in sys.meta_path if isinstance(f, ModalAliasFinder)]


def is_installed() -> bool:
    """Whether ``import modal`` currently resolves to ``vivace``."""
    return bool(_finders())


def install() -> None:
    """Make ``import modal[.X]`` give ``vivace[.X]``; idempotent.

    A real ``modal`` already imported in this process is dropped from ``sys.modules`` so that every
    later ``import modal`` gets the alias.
    """
    if is_installed():
        return
    for name in [n for n in sys.modules if _is_alias_name(n)]:
        del sys.modules[name]
    sys.meta_path.insert(0, ModalAliasFinder())


def uninstall() -> None:
    """Remove the finder and the ``modal[.X]`` aliases from ``sys.modules`` (for tests)."""
    for finder in _finders():
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if _is_alias_name(n)]:
        module = sys.modules[name]
        if getattr(module, "__name__", None) == _target_name(name):
            del sys.modules[name]
