//! The caching Proxy function (functions/proxy/) and `bento proxy`, end to
//! end over the private Tor network: a real HTTP client talks to the local
//! proxy, which reaches an onion box through the network's SOCKS port; the
//! box fetches from servers on 127.0.0.1 (and from an onion site) that count
//! every request, so "served from the cache" is checked at the origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::browser::{Site, noise};
use crate::harness::{BENTO, TestBox};
use crate::tor::{control_port, net, onion_test_box};

const SOURCE: &str = bento_functions::proxy::SOURCE;
const MANIFEST: &str = bento_functions::proxy::MANIFEST;

/// What the origin sends as every page's type.
const BINARY: &str = "application/octet-stream";

/// The default policy with `http` granted to exactly `rules` (what an
/// operator who allows exit fetching to these destinations writes).
fn http_policy(rules: &[String]) -> String {
    let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}, ")).collect();
    bento_policy::DEFAULT_POLICY_TOML
        .replace(
            "capabilities = [\"storage\"",
            "capabilities = [\"http\", \"storage\"",
        )
        .replace(
            "destinations = [\"reject *:*\"]",
            &format!("destinations = [{}\"reject *:*\"]", rules.concat()),
        )
}

/// Shows the box's log (its last lines) if the test fails while it lives.
struct LogOnPanic<'a>(&'a TestBox);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("the box's log (last lines):\n{tail}");
        }
    }
}

