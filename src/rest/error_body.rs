//! Error answers: the service's error code, message and request id from headers and XML
//! bodies (bounded and stripped of control characters), and `Retry-After`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::*;

/// The longest `<Message>` kept from an error body (characters), after control characters are
/// escaped.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// The longest error code or request id kept from an answer (characters).
pub(super) const MAX_CODE_CHARS: usize = 128;

/// The longest wait a `Retry-After` can ask for; larger values (up to 2^64 seconds, or dates
/// far away) are clamped to this before any time arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The service's error from an answer's status, headers and (possibly cut) body. Every text in
/// it is server-controlled: cut to a bounded length and stripped of control characters.
#[doc(hidden)]
pub fn service_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ServiceError {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| sanitize_text(v.trim(), MAX_CODE_CHARS))
            .filter(|v| !v.is_empty())
    };
    let (xml_code, message) = parse_error_body(body);
    ServiceError {
        status,
        code: h("x-ms-error-code").or(xml_code),
        request_id: h("x-ms-request-id"),
        message,
    }
}

/// Reads `<Error><Code>…</Code><Message>…</Message></Error>`; tolerant of empty, cut or non-XML
/// bodies, namespaced elements, entities, character references and CDATA. The code is cut to
/// 128 characters; the message to its first line and [`MAX_MESSAGE_CHARS`]; both have control
/// characters escaped.
/// See [Status and error codes](https://learn.microsoft.com/en-us/rest/api/storageservices/status-and-error-codes2).
#[doc(hidden)]
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    use quick_xml::events::Event;
    #[derive(PartialEq)]
    enum Field {
        Code,
        Message,
    }
    // Enough of the raw text to cut from (a message's first line, a code).
    const KEEP: usize = 4 * MAX_MESSAGE_CHARS;
    let mut reader = quick_xml::Reader::from_reader(body);
    let (mut code, mut message) = (None, None);
    let mut depth = 0usize;
    let mut current: Option<(Field, usize)> = None;
    let mut text = String::new();
    let push = |text: &mut String, s: &str| {
        if text.len() < KEEP {
            let room = KEEP - text.len();
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&s[..end]);
        }
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                let field = match e.local_name().as_ref() {
                    b"Code" if code.is_none() => Some(Field::Code),
                    b"Message" if message.is_none() => Some(Field::Message),
                    _ => None,
                };
                if current.is_none() {
                    if let Some(f) = field {
                        current = Some((f, depth));
                        text.clear();
                    }
                }
            }
            Ok(Event::Text(t)) if current.is_some() => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::CData(t)) if current.is_some() => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::GeneralRef(r)) if current.is_some() => {
                let resolved = xml_entity(&r);
                if let Some(s) = resolved {
                    push(&mut text, &s);
                }
            }
            Ok(Event::End(_)) => {
                if let Some((field, d)) = &current {
                    if *d == depth {
                        let value = text.trim();
                        match field {
                            Field::Code => code = Some(sanitize_text(value, MAX_CODE_CHARS)).filter(|s| !s.is_empty()),
                            Field::Message => {
                                let first = value.lines().next().unwrap_or_default().trim();
                                message = Some(sanitize_text(first, MAX_MESSAGE_CHARS)).filter(|s| !s.is_empty())
                            }
                        }
                        current = None;
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
        if code.is_some() && message.is_some() {
            break;
        }
    }
    (code, message)
}

/// `Retry-After`: seconds or an HTTP date, clamped to [`MAX_RETRY_AFTER`].
#[doc(hidden)]
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Any run of digits, however long: a number past u64 is "very long" too.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    httpdate::parse_http_date(v).ok().map(|t| {
        t.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER)
    })
}

/// The text of an XML entity or character reference (`&amp;`, `&#x41;`): the five predefined
/// entities and character references; `None` for anything else (left out, never expanded).
pub(crate) fn xml_entity(r: &quick_xml::events::BytesRef<'_>) -> Option<String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Some(c.to_string()),
        Ok(None) => match r.as_ref() {
            b"lt" => Some("<".into()),
            b"gt" => Some(">".into()),
            b"amp" => Some("&".into()),
            b"apos" => Some("'".into()),
            b"quot" => Some("\"".into()),
            _ => None,
        },
        Err(_) => None,
    }
}
