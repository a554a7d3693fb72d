"""Async HTTP client for the control plane: the one place where HTTP errors become vivace exceptions."""

from vivace.client.http import ApiClient, Credentials

__all__ = ["ApiClient", "Credentials"]
