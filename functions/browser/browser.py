"""Browser: fetch a page and everything it references at the box, bundle it,
pad the bundle to a multiple of the client's pad size, and send it as ONE
blob, so an observer of the client's Tor circuit sees only a size that is a
multiple of the pad (a website-fingerprinting defense). Client:
`bento browse URL --pad SIZE --out DIR`; see docs/functions/browser.md.

    main(url, pad, max_resources=64, max_bytes=8 MiB)
    bundle(url, pad, max_resources, max_bytes, hook=None) -> the padded blob

Resources: <img src>, <script src>, <link rel=stylesheet|icon href>, and
url(...) / @import in stylesheets and <style> blocks (one pass per fetched
stylesheet, so CSS that imports CSS is followed too). Same- and
cross-origin alike; only http(s) URLs; data: URLs are left alone.

The blob (all integers big-endian):

    b"BNTOBRW1"                 8 bytes, magic and format version
    L                           u64, length of the zlib stream that follows
    zlib stream                 L bytes (zlib.compress of the container)
    zero bytes                  up to the next multiple of pad (none if
                                16 + L already is one)

The container (what the zlib stream holds):

    J                           u32, length of the JSON index
    index                       J bytes of UTF-8 JSON
    bodies                      every entry's bytes, back to back

The index: {"version": 1, "url": requested URL, "pad": pad,
"limits": {"max_resources", "max_bytes", "max_blob"},
"entries": [{"url", "status", "type", "offset", "length",
"refs": [[start, end, target], ...]}, ...], "skipped": [{"url", "reason"}]}.
entries[0] is the page (its "url" is the URL after redirects); offsets
are relative to the start of the bodies; a ref says that bytes
start..end of this entry's body are a reference to entries[target], so
the client can rewrite it to a local file name.
"""

import html
import html.parser
import json
import re
import struct
import urllib.parse
import zlib

MAGIC = b"BNTOBRW1"
HEADER = 16
# The whole padded blob fits the output buffer the manifest asks for
# (output_buffer_kib = 4096), so it is held at the box even if the client's
# connection drops before it has read everything.
MAX_BLOB = 4096 * 1024
MAX_RESOURCES = 256
MAX_BYTES = 16 * 1024 * 1024
DEFAULT_RESOURCES = 64
DEFAULT_BYTES = 8 * 1024 * 1024

_ATTR = re.compile(r"""([^\s"'>/=]+)(\s*=\s*("[^"]*"|'[^']*'|[^\s>]*))?""")
_CSS_URL = re.compile(
    r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)"'\s]*))\s*\)"""
    r"""|@import\s+(?:"([^"]*)"|'([^']*)')""",
    re.IGNORECASE,
)


class BrowseError(Exception):
    """The page cannot be fetched or bundled."""


def _text(raw):
    """A latin-1 str (one char per byte) as the str it means (UTF-8)."""
    return raw.encode("latin-1").decode("utf-8", "replace")


def _resolve(base, value):
    """The absolute http(s) URL a reference means, without its fragment."""
    value = value.strip()
    if not value or value.startswith("#") or value.lower().startswith("data:"):
        return None
    url = urllib.parse.urldefrag(urllib.parse.urljoin(base, value))[0]
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    return url


def _css_refs(text, start, base):
    """(start, end, url, is_css) for every url(...) and @import in CSS."""
    refs = []
    for m in _CSS_URL.finditer(text):
        for group in range(1, 6):
            if m.group(group) is not None:
                url = _resolve(base, _text(m.group(group)))
                if url is not None:
                    is_css = group >= 4 or m.group(0).lower().startswith("@import")
                    refs.append((start + m.start(group), start + m.end(group), url, is_css))
                break
    return refs


class _PageParser(html.parser.HTMLParser):
    """Finds the references of an HTML page, with their byte offsets."""

    def __init__(self, text, base):
        super().__init__(convert_charrefs=True)
        self.base = base
        self.refs = []
        self.in_style = False
        self.line_starts = [0]
        for m in re.finditer("\n", text):
            self.line_starts.append(m.end())

    def _offset(self):
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_starttag(self, tag, attrs):
        self.in_style = tag == "style"
        if tag not in ("img", "script", "link"):
            return
        raw = self.get_starttag_text() or ""
        start = self._offset()
        values = {}
        name_end = len(tag) + 1
        for m in _ATTR.finditer(raw, name_end):
            if m.group(3) is None:
                continue
            name = m.group(1).lower()
            value_start, value_end = m.span(3)
            if m.group(3)[:1] in ("'", '"'):
                value_start, value_end = value_start + 1, value_end - 1
            values.setdefault(name, (value_start, value_end))
        if tag == "link":
            rel = (dict(attrs).get("rel") or "").lower().split()
            if "stylesheet" in rel:
                wanted, is_css = "href", True
            elif "icon" in rel:
                wanted, is_css = "href", False
            else:
                return
        else:
            wanted, is_css = "src", False
        if wanted not in values:
            return
        value_start, value_end = values[wanted]
        url = _resolve(self.base, html.unescape(_text(raw[value_start:value_end])))
        if url is not None:
            self.refs.append((start + value_start, start + value_end, url, is_css))

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            # The data as it is in the page (no character references are
            # decoded inside <style>), so offsets line up.
            self.refs.extend(_css_refs(data, self._offset(), self.base))


def _page_refs(body, base):
    text = body.decode("latin-1")
    parser = _PageParser(text, base)
    parser.feed(text)
    parser.close()
    return parser.refs


def _content_type(response):
    return (response.headers.get("content-type") or "").split(";")[0].strip().lower()


