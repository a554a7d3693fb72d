"""Vivace: self-hosted serverless compute for AI, with Modal's API."""

from typing import Any

from vivace import exception
from vivace._sdk.output import enable_output
from vivace._version import __version__
from vivace.app import App
from vivace.cls import Cls, Obj, parameter
from vivace.decorators import batched, concurrent, enter, exit, method
from vivace.dict import Dict
from vivace.exception import Error
from vivace.function import Function, FunctionCall
from vivace.image import Image
from vivace.queue import Queue
from vivace.retries import Retries
from vivace.runtime_api import current_function_call_id, current_input_id, is_local
from vivace.sandbox import Probe, Sandbox
from vivace.schedule import Cron, Period
from vivace.secret import Secret
from vivace.volume import Volume
from vivace.web import asgi_app, fastapi_endpoint, web_server, wsgi_app

__all__ = [
    "App",
    "Cls",
    "Cron",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "Obj",
    "Period",
    "Probe",
    "Queue",
    "Retries",
    "Sandbox",
    "Secret",
    "Volume",
    "__version__",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "exit",
    "fastapi_endpoint",
    "is_local",
    "method",
    "parameter",
    "web_server",
    "wsgi_app",
]

# names Modal removed: using one is an error that says what replaced it
_RENAMED = {
    "Stub": "vivace.App",
    "web_endpoint": "@vivace.fastapi_endpoint()",
    "build": "@vivace.enter() on a class method (or Image.run_function for build steps)",
}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        raise exception.InvalidError(f"vivace.{name} was removed (as in Modal): use {_RENAMED[name]} instead")
    raise AttributeError(f"module 'vivace' has no attribute {name!r}")
