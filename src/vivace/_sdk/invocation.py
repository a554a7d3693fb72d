"""Calling functions: inputs go up in batches with idempotency keys, outputs come back by cursor.

A lost response never loses or duplicates a result: uploads are keyed by ``(call_id, idx)`` and
outputs are fetched after a cursor that only moves once a page has been received, and results are
de-duplicated by index on this side too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vivace import exception as exc
from vivace._sdk.serialization import deserialize, serialize, unpack_exception
from vivace.protocol import frames, ids
from vivace.protocol.calls import FINAL, CallKind

if TYPE_CHECKING:
    from vivace.client import ApiClient

BATCH_INPUTS = 1000
BATCH_BYTES = 8 * 1024 * 1024
POLL_WAIT = 25.0


@dataclass
class Outcome:
    idx: int
    ok: bool
    value: Any  # the result, or the exception


def new_call_id() -> str:
    return ids.new_id(ids.FUNCTION_CALL)


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], method: str | None = None) -> bytes:
    """An input's payload: ``(args, kwargs)``, or ``(args, kwargs, method)`` for a class method."""
    return serialize((args, kwargs) if method is None else (args, kwargs, method))


async def send_inputs(
    api: ApiClient,
    call_id: str,
    function_id: str,
    kind: CallKind,
    idxs: list[int],
    payloads: list[bytes],
    total: int | None,
) -> None:
    header = {"idx": idxs, "total": total, "function_id": function_id, "kind": kind.value}
    await api.post_frames(f"/v1/calls/{call_id}/inputs", header, payloads)


def _outcome(item: dict[str, Any], blobs: list[bytes]) -> Outcome:
    blob = blobs[item["blob"]] if item.get("blob") is not None else None
    if item["status"] == "success":
        return Outcome(item["idx"], True, deserialize(blob) if blob is not None else None)
    if item["status"] == "timeout":
        return Outcome(item["idx"], False, exc.FunctionTimeoutError(_msg(item, "the input timed out")))
    if item["status"] == "cancelled":
        return Outcome(item["idx"], False, exc.InputCancellation(_msg(item, "the input was cancelled")))
    if item["status"] == "system":
        resources = '"ResourceExhaustedError"' in (item.get("error") or "")
        kind = exc.ResourceExhaustedError if resources else exc.ExecutionError
        return Outcome(item["idx"], False, kind(_msg(item, "the platform could not run the input")))
    return Outcome(item["idx"], False, unpack_exception(item.get("error"), blob))


def _msg(item: dict[str, Any], default: str) -> str:
    import json

    try:
        return str(json.loads(item.get("error") or "{}").get("message") or default)
    except ValueError:
        return default


class OutputStream:
    """Reads a call's outputs by cursor; yields final outcomes and generator items."""

    def __init__(self, api: ApiClient, call_id: str) -> None:
        self.api = api
        self.call_id = call_id
        self.cursor = 0
        self.seen: set[tuple[int, int]] = set()

    async def page(self, wait: float) -> tuple[list[tuple[int, Outcome]], dict[str, Any]]:
        resp = await self.api.request(
            "GET",
            f"/v1/calls/{self.call_id}/outputs",
            params={"cursor": self.cursor, "wait": wait, "limit": 5000},
            timeout=wait + 30,
        )
        header, out = self._decode(resp.content)
        return out, header

    def take(self, body: bytes) -> list[tuple[int, Outcome]]:
        return self._decode(body)[1]

    def _decode(self, body: bytes) -> tuple[dict[str, Any], list[tuple[int, Outcome]]]:
        try:
            header, blobs = frames.decode(body)
        except frames.FrameError as err:
            raise exc.ServiceError(f"the server sent a malformed response: {err}") from None
        out = []
        for item in header["outputs"]:
            key = (item["idx"], item["part"])
            if key in self.seen:
                continue
            self.seen.add(key)
            if item["status"] == "item":
                out.append((item["part"], Outcome(item["idx"], True, deserialize(blobs[item["blob"]]))))
            else:
                out.append((item["part"], _outcome(item, blobs)))
        self.cursor = header["cursor"]
        return header, out


async def call_one(
    api: ApiClient, function_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], method: str | None = None
) -> Any:
    call_id = new_call_id()
    header = {
        "idx": [0],
        "total": 1,
        "function_id": function_id,
        "kind": CallKind.REMOTE.value,
        "await_outputs": POLL_WAIT,
    }
    resp = await api.post_frames(
        f"/v1/calls/{call_id}/inputs", header, [encode_args(args, kwargs, method)], timeout=POLL_WAIT + 30
    )
    if resp.headers.get("content-type", "").startswith(frames.CONTENT_TYPE):
        stream = OutputStream(api, call_id)
        for part, o in stream.take(resp.content):
            if part == FINAL:
                if o.ok:
                    return o.value
                raise o.value
    return await wait_one(api, call_id, None)