def _bounded(value, default, ceiling, what):
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BrowseError("%s must be a whole number >= 0, not %r" % (what, value))
    if value > ceiling:
        raise BrowseError("%s may be at most %d, not %d" % (what, ceiling, value))
    return value


def _container(page_url, requested, pad, limits, entries, skipped):
    index_of = {entry["url"]: i for i, entry in enumerate(entries)}
    index_entries = []
    offset = 0
    for entry in entries:
        refs = sorted(
            [start, end, index_of[url]]
            for start, end, url, _ in entry["refs"]
            if url in index_of
        )
        index_entries.append({
            "url": entry["url"],
            "status": entry["status"],
            "type": entry["type"],
            "offset": offset,
            "length": len(entry["body"]),
            "refs": refs,
        })
        offset += len(entry["body"])
    index_entries[0]["url"] = page_url
    index = json.dumps({
        "version": 1,
        "url": requested,
        "pad": pad,
        "limits": limits,
        "entries": index_entries,
        "skipped": skipped,
    }).encode()
    return b"".join([struct.pack(">I", len(index)), index] + [e["body"] for e in entries])


def main(url, pad, max_resources=None, max_bytes=None):
    api.send(bundle(url, pad, max_resources, max_bytes))


def bundle(url, pad, max_resources=None, max_bytes=None, hook=None):
    """The padded blob for `url` (see the module docstring). `hook`, if
    given, is called between fetches and compressions; the Cover function
    (functions/cover/cover.py) uses it to keep its constant-rate flow
    going while the page is fetched."""
    hook = hook or (lambda: None)
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise BrowseError("not an http:// or https:// URL: %r" % (url,))
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1 or pad > MAX_BLOB:
        raise BrowseError("pad must be a whole number of bytes from 1 to %d, not %r" % (MAX_BLOB, pad))
    max_resources = _bounded(max_resources, DEFAULT_RESOURCES, MAX_RESOURCES, "max_resources")
    max_bytes = _bounded(max_bytes, DEFAULT_BYTES, MAX_BYTES, "max_bytes")
    # The largest blob: the largest multiple of pad within MAX_BLOB.
    max_blob = MAX_BLOB // pad * pad
    limits = {"max_resources": max_resources, "max_bytes": max_bytes, "max_blob": max_blob}

    try:
        page = api.http_get(url)
    except api.PolicyRefused:
        # The box's rules, not the page: left uncaught, the session ends
        # with the policy_refused code, which the client reports as such.
        raise
    except Exception as e:
        raise BrowseError("could not fetch %s: %s: %s" % (url, type(e).__name__, e)) from None
    if not 200 <= page.status < 300:
        raise BrowseError("%s answered HTTP %d" % (page.url, page.status))
    if len(page.body) > max_bytes:
        raise BrowseError("the page is %d bytes, over the limit of %d bytes" % (len(page.body), max_bytes))

    page_type = _content_type(page)
    if page_type in ("text/css",):
        page_refs = _css_refs(page.body.decode("latin-1"), 0, page.url)
    elif page_type in ("", "text/html", "application/xhtml+xml"):
        page_refs = _page_refs(page.body, page.url)
    else:
        page_refs = []
    entries = [{"url": page.url, "status": page.status, "type": page_type,
                "body": page.body, "refs": page_refs}]
    seen = {page.url, url}
    skipped = []
    used = len(page.body)
    fetched = 0
    queue = list(page_refs)
    while queue:
        _, _, ref_url, is_css = queue.pop(0)
        if ref_url in seen:
            continue
        seen.add(ref_url)
        if fetched >= max_resources:
            skipped.append({"url": ref_url, "reason": "over the limit of %d resources" % max_resources})
            continue
        fetched += 1
        hook()
        try:
            r = api.http_get(ref_url)
        except Exception as e:
            skipped.append({"url": ref_url, "reason": "%s: %s" % (type(e).__name__, e)})
            continue
        if not 200 <= r.status < 300:
            skipped.append({"url": ref_url, "reason": "HTTP %d" % r.status})
            continue
        if used + len(r.body) > max_bytes:
            skipped.append({"url": ref_url, "reason": "%d bytes, over the size limit (%d of %d bytes left)"
                            % (len(r.body), max_bytes - used, max_bytes)})
            continue
        used += len(r.body)
        kind = _content_type(r)
        refs = []
        if is_css or kind == "text/css":
            # Resolved against the URL the stylesheet came from.
            refs = _css_refs(r.body.decode("latin-1"), 0, r.url)
            queue.extend(refs)
        # Keyed by the URL as referenced (rewriting finds it by that URL).
        entries.append({"url": ref_url, "status": r.status, "type": kind, "body": r.body, "refs": refs})

    # Compress; drop the largest resources while the padded blob would not
    # fit in max_blob.
    while True:
        hook()
        payload = zlib.compress(_container(page.url, url, pad, limits, entries, skipped), 6)
        total = HEADER + len(payload)
        if total <= max_blob:
            break
        if len(entries) == 1:
            raise BrowseError(
                "the page alone is %d bytes compressed; with a %d-byte pad at most %d bytes fit in one blob"
                % (total, pad, max_blob))
        largest = max(range(1, len(entries)), key=lambda i: len(entries[i]["body"]))
        dropped = entries.pop(largest)
        skipped.append({"url": dropped["url"], "reason": "%d bytes; did not fit in the %d-byte blob"
                        % (len(dropped["body"]), max_blob)})

    hook()
    padded = -(-total // pad) * pad
    return b"".join([MAGIC, struct.pack(">Q", len(payload)), payload, bytes(padded - total)])
