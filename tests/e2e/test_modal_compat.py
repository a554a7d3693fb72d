"""An app written with `import modal`, run unchanged by `vivace run` and `vivace python`."""

import pytest

from .conftest import vivace

pytestmark = pytest.mark.timeout(180)

APP = "tests/e2e/apps/modal_compat_app.py"


def test_run_turns_parameters_into_options(home):
    proc = vivace(home, "run", "-q", APP, "--n", "3", "--loud", "--when", "2025-01-31T12:30", check=True)
    assert "shout: X-X-X in container" in proc.stdout
    assert "when: 2025-01-31T12:30:00 mode: fast" in proc.stdout
    named = vivace(home, "run", "-q", APP, "--name", "ab", "--n", "2", "--mode", "slow", check=True)
    assert "shout: ab-ab in container" in named.stdout and "mode: slow" in named.stdout
    fn = vivace(home, "run", "-q", f"{APP}::add", "--x", "2", check=True)
    assert fn.stdout.strip() == "2 + 40 = 42 in container"
    method = vivace(home, "run", "-q", f"{APP}::Scaler.scale", "--x", "2", check=True)
    assert method.stdout.strip() == "2 * 3 = 6 in container"
    steps = vivace(home, "run", "-q", f"{APP}::Scaler.steps", "--n", "3", check=True)
    assert steps.stdout.split() == ["0", "1", "2"]
    whole = vivace(home, "run", "-q", f"{APP}::Scaler")
    assert whole.returncode == 2 and f"{APP}::Scaler.METHOD" in whole.stderr


def test_bad_options_are_usage_errors_before_anything_runs(home):
    helped = vivace(home, "run", APP, "--help", check=True)
    assert f"Usage: vivace run {APP} [OPTIONS]" in helped.stdout
    assert "--n INTEGER" in helped.stdout and "--loud / --no-loud" in helped.stdout
    assert "[fast|slow]" in helped.stdout and "Shout NAME N times" in helped.stdout
    for args in (["--n", "abc"], ["--n", "1", "--nope"], [], ["--n", "1", "--mode", "warp"]):
        bad = vivace(home, "run", APP, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert f"Usage: vivace run {APP} [OPTIONS]" in bad.stderr
    assert not (home / "daemon.json").exists()  # rejected before the app started


def test_python_runs_the_main_block_with_its_own_argv(home):
    proc = vivace(home, "python", APP, "5", "--verbose", check=True)
    assert "argv: ['5', '--verbose']" in proc.stdout
    assert "script: 5 + 40 = 45 in container" in proc.stdout
    missing = vivace(home, "python", "tests/e2e/apps/nope.py")
    assert missing.returncode == 2 and "Error: InvalidError" in missing.stderr
