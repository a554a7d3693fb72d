"""Test helpers: an in-process control plane with a real worker, and a throwaway Postgres."""
