"""Version negotiation between client, control plane, worker and runtime.

Every HTTP request carries ``X-Vivace-Version: <package version>``. Two sides are compatible when their
protocol versions (``major.minor`` of the package while below 1.0) are equal.
"""

from typing import Optional

from vivace._version import __version__

VERSION_HEADER = "X-Vivace-Version"
# set by a worker on requests it forwards for one of its containers (the container's id)
CONTAINER_HEADER = "X-Vivace-Container"


def protocol_of(version: str) -> str:
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return version
    return f"{parts[0]}.{parts[1]}" if parts[0] == "0" else parts[0]


PROTOCOL_VERSION = protocol_of(__version__)


def check_compatible(peer_version: Optional[str], peer: str) -> Optional[str]:
    """Return an error message when ``peer_version`` cannot talk to this version, else None."""
    if not peer_version:
        return f"{peer} did not send its version (header {VERSION_HEADER}); it is too old for vivace {__version__}"
    if protocol_of(peer_version) != PROTOCOL_VERSION:
        return (
            f"{peer} runs vivace {peer_version} but this side runs {__version__}; "
            "upgrade both to the same release"
        )
    return None
