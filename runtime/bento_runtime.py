"""The runtime component's entry module, built by componentize-py.

The box passes a function's source at run time; `run` (bento/runner.py)
executes it in a fresh namespace holding `api` (bento/api.py) and calls the
requested entry point. Everything a function may import must be imported
here, at build time: componentize-py snapshots the interpreter after this
module loads, and nothing else can be imported later.

The runtime itself is the `bento` package beside this file:
- `bento.api`: the `api` object, its members per granted capability;
- `bento.errors`: the exception classes, mapped once from host errors;
- `bento.streams`: streams and channels, and the byte plumbing over WASI
  stdin/stdout every capability uses;
- `bento.http`, `bento.storage`: the http and storage capabilities;
- `bento.remote`: a client of other boxes (`api.bento_box`) speaking the
  native protocol, whose constants `bento.protocol` holds (generated from
  the Rust bento-protocol crate, which tests that it is current);
- `bento.runner`: the exports the box calls.
"""

# Standard-library modules functions may import (see docs/python-api.md).
# Keep this list and the docs in step; tests/all/sessions.rs imports each one.
import abc  # noqa: F401
import array  # noqa: F401
import base64  # noqa: F401
import binascii  # noqa: F401
import bisect  # noqa: F401
import builtins  # noqa: F401
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
import io  # noqa: F401
import ipaddress  # noqa: F401
import itertools  # noqa: F401
import json  # noqa: F401
import math  # noqa: F401
import operator  # noqa: F401
import os  # noqa: F401
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import secrets  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time
import traceback  # noqa: F401
import typing  # noqa: F401
import unicodedata  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

# Prototype-compatible modules, in this directory (see docs/python-api.md).
import bento_socket
import requests  # noqa: F401
import requests.exceptions  # noqa: F401

# `import socket` in a function gives TCP client sockets over api.connect:
# the sandbox has no sockets of its own (the WASI build has no `_socket`, so
# no module above imported the standard `socket`).
sys.modules["socket"] = bento_socket

from bento.api import api  # noqa: F401 - `bento_runtime.api`, as before the package
from bento.runner import WitWorld  # noqa: F401 - the exports componentize-py looks for
from wit_world.imports import capabilities


# The sandbox has no CPU clock of its own: wasi-libc would count
# process_time from when this runtime was snapshotted at build time (it came
# out negative). The box reports the instance's own CPU time instead, the
# clock its CPU limit counts; an instance runs on one thread, so the two
# Python clocks agree.
def _cpu_time():
    return capabilities.cpu_time()


def _cpu_time_ns():
    return int(capabilities.cpu_time() * 1e9)


time.process_time = time.thread_time = _cpu_time
time.process_time_ns = time.thread_time_ns = _cpu_time_ns
