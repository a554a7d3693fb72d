"""The in-container entrypoint (``python -m vivace.runtime``).

Lean by design: stdlib HTTP over the container's unix socket, cloudpickle, and the user's code.
It never imports the HTTP client, the CLI, the worker or anything server-side.
"""
