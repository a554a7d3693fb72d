"""Sandbox stream buffers and settings: reads by offset acknowledge what came before, exec'd streams
block their writer when a reader falls behind, the main process's drop their oldest bytes instead."""

from __future__ import annotations

import asyncio

import pytest

from vivace.protocol import sandboxes as proto
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.worker.sandboxes import SandboxProcess, SandboxRequestError, StreamBuffer


async def _feed(data: list[bytes]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in data:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


def test_reads_by_offset_are_repeatable_until_acknowledged() -> None:
    async def go() -> None:
        buf = StreamBuffer(1 << 20, drop=False)
        await buf.pump(await _feed([b"hello ", b"world"]), None)
        assert await buf.read(0, 5, 0) == (0, b"hello", False)
        assert await buf.read(0, 5, 0) == (0, b"hello", False)  # a retried read gets the same bytes
        assert await buf.read(5, 100, 0) == (5, b" world", True)
        assert buf.base == 5  # everything before offset 5 was freed
        assert await buf.read(11, 100, 0) == (11, b"", True)

    asyncio.run(go())


def test_an_exec_stream_blocks_its_writer_when_full() -> None:
    async def go() -> None:
        buf = StreamBuffer(8, drop=False)
        reader = asyncio.StreamReader()
        pump = asyncio.create_task(buf.pump(reader, None))
        reader.feed_data(b"0123456789")
        await asyncio.sleep(0.01)
        reader.feed_data(b"abc")
        reader.feed_eof()
        await asyncio.sleep(0.01)
        assert buf.end == 10 and not pump.done()  # over its cap: it reads no more until someone reads
        assert await buf.read(0, 4, 0) == (0, b"0123", False)
        assert await buf.read(10, 100, 1) == (10, b"abc", True)  # acknowledged: room again
        await pump
        assert buf.dropped == 0

    asyncio.run(go())


def test_the_main_stream_drops_its_oldest_bytes_and_says_so() -> None:
    async def go() -> None:
        buf = StreamBuffer(4, drop=True)
        await buf.pump(await _feed([b"abcdef", b"gh"]), None)
        assert buf.dropped == 4
        assert await buf.read(0, 100, 0) == (4, b"efgh", True)  # a reader that fell behind skips ahead

    asyncio.run(go())


def test_a_read_waits_for_data_or_its_deadline() -> None:
    async def go() -> None:
        buf = StreamBuffer(100, drop=False)
        reader = asyncio.StreamReader()
        pump = asyncio.create_task(buf.pump(reader, None))
        assert await buf.read(0, 10, 0.05) == (0, b"", False)
        waiting = asyncio.create_task(buf.read(0, 10, 5))
        await asyncio.sleep(0.01)
        reader.feed_data(b"late")
        assert await waiting == (0, b"late", False)
        reader.feed_eof()
        await pump

    asyncio.run(go())


def test_stdin_writes_are_idempotent_by_offset() -> None:
    async def go() -> None:
        written = bytearray()

        class Sink:
            def write(self, data: bytes) -> None:
                written.extend(data)

            async def drain(self) -> None:
                pass

            def close(self) -> None:
                written.extend(b"<eof>")

        proc = SandboxProcess("ex-1", Sink(), drop=False)  # type: ignore[arg-type]
        assert await proc.write(0, b"abc", False) == 3
        assert await proc.write(0, b"abc", False) == 3  # a retried write is not written twice
        assert await proc.write(2, b"cde", True) == 5  # only the part past what was taken
        assert bytes(written) == b"abcde<eof>"
        with pytest.raises(SandboxRequestError):
            await proc.write(9, b"gap", False)
        with pytest.raises(SandboxRequestError):
            await proc.write(5, b"more", False)  # closed

    asyncio.run(go())


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"command": "ls"}, "list of strings"),
        ({"command": ["a\0b"]}, "NUL"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": True}, "idle_timeout"),
        ({"workdir": "tmp"}, "absolute"),
        ({"cidr_allowlist": ["999.0.0.0/8"]}, "CIDR"),
        ({"ports": [0]}, "port"),
        ({"ports": [80], "tcp_ports": [81]}, "some of ports"),
        ({"surprise": 1}, "unknown"),
    ],
)
def test_bad_sandbox_settings_are_refused_with_the_reason(settings: dict, problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        FunctionSpec(name="s", module="m", qualname="q", sandbox=settings).validate()


def test_names_and_tags_are_checked() -> None:
    assert proto.check_name("job-1.a_b") == "job-1.a_b"
    for bad in ("", "-lead", "has space", "x" * 65, 3):
        with pytest.raises(proto.SandboxSpecError):
            proto.check_name(bad)
    with pytest.raises(proto.SandboxSpecError):
        proto.check_tags({"k": 1})
    with pytest.raises(proto.SandboxSpecError):
        proto.check_tags({str(i): "v" for i in range(proto.MAX_TAGS + 1)})
    assert proto.check_cidrs(["10.1.2.3/8"]) == ["10.0.0.0/8"]