/// A running `bento proxy` (through Tor to `server`) and its stderr.
struct Proxy {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    fn start(server: &str, args: &[&str]) -> Self {
        let mut child = Command::new(BENTO)
            .args(["--server", server, "--socks", &net().socks, "proxy"])
            .args(["--listen", "127.0.0.1:0", "--verbose"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("bento proxy: listening on ") {
                    let addr = rest.split(':').take(2).collect::<Vec<_>>().join(":");
                    let _ = addr_tx.send(addr);
                }
                let mut log = writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(240))
            .unwrap_or_else(|_| panic!("bento proxy did not start: {}", log.lock().unwrap()));
        Self { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send `request` (a whole request head, or anything) and read the
    /// answer until the proxy closes the connection.
    fn raw(&self, request: &[u8]) -> Response {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        // Only a guard against a hang: an onion fetch may take a while.
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        Response::parse(&all, request.starts_with(b"HEAD "))
    }

    /// `METHOD url` through the proxy, as curl -x would send it.
    fn request(&self, method: &str, url: &str, headers: &str) -> Response {
        let request = format!(
            "{method} {url} HTTP/1.1\r\nHost: proxied\r\n{headers}Connection: close\r\n\r\n"
        );
        self.raw(request.as_bytes())
    }

    fn get(&self, url: &str) -> Response {
        self.request("GET", url, "")
    }

    /// The function's cache counters (`/bento/stats`).
    fn stats(&self) -> serde_json::Value {
        let response = self.get("/bento/stats");
        assert_eq!(response.status, 200, "{}", response.text());
        serde_json::from_slice(&response.body).unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("bento proxy's log:\n{}", self.log());
        }
        // SIGINT, as Ctrl-C: it stops the instance at the box.
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as the client got it.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(all: &[u8], head_only: bool) -> Self {
        let end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(all)));
        let head = String::from_utf8(all[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let response = Self {
            status,
            headers,
            body: all[end + 4..].to_vec(),
        };
        let length: usize = response.header("content-length").unwrap().parse().unwrap();
        if head_only {
            assert!(response.body.is_empty(), "a HEAD answer has no body");
        } else {
            assert_eq!(
                response.body.len(),
                length,
                "Content-Length matches the body"
            );
        }
        response
    }

    fn header(&self, name: &str) -> Option<&str> {
        let found: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(found.len() <= 1, "{name} appears {} times", found.len());
        found.first().copied()
    }

    fn cache(&self) -> Option<&str> {
        self.header("x-bento-cache")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[test]
fn a_repeated_fetch_is_served_from_the_box_cache_byte_for_byte_without_reaching_the_origin_again() {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    let (bx, onion) = onion_test_box(Some(&http_policy(&[site.rule()])));
    let _log = LogOnPanic(&bx);
    let proxy = Proxy::start(&onion, &["--destination", &site.rule()]);
    let page = noise(150_000, 1);
    site.put("/page.bin", BINARY, page.clone());

    let first = proxy.get(&site.url("/page.bin"));
    assert_eq!(first.status, 200, "{}", first.text());
    // A miss, unless the Tor stream broke before the body and bento proxy
    // asked again (it says so): then the box had cached the first answer,
    // and the repeat counts as one more hit.
    if !proxy.log().contains("retrying a request") {
        assert_eq!(first.cache(), Some("miss"));
    }
    assert!(first.body == page, "the first answer differs from the page");
    let second = proxy.get(&site.url("/page.bin"));
    assert_eq!(second.status, 200);
    assert_eq!(second.cache(), Some("hit"));
    assert!(
        second.body == page,
        "the cached answer differs from the page"
    );
    assert_eq!(site.hits("/page.bin"), 1, "the origin saw one request");
    assert!(second.header("age").is_some());
    // The origin's headers come through; framing is the proxy's.
    assert_eq!(
        second.header("content-type"),
        Some("application/octet-stream")
    );

    // HEAD is answered from the cached GET, with the entity's length.
    let head = proxy.request("HEAD", &site.url("/page.bin"), "");
    assert_eq!(head.status, 200);
    assert_eq!(head.cache(), Some("hit"));
    assert_eq!(head.header("content-length"), Some("150000"));
    // A HEAD without a cached GET goes to the origin as HEAD.
    site.put("/unseen", BINARY, noise(5_000, 2));
    let head = proxy.request("HEAD", &site.url("/unseen"), "");
    assert_eq!(head.status, 200);
    assert_eq!(head.cache(), Some("miss"));
    assert_eq!(head.header("content-length"), Some("5000"));
    assert_eq!(site.hits("/unseen"), 1);
    // The URL after the proxy's own address works too (how https:// URLs
    // reach the box from clients that tunnel them otherwise).
    let prefixed = proxy.get(&format!("/{}", site.url("/page.bin")));
    assert_eq!(prefixed.cache(), Some("hit"));
    assert!(prefixed.body == page);
    assert_eq!(site.hits("/page.bin"), 1);

    // A reload (no-cache) and a request with a cookie go to the origin,
    // once each, plus once more for each that bento proxy retried after
    // the Tor stream broke (it says so; on a loaded machine it happens).
    let retries = || proxy.log().matches("retrying a request").count();
    let retried_before = retries();
    let reload = proxy.request("GET", &site.url("/page.bin"), "Cache-Control: no-cache\r\n");
    assert_eq!(reload.cache(), Some("miss"));
    let personal = proxy.request("GET", &site.url("/page.bin"), "Cookie: session=1\r\n");
    assert_eq!(personal.cache(), Some("miss"));
    assert_eq!(site.hits("/page.bin"), 3 + (retries() - retried_before));

    // What the origin forbids is never cached; max-age is respected.
    site.put_with("/private", BINARY, "Cache-Control: private\r\n", "mine");
    site.put_with("/short", BINARY, "Cache-Control: max-age=1\r\n", "brief");
    for _ in 0..2 {
        assert_eq!(proxy.get(&site.url("/private")).cache(), Some("miss"));
    }
    assert_eq!(site.hits("/private"), 2);
    assert_eq!(proxy.get(&site.url("/short")).cache(), Some("miss"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(proxy.get(&site.url("/short")).cache(), Some("miss"));
    assert_eq!(site.hits("/short"), 2, "expired after its max-age");

    // A redirect followed at the box comes back as a redirect to the final
    // URL (so relative links resolve), whose page is then answered without
    // a second fetch: from the cache, or once from the stash if it may not
    // be cached.
    site.put_with("/old", BINARY, "Location: /new\r\n", "");
    site.put("/new", BINARY, "moved here");
    let moved = proxy.get(&site.url("/old"));
    assert_eq!(moved.status, 302, "{}", moved.text());
    assert_eq!(moved.header("location"), Some(site.url("/new").as_str()));
    let new = proxy.get(&site.url("/new"));
    assert_eq!(
        (new.text().as_str(), new.cache()),
        ("moved here", Some("hit"))
    );
    site.put_with("/old-private", BINARY, "Location: /new-private\r\n", "");
    site.put_with(
        "/new-private",
        BINARY,
        "Cache-Control: private\r\n",
        "not for the cache",
    );
    assert_eq!(proxy.get(&site.url("/old-private")).status, 302);
    let new = proxy.get(&site.url("/new-private"));
    assert_eq!(new.text(), "not for the cache");
    assert_eq!(new.cache(), Some("miss"));
    assert_eq!(site.hits("/new-private"), 1, "answered from the stash");
    assert_eq!(proxy.get(&site.url("/new-private")).cache(), Some("miss"));
    assert_eq!(site.hits("/new-private"), 2, "the stash is used once");

    // Not found is relayed as it is, and not cached.
    let missing = proxy.get(&site.url("/missing"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "not found");
    let stats = proxy.stats();
    let retried = proxy.log().matches("retrying a request").count();
    assert_eq!(stats["hits"], 4 + retried, "{stats}");
}

#[test]
fn the_cache_stays_within_its_entry_and_byte_bounds_evicting_the_least_recently_used() {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    let (_bx, onion) = onion_test_box(Some(&http_policy(&[site.rule()])));
    let proxy = Proxy::start(
        &onion,
        &[
            "--destination",
            &site.rule(),
            "--max-entries",
            "3",
            "--cache-size",
            "100000",
            "--max-object",
            "50000",
        ],
    );
    for name in ["a", "b", "c", "d"] {
        site.put(
            &format!("/{name}"),
            BINARY,
            noise(20_000, name.as_bytes()[0].into()),
        );
    }
    let fetch = |name: &str| {
        let response = proxy.get(&site.url(&format!("/{name}")));
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            response.body == noise(20_000, name.as_bytes()[0].into()),
            "/{name} differs"
        );
        let stats = proxy.stats();
        assert!(stats["entries"].as_u64().unwrap() <= 3, "{stats}");
        assert!(stats["bytes"].as_u64().unwrap() <= 100_000, "{stats}");
        response.cache().unwrap().to_owned()
    };

    // Entries: a, b, c fill the cache; a is used again, so b is the least
    // recently used when d comes in.
    for name in ["a", "b", "c"] {
        assert_eq!(fetch(name), "miss");
    }
    assert_eq!(fetch("a"), "hit");
    assert_eq!(fetch("d"), "miss");
    assert_eq!(fetch("b"), "miss", "b was evicted");
    assert_eq!(site.hits("/b"), 2);
    assert_eq!(fetch("a"), "hit", "a was kept");
    assert_eq!(fetch("c"), "miss", "c was evicted for b");
    assert_eq!(site.hits("/a"), 1);
    assert_eq!(proxy.stats()["evictions"], 3);

    // Bytes: two 45 kB objects fit in 100 kB with nothing else; a third
    // pushes the oldest out.
    for name in ["x", "y", "z"] {
        site.put(
            &format!("/{name}"),
            BINARY,
            noise(45_000, name.as_bytes()[0].into()),
        );
    }
    let fetch45 = |name: &str| {
        let response = proxy.get(&site.url(&format!("/{name}")));
        assert!(response.body == noise(45_000, name.as_bytes()[0].into()));
        let stats = proxy.stats();
        assert!(stats["bytes"].as_u64().unwrap() <= 100_000, "{stats}");
        response.cache().unwrap().to_owned()
    };
    assert_eq!(fetch45("x"), "miss");
    assert_eq!(fetch45("y"), "miss");
    assert_eq!(fetch45("x"), "hit");
    assert_eq!(fetch45("z"), "miss");
    assert_eq!(fetch45("y"), "miss", "y was pushed out by bytes");
    assert_eq!(site.hits("/y"), 2);

    // An object over --max-object is relayed whole, never cached.
    site.put("/large", BINARY, noise(60_000, 9));
    for _ in 0..2 {
        let response = proxy.get(&site.url("/large"));
        assert_eq!(response.cache(), Some("miss"));
        assert!(response.body == noise(60_000, 9));
    }
    assert_eq!(site.hits("/large"), 2);
    let stats = proxy.stats();
    assert!(stats["entries"].as_u64().unwrap() <= 3, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() <= 100_000, "{stats}");
}

#[test]
fn bad_requests_refused_destinations_oversized_responses_and_connect_get_clear_errors_and_the_proxy_keeps_serving()
 {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = elsewhere.local_addr().unwrap().port();
    let (_bx, onion) = onion_test_box(Some(&http_policy(&[site.rule()])));
    let proxy = Proxy::start(
        &onion,
        &["--destination", &site.rule(), "--max-response", "200000"],
    );
    site.put("/ok", BINARY, "fine");
    site.put("/huge", BINARY, noise(300_000, 3));
    assert_eq!(proxy.get(&site.url("/ok")).cache(), Some("miss"));
    let still_serves = || {
        let ok = proxy.get(&site.url("/ok"));
        assert_eq!((ok.status, ok.text().as_str()), (200, "fine"));
        assert_eq!(ok.cache(), Some("hit"));
    };

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "malformed request line \"GARBAGE\"",
        ),
        (
            b"GET http://127.0.0.1/ HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "malformed header line",
        ),
        (
            format!(
                "GET http://127.0.0.1/ HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            431,
            "the request head is over 65536 bytes",
        ),
        (
            b"GET ftp://127.0.0.1/ HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "is not an http:// or https:// URL",
        ),
        (
            b"GET http://127.0.0.1/ HTTP/3\r\n\r\n".to_vec(),
            505,
            "is not HTTP/1.0 or HTTP/1.1",
        ),
        (
            b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n".to_vec(),
            501,
            "CONNECT (a TLS tunnel) is not supported",
        ),
        (
            format!(
                "POST {} HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
                site.url("/ok")
            )
            .into_bytes(),
            405,
            "POST is not proxied",
        ),
    ];
    for (request, status, message) in cases {
        let response = proxy.raw(&request);
        assert_eq!(response.status, status, "{}", response.text());
        assert!(response.text().contains(message), "{}", response.text());
        assert_eq!(response.cache(), None);
        still_serves();
    }
    assert_eq!(
        proxy
            .raw(b"POST http://x/ HTTP/1.1\r\n\r\n")
            .header("allow"),
        Some("GET, HEAD")
    );

    // A destination neither the manifest nor the policy opens: the box's
    // reason, and nothing contacted.
    let refused = format!("http://127.0.0.1:{refused_port}/");
    let response = proxy.get(&refused);
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains(&format!(
            "this box will not fetch {refused}: connection to 127.0.0.1:{refused_port} refused"
        )),
        "{}",
        response.text()
    );
    elsewhere.set_nonblocking(true).unwrap();
    assert!(
        elsewhere.accept().is_err(),
        "the refused server was contacted"
    );
    still_serves();

    // A response over --max-response: 502 saying so, and not relayed.
    let response = proxy.get(&site.url("/huge"));
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response
            .text()
            .contains("is 300000 bytes, over this proxy's limit of 200000 bytes"),
        "{}",
        response.text()
    );
    still_serves();

    // https:// onion sites would need TLS in the sandbox.
    let response =
        proxy.get("https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion/");
    assert_eq!(response.status, 502);
    assert!(
        response
            .text()
            .contains("https:// onion sites are not supported")
    );
    still_serves();
    let log = proxy.log();
    assert!(
        !log.contains("starting a new one"),
        "one instance served all: {log}"
    );
}

/// The local site on `port` as an onion site on port 80 (ADD_ONION on a
/// relay of the network), once its descriptor is uploaded; it lives as
/// long as the returned control connection.
async fn publish_onion_site(port: u16) -> (bento_tor::TorControl, bento_tor::OnionService) {
    let mut control = bento_tor::TorControl::connect(&control_port())
        .await
        .unwrap();
    let service = control
        .add_onion(
            &bento_tor::OnionKey::New,
            &[(80, format!("127.0.0.1:{port}").parse().unwrap())],
            &["DiscardPK"],
        )
        .await
        .unwrap();
    control
        .wait_for_descriptor_upload(&service.service_id, Duration::from_secs(90))
        .await
        .unwrap();
    (control, service)
}

#[test]
fn an_onion_site_through_a_proxy_on_a_default_policy_box_is_fetched_once_then_served_from_cache() {
    let _turn = crate::tor::one_at_a_time();
    // Box 0 of the network runs the default policy: no `http`, so
    // `bento proxy` asks only for what that policy grants.
    let site = Site::start();
    let page = noise(40_000, 5);
    site.put("/onion-page", BINARY, page.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut control, service) = runtime.block_on(publish_onion_site(site.port));
    let server = net().boxes[0].clone();
    let proxy = Proxy::start(&server, &[]);
    assert!(
        proxy.log().contains("does not grant `http`"),
        "{}",
        proxy.log()
    );
    let url = format!("http://{}/onion-page", service.onion_address());
    // The first lookup may race the descriptor reaching the HSDirs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let response = proxy.get(&url);
        if response.status == 200 || Instant::now() > deadline {
            break response;
        }
        eprintln!("not reachable yet: {}", response.text());
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.cache(), Some("miss"));
    assert!(first.body == page);
    let second = proxy.get(&url);
    assert_eq!(second.cache(), Some("hit"));
    assert!(second.body == page);
    assert_eq!(
        site.hits("/onion-page"),
        1,
        "the onion site saw one request"
    );

    // A clear-web site needs `http`, which this box does not grant.
    let response = proxy.get(&site.url("/onion-page"));
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("fetches only .onion sites"),
        "{}",
        response.text()
    );
    assert_eq!(site.hits("/onion-page"), 1);
    runtime
        .block_on(control.del_onion(&service.service_id))
        .unwrap();
}

#[test]
fn when_an_instance_reaches_its_lifetime_bento_proxy_says_so_and_serves_from_a_new_one() {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    site.put("/p", BINARY, "page");
    let (_bx, onion) = onion_test_box(Some(&http_policy(&[site.rule()])));
    let proxy = Proxy::start(&onion, &["--destination", &site.rule(), "--lifetime", "5s"]);
    assert_eq!(proxy.get(&site.url("/p")).cache(), Some("miss"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !proxy
        .log()
        .contains("starting a new one (its cache starts empty)")
    {
        assert!(Instant::now() < deadline, "{}", proxy.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        proxy.log().contains("the proxy instance ended after"),
        "{}",
        proxy.log()
    );
    // Requests keep working (on whichever instance is running), and the
    // page is fetched from the origin again: the old cache is gone.
    let response = proxy.get(&site.url("/p"));
    assert_eq!((response.status, response.text().as_str()), (200, "page"));
    assert_eq!(site.hits("/p"), 2);
}

/// The function on its own (a local box, no Tor): whatever arrives on a
/// service channel gets an answer, and the next channel is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_service_channel_gets_a_400_answer_and_the_next_channel_is_served() {
    let site = Site::start();
    site.put("/x", BINARY, "x marks");
    let bx = TestBox::with_policy(&http_policy(&[site.rule()]), &[]);
    let manifest = MANIFEST
        .replace("\"http\", \"tor_connect\"", "\"http\"")
        .replace(
            "destinations = [\"accept *:80\", \"accept *:443\"]",
            &format!("destinations = [{:?}]", site.rule()),
        );
    let (_, token) = bx
        .connect()
        .await
        .store_with_manifest("proxy.py", SOURCE, &manifest)
        .await
        .unwrap();
    let (session, service) = bx
        .connect()
        .await
        .invoke_service(&token, "main", "[]")
        .await
        .unwrap();
    let service = service.unwrap();
    let ask = |line: Vec<u8>| {
        let (bx, service) = (&bx, &service);
        async move {
            let mut channel = bx.connect().await.connect_service(service).await.unwrap();
            channel.send(&line).await.unwrap();
            channel.end_input().await.unwrap();
            let answer = channel.read_to_end().await.unwrap();
            let end = answer.iter().position(|&b| b == b'\n').unwrap();
            let head: serde_json::Value = serde_json::from_slice(&answer[..end]).unwrap();
            (
                head,
                String::from_utf8_lossy(&answer[end + 1..]).into_owned(),
            )
        }
    };
    for (line, message) in [
        (
            b"not json\n".to_vec(),
            "the request is not one line of JSON",
        ),
        (b"[1, 2]\n".to_vec(), "the request is not a JSON object"),
        (
            b"{\"op\": \"format-disk\"}\n".to_vec(),
            "unknown op 'format-disk'",
        ),
        (
            b"{\"op\": \"fetch\", \"method\": \"DELETE\", \"url\": \"http://a/\"}\n".to_vec(),
            "only GET and HEAD are proxied",
        ),
        (
            b"{\"op\": \"fetch\", \"method\": \"GET\", \"url\": \"http://a:99999/\"}\n".to_vec(),
            "bad port",
        ),
        (
            b"{\"op\": \"fetch\", \"method\": \"GET\", \"url\": \"http://a/\", \"headers\": 5}\n"
                .to_vec(),
            "headers must be a list",
        ),
        (
            b"{\"op\": \"fetch\", \"method\": \"GET\", \"url\": \"http://a.onion/\\r\\nX: y\"}\n"
                .to_vec(),
            "spaces or control characters in the URL",
        ),
        (vec![b'{'; 70_000], "request over 65536 bytes"),
        (Vec::new(), "the request is not one line of JSON"),
    ] {
        let (head, body) = ask(line).await;
        let status = head["status"].as_u64().unwrap();
        assert!(status == 400 || status == 405, "{head}");
        assert!(body.contains(message), "{body}");
        assert_eq!(head["length"].as_u64().unwrap() as usize, body.len());
    }
    // A client that connects and says nothing holds the proxy up for at
    // most 10 s, then gets its answer; the next request is served.
    let silent = async {
        let channel = bx.connect().await.connect_service(&service).await.unwrap();
        let (mut reader, _writer) = channel.into_split();
        let mut answer = Vec::new();
        while let Some(data) = reader.next().await.unwrap() {
            answer.extend_from_slice(&data);
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(silent.await.contains("no request within 10 s"));
    let line = format!(
        "{{\"op\": \"fetch\", \"method\": \"GET\", \"url\": {:?}, \"headers\": []}}\n",
        site.url("/x")
    );
    let (head, body) = ask(line.into_bytes()).await;
    assert_eq!(head["status"], 200, "{head}");
    assert_eq!(body, "x marks");
    bx.connect().await.kill(&session).await.unwrap();
    bx.assert_serves_hello().await;
}

#[test]
fn bad_options_are_refused_before_anything_is_sent() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, message) in [
        (
            vec!["--cache-size", "100MiB"],
            "--cache-size may be at most 50331648 bytes",
        ),
        (
            vec!["--max-response", "0"],
            "--max-response must be from 1 byte",
        ),
        (vec!["--max-object", "17MiB"], "--max-object may be at most"),
        (vec!["--lifetime", "10m"], "--lifetime may be at most 270 s"),
        (vec!["--cache-size", "lots"], "invalid value 'lots'"),
        (vec!["--listen", taken.as_str()], "cannot listen on"),
    ] {
        // An address where no box listens: nothing may be sent anyway.
        let out = Command::new(BENTO)
            .args(["--server", "127.0.0.1:9", "proxy"])
            .args(&args)
            .env_remove("BENTO_SOCKS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Fetch `rounds` distinct URLs `url(i)` twice each; print the median
/// (and extreme) times of the misses and of the hits.
fn measure(proxy: &Proxy, what: &str, rounds: usize, url: impl Fn(usize) -> String) {
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let url = url(i);
        let started = Instant::now();
        let miss = proxy.get(&url);
        assert_eq!(miss.cache(), Some("miss"), "{}", miss.text());
        misses.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        assert_eq!(proxy.get(&url).cache(), Some("hit"));
        hits.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    misses.sort_by(f64::total_cmp);
    hits.sort_by(f64::total_cmp);
    eprintln!(
        "{what}: median miss {:.0} ms, median hit {:.0} ms ({rounds} each; miss {:.0}-{:.0} ms, hit {:.0}-{:.0} ms)",
        misses[rounds / 2],
        hits[rounds / 2],
        misses[0],
        misses[rounds - 1],
        hits[0],
        hits[rounds - 1],
    );
}

/// Median latency of misses and hits through Tor, for
/// docs/functions/proxy.md. Run with:
/// `cargo test --test all -- proxy::latency --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check; run by hand"]
fn latency_of_hits_and_misses_through_tor() {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    let rounds = 20;
    for size in [1_000usize, 100_000] {
        for i in 0..rounds {
            site.put(&format!("/{size}/{i}"), BINARY, noise(size, i as u64));
        }
    }
    // A web origin on 127.0.0.1, fetched by the box with `http`.
    {
        let (_bx, onion) = onion_test_box(Some(&http_policy(&[site.rule()])));
        let proxy = Proxy::start(&onion, &["--destination", &site.rule()]);
        for size in [1_000usize, 100_000] {
            measure(&proxy, &format!("web origin, {size} B"), rounds, |i| {
                site.url(&format!("/{size}/{i}"))
            });
        }
    }
    // The same pages as an onion site, through a default-policy box.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_control, service) = runtime.block_on(publish_onion_site(site.port));
    let proxy = Proxy::start(&net().boxes[0], &[]);
    let host = service.onion_address();
    // Wait until the onion site is reachable (not measured).
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.get(&format!("http://{host}/warm-up")).status != 404 {
        assert!(
            Instant::now() < deadline,
            "the onion site never became reachable"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    for size in [1_000usize, 100_000] {
        measure(&proxy, &format!("onion site, {size} B"), rounds, |i| {
            format!("http://{host}/{size}/{i}")
        });
    }
}
