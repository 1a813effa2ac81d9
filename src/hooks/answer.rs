//! A hook answer's HTTP/1.1 framing, read from the front of a connection's buffer: the status
//! line and headers (httparse), then a body by Content-Length, chunked, or to the close.
//!
//! Pure: it owns no connection and no call; `client` feeds it what it read.

use super::HookError;

/// Most headers an answer may have.
const MAX_HEADERS: usize = 32;

/// One answer parsed from the front of the read buffer.
pub(super) struct Parsed<'a> {
    pub(super) status: u16,
    pub(super) body: std::borrow::Cow<'a, [u8]>,
    /// Bytes of the buffer it took.
    pub(super) len: usize,
    pub(super) keep_alive: bool,
}

/// The answer at the front of `buf`, None if it is not all there yet. A status 1xx is skipped.
/// An answer that is not HTTP/1.x, or over `max_answer` bytes of body, is an error.
pub(super) fn parse(
    buf: &[u8],
    max_answer: usize,
    eof: bool,
) -> Result<Option<Parsed<'_>>, HookError> {
    let bad =
        |why: &str| HookError::Unreachable(format!("the backend's answer is not HTTP/1.1: {why}"));
    let mut skipped = 0;
    loop {
        let rest = &buf[skipped..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(bad(&e.to_string())),
        };
        let status = res.code.unwrap_or(0);
        if (100..200).contains(&status) {
            skipped += head;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        let mut keep_alive = res.version == Some(1);
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = (std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| bad("a Content-Length that is not a number"))?;
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = h.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if v.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        let start = skipped + head;
        let body = &buf[start..];
        if chunked {
            let Some((body, used)) = dechunk(body, max_answer)? else {
                return Ok(None);
            };
            return Ok(Some(Parsed {
                status,
                body: body.into(),
                len: start + used,
                keep_alive,
            }));
        }
        if status == 204 || status == 304 {
            length = Some(0);
        }
        return match length {
            Some(n) if n > max_answer => Err(HookError::TooLarge(max_answer)),
            Some(n) if body.len() < n => Ok(None),
            Some(n) => Ok(Some(Parsed {
                status,
                body: body[..n].into(),
                len: start + n,
                keep_alive,
            })),
            // No length: the body ends with the connection.
            None if body.len() > max_answer => Err(HookError::TooLarge(max_answer)),
            None if !eof => Ok(None),
            None => Ok(Some(Parsed {
                status,
                body: body.into(),
                len: buf.len(),
                keep_alive: false,
            })),
        };
    }
}

/// A chunked body at the front of `buf`: the body and the bytes it took, None if incomplete.
fn dechunk(buf: &[u8], max_answer: usize) -> Result<Option<(Vec<u8>, usize)>, HookError> {
    let bad = || HookError::Unreachable("the backend's answer is not HTTP/1.1: a bad chunk".into());
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = (std::str::from_utf8(size).ok())
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(bad)?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len() + size > max_answer {
            return Err(HookError::TooLarge(max_answer));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(bad());
        }
        at += size + 2;
    }
}
