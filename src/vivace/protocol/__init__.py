"""Wire types shared by the SDK, the control plane, the worker and the in-container runtime.

Stdlib only, no I/O, and 3.10-compatible: the runtime imports this package inside user images.
"""

from vivace.protocol.versions import PROTOCOL_VERSION, VERSION_HEADER, check_compatible

__all__ = ["PROTOCOL_VERSION", "VERSION_HEADER", "check_compatible"]
