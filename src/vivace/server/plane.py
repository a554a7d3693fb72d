"""The control plane's process-wide state: store, blobs, wake-ups, worker channels, loops."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

from vivace.protocol.calls import MAX_INLINE_PAYLOAD, OutputStatus
from vivace.server.blobs import LocalBlobStore
from vivace.server.config import ServerConfig
from vivace.server.notify import Notifier
from vivace.server.otlp import OtlpConfig, from_env, post
from vivace.server.secretbox import SecretBox, load_key
from vivace.server.services import apps, calls, containers, metering, tokens, workers
from vivace.server.store import Store, open_store

log = logging.getLogger("vivace.server")
IMAGE_GC_INTERVAL = 3600.0  # seconds between collections of unused images and layers
STORAGE_GC_INTERVAL = 60.0  # seconds between collections of lapsed ephemeral objects and expired partitions
OTLP_INTERVAL = 5.0  # seconds between span exports
SPEND_CHECK = 2.0  # seconds between looks at what apps have spent against their limits
EPHEMERAL_TIMEOUT = 300.0  # an ephemeral Dict or Queue whose client was silent this long is deleted


class ControlPlane:
    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.store_url)
        self.blobs = LocalBlobStore(config.blob_dir)
        # seals secrets' values; a missing, malformed or world-readable key stops the start here
        self.secretbox = SecretBox(load_key(Path(config.secret_key_file)))
        self.notifier = Notifier()
        self.channels: dict[str, Any] = {}  # worker id -> WorkerChannel
        self.token_cache: dict[str, tuple[str, str, float]] = {}
        self.container_cache: dict[str, tuple[str, str, str]] = {}  # container -> (function, worker, app)
        self.fast_functions: dict[str, float] = {}  # function -> EWMA of input duration (s)
        self.cancel_requests: dict[str, set[int]] = {}  # container -> inputs to interrupt
        self.worker_tokens: dict[str, str] = {}  # worker -> the token that registered it
        # container -> (app it acts for, token of its worker, restrict_modal_access)
        self.container_scopes: dict[str, tuple[str, str, bool]] = {}
        self.ready_containers: set[str] = set()  # containers whose first lease (their ready mark) is stored
        self._tasks: list[asyncio.Task[None]] = []
        self.tcp_tunnels: Any = None  # server.tcp_tunnels.TcpTunnels, made when a first one is asked for
        self.web_routes: dict[str, tuple[float, Any]] = {}  # host -> (expiry, services.web.Route)
        self.web_finished: set[str] = set()  # web calls whose response went out: deleted by the reaper
        # apps a reached spend limit keeps from starting containers (app -> why), looked up again at most
        # every SPEND_CHECK seconds (at once after a limit changes: spend_checked_at = 0)
        self.metrics: Any = None  # services.metrics.Accumulated: made at start, and by a first scrape
        self.spend_blocked: dict[str, str] = {}
        self.spend_checked_at = 0.0

    async def start(self) -> None:
        await asyncio.to_thread(self.store.start)
        await self.start_loops()

    async def start_loops(self) -> None:
        from vivace.server.services import metrics

        if self.metrics is None:  # /metrics counts what happens from now on
            self.metrics = await self.store.read(metrics.start)
        if self.notifier.bus is None and self.config.store_url.startswith(("postgres://", "postgresql://")):
            # replicas share the store: what one wakes (a put, an output, a worker's event) wakes all
            from vivace.server.notify import PgWakeBus

            bus = PgWakeBus(self.config.store_url, self.notifier.from_peer, asyncio.get_running_loop())
            await asyncio.to_thread(bus.start)
            self.notifier.bus = bus
        loops = (self._autoscale_loop, self._reap_loop, self._image_gc_loop, self._storage_gc_loop,
                 self._schedule_loop)  # fmt: skip
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop()))
        otlp = from_env(self.config.otlp_endpoint)
        if otlp is not None:
            log.info("exporting spans to %s", otlp.endpoint)
            self._tasks.append(asyncio.create_task(self._otlp_loop(otlp)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.tcp_tunnels is not None:
            await self.tcp_tunnels.close()
        if self.notifier.bus is not None:
            bus, self.notifier.bus = self.notifier.bus, None
            await asyncio.to_thread(bus.close)
        await asyncio.to_thread(self.store.close)

    # -- payloads ------------------------------------------------------------------------------
    def stash(self, data: bytes) -> tuple[bytes | None, str | None]:
        """Keep big payloads out of the database: they go to the blob store by reference."""
        if len(data) > MAX_INLINE_PAYLOAD:
            return None, self.blobs.put(data)
        return data, None

    def unstash(self, data: bytes | None, ref: str | None) -> bytes:
        if ref is not None:
            blob = self.blobs.get(ref)
            if blob is None:
                raise RuntimeError(f"payload blob {ref} is missing from the blob store")
            return blob
        return data or b""

    # -- wake-ups ------------------------------------------------------------------------------
    def inputs_changed(self, *function_ids: str) -> None:
        self.notifier.wake(*(f"inputs:{f}" for f in function_ids), "autoscale")

    def outputs_changed(self, call_ids: set[str]) -> None:
        self.notifier.wake(*(f"outputs:{c}" for c in call_ids))

    def requeued(self, call_ids: set[str]) -> None:
        """Inputs went back to the queue (a container or worker was lost): wake every waiter."""
        self.outputs_changed(call_ids)
        self.notifier.wake_prefix("inputs:")
        self.notifier.wake("autoscale")

    def workers_changed(self) -> None:
        self.notifier.wake("workers")

    async def cancel_call(self, call_id: str, terminate: bool) -> set[str]:
        """Cancel a call's pending inputs and interrupt its running ones (``terminate``: stop their
        containers instead); returns the containers stopped."""
        from vivace.server.services import calls
        from vivace.server.services.containers import request_stop

        def op(tx: Any) -> tuple[set[str], dict[str, list[int]]]:
            stop, interrupt = calls.cancel_call(tx, call_id, terminate)
            for cid in stop:
                request_stop(tx, cid, "function call cancelled")
            return stop, interrupt

        stop, interrupt = await self.store.write(op)
        for cid, seqs in interrupt.items():
            self.cancel_requests.setdefault(cid, set()).update(seqs)
        self.outputs_changed({call_id})
        self.workers_changed()
        return stop

    # -- loops -----------------------------------------------------------------------------------
    async def _autoscale_loop(self) -> None:
        while True:
            ev = self.notifier.event("autoscale")
            try:
                await self.autoscale_once()
            except Exception:
                log.exception("autoscaler tick failed")
            await self.notifier.wait(ev, self.config.tick)

    async def autoscale_once(self) -> None:
        blocked = await self.check_spend()
        res = await self.store.write(lambda tx: containers.autoscale(tx, blocked))
        if res.failed:
            self.outputs_changed(res.failed)
        placed = await self.store.write(containers.schedule)
        if res.created or res.stopping or placed:
            self.workers_changed()
        if res.capped and placed:
            self.notifier.wake("autoscale")  # room for more unplaced containers: go on scaling out
        failed = await self.store.write(_fail_unplaceable)
        if failed:
            self.outputs_changed(failed)

    async def check_spend(self) -> dict[str, str]:
        """Reached spend limits (``metering.reached``: scope -> why), looked up at most every
        ``SPEND_CHECK`` seconds."""
        if time.monotonic() - self.spend_checked_at < SPEND_CHECK:
            return self.spend_blocked
        blocked = await self.store.read(metering.reached)
        self.spend_checked_at = time.monotonic()
        for scope in blocked.keys() - self.spend_blocked.keys():
            log.warning("no new containers: %s", blocked[scope])
        self.spend_blocked = blocked
        return blocked

    async def spend_refusal(self, app_id: str) -> str | None:
        """Why the app may start nothing now (a reached spend limit), or None."""
        blocked = await self.check_spend()
        if not blocked:
            return None
        name = await self.store.read(lambda tx: tx.scalar("SELECT name FROM apps WHERE id = ?", (app_id,)))
        return metering.why_blocked(blocked, name)

    async def _otlp_loop(self, otlp: OtlpConfig) -> None:
        """Every few seconds, the spans of the calls finished and containers started since the last export;
        a failed export is tried again (the cursor moves only once the collector took them)."""
        from vivace.server.services import traces

        cursor = await self.store.read(traces.start)
        failing = False
        while True:
            await asyncio.sleep(OTLP_INTERVAL)
            try:
                spans, after = await self.store.read(functools.partial(_collect_spans, cursor))
                if spans:
                    await asyncio.to_thread(post, otlp, traces.payload(spans, otlp.service))
                cursor = after
                if failing:
                    log.info("exporting spans to %s again", otlp.endpoint)
                failing = False
            except OSError as err:
                if not failing:
                    log.warning("could not export spans to %s (will retry): %s", otlp.endpoint, err)
                failing = True
            except Exception:
                log.exception("span export failed")

    async def _reap_loop(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper tick failed")
            await asyncio.sleep(self.config.tick)

    async def reap_once(self) -> None:
        if self.web_finished:  # in one transaction per tick, not one per request
            from vivace.server.services import web

            done, self.web_finished = self.web_finished, set()
            self.web_finished |= await self.store.write(lambda tx: web.forget_calls(tx, done))
        expired = await self.store.read(calls.expired_inputs)
        if expired:
            await self.store.write(lambda tx: _timeout_inputs(tx, expired))
            self.requeued(await self.store.read(lambda tx: _calls_of(tx, expired)))
            self.workers_changed()
        stuck = await self.store.write(containers.stuck_starting)
        if stuck:
            log.warning("containers did not start in time: %s", stuck)
            self.workers_changed()
        dead, lost_calls = await self.store.write(
            lambda tx: workers.reap_dead_workers(tx, self.config.worker_timeout)
        )
        if dead:
            log.warning("workers %s missed their heartbeats; their inputs go back to the queue", dead)
            self.requeued(lost_calls)
        lapsed = await self.store.read(lambda tx: apps.lapsed_apps(tx, self.config.app_heartbeat_timeout))
        for app_id in lapsed:
            log.info("app %s stopped: its client stopped sending heartbeats", app_id)
            await self.stop_app(app_id, "client disconnected")

    async def _schedule_loop(self) -> None:
        from vivace.server.services import schedules

        while True:
            try:
                due = await self.store.read(schedules.anything_due)
                fired = await self.store.write(schedules.fire_due) if due else []
            except Exception:
                log.exception("schedule tick failed")
                fired = []
            for fid, call_id, tick in fired:
                log.info("schedule of function %s fired call %s (tick %s)", fid, call_id,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tick)))  # fmt: skip
            if fired:
                self.inputs_changed(*{fid for fid, _, _ in fired})
            await asyncio.sleep(self.config.tick)

    async def _image_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(IMAGE_GC_INTERVAL)
            try:
                await self.collect_images()
            except Exception:
                log.exception("image collection failed")

    async def _storage_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(STORAGE_GC_INTERVAL)
            try:
                await self.collect_storage()
            except Exception:
                log.exception("storage collection failed")
            try:
                await self.expire_logs()
                await self.store.write(tokens.expire)  # the dashboard's spent login codes and old sessions
            except Exception:
                log.exception("log and token retention failed")

    async def expire_logs(self) -> int:
        """Delete log lines older than ``config.log_retention`` seconds, a batch per transaction."""
        from vivace.server.services import logs

        if not self.config.log_retention:
            return 0
        total = 0
        while True:
            n = await self.store.write(lambda tx: logs.expire(tx, tx.now - self.config.log_retention))
            total += n
            if n < logs.DELETE_BATCH:
                return total

    async def collect_storage(self) -> tuple[list[str], int]:
        """Delete ephemeral Dicts and Queues whose client stopped heartbeating, expired partitions, and
        the inline secrets of stopped apps."""
        from vivace.server.services import secrets, storage

        gone = await self.store.write(lambda tx: storage.collect_ephemeral(tx, EPHEMERAL_TIMEOUT))
        expired = await self.store.write(storage.expire_partitions)
        inline = await self.store.write(secrets.collect_inline)
        if gone or expired or inline:
            log.info(
                "storage collection: %d ephemeral object(s), %d expired partition(s), "
                "%d inline secret(s) of stopped apps",
                len(gone),
                expired,
                len(inline),
            )
        return gone, expired

    async def collect_images(self) -> list[str]:
        """Forget unused images and their layers; delete the layer blobs nothing else uses."""
        from vivace.server.services import images, volumes

        started = time.time() - 1.0  # file times are coarse: an upload in the same second counts as new

        def op(tx: Any) -> list[str]:  # a volume file with the same bytes as a layer keeps the blob
            found = images.collect(tx)
            kept = volumes.digests_in_use(tx, found)
            return [d for d in found if d not in kept]

        digests = await self.store.write(op)
        deleted = []
        for digest in digests:  # unless uploaded again meanwhile (a rebuild of the same layer)
            if await asyncio.to_thread(self.blobs.delete, digest, started):
                deleted.append(digest)
        if deleted:
            log.info("image collection: deleted %d layer blob(s) no image uses", len(deleted))
        return deleted

    async def stop_app(self, app_id: str, reason: str) -> None:
        def op(tx: Any) -> list[str]:
            stopped = apps.stop_app(tx, app_id, reason)
            for cid in stopped:
                containers.request_stop(tx, cid, f"app stopped: {reason}")
            return stopped

        await self.store.write(op)
        self.workers_changed()
        self.notifier.wake("autoscale")

    def note_duration(self, function_id: str, seconds: float) -> None:
        prev = self.fast_functions.get(function_id)
        self.fast_functions[function_id] = seconds if prev is None else 0.8 * prev + 0.2 * seconds


def _fail_unplaceable(tx: Any) -> set[str]:
    """A container no live worker could ever hold fails its function's inputs at once, saying why."""
    touched: set[str] = set()
    for cid, reason in containers.unplaceable(tx):
        fid = tx.scalar("SELECT function_id FROM containers WHERE id = ?", (cid,))
        containers.mark_stopped(tx, cid, None, f"unschedulable: {reason}")
        log.warning("container %s cannot be placed: %s", cid, reason)
        touched |= calls.fail_pending(
            tx, fid, f"no worker can run this function: it {reason}", "ResourceExhaustedError"
        )
    return touched


def _timeout_inputs(tx: Any, expired: list[tuple[int, str]]) -> None:
    for seq, container_id in expired:
        err = {"type": "FunctionTimeoutError", "message": "the input ran past the function's timeout"}
        calls.fail_input(tx, seq, OutputStatus.TIMEOUT, err, retryable=True)
        # synchronous user code cannot be interrupted safely: the container goes, and the other
        # inputs it held are retried as system failures
        containers.request_stop(tx, container_id, "input timed out")


def _calls_of(tx: Any, expired: list[tuple[int, str]]) -> set[str]:
    marks, vals = tx.in_list(seq for seq, _ in expired)
    return {r[0] for r in tx.fetchall(f"SELECT call_id FROM inputs WHERE seq IN {marks}", vals)}


def _collect_spans(cursor: Any, tx: Any) -> tuple[list[dict[str, Any]], Any]:
    from vivace.server.services import traces

    return traces.collect(tx, cursor)