async def wait_one(api: ApiClient, call_id: str, timeout: float | None) -> Any:
    stream = OutputStream(api, call_id)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        wait = POLL_WAIT if deadline is None else max(0.0, min(POLL_WAIT, deadline - loop.time()))
        outs, _ = await stream.page(wait)
        for part, o in outs:
            if part == FINAL:
                if o.ok:
                    return o.value
                raise o.value
        if deadline is not None and loop.time() >= deadline:
            raise exc.TimeoutError(f"function call {call_id} has no result yet")


async def gen_items(
    api: ApiClient,
    function_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str | None = None,
) -> AsyncIterator[Any]:
    call_id = new_call_id()
    payload = encode_args(args, kwargs, method)
    await send_inputs(api, call_id, function_id, CallKind.GENERATOR, [0], [payload], 1)
    stream = OutputStream(api, call_id)
    pending: dict[int, Any] = {}
    next_part = 0
    final: Outcome | None = None
    while True:
        outs, _ = await stream.page(POLL_WAIT)
        for part, o in outs:
            if part == FINAL:
                final = o
            else:
                pending[part] = o.value
        while next_part in pending:
            yield pending.pop(next_part)
            next_part += 1
        if final is not None and not pending:
            if not final.ok:
                raise final.value
            return


async def map_outcomes(
    api: ApiClient,
    function_id: str,
    arg_tuples: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    order_outputs: bool,
    kind: CallKind = CallKind.MAP,
    call_id: str | None = None,
    method: str | None = None,
) -> AsyncIterator[list[Outcome]]:
    """Upload inputs in batches while yielding batches of outcomes (in input order if asked)."""
    call_id = call_id or new_call_id()
    await api.post_json("/v1/calls", {"call_id": call_id, "function_id": function_id, "kind": kind.value})
    total_box: list[int] = []
    uploader = asyncio.create_task(
        _upload_all(api, call_id, function_id, arg_tuples, kind, total_box, method)
    )
    stream = OutputStream(api, call_id)
    buffered: dict[int, Outcome] = {}
    next_idx = 0
    received = 0
    try:
        while True:
            if uploader.done() and uploader.exception() is not None:
                raise uploader.exception()  # type: ignore[misc]
            if total_box and received >= total_box[0]:
                return
            outs, _ = await stream.page(POLL_WAIT if uploader.done() else 1.0)
            batch: list[Outcome] = []
            for part, o in outs:
                if part != FINAL:
                    continue
                received += 1
                if not order_outputs:
                    batch.append(o)
                    continue
                buffered[o.idx] = o
                while next_idx in buffered:
                    batch.append(buffered.pop(next_idx))
                    next_idx += 1
            if batch:
                yield batch
    finally:
        if not uploader.done():
            uploader.cancel()
            with contextlib.suppress(BaseException):
                await uploader


async def _upload_all(
    api: ApiClient,
    call_id: str,
    function_id: str,
    arg_tuples: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    kind: CallKind,
    total_box: list[int],
    method: str | None = None,
) -> None:
    idxs: list[int] = []
    payloads: list[bytes] = []
    size = 0
    n = 0
    for args, kwargs in arg_tuples:
        payload = encode_args(args, kwargs, method)
        idxs.append(n)
        payloads.append(payload)
        size += len(payload)
        n += 1
        if len(idxs) >= BATCH_INPUTS or size >= BATCH_BYTES:
            await send_inputs(api, call_id, function_id, kind, idxs, payloads, None)
            idxs, payloads, size = [], [], 0
    await send_inputs(api, call_id, function_id, kind, idxs, payloads, n)
    total_box.append(n)


async def map_outcomes_existing(
    api: ApiClient, call_id: str, timeout: float | None
) -> AsyncIterator[list[Outcome]]:
    """All outcomes of an already-submitted call, in input order, once every one has arrived."""
    stream = OutputStream(api, call_id)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    got: dict[int, Outcome] = {}
    while True:
        wait = POLL_WAIT if deadline is None else max(0.0, min(POLL_WAIT, deadline - loop.time()))
        outs, header = await stream.page(wait)
        for part, o in outs:
            if part == FINAL:
                got[o.idx] = o
        total = header.get("total")
        if total is not None and len(got) >= total:
            yield [got[i] for i in sorted(got)]
            return
        if deadline is not None and loop.time() >= deadline:
            raise exc.TimeoutError(f"function call {call_id} is not finished yet")
