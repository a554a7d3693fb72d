"""Every example in examples/ runs with `vivace run` and prints what its docstring promises.

The examples share one embedded daemon (a module-scoped home), so each test pays only for its own run.
"""

import re
import subprocess

import pytest

from .conftest import VIVACE, env_for, vivace, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """Like conftest's ``home``, but one daemon for the whole module."""
    h = tmp_path_factory.mktemp("examples") / "vivace-home"
    yield h
    subprocess.run([*VIVACE, "server", "stop"], env=env_for(h), capture_output=True, timeout=60)
    leftovers = subprocess.run(["pgrep", "-f", str(h)], capture_output=True, text=True).stdout.split()
    for pid in leftovers:
        subprocess.run(["kill", "-9", pid], capture_output=True)
    assert not leftovers, f"processes outlived `vivace server stop`: {leftovers}"


def run_example(home, name, *args):
    return vivace(home, "run", f"examples/{name}.py", *args, check=True)


def test_getting_started(shared_home):
    proc = run_example(shared_home, "getting_started")
    assert "cubing 3 here\n" in proc.stdout  # .local() runs in this process
    assert "local: 27\n" in proc.stdout
    assert "remote: 125\n" in proc.stdout
    assert "sum of cubes 1..10: 3025\n" in proc.stdout
    # the container's prints, streamed back: stdout to stdout, stderr to stderr
    assert "cubing 5 in a container" in proc.stdout
    assert "note: 5 is a multiple of five" in proc.stderr
    assert "multiple of five" not in proc.stdout


def test_generators(shared_home):
    proc = run_example(shared_home, "generators")
    assert "countdown: 3\ncountdown: 2\ncountdown: 1\nliftoff\n" in proc.stdout
    assert "tokens: ['Generators', 'Stream', 'Results']" in proc.stdout
    assert "lowercase tokens: ['generators', 'stream', 'results']" in proc.stdout


def test_parallel(shared_home):
    proc = run_example(shared_home, "parallel")
    assert "gathered: 5 HELLO\n" in proc.stdout
    assert "the two calls ran at the same time: True" in proc.stdout
    assert "sqrt(16) = 4.0" in proc.stdout
    assert "caught ValueError: cannot take the square root of -1" in proc.stdout


def test_async_calls(shared_home):
    proc = run_example(shared_home, "async_calls")
    assert "double.remote.aio(21) = 42\n" in proc.stdout
    assert "double.map.aio(range(5)) = [0, 2, 4, 6, 8]\n" in proc.stdout
    assert "asyncio.gather of two calls = [2, 4]\n" in proc.stdout
    assert "fetch: 8 inputs in 1 container(s), 8 at once" in proc.stdout


def test_classes(shared_home):
    helped = vivace(shared_home, "run", "examples/classes.py", "--help", check=True).stdout
    assert "--size INTEGER" in helped and "--text TEXT" in helped
    proc = run_example(shared_home, "classes", "--size", "2", "--text", "hello")
    out = proc.stdout
    assert "predict: echo-2('hello') = 15\n" in out  # (1 + 2) * len("hello")
    assert "predict: echo-2('HELLO') = 15\n" in out and "predict: echo-2('olleh') = 15\n" in out
    assert "stats: 3 requests served from one loaded model" in out
    assert out.count("loading echo (size 2)") == 2  # @enter: once per container, not per call
    assert "big predict: big-2('hello') = 15" in out
    assert "the big variant runs in its own container: True" in out
    assert "concurrent: 4 requests in 1 container(s), 4 at once" in out
    app_id = re.search(r"vivace app logs (ap-\w+)", out).group(1)

    def unloaded():  # the @exit hooks ran when the app stopped
        logs = vivace(shared_home, "app", "logs", app_id, check=True).stdout
        return "unloading echo-2 after 3 request(s)" in logs and "unloading big-2 after 1 request(s)" in logs

    wait_for(unloaded, timeout=30, step=0.5)


def test_batching(shared_home):
    proc = run_example(shared_home, "batching")
    out = proc.stdout
    assert "in input order: True" in out
    assert "first vector: [17, 5, 3]" in out  # "sentence number 0"
    sizes = re.search(r"20 texts in (\d+) batches of sizes \[([\d, ]+)\]", out)
    assert sizes, out
    batches = [int(n) for n in sizes.group(2).split(", ")]
    assert int(sizes.group(1)) == len(batches) and sum(batches) == 20
    assert max(batches) > 1 and max(batches) <= 8  # grouped, never above max_batch_size
    assert "single call: [13, 4, 3] in a batch of 1" in out


def test_modal_compat(shared_home):
    proc = run_example(shared_home, "modal_compat", "--name", "Ada", "--n", "4")
    out = proc.stdout
    assert "squares: [0, 1, 4, 9]\n" in out
    assert "square.remote(7): 49\n" in out
    assert "modal.is_local() here: True in a container: False" in out
    assert "Hello, Ada!\nBonjour, Ada!\n" in out
    assert "gathered: [100, 400]" in out


def test_storage(shared_home):
    proc = run_example(shared_home, "storage")
    assert "wrote ['ada', 'grace', 'linus']\n" in proc.stdout
    assert "notes: ['hello, ada', 'hello, grace', 'hello, linus']\n" in proc.stdout
    assert "files: ['ada.txt', 'grace.txt', 'linus.txt']\n" in proc.stdout
    assert "scored 4 words\n" in proc.stdout
    assert "scores: {'dict': 4, 'queue': 5, 'secret': 6, 'volume': 6}\n" in proc.stdout
    # the named objects stay for the CLI to show
    listing = vivace(shared_home, "volume", "ls", "storage-demo-notes", check=True).stdout
    assert "ada.txt" in listing
