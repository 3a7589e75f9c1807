"""Bento's Python runner, built into the runtime component by componentize-py.

The box passes a function's source at run time; `run` executes it in a fresh
namespace holding `api` and calls the requested entry point. Everything a
function may import must be imported here, at build time: componentize-py
snapshots the interpreter after this module loads, and nothing else can be
imported later.
"""

# Standard-library modules functions may import (see docs/python-api.md).
# Keep this list and the docs in step; tests/all/sandbox.rs imports each one.
import abc  # noqa: F401
import array  # noqa: F401
import base64  # noqa: F401
import binascii  # noqa: F401
import bisect  # noqa: F401
import builtins
import calendar  # noqa: F401
import codecs  # noqa: F401
import collections  # noqa: F401
import collections.abc  # noqa: F401
import contextlib  # noqa: F401
import copy  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import gzip  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import hmac  # noqa: F401
import html  # noqa: F401
import html.parser  # noqa: F401
import io
import ipaddress  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator  # noqa: F401
import os
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import secrets  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time  # noqa: F401
import traceback
import typing  # noqa: F401
import unicodedata  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

import wit_world
from componentize_py_types import Err
from wit_world.imports import session

_STDIN = 0
_STDOUT = 1


class Api:
    """The `api` object every function sees as a global."""

    __slots__ = ()

    def send(self, data):
        """Send bytes (or str, encoded as UTF-8) to the client; returns the byte count.

        Blocks while the session's output buffer is full (backpressure).
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"api.send() takes bytes or str, not {type(data).__name__}"
            )
        # print() output goes to the client too; keep it in order with sends.
        sys.stdout.flush()
        view = memoryview(data).cast("B")
        total = len(view)
        session.begin_message(total)
        while view:
            written = os.write(_STDOUT, view)
            view = view[written:]
        return total

    def recv(self):
        """Block until the client sends a message and return it as bytes.

        Returns b"" once the client has closed its input.
        """
        length = session.next_message()
        if length is None:
            return b""
        parts = []
        remaining = length
        while remaining:
            chunk = os.read(_STDIN, remaining)
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def poll(self):
        """True when a client message is waiting (recv would not block)."""
        return session.poll()

    def __getattr__(self, name):
        # Capabilities beyond the session channel (network, storage, Tor)
        # exist only when a manifest declares them and the box grants them.
        raise AttributeError(
            f"api.{name} is not available to this function: capabilities beyond "
            "send/recv/poll must be declared in the function's manifest and "
            "granted by the box's policy"
        )

    def __repr__(self):
        return "<bento api: send, recv, poll>"


api = Api()


def _format_failure(exc):
    """The traceback of a user function, without the runner's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))


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


def _guarded(action):
    """Run `action`, turning any failure into `Err(traceback)`."""
    try:
        action()
    except Err:
        raise
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. SystemExit
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return
        raise Err(_format_failure(exc))
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the session may already be gone
            pass


class WitWorld(wit_world.WitWorld):
    def run(self, source, filename, entry, args_json):
        def action():
            args = json.loads(args_json)
            if not isinstance(args, list):
                raise Err("arguments must be a JSON array")
            namespace = _load(source, filename)
            function = namespace.get(entry)
            if function is None:
                raise Err(f"{filename} defines no function named {entry!r}")
            if not callable(function):
                raise Err(f"{entry!r} in {filename} is not callable")
            function(*args)

        _guarded(action)

    def evaluate(self, source, filename, call):
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
