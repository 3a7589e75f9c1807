"""The synthetic closed world: reproducible, realistic, served on loopback."""

import re
import urllib.error
import urllib.request

import numpy as np
import pytest

from bento_eval import corpus


def test_the_same_seed_gives_the_same_sites_and_bytes_and_another_seed_different_ones(tmp_path):
    a = corpus.write(5, 3, tmp_path / "a")
    b = corpus.write(5, 3, tmp_path / "b")
    c = corpus.corpus(6, 3)
    assert a == b
    assert a != c
    for site in a:
        for name in ["index.html"] + [r.name for r in site.resources]:
            rel = site.path.strip("/") + "/" + name
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_request_counts_and_page_bytes_follow_the_published_medians_and_90th_percentiles():
    sites = corpus.corpus(1, 400)
    requests = np.array([len(s.resources) for s in sites])
    weight = np.array([s.total_bytes for s in sites])
    assert np.median(requests) == pytest.approx(corpus.REQUESTS_MEDIAN, rel=0.15)
    assert np.percentile(requests, 90) == pytest.approx(corpus.REQUESTS_P90, rel=0.2)
    assert np.median(weight) == pytest.approx(corpus.BYTES_MEDIAN, rel=0.15)
    assert np.percentile(weight, 90) == pytest.approx(corpus.BYTES_P90, rel=0.2)
    # Images carry the most bytes and scripts are the most requested, as in
    # the Web Almanac.
    by_kind = {k: sum(r.size for s in sites for r in s.resources if r.kind == k) for k in corpus.EXTENSIONS}
    count = {k: sum(r.kind == k for s in sites for r in s.resources) for k in corpus.EXTENSIONS}
    assert max(by_kind, key=by_kind.get) == "image"
    assert max(count, key=count.get) == "script"


def test_sites_differ_from_each_other_in_size_and_structure():
    sites = corpus.corpus(1, 50)
    assert len({s.total_bytes for s in sites}) == 50
    assert len({len(s.resources) for s in sites}) > 20


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_the_server_serves_each_page_and_everything_it_references_and_survives_bad_requests(tmp_path):
    sites = corpus.write(3, 4, tmp_path)
    server = corpus.Server(tmp_path)
    try:
        for site in sites:
            page = _get(server.url(site))
            refs = re.findall(rb'(?:src|href)="([^"]+)"|url\(([^)]+)\)', page)
            names = [(a or b).decode() for a, b in refs]
            total = len(page)
            for name in names:
                body = _get(server.url(site) + name)
                total += len(body)
                for a, b in re.findall(rb"url\(([^)]+)\)()", body) if name.endswith(".css") else []:
                    total += len(_get(server.url(site) + a.decode()))
            fonts = sum(r.size for r in site.resources if r.kind == "font")
            # Every resource once (fonts through the style sheet).
            assert total == len(page) + sum(len((tmp_path / site.path.strip("/") / r.name).read_bytes())
                                            for r in site.resources)
            assert fonts == 0 or any(n.endswith(".css") for n in names)
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"http://127.0.0.1:{server.port}/no-such-site/")
        assert e.value.code == 404
        # A raw garbage request gets an error answer, and the next user is served.
        import socket

        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"\x00\xff garbage\r\n\r\n")
            s.recv(1024)
        assert _get(server.url(sites[0])).startswith(b"<!doctype html>")
    finally:
        server.close()


def test_no_site_exceeds_the_resource_and_byte_caps_however_far_the_tails_reach():
    sites = corpus.corpus(3, 2000)
    assert max(len(s.resources) for s in sites) <= corpus.MAX_RESOURCES
    # Resources have a 200-byte floor, so the cap holds up to that slack.
    assert max(s.total_bytes - s.html_size for s in sites) <= corpus.MAX_PAGE_BYTES + 200 * corpus.MAX_RESOURCES
    assert min(len(s.resources) for s in sites) >= 1
