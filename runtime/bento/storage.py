"""`api.storage`: instance-scoped key-value storage (capability storage)."""

from wit_world.imports import capabilities

from bento import errors
from bento.streams import as_bytes, read_exact, stage


class Storage:
    """Instance-scoped key-value storage, encrypted at rest, gone when the instance ends."""

    __slots__ = ()

    def put(self, key, value):
        """Store bytes (or str as UTF-8) under a str key; raises QuotaExceeded."""
        if not isinstance(key, str):
            raise TypeError("storage keys are str")
        stage(as_bytes(value, "storage.put()"))
        errors.call(capabilities.storage_put, key)

    def get(self, key, default=None):
        """The value stored under `key` as bytes, or `default`."""
        if not isinstance(key, str):
            raise TypeError("storage keys are str")
        length = errors.call(capabilities.storage_get, key)
        return default if length is None else read_exact(length)

    def delete(self, key):
        """Remove `key`; returns whether it existed."""
        return errors.call(capabilities.storage_delete, key)

    def keys(self):
        """All keys, sorted."""
        return list(errors.call(capabilities.storage_keys))

    def usage(self):
        """(bytes used, quota in bytes)."""
        return tuple(errors.call(capabilities.storage_usage))

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self.put(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key):
        return self.get(key) is not None

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def __repr__(self):
        used, quota = self.usage()
        return f"<bento storage: {used} of {quota} bytes used>"
