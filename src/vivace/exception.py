"""Vivace's exceptions, with Modal's names. One root: :class:`Error`.

::

    Error
    ├── AlreadyExistsError
    ├── AuthError
    ├── ConflictError
    ├── DeserializationError
    ├── ExecutionError
    ├── ImageBuildError
    ├── InvalidError
    ├── NotFoundError
    ├── PermissionDeniedError
    ├── RemoteError                  the user's code failed remotely and its exception could not be rebuilt
    ├── RequestSizeError
    ├── ResourceExhaustedError
    ├── SandboxFilesystemError
    │   ├── SandboxFilesystemNotFoundError
    │   └── SandboxFilesystemPermissionError
    ├── SandboxTerminatedError
    ├── SerializationError
    ├── ServiceError                 the platform failed (not the user's code)
    ├── TimeoutError
    │   ├── ExecTimeoutError
    │   ├── FunctionTimeoutError
    │   ├── OutputExpiredError
    │   └── SandboxTimeoutError
    ├── NotImplementedYetError       a parameter whose feature a later release adds
    └── VersionError
    InputCancellation (BaseException) raised inside a cancelled input
"""

from __future__ import annotations

import builtins


class Error(Exception):
    """Base class of every Vivace error."""


class AlreadyExistsError(Error):
    """An object with this name already exists."""


class AuthError(Error):
    """The token is missing, malformed or invalid."""


class ConflictError(Error):
    """The request conflicts with the current state of an object."""


class DeserializationError(Error):
    """A value could not be unpickled (often: a module missing on this side)."""


class ExecutionError(Error):
    """The platform could not run the function (e.g. the container kept dying)."""


class ImageBuildError(Error):
    """An image failed to build."""


class InvalidError(Error):
    """An argument or a request was invalid."""


class NotFoundError(Error):
    """The object does not exist."""


class PermissionDeniedError(Error):
    """The token may not do this."""


class RemoteError(Error):
    """The user's code raised remotely and the exception could not be rebuilt locally."""


class RequestSizeError(Error):
    """A request or payload is too large."""


class ResourceExhaustedError(Error):
    """No capacity can satisfy the request."""


class SandboxFilesystemError(Error):
    """A sandbox filesystem operation failed."""


class SandboxFilesystemNotFoundError(SandboxFilesystemError):
    """The path does not exist in the sandbox."""


class SandboxFilesystemPermissionError(SandboxFilesystemError):
    """The sandbox denied access to the path."""


class SandboxTerminatedError(Error):
    """The sandbox was terminated."""


class SerializationError(Error):
    """A value could not be pickled."""


class ServiceError(Error):
    """The platform failed; not caused by the user's code."""


class TimeoutError(Error, builtins.TimeoutError):
    """Something took longer than allowed."""


class FunctionTimeoutError(TimeoutError):
    """An input ran past its function's timeout."""


class SandboxTimeoutError(TimeoutError):
    """A sandbox ran past its timeout."""


class ExecTimeoutError(TimeoutError):
    """A sandbox exec ran past its timeout."""


class OutputExpiredError(TimeoutError):
    """The output was deleted before it was fetched."""


class VersionError(Error):
    """Client and server versions are incompatible."""


class NotImplementedYetError(InvalidError):
    """A parameter names a feature that this release of Vivace does not have yet."""


class InputCancellation(BaseException):
    """Raised inside user code when its input is cancelled."""
