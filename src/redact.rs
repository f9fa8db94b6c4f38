//! Redaction: URLs and query strings made fit for printing (`Debug`, `Display`, errors, logs),
//! at the bottom of the house so that every layer (transport, credentials, configuration) uses
//! the one rule. Re-exported as `auth::redact_query` and `config::redact_url`.

use url::Url;

/// A URL fit for printing: user name and password replaced by `***`, a path other than `/`
/// shown as `/...`, the query redacted by [`redact_query`], no fragment, and a
/// host name that could be a piece of a key (one label of 8 or more characters, other than
/// `localhost`) shown as `<host>`.
pub fn redact_url(url: &Url) -> String {
    printable_url(url, false)
}

pub(crate) fn printable_url(url: &Url, show_path: bool) -> String {
    let mut out = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str("***@");
    }
    match url.host() {
        Some(url::Host::Domain(d)) if !d.contains('.') && d.len() >= 8 && d != "localhost" => out.push_str("<host>"),
        Some(_) => out.push_str(url.host_str().unwrap_or_default()),
        None => {}
    }
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    if show_path {
        out.push_str(url.path());
    } else if url.path() == "/" || url.path().is_empty() {
        out.push('/');
    } else {
        out.push_str("/...");
    }
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    out
}

/// The one redaction rule for query strings that may carry a secret (SAS tokens, URLs): used by
/// `Debug`, `Display`, errors and logs.
///
/// It is an allow-list, not a deny-list: a parameter is shown only when its (decoded) name is
/// one of the SAS fields that are not secret and its value has that field's shape (a version,
/// a date, permission letters, a protocol list, an IP range). Everything else — `sig` however it
/// is spelled (`SIG`, `si%67`, ` sig`), unknown names, values of unexpected shape — prints as
/// `name=REDACTED`, with the name itself replaced by `?` unless it is a known field.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (raw_name, raw_value) = p.split_once('=').unwrap_or((p, ""));
            let name = param_name(raw_name);
            let value = percent_encoding::percent_decode_str(raw_value).decode_utf8_lossy();
            let shown = |max: usize, ok: fn(char) -> bool| value.len() <= max && value.chars().all(ok);
            let visible = match name.as_str() {
                "sv" => shown(10, |c| c.is_ascii_digit() || c == '-'),
                "se" | "st" => shown(30, |c| {
                    c.is_ascii_digit() || matches!(c, 'T' | 'Z' | ':' | '.' | '-' | '+')
                }),
                "sp" | "ss" | "srt" | "sr" => shown(16, |c| c.is_ascii_lowercase()),
                "spr" => shown(16, |c| c.is_ascii_lowercase() || c == ','),
                "sip" => shown(31, |c| c.is_ascii_digit() || c == '.' || c == '-'),
                "sdd" => shown(2, |c| c.is_ascii_digit()),
                _ => false,
            };
            if visible {
                format!("{name}={value}")
            } else if KNOWN_SAS_FIELDS.contains(&name.as_str()) {
                format!("{name}=REDACTED")
            } else {
                "?=REDACTED".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A query parameter's name as the service reads it: percent-decoded, trimmed, lower-cased.
pub(crate) fn param_name(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .trim()
        .to_ascii_lowercase()
}

/// SAS query fields (service, account and user delegation SAS), shown by name when redacted.
/// See [Create a service SAS](https://learn.microsoft.com/en-us/rest/api/storageservices/create-service-sas).
const KNOWN_SAS_FIELDS: [&str; 27] = [
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sr", "sig", "si", "sdd", "ses", "skoid", "sktid", "skt", "ske",
    "sks", "skv", "saoid", "suoid", "scid", "rscc", "rscd", "rsce", "rscl", "rsct",
];
