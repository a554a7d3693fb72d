"""Test support for tests/integration/test_registry.py: a real registry (Debian's docker-registry) on
loopback, a pusher speaking the distribution API, a token service and a static blob server."""
