"""The exceptions of Bento's `requests` subset, named and nested as in `requests`.

A function written for the real library catches the same classes:
`requests.exceptions.Timeout`, `requests.ConnectionError`, and so on.
"""


class RequestException(IOError):
    """Something went wrong with a request (the base of everything here)."""

    def __init__(self, *args, response=None, request=None):
        super().__init__(*args)
        self.response = response
        self.request = request


class HTTPError(RequestException):
    """`Response.raise_for_status()` on a 4xx or 5xx answer."""


class ConnectionError(RequestException):  # noqa: A001 - the name `requests` uses
    """The box could not reach the server, or its policy refused the destination."""


class Timeout(RequestException):
    """The request did not finish within its timeout."""


class ConnectTimeout(ConnectionError, Timeout):
    """Kept for code that catches it; the box reports every timeout as ReadTimeout."""


class ReadTimeout(Timeout):
    """The request did not finish within its timeout."""


class URLRequired(RequestException):
    """No URL was given."""


class InvalidURL(RequestException, ValueError):
    """The URL is not an http:// or https:// URL with a host."""


class InvalidHeader(RequestException, ValueError):
    """A header name or value cannot be sent."""


class TooManyRedirects(RequestException):
    """The box stopped following redirects."""


class JSONDecodeError(RequestException, ValueError):
    """`Response.json()` on a body that is not JSON."""


class Unsupported(RequestException, NotImplementedError):
    """A part of `requests` that Bento's subset does not provide."""
