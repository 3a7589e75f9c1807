"""Bento's Python runtime (built into the runtime component; see
bento_runtime.py for its modules). Functions use it through the `api`
global, never by importing it."""
