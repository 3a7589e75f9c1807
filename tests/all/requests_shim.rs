//! Research-prototype functions written with `requests` run unchanged: the
//! runtime's `requests` subset goes through `api.http_request`, so the box
//! checks every destination as for `api.http_get`, and anything the subset
//! lacks fails with a clear error instead of doing something else.

use crate::capabilities::{manifest, policy};
use crate::harness::{TestBox, message};
use crate::local_servers::LocalServer;

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

fn allow(servers: &[&LocalServer]) -> Vec<String> {
    servers
        .iter()
        .map(|s| format!("accept 127.0.0.1:{}", s.port))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototypes_browse_function_runs_unchanged() {
    let page = LocalServer::http(
        "200 OK",
        "Content-Type: text/html\r\n".into(),
        b"<html>the page</html>".to_vec(),
    );
    let rules = allow(&[&page]);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    // As in the research prototype's browser function.
    let source = r#"
import requests

def main(url):
    api.send(requests.get(url, timeout=1).content)
"#;
    let args = serde_json::json!([format!("http://127.0.0.1:{}/", page.port)]);
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["http"], &rules, ""), &args.to_string())
        .await;
    result.unwrap();
    assert_eq!(text(&output), "<html>the page</html>");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sends_params_forms_json_headers_and_auth_and_reads_the_answer() {
    let echo = LocalServer::http_echo();
    let rules = allow(&[&echo]);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import json
import requests
from requests.exceptions import RequestException

def main(base):
    r = requests.get(base + "/search", params={"q": "tor relays", "n": [1, 2]},
                     headers={"X-Test": "yes"}, timeout=5)
    seen = r.json()
    api.send("get %d %s %s %s %s %s\n" % (r.status_code, r.ok, r.reason, seen["target"],
             seen["headers"]["x-test"], r.headers["x-echo"]))
    seen = requests.post(base + "/form", data={"a": "1", "b": "two words"}).json()
    api.send("form %s %s %s\n" % (seen["method"], seen["headers"]["content-type"], seen["body"]))
    seen = requests.post(base + "/json", json={"k": [1, 2]}, auth=("user", "pw")).json()
    api.send("json %s %s %s\n" % (seen["headers"]["content-type"], json.loads(seen["body"]),
             seen["headers"]["authorization"]))
    with requests.Session() as s:
        s.headers["X-Session"] = "kept"
        seen = s.put(base + "/put", data=b"raw bytes").json()
    api.send("session %s %s %s\n" % (seen["method"], seen["headers"]["x-session"], seen["body"]))
    assert isinstance(requests.exceptions.Timeout("x"), RequestException)
"#;
    let args = serde_json::json!([format!("http://127.0.0.1:{}", echo.port)]);
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["http"], &rules, ""), &args.to_string())
        .await;
    result.unwrap();
    let lines: Vec<String> = text(&output).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "get 200 True OK /search?q=tor+relays&n=1&n=2 yes yes",
            "form POST application/x-www-form-urlencoded a=1&b=two+words",
            "json application/json {'k': [1, 2]} Basic dXNlcjpwdw==",
            "session PUT kept raw bytes",
        ]
    );
    assert_eq!(echo.accepted(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_timeout_against_a_silent_server_raises_timeout_and_the_box_serves_the_next_user()
 {
    let silent = LocalServer::silent();
    let rules = allow(&[&silent]);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import requests

def main(url):
    started = api.time()
    try:
        requests.get(url, timeout=0.5)
        api.send("answered")
    except requests.exceptions.ReadTimeout as e:
        took = api.time() - started
        api.send("timeout within the wall limit: %s" % (took < 30))
"#;
    let args = serde_json::json!([format!("http://127.0.0.1:{}/", silent.port)]);
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&["http", "time"], &rules, ""),
            &args.to_string(),
        )
        .await;
    result.unwrap();
    assert_eq!(text(&output), "timeout within the wall limit: True");
    assert_eq!(silent.accepted(), 1);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_refused_destination_raise_connection_error_without_contacting_it() {
    let allowed = LocalServer::http("200 OK", String::new(), b"ok".to_vec());
    let forbidden = LocalServer::http("200 OK", String::new(), b"secret".to_vec());
    let rules = allow(&[&allowed]);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import requests

def main(url):
    try:
        requests.get(url)
    except requests.ConnectionError as e:
        api.send("ConnectionError: %s" % e)
"#;
    let args = serde_json::json!([format!("http://127.0.0.1:{}/", forbidden.port)]);
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["http"], &rules, ""), &args.to_string())
        .await;
    result.unwrap();
    let output = text(&output);
    assert!(
        output.starts_with("ConnectionError: requests: "),
        "{output}"
    );
    assert!(output.contains("refused"), "{output}");
    assert_eq!(forbidden.accepted(), 0);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_parts_of_requests_and_a_missing_http_grant_fail_with_clear_errors() {
    let page = LocalServer::http("404 Not Found", String::new(), b"gone".to_vec());
    let rules = allow(&[&page]);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import requests

def main(url):
    for name, call in [
        ("files", lambda: requests.post(url, files={"f": b"x"})),
        ("verify", lambda: requests.get(url, verify=False)),
        ("redirects", lambda: requests.get(url, allow_redirects=False)),
        ("cookies", lambda: requests.get(url, cookies={"a": "b"})),
        ("mount", lambda: requests.Session().mount("http://", None)),
        ("scheme", lambda: requests.get("ftp://example.org/")),
        ("timeout", lambda: requests.get(url, timeout=0)),
    ]:
        try:
            call()
            api.send("%s: no error\n" % name)
        except Exception as e:
            api.send("%s: %s: %s\n" % (name, type(e).__name__, e))
    r = requests.get(url)
    try:
        r.raise_for_status()
    except requests.HTTPError as e:
        api.send("status: %s\n" % e)
"#;
    let args = serde_json::json!([format!("http://127.0.0.1:{}/", page.port)]);
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["http"], &rules, ""), &args.to_string())
        .await;
    result.unwrap();
    let output = text(&output);
    for expected in [
        "files: Unsupported: requests: files= (multipart uploads) is not supported in Bento's requests subset\n",
        "verify: Unsupported: requests: verify=False is not supported",
        "redirects: Unsupported: requests: allow_redirects=False is not supported",
        "cookies: Unsupported: requests: cookies= is not supported",
        "mount: Unsupported: requests: Session.mount (transport adapters) is not supported",
        "scheme: InvalidURL: requests: 'ftp://example.org/' is not an http:// or https:// URL\n",
        "timeout: ValueError: requests: timeout must be more than 0, not 0\n",
        &format!(
            "status: 404 Client Error: Not Found for url: http://127.0.0.1:{}/\n",
            page.port
        ),
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    assert_eq!(
        page.accepted(),
        1,
        "only the last request reached the server"
    );

    // Without the `http` capability, the shim says what is missing.
    let (_, result) = bx
        .run(
            "import requests\ndef main(url):\n    requests.get(url)\n",
            &args.to_string(),
        )
        .await;
    let error = message(&result);
    assert!(
        error.contains("PermissionError: requests needs the `http` capability"),
        "{error}"
    );
    assert_eq!(page.accepted(), 1);
    bx.assert_serves_hello().await;
}
