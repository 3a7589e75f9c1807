//! The Browser function (functions/browser/) and `bento browse`: pages and
//! their resources fetched at a box from local servers on 127.0.0.1, padded
//! to exact multiples of the pad, unpacked byte for byte.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::harness::{BENTO, TestBox};
use crate::tor::net;

const SOURCE: &str = bento_functions::browser::SOURCE;
const MANIFEST: &str = bento_functions::browser::MANIFEST;

/// Path (query included) → (content type, extra header lines, body).
type Pages = HashMap<String, (String, String, Vec<u8>)>;

/// An HTTP server on 127.0.0.1 serving a set of paths (query included)
/// that the test may change at any time; counts the requests per path.
/// Answers HEAD with the head alone; a page whose extra headers start with
/// `Location:` is a 301 redirect.
#[derive(Clone)]
pub(crate) struct Site {
    pub(crate) port: u16,
    pages: Arc<Mutex<Pages>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Site {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let site = Self {
            port: listener.local_addr().unwrap().port(),
            pages: Arc::default(),
            hits: Arc::default(),
        };
        let server = site.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let server = server.clone();
                std::thread::spawn(move || server.answer(stream));
            }
        });
        site
    }

    fn answer(&self, mut stream: TcpStream) {
        let Some(request) = crate::local_servers::read_request_head(&mut stream) else {
            return;
        };
        let line = String::from_utf8_lossy(&request).into_owned();
        let head_only = line.starts_with("HEAD ");
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let found = self.pages.lock().unwrap().get(&path).cloned();
        let (status, content_type, headers, body) = match found {
            Some((content_type, headers, body)) if headers.starts_with("Location:") => {
                ("301 Moved Permanently", content_type, headers, body)
            }
            Some((content_type, headers, body)) => ("200 OK", content_type, headers, body),
            None => (
                "404 Not Found",
                "text/plain".into(),
                String::new(),
                b"not found".to_vec(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        if !head_only {
            let _ = stream.write_all(&body);
        }
    }

    pub(crate) fn put(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        self.put_with(path, content_type, "", body);
    }

    /// A page with extra response header lines (each ending in CRLF).
    pub(crate) fn put_with(
        &self,
        path: &str,
        content_type: &str,
        headers: &str,
        body: impl Into<Vec<u8>>,
    ) {
        self.pages.lock().unwrap().insert(
            path.into(),
            (content_type.into(), headers.into(), body.into()),
        );
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn rule(&self) -> String {
        format!("accept 127.0.0.1:{}", self.port)
    }

    pub(crate) fn requests(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A policy granting `http` to exactly these rules, with room for the
/// manifest's limits.
pub(crate) fn policy(rules: &[String]) -> String {
    let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
    format!(
        r#"version = 1
capabilities = ["http"]
destinations = [{}, "reject *:*"]
[instance]
memory_mib = 128
cpu_ms = 10000
wall_ms = 120000
output_buffer_kib = 4096
storage_kib = 0
bandwidth_kib_per_s = 100000
channels = 0
[box]
max_instances = 16
max_buffered_mib = 256
max_upload_kib = 1024
max_stored_mib = 64
max_storage_mib = 0
bandwidth_kib_per_s = 1000000
"#,
        rules.join(", ")
    )
}

/// The function's manifest with `rules` as its destinations (what
/// `bento browse --destination` does).
fn manifest(rules: &[String]) -> String {
    let line = format!("destinations = {}", serde_json::to_string(rules).unwrap());
    MANIFEST
        .lines()
        .map(|l| {
            if l.starts_with("destinations") {
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deterministic incompressible bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `bento browse` against `bx`: (exit status, stdout, stderr).
fn browse(bx: &TestBox, args: &[&str]) -> (Output, String, String) {
    let out = Command::new(BENTO)
        .args(["--server", &bx.addr, "browse"])
        .args(args)
        .env_remove("BENTO_SOCKS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// URL → local file name, from `bento browse`'s listing.
pub(crate) fn saved_files(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  skipped "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[3].to_owned(), fields[0].to_owned())
        })
        .collect()
}

/// The blob's header: the bundle's length before padding (16 + L).
fn bundle_len(blob: &[u8]) -> usize {
    assert_eq!(&blob[..8], b"BNTOBRW1");
    16 + u64::from_be_bytes(blob[8..16].try_into().unwrap()) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transferred_size_is_always_an_exact_multiple_of_the_pad_for_pages_of_many_sizes() {
    let site = Site::start();
    let rules = vec![site.rule()];
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let manifest = manifest(&rules);
    site.put(
        "/",
        "text/html",
        "<html><body><img src=\"noise.bin\"></body></html>",
    );
    let fetch = |pad: usize| {
        let args = serde_json::json!([site.url("/"), pad]).to_string();
        let (bx, manifest) = (&bx, &manifest);
        async move {
            let (blob, result) = bx.run_with_manifest(SOURCE, manifest, &args).await;
            result.unwrap();
            let bundle = bundle_len(&blob);
            assert_eq!(blob.len() % pad, 0, "{} bytes, pad {pad}", blob.len());
            assert_eq!(blob.len(), bundle.div_ceil(pad) * pad, "padded minimally");
            assert!(blob[bundle..].iter().all(|&b| b == 0));
            (bundle, blob.len())
        }
    };

    // Bundles of exactly k*pad - 1, k*pad and k*pad + 1 bytes: the size of
    // the incompressible resource is adjusted until the bundle hits each
    // (and its contents changed if a size cannot be hit by length alone).
    // (Not a power of two: zlib's stored blocks of incompressible data end
    // near multiples of 16 KiB, where a byte more adds a 5-byte block header
    // and some bundle sizes cannot be hit exactly.)
    let pad = 10_000;
    let mut sizes = Vec::new();
    for k in [1, 2, 3] {
        for delta in [-1i64, 0, 1] {
            let target = (k * pad) as i64 + delta;
            let mut len = (target - 400).max(1) as usize;
            let mut hit = None;
            for attempt in 0..16u64 {
                site.put(
                    "/noise.bin",
                    "application/octet-stream",
                    noise(len, 7 + attempt / 4),
                );
                let (bundle, sent) = fetch(pad).await;
                sizes.push((bundle, sent));
                if bundle as i64 == target {
                    hit = Some(sent);
                    break;
                }
                len = (len as i64 + target - bundle as i64).max(1) as usize;
            }
            let sent = hit.unwrap_or_else(|| panic!("never hit a {target}-byte bundle: {sizes:?}"));
            let expected = if delta <= 0 { k * pad } else { (k + 1) * pad };
            assert_eq!(
                sent, expected,
                "a {target}-byte bundle with a {pad}-byte pad"
            );
        }
    }

    // The issue's example: about 1.5 MB with a 1 MB pad is exactly 2 MB.
    site.put(
        "/noise.bin",
        "application/octet-stream",
        noise(1_500_000, 1),
    );
    let (bundle, sent) = fetch(1_000_000).await;
    assert!(bundle > 1_500_000 && bundle < 1_600_000, "{bundle}");
    assert_eq!(sent, 2_000_000);

    // A pad of 1 byte pads nothing; a pad as large as the output buffer
    // still fits.
    let (bundle, sent) = fetch(1).await;
    assert_eq!(sent, bundle);
    let (_, sent) = fetch(4096 * 1024).await;
    assert_eq!(sent, 4096 * 1024);
}

#[test]
fn a_browsed_page_and_every_resource_same_and_cross_origin_are_byte_identical_to_what_was_served() {
    let home = Site::start();
    let other = Site::start();
    let bx = TestBox::with_policy(&policy(&[home.rule(), other.rule()]), &[]);
    let logo = noise(20_000, 1);
    let photo = noise(70_000, 2); // cross-origin
    let background = noise(3_000, 3); // referenced from the stylesheet
    let font = noise(5_000, 4); // cross-origin, from the stylesheet
    let escaped = noise(1_000, 5); // a query with &amp; in the page
    let inline_bg = noise(800, 6); // from a <style> block
    let script = b"document.title = 'offline';\n".to_vec();
    home.put("/img/logo.png", "image/png", logo.clone());
    other.put("/photo.jpg", "image/jpeg", photo.clone());
    home.put("/css/bg.png", "image/png", background.clone());
    other.put("/font.woff2", "font/woff2", font.clone());
    home.put("/q.gif?a=1&b=2", "image/gif", escaped.clone());
    home.put("/inline.png", "image/png", inline_bg.clone());
    home.put("/js/app.js", "text/javascript", script.clone());
    let css_refs = ["bg.png".to_owned(), other.url("/font.woff2")];
    let css_template = "body { background: url(\"{0}\") }\n@font-face { src: url({1}) }\n";
    let fill = |template: &str, refs: &[String]| {
        refs.iter()
            .enumerate()
            .fold(template.to_owned(), |t, (i, r)| {
                t.replace(&format!("{{{i}}}"), r)
            })
    };
    home.put("/css/site.css", "text/css", fill(css_template, &css_refs));
    let page_refs = [
        "css/site.css".to_owned(),
        "/inline.png".to_owned(),
        "js/app.js".to_owned(),
        "img/logo.png".to_owned(),
        other.url("/photo.jpg"),
        "q.gif?a=1&amp;b=2".to_owned(),
    ];
    let page_template = "<!doctype html>\n<html><head><title>t</title>\n\
        <link rel=\"stylesheet\" href=\"{0}\">\n<style>h1 { background: url('{1}') }</style>\n\
        <script src='{2}'></script></head>\n<body><h1>Bento</h1>\n<!-- <img src=\"gone.png\"> -->\n\
        <img alt=\"logo\" src=\"{3}\"><img src={4} /><img src=\"{5}\">\n\
        <a href=\"elsewhere.html\">not a resource</a></body></html>\n";
    let page = fill(page_template, &page_refs);
    home.put("/index.html", "text/html; charset=utf-8", page.clone());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("page");
    let (status, stdout, stderr) = browse(
        &bx,
        &[
            &home.url("/index.html"),
            "--pad",
            "64KiB",
            "--out",
            out.to_str().unwrap(),
            "--destination",
            &home.rule(),
            "--destination",
            &other.rule(),
        ],
    );
    assert!(status.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("skipped"), "{stdout}");
    assert!(
        stdout.contains("transferred 131072 bytes = 2 x 65536 B pad"),
        "{stdout}"
    );
    let files = saved_files(&stdout);
    assert_eq!(files.len(), 9, "{stdout}");
    let read = |url: &str| std::fs::read(out.join(&files[url])).unwrap();
    // Resources that reference nothing: exactly as served.
    for (url, served) in [
        (home.url("/img/logo.png"), &logo),
        (other.url("/photo.jpg"), &photo),
        (home.url("/css/bg.png"), &background),
        (other.url("/font.woff2"), &font),
        (home.url("/q.gif?a=1&b=2"), &escaped),
        (home.url("/inline.png"), &inline_bg),
        (home.url("/js/app.js"), &script),
    ] {
        assert!(read(&url) == *served, "{url} differs from what was served");
    }
    // The page and the stylesheet: exactly as served, except that each
    // reference now names the local copy.
    let local = |url: String, from_res: bool| {
        let name = files[&url].clone();
        if from_res {
            name.strip_prefix("res/").unwrap().to_owned()
        } else {
            name
        }
    };
    let expected_css = fill(
        css_template,
        &[
            local(home.url("/css/bg.png"), true),
            local(other.url("/font.woff2"), true),
        ],
    );
    assert_eq!(
        String::from_utf8(read(&home.url("/css/site.css"))).unwrap(),
        expected_css
    );
    let expected_page = fill(
        page_template,
        &[
            local(home.url("/css/site.css"), false),
            local(home.url("/inline.png"), false),
            local(home.url("/js/app.js"), false),
            local(home.url("/img/logo.png"), false),
            local(other.url("/photo.jpg"), false),
            local(home.url("/q.gif?a=1&b=2"), false),
        ],
    );
    assert_eq!(files[&home.url("/index.html")], "index.html");
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        expected_page
    );
    // Every local file the page names exists (it opens offline).
    for name in files.values() {
        assert!(out.join(name).is_file(), "{name}");
    }
    assert_eq!(home.hits.lock().unwrap().get("/gone.png"), None);
    assert_eq!(home.hits.lock().unwrap().get("/elsewhere.html"), None);
}

#[test]
fn more_resources_than_the_limits_allow_are_listed_as_skipped_and_the_limits_are_never_exceeded() {
    let site = Site::start();
    let bx = TestBox::with_policy(&policy(&[site.rule()]), &[]);
    let mut page = String::from("<html><body>\n");
    for i in 0..10 {
        site.put(&format!("/{i}.png"), "image/png", noise(2_000, i));
        page.push_str(&format!("<img src=\"{i}.png\">\n"));
    }
    page.push_str("</body></html>\n");
    site.put("/", "text/html", page.clone());
    let dir = tempfile::tempdir().unwrap();

    // At most 3 resources: the first 3 are saved, the other 7 are named.
    let out = dir.path().join("count");
    let (status, stdout, stderr) = browse(
        &bx,
        &[
            &site.url("/"),
            "--pad",
            "10000",
            "--max-resources",
            "3",
            "--out",
            out.to_str().unwrap(),
            "--destination",
            &site.rule(),
        ],
    );
    assert!(status.status.success(), "{stdout}{stderr}");
    assert_eq!(saved_files(&stdout).len(), 4, "{stdout}");
    for i in 3..10 {
        assert!(
            stdout.contains(&format!(
                "skipped {}: over the limit of 3 resources",
                site.url(&format!("/{i}.png"))
            )),
            "{stdout}"
        );
    }
    assert_eq!(site.requests(), 4, "the page and 3 resources, nothing more");
    assert_eq!(std::fs::read_dir(out.join("res")).unwrap().count(), 3);
    // Skipped references are left as they were.
    let saved = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(saved.contains("<img src=\"9.png\">"), "{saved}");

    // At most 5000 bytes of page and resources: the page and two images.
    let out = dir.path().join("bytes");
    let (status, stdout, stderr) = browse(
        &bx,
        &[
            &site.url("/"),
            "--pad",
            "10000",
            "--max-bytes",
            "5000",
            "--out",
            out.to_str().unwrap(),
            "--destination",
            &site.rule(),
        ],
    );
    assert!(status.status.success(), "{stdout}{stderr}");
    assert_eq!(saved_files(&stdout).len(), 3, "{stdout}");
    assert_eq!(
        stdout.matches("bytes, over the size limit").count(),
        8,
        "{stdout}"
    );
    let total: u64 = std::fs::read_dir(out.join("res"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total + page.len() as u64 <= 5000);

    // Limits beyond the function's ceilings are refused before anything is sent.
    let before = site.requests();
    let (status, _, stderr) = browse(
        &bx,
        &[&site.url("/"), "--max-resources", "1000", "--out", "x"],
    );
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-resources may be at most 256"),
        "{stderr}"
    );
    assert_eq!(site.requests(), before);
}

#[test]
fn a_page_that_cannot_be_fetched_and_bad_inputs_give_clear_errors() {
    let site = Site::start();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let closed_rule = format!("accept 127.0.0.1:{closed}");
    let bx = TestBox::with_policy(&policy(&[site.rule(), closed_rule.clone()]), &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let run = |args: &[&str]| browse(&bx, args);

    // Nothing listens: the function's error, exit status 1, nothing written.
    let url = format!("http://127.0.0.1:{closed}/");
    let (status, _, stderr) = run(&[&url, "--out", out, "--destination", &closed_rule]);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: the box could not browse: could not fetch {url}: BoxIOError: could not connect"
        )),
        "{stderr}"
    );
    assert!(!Path::new(out).exists());

    // A missing page.
    let (status, _, stderr) = run(&[
        &site.url("/missing"),
        "--out",
        out,
        "--destination",
        &site.rule(),
    ]);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} answered HTTP 404", site.url("/missing"))),
        "{stderr}"
    );

    // A destination the manifest does not name: the box's refusal reaches
    // the client as the policy's own error (code policy_refused), not
    // wrapped in the Browser's "could not fetch".
    let (status, _, stderr) = run(&[&site.url("/"), "--out", out]);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DestinationRefused"), "{stderr}");
    assert!(!stderr.contains("could not fetch"), "{stderr}");
    assert_eq!(site.requests(), 1, "only the missing page was asked for");

    // Bad inputs are refused before anything is sent.
    for (args, message) in [
        (
            vec!["ftp://example.org/", "--out", out],
            "is not an http:// or https:// URL",
        ),
        (vec!["http:///x", "--out", out], "has no host"),
        (
            vec!["http://127.0.0.1/", "--pad", "0", "--out", out],
            "--pad must be from 1 byte to 4194304 bytes",
        ),
        (
            vec!["http://127.0.0.1/", "--pad", "5MiB", "--out", out],
            "--pad must be from 1 byte to 4194304 bytes",
        ),
        (
            vec!["http://127.0.0.1/", "--pad", "1.5MB", "--out", out],
            "invalid value '1.5MB' for '--pad <SIZE>'",
        ),
    ] {
        let (status, _, stderr) = run(&args);
        assert_eq!(status.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    std::fs::create_dir_all(Path::new(out).join("old")).unwrap();
    let (status, _, stderr) = run(&[&site.url("/"), "--out", out]);
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exists and is not empty"), "{stderr}");
    assert_eq!(site.requests(), 1);
}

/// A box with `policy` (TOML), published as an onion service on the
/// private Tor network through a relay's ControlPort; returns it with its
/// onion address once that is reachable through Tor.
pub(crate) async fn onion_box_with_policy(policy: &str) -> (TestBox, String) {
    crate::tor::onion_test_box_async(Some(policy)).await
}

/// `bento --server ONION --socks … ARGS` (over the private Tor network):
/// (exit status, stdout, stderr).
pub(crate) fn bento_over_tor(onion: &str, args: &[&str]) -> (Output, String, String) {
    let out = Command::new(BENTO)
        .args(["--server", onion, "--socks", &net().socks])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

// The turn is held for the whole test on purpose (see tor::one_at_a_time).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_browsed_through_an_onion_box_over_tor_is_byte_identical_to_what_was_served() {
    let _turn = crate::tor::one_at_a_time();
    let home = Site::start();
    let other = Site::start();
    let (_bx, onion) = onion_box_with_policy(&policy(&[home.rule(), other.rule()])).await;
    let logo = noise(30_000, 11);
    let photo = noise(50_000, 12); // cross-origin
    let css = "body { background: url(bg.png) }\n";
    let background = noise(2_000, 13);
    home.put("/logo.png", "image/png", logo.clone());
    other.put("/photo.jpg", "image/jpeg", photo.clone());
    home.put("/site.css", "text/css", css);
    home.put("/bg.png", "image/png", background.clone());
    let page = format!(
        "<html><head><link rel=stylesheet href=site.css></head>\n\
         <body><img src=\"logo.png\"><img src=\"{}\"></body></html>\n",
        other.url("/photo.jpg")
    );
    home.put("/", "text/html", page.clone());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("page");
    let (status, stdout, stderr) = bento_over_tor(
        &onion,
        &[
            "browse",
            &home.url("/"),
            "--pad",
            "128KiB",
            "--out",
            out.to_str().unwrap(),
            "--destination",
            &home.rule(),
            "--destination",
            &other.rule(),
        ],
    );
    assert!(status.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("transferred 131072 bytes = 1 x 131072 B pad"),
        "{stdout}"
    );
    let files = saved_files(&stdout);
    assert_eq!(files.len(), 5, "{stdout}");
    let read = |url: &str| std::fs::read(out.join(&files[url])).unwrap();
    assert!(read(&home.url("/logo.png")) == logo);
    assert!(read(&other.url("/photo.jpg")) == photo);
    assert!(read(&home.url("/bg.png")) == background);
    let bg = files[&home.url("/bg.png")].strip_prefix("res/").unwrap();
    assert_eq!(
        String::from_utf8(read(&home.url("/site.css"))).unwrap(),
        css.replace("bg.png", bg)
    );
    let expected = page
        .replace("site.css", &files[&home.url("/site.css")])
        .replace(
            "\"logo.png\"",
            &format!("\"{}\"", files[&home.url("/logo.png")]),
        )
        .replace(&other.url("/photo.jpg"), &files[&other.url("/photo.jpg")]);
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        expected
    );
}
