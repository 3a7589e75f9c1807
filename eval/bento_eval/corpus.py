"""A reproducible closed world of synthetic web sites, and a loopback server.

Each site is a page (index.html) and resources (images, scripts, style
sheets, fonts) whose count and sizes are drawn from distributions fitted to
the HTTP Archive's published statistics (docs/anonymity.md cites them):

* requests per page: log-normal, median 74, 90th percentile 179
  (Web Almanac 2019, Page Weight);
* bytes per page: log-normal, median 1900 KB, 90th percentile 6 MB
  (Web Almanac 2019, Page Weight);
* bytes by type on the median page: images 1054 KB, JavaScript 613 KB,
  fonts 131 KB, CSS 78 KB, HTML 18 KB (Web Almanac 2024, Page Weight), and
  requests by type: JavaScript 24, images 18 (same source); CSS and fonts
  get the rest of the requests in the ratio 3:2 (our assumption).

Sizes within a type are log-normal around the type's share, so one page has
a few large images and many small scripts, as real pages do. Images and
fonts are incompressible bytes (they are compressed formats); HTML, CSS and
JavaScript are text that compresses about as well as minified code.

Everything is a pure function of (seed, site index): the same seed gives the
same bytes on any machine.
"""

from __future__ import annotations

import functools
import http.server
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Published statistics (see the module doc). One place, used everywhere.
REQUESTS_MEDIAN = 74
REQUESTS_P90 = 179
BYTES_MEDIAN = 1_900_000
BYTES_P90 = 6_000_000
# Median bytes by type (2024) and median requests by type.
TYPE_BYTES = {"image": 1054, "script": 613, "font": 131, "css": 78}
HTML_BYTES_MEDIAN = 18_000
TYPE_REQUESTS = {"script": 24.0, "image": 18.0}
# z of the 90th percentile of the standard normal distribution.
_Z90 = 1.2815515655446004
# The Browser function fetches at most 256 resources; a page never asks more
# (the 99th percentile of real pages is about that high anyway).
MAX_RESOURCES = 250
# Bound the heaviest page so one site cannot dominate a run's time.
MAX_PAGE_BYTES = 12_000_000
MIN_PAGE_BYTES = 30_000
# Spread of sizes within one type on one page.
WITHIN_SIGMA = 1.0

EXTENSIONS = {"image": "jpg", "script": "js", "css": "css", "font": "woff2"}


def _lognormal_sigma(median: float, p90: float) -> float:
    return math.log(p90 / median) / _Z90


@dataclass(frozen=True)
class Resource:
    """One resource of a page: its path under the site and its size."""

    name: str
    kind: str
    size: int


@dataclass(frozen=True)
class Site:
    """One synthetic web site."""

    index: int
    html_size: int
    resources: tuple[Resource, ...]

    @property
    def path(self) -> str:
        return f"/site{self.index:03d}/"

    @property
    def total_bytes(self) -> int:
        return self.html_size + sum(r.size for r in self.resources)


def _request_mix() -> dict[str, float]:
    total = REQUESTS_MEDIAN
    rest = total - sum(TYPE_REQUESTS.values())
    mix = dict(TYPE_REQUESTS)
    mix["css"] = rest * 3 / 5
    mix["font"] = rest * 2 / 5
    return {k: v / total for k, v in mix.items()}


def site_spec(seed: int, index: int) -> Site:
    """The site `index` of the corpus of `seed` (sizes only, no bytes)."""
    rng = np.random.default_rng([seed, index])
    n = int(round(REQUESTS_MEDIAN * math.exp(rng.normal() * _lognormal_sigma(REQUESTS_MEDIAN, REQUESTS_P90))))
    n = max(1, min(MAX_RESOURCES, n))
    total = BYTES_MEDIAN * math.exp(rng.normal() * _lognormal_sigma(BYTES_MEDIAN, BYTES_P90))
    total = max(MIN_PAGE_BYTES, min(MAX_PAGE_BYTES, total))
    html = int(max(2_000, HTML_BYTES_MEDIAN * math.exp(rng.normal() * 0.8)))
    mix = _request_mix()
    kinds = list(mix)
    counts = rng.multinomial(n, [mix[k] for k in kinds])
    # Each type's share of the page's bytes, jittered per page.
    shares = np.array([TYPE_BYTES[k] for k in kinds], dtype=float)
    shares *= np.exp(rng.normal(size=len(kinds)) * 0.5)
    shares = np.where(counts > 0, shares, 0.0)
    if shares.sum() == 0:
        shares = np.ones(len(kinds))
        counts = np.ones(len(kinds), dtype=int)
    shares /= shares.sum()
    resources = []
    for kind, count, share in zip(kinds, counts, shares):
        if count == 0:
            continue
        weights = np.exp(rng.normal(size=count) * WITHIN_SIGMA)
        sizes = np.maximum(200, (weights / weights.sum()) * share * (total - html)).astype(int)
        for j, size in enumerate(sizes):
            resources.append(Resource(f"{kind}{j}.{EXTENSIONS[kind]}", kind, int(size)))
    return Site(index, html, tuple(resources))


