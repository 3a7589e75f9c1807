"""The runner: the exports the box calls (run, evaluate, check), which load a
function's source in a fresh namespace holding `api`, call it, and report a
failure as the traceback and, when a capability error ended it, its kind."""

import builtins
import json
import os
import sys
import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import capabilities
from wit_world.imports.types import FunctionError, HostError

from bento import errors, streams
from bento.api import api
from bento.errors import BentoError


# The runtime package's own files, whose frames a function's traceback
# leaves out.
_RUNTIME_DIR = os.path.dirname(__file__) + os.sep


def _format_failure(exc):
    """The traceback of a user function, without the runner's own frames
    (neither the call into the function nor the api's internals below it)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_RUNTIME_DIR)]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _compile(source, filename):
    return compile(source, filename, "exec", dont_inherit=True)


def _load(source, filename):
    """Execute the function module in a fresh namespace holding `api`."""
    namespace = {
        "__name__": "__bento__",
        "__file__": filename,
        "__builtins__": builtins,
        "api": api,
    }
    exec(_compile(source, filename), namespace)
    return namespace


class _RunnerError(Exception):
    """A call the runner cannot make (no such entry, bad arguments): its
    message is the whole failure, without a traceback."""


def _guarded(action):
    """Run `action`, turning any failure into `Err(FunctionError)`: the
    traceback and, when a capability error ended the function, its kind."""
    try:
        action()
    except _RunnerError as exc:
        raise Err(FunctionError(None, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. SystemExit
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return
        if isinstance(exc, Err):
            # A function calling the raw bindings (wit_world.imports) can
            # let a host error escape unconverted: it is reported as the
            # exception it stands for.
            raw = exc
            exc = errors.from_host(raw.value) if isinstance(raw.value, HostError) else BentoError(str(raw.value))
            exc = exc.with_traceback(raw.__traceback__)
        streams.FAILING[0] = True
        raise Err(FunctionError(errors.host_error_kind(exc), _format_failure(exc)))
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the session may already be gone
            pass


class WitWorld(wit_world.WitWorld):
    def run(self, source, filename, entry, args_json):
        api._grant(capabilities.granted())

        def action():
            args = json.loads(args_json)
            if not isinstance(args, list):
                raise _RunnerError("arguments must be a JSON array")
            namespace = _load(source, filename)
            function = namespace.get(entry)
            if function is None:
                raise _RunnerError(f"{filename} defines no function named {entry!r}")
            if not callable(function):
                raise _RunnerError(f"{entry!r} in {filename} is not callable")
            function(*args)

        _guarded(action)

    def evaluate(self, source, filename, call):
        api._grant(capabilities.granted())

        def action():
            namespace = _load(source, filename)
            result = eval(compile(call, "<call>", "eval", dont_inherit=True), namespace)
            if result is not None:
                if not isinstance(result, (bytes, bytearray, memoryview)):
                    result = str(result)
                api.send(result)

        _guarded(action)

    def check(self, source, filename):
        try:
            _compile(source, filename)
        except (SyntaxError, ValueError) as exc:
            raise Err(_format_failure(exc))
