"""The control plane: HTTP API, services, store, autoscaler, scheduler. Imports only vivace.protocol."""
