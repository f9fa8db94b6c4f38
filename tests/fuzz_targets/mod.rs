//! The fuzz targets, shared by the stable driver (`tests/fuzz.rs`) and cargo-fuzz (`fuzz/`):
//! each takes arbitrary bytes, feeds one parser of user or server input, and must not panic.
//! Some also check a property of the result (bounded, inert server text; a total order).
#![allow(dead_code)]

use std::time::Instant;

use azmutex::auth::signer;
use azmutex::rest::{parse_error_body, parse_retry_after, service_error};
use azmutex::{
    AccountKey, BreakPeriod, ContainerName, Credential, LeaseDuration, LeaseId, LockName, SasToken, StorageConfig,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Connection strings, and everything printed from the result.
pub fn connection_string(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    match StorageConfig::parse_connection_string(&s) {
        Ok(c) => drop(format!("{c:?}")),
        Err(e) => drop(format!("{e} {e:?}")),
    }
}

/// The environment (`AZURE_STORAGE_*`), split from one input at NUL bytes.
pub fn environment(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let parts: Vec<&str> = s.split('\0').collect();
    let names = [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_SERVICE_ENDPOINT",
    ];
    let first = data.first().copied().unwrap_or(0) as usize;
    let r = StorageConfig::from_vars(|name| {
        let i = names.iter().position(|n| *n == name)?;
        (first >> i & 1 == 1).then(|| parts.get(i).copied().unwrap_or("").to_string())
    });
    drop(format!("{r:?}"));
}

/// SAS tokens and URLs, and their redacted forms.
pub fn sas(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(t) = SasToken::parse(&s) {
        drop(format!("{t:?} {}", t.redacted()));
    }
    drop(azmutex::auth::redact_query(&s));
}

/// Endpoint URLs.
pub fn url(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let cred = Credential::Sas(SasToken::parse("sv=1&sig=x").unwrap());
    if let Ok(c) = StorageConfig::new(&s, cred) {
        drop(format!("{c:?}"));
        drop(azmutex::config::redact_url(&c.endpoint));
    }
}

/// Lock and container names, lease ids, account keys.
pub fn names(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    drop(LockName::new(s.as_ref()).map_err(|e| e.to_string()));
    drop(ContainerName::new(s.as_ref()).map_err(|e| e.to_string()));
    drop(LeaseId::parse(&s).map_err(|e| e.to_string()));
    drop(AccountKey::from_base64(&s).map(|k| format!("{k:?}")));
}

/// Lease durations and break periods from 8 bytes.
pub fn durations(data: &[u8]) {
    let mut b = [0u8; 8];
    for (i, x) in data.iter().take(8).enumerate() {
        b[i] = *x;
    }
    let n = u64::from_le_bytes(b);
    for n in [n, n % 128] {
        if let Ok(d) = LeaseDuration::seconds(n) {
            drop((d.as_duration(), d.to_string()));
        }
        drop(BreakPeriod::seconds(n).map(BreakPeriod::get));
    }
}

/// `Retry-After` values.
pub fn retry_after(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Some(d) = parse_retry_after(&s) {
        assert!(d <= azmutex::rest::MAX_RETRY_AFTER);
        // The arithmetic the client does with it.
        assert!(Instant::now().checked_add(d).is_some());
    }
}

/// XML error bodies.
pub fn error_body(data: &[u8]) {
    let (code, message) = parse_error_body(data);
    for text in [code, message].into_iter().flatten() {
        assert!(!text.chars().any(azmutex::error::is_unsafe_char), "{text:?}");
        assert!(text.chars().count() <= azmutex::rest::MAX_MESSAGE_CHARS + 1);
    }
}

/// Response headers and body together, as the client reads an error answer.
pub fn response(data: &[u8]) {
    let mut headers = HeaderMap::new();
    let (head, body) = data.split_at(data.len().min(data.first().copied().unwrap_or(0) as usize));
    for line in head.split(|b| *b == b'\n') {
        let mut parts = line.splitn(2, |b| *b == b':');
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = match name.first() {
            Some(b'c') => HeaderName::from_static("x-ms-error-code"),
            Some(b'r') => HeaderName::from_static("x-ms-request-id"),
            Some(b'a') => HeaderName::from_static("retry-after"),
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let status = u16::from(data.get(1).copied().unwrap_or(0)) + 300;
    let e = service_error(status, &headers, body);
    let shown = e.to_string();
    assert!(!shown.chars().any(azmutex::error::is_unsafe_char), "{shown:?}");
}

/// The SharedKey signer with arbitrary headers, and the header order being a total order.
pub fn signer(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let parts: Vec<&str> = s.split('\n').collect();
    let headers: Vec<(&str, &str)> = parts
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or("")))
        .collect();
    let url = url::Url::parse("https://a.blob.core.windows.net/c/b?comp=lease").unwrap();
    drop(signer::string_to_sign("PUT", &url, headers.iter().copied(), "a"));
    for w in parts.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            signer::compare_header_names(a, b),
            signer::compare_header_names(b, a).reverse(),
            "{a:?} {b:?}"
        );
    }
    // Sorting panics on a comparator that is not a total order (libFuzzer found one).
    let mut sorted = parts.clone();
    sorted.sort_by(|a, b| signer::compare_header_names(a, b));
    drop(signer::latin1(data));
    drop(azmutex::error::sanitize_text(&s, 40));
}
