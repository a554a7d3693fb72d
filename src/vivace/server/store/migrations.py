"""One portable migration tree for SQLite and Postgres.

Each migration is a list of statements in portable SQL; ``{BLOB}``, ``{DOUBLE}``, ``{SERIAL}`` and
``{BIGINT}`` are replaced by each dialect's type. Migrations only ever get appended.
"""

from __future__ import annotations

import time

from vivace.server.store.base import DbConnection, Dialect

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, kind TEXT NOT NULL, label TEXT,
            created_at {DOUBLE} NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE apps (
            id TEXT PRIMARY KEY, name TEXT, state TEXT NOT NULL, created_at {DOUBLE} NOT NULL,
            heartbeat_at {DOUBLE} NOT NULL, stopped_at {DOUBLE}, stop_reason TEXT, client_version TEXT)""",
        "CREATE UNIQUE INDEX apps_deployed_name ON apps(name) WHERE state = 'deployed'",
        """CREATE TABLE functions (
            id TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id), name TEXT NOT NULL,
            spec TEXT NOT NULL, definition {BLOB}, created_at {DOUBLE} NOT NULL,
            backlog {BIGINT} NOT NULL DEFAULT 0, running {BIGINT} NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1, start_failures INTEGER NOT NULL DEFAULT 0)""",
        "CREATE UNIQUE INDEX functions_app_name ON functions(app_id, name)",
        "CREATE INDEX functions_active ON functions(active)",
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY, function_id TEXT NOT NULL REFERENCES functions(id), kind TEXT NOT NULL,
            created_at {DOUBLE} NOT NULL, inputs_total {BIGINT}, inputs_added {BIGINT} NOT NULL DEFAULT 0,
            outputs_done {BIGINT} NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE inputs (
            seq {SERIAL}, call_id TEXT NOT NULL, idx {BIGINT} NOT NULL, function_id TEXT NOT NULL,
            args {BLOB}, args_ref TEXT, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 1,
            sys_failures INTEGER NOT NULL DEFAULT 0, not_before {DOUBLE} NOT NULL DEFAULT 0,
            container_id TEXT, lease_token TEXT, leased_at {DOUBLE}, deadline {DOUBLE}, items {BIGINT} NOT NULL DEFAULT 0,
            created_at {DOUBLE} NOT NULL, UNIQUE (call_id, idx))""",
        "CREATE INDEX inputs_pending ON inputs(function_id, seq) WHERE state = 'pending'",
        "CREATE INDEX inputs_leased ON inputs(container_id) WHERE state = 'leased'",
        "CREATE INDEX inputs_deadline ON inputs(deadline) WHERE state = 'leased'",
        "CREATE INDEX inputs_call ON inputs(call_id, state)",
        """CREATE TABLE outputs (
            id {SERIAL}, call_id TEXT NOT NULL, idx {BIGINT} NOT NULL, part {BIGINT} NOT NULL,
            input_seq {BIGINT} NOT NULL, status TEXT NOT NULL, data {BLOB}, data_ref TEXT, error TEXT,
            duration {DOUBLE}, created_at {DOUBLE} NOT NULL, UNIQUE (call_id, idx, part))""",
        "CREATE INDEX outputs_call ON outputs(call_id, id)",
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, cpu {DOUBLE} NOT NULL,
            memory {BIGINT} NOT NULL, cpu_used {DOUBLE} NOT NULL DEFAULT 0,
            memory_used {BIGINT} NOT NULL DEFAULT 0, labels TEXT NOT NULL, runtimes TEXT NOT NULL,
            version TEXT NOT NULL, registered_at {DOUBLE} NOT NULL, heartbeat_at {DOUBLE} NOT NULL)""",
        """CREATE TABLE containers (
            id TEXT PRIMARY KEY, function_id TEXT NOT NULL, app_id TEXT NOT NULL, worker_id TEXT,
            state TEXT NOT NULL, lease_token TEXT NOT NULL, cpu {DOUBLE} NOT NULL, memory {BIGINT} NOT NULL,
            created_at {DOUBLE} NOT NULL, assigned_at {DOUBLE}, started_at {DOUBLE}, stopped_at {DOUBLE},
            heartbeat_at {DOUBLE}, last_active_at {DOUBLE} NOT NULL, held {BIGINT} NOT NULL DEFAULT 0,
            served {BIGINT} NOT NULL DEFAULT 0, exit_code INTEGER, stop_reason TEXT)""",
        "CREATE INDEX containers_live ON containers(function_id, state) WHERE state <> 'stopped'",
        "CREATE INDEX containers_worker ON containers(worker_id) WHERE state <> 'stopped'",
        """CREATE TABLE logs (
            id {SERIAL}, app_id TEXT NOT NULL, function_id TEXT, container_id TEXT, input_seq {BIGINT},
            stream TEXT NOT NULL, ts {DOUBLE} NOT NULL, line TEXT NOT NULL)""",
        "CREATE INDEX logs_app ON logs(app_id, id)",
        "CREATE INDEX logs_container ON logs(container_id, id)",
    ],
    [
        # a worker token acts only for the workers it registered
        "ALTER TABLE workers ADD COLUMN token_id TEXT",
        # when the container's runtime first asked for work: the end of its start (startup_timeout)
        "ALTER TABLE containers ADD COLUMN ready_at {DOUBLE}",
    ],
    [
        # a worker's GPUs: [{"index", "uuid", "type", "memory_mib"}]; a container's: its GPU indices
        "ALTER TABLE workers ADD COLUMN gpus TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE containers ADD COLUMN gpus TEXT",
        # one row per GPU a live container holds: the key makes double assignment impossible, even
        # between replicas; a stopped container's rows are deleted
        """CREATE TABLE gpu_claims (
            worker_id TEXT NOT NULL, gpu_index INTEGER NOT NULL, container_id TEXT NOT NULL,
            PRIMARY KEY (worker_id, gpu_index))""",
        "CREATE INDEX gpu_claims_container ON gpu_claims(container_id)",
    ],
    [
        # images: a chain of steps, built once by one worker at a time (a lease that expires)
        """CREATE TABLE images (
            id TEXT PRIMARY KEY, steps TEXT NOT NULL, state TEXT NOT NULL, error TEXT,
            builder TEXT, build_deadline {DOUBLE}, created_at {DOUBLE} NOT NULL, built_at {DOUBLE},
            used_at {DOUBLE} NOT NULL)""",
        "CREATE INDEX images_state ON images(state)",
        # a built layer, keyed by its chain: a unique row per key, so each is stored once
        """CREATE TABLE layers (
            key TEXT PRIMARY KEY, digest TEXT NOT NULL, size {BIGINT} NOT NULL, created_at {DOUBLE} NOT NULL)""",
        """CREATE TABLE build_logs (
            id {SERIAL}, image_id TEXT NOT NULL, ts {DOUBLE} NOT NULL, line TEXT NOT NULL)""",
        "CREATE INDEX build_logs_image ON build_logs(image_id, id)",
    ],
    [
        # what a layer sets besides files (a registry image's env, workdir, interpreter): JSON or NULL
        "ALTER TABLE layers ADD COLUMN config TEXT",
    ],
    [
        # storage objects (Dict, Queue; later Volume, Secret): named (deployed) or ephemeral (no name,
        # kept while its client heartbeats)
        """CREATE TABLE objects (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created_at {DOUBLE} NOT NULL,
            heartbeat_at {DOUBLE})""",
        "CREATE UNIQUE INDEX objects_name ON objects(kind, name)",
        # a Dict's entries, keyed by the sha256 of the key's pickle
        """CREATE TABLE dict_entries (
            dict_id TEXT NOT NULL, key_hash TEXT NOT NULL, k {BLOB} NOT NULL, v {BLOB} NOT NULL,
            updated_at {DOUBLE} NOT NULL, PRIMARY KEY (dict_id, key_hash))""",
        # a Queue's items, first in first out per partition ('' is the default one)
        """CREATE TABLE queue_items (
            seq {SERIAL}, queue_id TEXT NOT NULL, part TEXT NOT NULL, v {BLOB} NOT NULL,
            created_at {DOUBLE} NOT NULL)""",
        "CREATE INDEX queue_items_next ON queue_items(queue_id, part, seq)",
        # each partition lives until ttl seconds after its last put
        """CREATE TABLE queue_partitions (
            queue_id TEXT NOT NULL, part TEXT NOT NULL, expires_at {DOUBLE} NOT NULL,
            PRIMARY KEY (queue_id, part))""",
    ],
    [
        # a Secret's values: a JSON object sealed with AES-256-GCM under the server's key (never stored in
        # the clear); inline secrets (from_dict, from_dotenv, ...) belong to an app (app_id) and are shared
        # by its redeploys while their values' keyed digest matches
        """CREATE TABLE secrets (
            object_id TEXT PRIMARY KEY, app_id TEXT, digest TEXT, sealed {BLOB} NOT NULL,
            created_at {DOUBLE} NOT NULL)""",
        "CREATE INDEX secrets_app ON secrets(app_id, digest)",
        # a Volume's committed state: its version (bumped by each commit) and one row per path; a file's
        # content is a blob named by its sha256 in the blob store, a directory has digest ''
        """CREATE TABLE volumes (
            volume_id TEXT PRIMARY KEY, version {BIGINT} NOT NULL, updated_at {DOUBLE} NOT NULL)""",
        """CREATE TABLE volume_files (
            volume_id TEXT NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL, size {BIGINT} NOT NULL,
            mode INTEGER NOT NULL, mtime {DOUBLE} NOT NULL, version {BIGINT} NOT NULL,
            PRIMARY KEY (volume_id, path))""",
    ],
    [
        # a sandbox is one container of a hidden function (its spec, never active for the autoscaler);
        # live_name is its name while it runs (unique per app), cleared when its container stops
        """CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY, app_id TEXT NOT NULL, function_id TEXT NOT NULL, container_id TEXT NOT NULL,
            name TEXT, live_name TEXT, tags TEXT NOT NULL DEFAULT '{}', created_at {DOUBLE} NOT NULL)""",
        "CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes(app_id, live_name)",
        "CREATE UNIQUE INDEX sandboxes_container ON sandboxes(container_id)",
        "CREATE INDEX sandboxes_app ON sandboxes(app_id, created_at)",
        # a sandbox's tunnels: an unguessable token per port (the URL is the capability)
        """CREATE TABLE sandbox_tunnels (
            token TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL, port INTEGER NOT NULL)""",
        "CREATE INDEX sandbox_tunnels_sandbox ON sandbox_tunnels(sandbox_id)",
    ],
    [
        # raw TCP tunnels (unencrypted_ports): tcp = 1, and the port a control plane listens on for it
        # (reopened there after a restart when free)
        "ALTER TABLE sandbox_tunnels ADD COLUMN tcp INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sandbox_tunnels ADD COLUMN listen_port INTEGER",
    ],
    [
        # a function's schedule (FunctionSpec.schedule as JSON; NULL: none), for the schedule loop's query
        "ALTER TABLE functions ADD COLUMN schedule TEXT",
        # one row per (function, tick) fired: the unique key makes each tick fire once, across replicas
        # and restarts; call_id is the call it made
        """CREATE TABLE schedule_ticks (
            function_id TEXT NOT NULL, tick_at {DOUBLE} NOT NULL, call_id TEXT NOT NULL,
            created_at {DOUBLE} NOT NULL, PRIMARY KEY (function_id, tick_at))""",
    ],
    [
        # each deploy of an app is a version: the functions it had (name, id, spec, definition digest),
        # for `vivace app history` and `vivace app rollback`; the newest VERSIONS_KEPT are kept
        """CREATE TABLE app_versions (
            app_id TEXT NOT NULL, version INTEGER NOT NULL, created_at {DOUBLE} NOT NULL, note TEXT,
            functions TEXT NOT NULL, PRIMARY KEY (app_id, version))""",
        # serialized functions' payloads by sha256, so that a rollback can bring an old one back
        "CREATE TABLE definitions (digest TEXT PRIMARY KEY, data {BLOB} NOT NULL)",
    ],
    [
        # web endpoints: the host label each one answers to (protocol/web.py host_label), per function and
        # method ('' for a function's own); the gateway serves the newest live one with a host
        """CREATE TABLE web_routes (
            function_id TEXT NOT NULL, method TEXT NOT NULL, host TEXT NOT NULL, app_id TEXT NOT NULL,
            deployed INTEGER NOT NULL, created_at {DOUBLE} NOT NULL, PRIMARY KEY (function_id, method))""",
        "CREATE INDEX web_routes_host ON web_routes(host)",
        # what a WebSocket's client sent, in order, until the container's app takes it (deleted with the
        # session): frames (protocol/web.py encode_message)
        """CREATE TABLE web_messages (
            call_id TEXT NOT NULL, seq {BIGINT} NOT NULL, data {BLOB} NOT NULL, created_at {DOUBLE} NOT NULL,
            PRIMARY KEY (call_id, seq))""",
    ],
    [
        # metering (ADR 0015): a container's life in phases on the store's clock (created_at: scheduled,
        # assigned_at, image_ready_at, started_at: up, ready_at: @enter done, stopped_at), the seconds it
        # held inputs (busy_s, plus now - busy_since while it holds some), where it ran (pool, GPU type and
        # count), the pool's unit prices when it was placed (JSON) and their sum for its reservation
        # (rate, per second), and what the kernel counted (cgroup CPU seconds, peak memory bytes)
        "ALTER TABLE containers ADD COLUMN image_ready_at {DOUBLE}",
        "ALTER TABLE containers ADD COLUMN busy_s {DOUBLE} NOT NULL DEFAULT 0",
        "ALTER TABLE containers ADD COLUMN busy_since {DOUBLE}",
        "ALTER TABLE containers ADD COLUMN pool TEXT",
        "ALTER TABLE containers ADD COLUMN gpu_type TEXT",
        "ALTER TABLE containers ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE containers ADD COLUMN prices TEXT",
        "ALTER TABLE containers ADD COLUMN rate {DOUBLE} NOT NULL DEFAULT 0",
        "ALTER TABLE containers ADD COLUMN cpu_used_s {DOUBLE}",
        "ALTER TABLE containers ADD COLUMN memory_peak {BIGINT}",
        "CREATE INDEX containers_started ON containers(started_at)",
        # a call's inputs' execution seconds and their cost at their containers' rates
        "ALTER TABLE calls ADD COLUMN busy_s {DOUBLE} NOT NULL DEFAULT 0",
        "ALTER TABLE calls ADD COLUMN cost {DOUBLE} NOT NULL DEFAULT 0",
        # each worker pool's unit prices (JSON: cpu_core_second, memory_gib_second, gpu_second by type)
        "CREATE TABLE pools (name TEXT PRIMARY KEY, prices TEXT NOT NULL, updated_at {DOUBLE} NOT NULL)",
        # spend limits: scope '*' (the workspace) or 'app:<name>'; period 'day', 'month' or 'total'
        """CREATE TABLE spend_limits (
            scope TEXT PRIMARY KEY, amount {DOUBLE} NOT NULL, period TEXT NOT NULL,
            created_at {DOUBLE} NOT NULL)""",
    ],
    [
        # a log line's call (its input's, or the platform's line about the call); time filters and
        # retention go by ts
        "ALTER TABLE logs ADD COLUMN call_id TEXT",
        "CREATE INDEX logs_call ON logs(call_id, id) WHERE call_id IS NOT NULL",
        "CREATE INDEX logs_ts ON logs(ts)",
        "CREATE INDEX build_logs_ts ON build_logs(ts)",
    ],
    [
        # a worker's GPUs as last sampled (NVML): [{"index", "utilization", "memory_used_mib",
        # "memory_total_mib"}] and when (store clock), for /metrics and the dashboard
        "ALTER TABLE workers ADD COLUMN gpu_stats TEXT",
        "ALTER TABLE workers ADD COLUMN gpu_stats_at {DOUBLE}",
    ],
    [
        # tokens that expire: the dashboard's one-time login codes and its browser sessions
        "ALTER TABLE tokens ADD COLUMN expires_at {DOUBLE}",
    ],
]


def migrate(conn: DbConnection, dialect: Dialect) -> int:
    """Apply pending migrations; return the schema version.

    Safe when several replicas start at once: each migration runs in a transaction that first takes a
    lock (SQLite: ``BEGIN IMMEDIATE``; Postgres: a transaction-scoped advisory lock) and re-reads the
    version under it.
    """
    conn.execute(
        dialect.ddl(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at {DOUBLE})"
        )
    )
    conn.commit()
    current = 0
    for version, statements in enumerate(MIGRATIONS, start=1):
        try:
            if dialect.name == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("SELECT pg_advisory_xact_lock(7405221)")
            current = int(
                conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            )
            if version <= current:
                conn.commit()
                continue
            for stmt in statements:
                conn.execute(dialect.ddl(stmt))
            conn.execute(
                dialect.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
                (version, time.time()),
            )
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        current = version
    return current
