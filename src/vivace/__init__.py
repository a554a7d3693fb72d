"""Vivace: self-hosted serverless compute for AI, with Modal's API."""

from vivace import exception
from vivace._sdk.output import enable_output
from vivace._version import __version__
from vivace.app import App
from vivace.exception import Error
from vivace.function import Function, FunctionCall
from vivace.retries import Retries
from vivace.runtime_api import current_function_call_id, current_input_id, is_local

__all__ = [
    "App",
    "Error",
    "Function",
    "FunctionCall",
    "Retries",
    "__version__",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "exception",
    "is_local",
]
