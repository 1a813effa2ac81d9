//! The web pages, embedded in the binary: the chat page (`/`), the operator page (`/admin`),
//! their scripts and stylesheet, and the JavaScript client library (`/shardcast.js`, from
//! `clients/js/`).
//!
//! Owns the static assets and their headers (Content-Security-Policy on every page). It must
//! not touch connections or server state: the pages talk to the server like any client, over
//! `/ws` and `/api/`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue,
};

/// Scripts and styles only from this origin, no inline code, and connections (WebSocket,
/// `fetch`) only back to this origin: an injected `<script>` or `onerror=` would not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";

/// (path, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../web/index.html"),
    ),
    (
        "/admin",
        "text/html; charset=utf-8",
        include_bytes!("../web/admin.html"),
    ),
    ("/chat.js", JS, include_bytes!("../web/chat.js")),
    ("/admin.js", JS, include_bytes!("../web/admin.js")),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/style.css"),
    ),
    (
        "/shardcast.js",
        JS,
        include_bytes!("../clients/js/shardcast.js"),
    ),
    (
        "/shardcast.d.ts",
        "text/plain; charset=utf-8",
        include_bytes!("../clients/js/shardcast.d.ts"),
    ),
];

/// The asset at `path`, or `None` when there is none.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // The assets change with the binary: a browser must ask again.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if path.starts_with("/shardcast.") {
        // An app on another origin may `import` the library (modules are fetched with CORS).
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    Some(response)
}
