//! The embedded web pages as HTTP: each is served with its content type and a
//! Content-Security-Policy, the client library is the one in clients/js/, and `--web false`
//! serves none of them. (tests/browser.rs shows them working in a browser.)

mod common;

use common::{Http, TestServer};

const PAGES: [(&str, &str); 6] = [
    ("/", "text/html"),
    ("/admin", "text/html"),
    ("/chat.js", "text/javascript"),
    ("/admin.js", "text/javascript"),
    ("/style.css", "text/css"),
    ("/shardcast.js", "text/javascript"),
];

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_served_with_a_csp() {
    let server = TestServer::default_config();
    let mut http = Http::connect(server.addr()).await;
    for (path, content_type) in PAGES {
        let r = http.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.content_type.starts_with(content_type), "{path}: {r:?}");
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';"),
            "{path} has no strict CSP: {csp:?}"
        );
        assert!(!r.body.is_empty(), "{path} is empty");
    }
    let lib = http.get("/shardcast.js", &[]).await;
    let source = include_str!("../clients/js/shardcast.js");
    assert_eq!(lib.body, source, "/shardcast.js is clients/js/shardcast.js");
    let cors = lib.header("access-control-allow-origin");
    assert_eq!(cors, Some("*"), "other origins may import the library");
    let page = http.get("/", &[]).await;
    assert_eq!(page.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn web_false_serves_no_page() {
    let server = TestServer::start(|c| c.web = false);
    let mut http = Http::connect(server.addr()).await;
    for (path, _) in PAGES {
        let r = http.get(path, &[]).await;
        assert_eq!(r.status, 404, "{path} with --web false: {}", r.body);
    }
    assert_eq!(http.get("/healthz", &[]).await.status, 200);
}
