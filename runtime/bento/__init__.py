"""Bento's Python runtime, as a package (built into the runtime component).

- `errors`: the exception classes and the one mapping from host errors.
"""