def corpus(seed: int, sites: int) -> list[Site]:
    """The closed world: `sites` sites from `seed`."""
    return [site_spec(seed, i) for i in range(sites)]


_WORDS = (
    "function var let const return if else for while this new class extends import export "
    "default async await try catch document window element style color margin padding "
    "display flex grid width height px em rem none block inline true false null"
).split()


def _text(rng: np.random.Generator, size: int) -> bytes:
    """Code-like text: a small vocabulary and identifiers, so it compresses
    roughly as minified JavaScript/CSS does (about 3-4x)."""
    out = bytearray()
    while len(out) < size:
        w = _WORDS[int(rng.integers(len(_WORDS)))]
        out += w.encode()
        out += b"_%x" % int(rng.integers(1 << 20)) if rng.random() < 0.3 else b""
        out += b" ;{}()=.,\n"[int(rng.integers(10)) : int(rng.integers(10)) + 1] or b" "
    return bytes(out[:size])


def _body(seed: int, site: Site, res: Resource) -> bytes:
    rng = np.random.default_rng([seed, site.index, hash_name(res.name)])
    if res.kind in ("image", "font"):
        return rng.bytes(res.size)
    if res.kind == "css":
        fonts = [r.name for r in site.resources if r.kind == "font"]
        # The first style sheet pulls the fonts in, as @font-face does.
        if res.name == "css0.css" and fonts:
            head = "".join(f"@font-face{{font-family:f{i};src:url({f})}}\n" for i, f in enumerate(fonts))
            return (head.encode() + _text(rng, max(0, res.size - len(head))))[: max(res.size, len(head))]
    return _text(rng, res.size)


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") ^ len(name)


def page_html(seed: int, site: Site) -> bytes:
    rng = np.random.default_rng([seed, site.index, 0])
    tags = []
    for r in site.resources:
        if r.kind == "image":
            tags.append(f'<img src="{r.name}">')
        elif r.kind == "script":
            tags.append(f'<script src="{r.name}"></script>')
        elif r.kind == "css":
            tags.append(f'<link rel="stylesheet" href="{r.name}">')
    head = f"<!doctype html><html><head><title>site {site.index}</title>\n" + "\n".join(tags) + "\n</head><body>\n"
    tail = "</body></html>\n"
    filler = max(0, site.html_size - len(head) - len(tail))
    body = _text(rng, filler).replace(b"<", b" ").replace(b">", b" ")
    return head.encode() + b"<p>" + body + b"</p>" + tail.encode()


def write(seed: int, sites: int, root: Path) -> list[Site]:
    """Write the corpus under `root` (root/siteNNN/index.html and its
    resources); returns the sites."""
    out = corpus(seed, sites)
    for site in out:
        d = root / site.path.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "index.html").write_bytes(page_html(seed, site))
        for r in site.resources:
            (d / r.name).write_bytes(_body(seed, site, r))
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    # Request logs would only be noise (and name the sites visited).
    def log_message(self, format, *args):  # noqa: A002 - the base's name
        pass


class Server:
    """The corpus served over HTTP on 127.0.0.1 (a free port), in threads."""

    def __init__(self, root: Path, port: int = 0):
        handler = functools.partial(_Quiet, directory=os.fspath(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, site: Site) -> str:
        return f"http://127.0.0.1:{self.port}{site.path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
