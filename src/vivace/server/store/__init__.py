"""The control plane's durable state: one port, SQLite and Postgres implementations, one schema."""

from vivace.server.store.base import Store, StoreError, Tx, open_store

__all__ = ["Store", "StoreError", "Tx", "open_store"]
