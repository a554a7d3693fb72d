"""``vivace._sdk.compat``: ``import modal`` resolves to ``vivace`` only once ``install()`` ran.

Each case runs in a fresh interpreter so the alias never leaks into the test process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)


def python(code: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )


def ok(code: str, pythonpath: str | None = None) -> str:
    proc = python(code, pythonpath)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_modal_is_the_very_same_module_as_vivace():
    out = ok(
        """
        import sys
        from vivace._sdk import compat
        compat.install()
        import modal
        import vivace
        assert modal is vivace
        assert sys.modules["modal"] is sys.modules["vivace"]
        assert vivace.__name__ == "vivace" and vivace.__spec__.name == "vivace"
        print("same")
        """
    )
    assert out.strip() == "same"


def test_submodules_and_from_imports_are_vivace_objects():
    ok(
        """
        from vivace._sdk import compat
        compat.install()
        import modal.exception
        from modal import App, Retries
        from modal.exception import NotFoundError
        import vivace, vivace.exception
        assert modal.exception is vivace.exception
        assert vivace.exception.__spec__.name == "vivace.exception"
        assert App is vivace.App and Retries is vivace.Retries
        assert NotFoundError is vivace.exception.NotFoundError
        assert issubclass(modal.exception.NotFoundError, vivace.Error)
        """
    )


def test_install_is_idempotent_and_first_on_meta_path():
    ok(
        """
        import sys
        from vivace._sdk import compat
        compat.install()
        compat.install()
        finders = [f for f in sys.meta_path if isinstance(f, compat.ModalAliasFinder)]
        assert len(finders) == 1 and sys.meta_path[0] is finders[0]
        """
    )


def test_missing_submodule_is_reported_under_the_modal_name():
    out = ok(
        """
        from vivace._sdk import compat
        compat.install()
        try:
            import modal.no_such_module
        except ModuleNotFoundError as err:
            print(err.name)
        """
    )
    assert out.strip() == "modal.no_such_module"


def test_import_modal_fails_without_install():
    proc = python("import vivace, vivace.cli.main\nimport modal")
    assert proc.returncode == 1
    assert "ModuleNotFoundError: No module named 'modal'" in proc.stderr


def test_uninstall_removes_the_finder_and_the_aliases():
    ok(
        """
        import sys
        from vivace._sdk import compat
        compat.install()
        import modal.exception
        compat.uninstall()
        assert not compat.is_installed()
        assert not [n for n in sys.modules if n == "modal" or n.startswith("modal.")]
        assert "vivace.exception" in sys.modules
        try:
            import modal
        except ModuleNotFoundError:
            print("gone")
        """
    )


@pytest.fixture
def real_modal(tmp_path):
    pkg = tmp_path / "modal"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")
    return str(tmp_path)


def test_a_real_modal_is_not_shadowed_without_install(real_modal):
    out = ok("import vivace\nimport modal\nprint(modal.REAL, modal.__name__)", real_modal)
    assert out.split() == ["True", "modal"]


@pytest.mark.parametrize("imported_before", [False, True])
def test_a_real_modal_is_replaced_after_install(real_modal, imported_before):
    before = "import modal as real\nassert real.REAL\n" if imported_before else ""
    out = ok(
        before
        + textwrap.dedent(
            """
            from vivace._sdk import compat
            compat.install()
            import modal
            import vivace
            assert modal is vivace and not hasattr(modal, "REAL")
            print("replaced")
            """
        ),
        real_modal,
    )
    assert out.strip() == "replaced"
