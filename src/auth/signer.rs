//! The SharedKey signer: pure functions from a request to its `Authorization` header.
//!
//! Rules: [Authorize with Shared Key](https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key)
//! (Blob service, version 2009-09-19 and later). Nothing here does I/O or reads the clock, so every
//! rule is unit-tested against vectors produced by the official Python SDK (`tests/vectors/`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

use super::AccountKey;

/// The standard headers whose values fill fixed slots of the string-to-sign, in order.
///
/// See "Blob, Queue, and File services (Shared Key authorization)" in
/// <https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key#blob-queue-and-file-services-shared-key-authorization>.
const SLOTTED_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// Builds the SharedKey string-to-sign for a request.
///
/// `headers` are the request's headers as `(name, value)` pairs (any case). The result is
/// `VERB\n` + eleven slotted standard headers + canonicalized `x-ms-*` headers + canonicalized
/// resource, exactly as the service rebuilds it.
pub fn string_to_sign<'a>(
    method: &str,
    url: &Url,
    headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    account: &str,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    for slot in SLOTTED_HEADERS {
        let value = headers
            .clone()
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(slot))
            .map(|(_, value)| value)
            .unwrap_or("");
        // Since version 2015-02-21 a zero Content-Length is signed as an empty string.
        // https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key#content-length-header-in-version-2015-02-21-and-later
        if !(slot == "content-length" && value == "0") {
            out.push_str(value);
        }
        out.push('\n');
    }
    canonicalized_headers(headers, &mut out);
    canonicalized_resource(url, account, &mut out);
    out
}

/// Appends the canonicalized `x-ms-*` headers: lower-cased names, sorted, `name:value\n`,
/// values trimmed.
///
/// See <https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key#constructing-the-canonicalized-headers-string>.
/// Azure sorts with a culture-aware collation; for the lower-case ASCII names this crate sends
/// (standard `x-ms-*` headers and `[a-z0-9]` metadata names) that equals byte order.
fn canonicalized_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut String) {
    let mut ms: Vec<(String, &str)> = headers
        .into_iter()
        .filter(|(name, _)| name.len() > 5 && name[..5].eq_ignore_ascii_case("x-ms-"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    ms.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in ms {
        out.push_str(&name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
}

/// Appends the canonicalized resource: `/account` + the encoded path as sent, then one
/// `\nname:value` line per query parameter, names lower-cased and sorted, values URL-decoded,
/// repeated names joined with commas (values sorted).
///
/// See <https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key#shared-key-format-for-2009-09-19-and-later>.
/// With a path-style endpoint (`http://127.0.0.1:10000/devstoreaccount1/c/b`) the path already
/// holds the account, and the resource is `/devstoreaccount1/devstoreaccount1/c/b`: that is the
/// rule, not a special case.
fn canonicalized_resource(url: &Url, account: &str, out: &mut String) {
    out.push('/');
    out.push_str(account);
    out.push_str(url.path());
    let mut params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
        .collect();
    // `query_pairs` decodes `+` as a space, as the service does for SharedKey.
    params.sort();
    let mut i = 0;
    while i < params.len() {
        let name = &params[i].0;
        out.push('\n');
        out.push_str(name);
        out.push(':');
        let mut j = i;
        while j < params.len() && params[j].0 == *name {
            if j > i {
                out.push(',');
            }
            out.push_str(&params[j].1);
            j += 1;
        }
        i = j;
    }
}

/// Signs a string-to-sign: `base64(HMAC-SHA256(key, UTF-8(string_to_sign)))`.
pub fn signature(key: &AccountKey, string_to_sign: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// The full `Authorization` header value for a request: `SharedKey account:signature`.
pub fn authorization<'a>(
    method: &str,
    url: &Url,
    headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    account: &str,
    key: &AccountKey,
) -> String {
    let sts = string_to_sign(method, url, headers, account);
    format!("SharedKey {account}:{}", signature(key, &sts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Vector {
        name: String,
        account: String,
        key: String,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        string_to_sign: String,
        authorization: String,
    }

    fn vectors() -> Vec<Vector> {
        let json: serde_json::Value = serde_json::from_str(include_str!("../../tests/vectors/sharedkey.json")).unwrap();
        json["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| Vector {
                name: v["name"].as_str().unwrap().into(),
                account: v["account"].as_str().unwrap().into(),
                key: v["key"].as_str().unwrap().into(),
                method: v["method"].as_str().unwrap().into(),
                url: v["url"].as_str().unwrap().into(),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
                    .collect(),
                string_to_sign: v["string_to_sign"].as_str().unwrap().into(),
                authorization: v["authorization"].as_str().unwrap().into(),
            })
            .collect()
    }

    #[test]
    fn python_sdk_vectors() {
        let vectors = vectors();
        assert!(vectors.len() >= 5);
        for v in vectors {
            let url = Url::parse(&v.url).unwrap();
            let headers: Vec<(&str, &str)> = v.headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let sts = string_to_sign(&v.method, &url, headers.iter().copied(), &v.account);
            assert_eq!(sts, v.string_to_sign, "string-to-sign of vector {:?}", v.name);
            let key = AccountKey::from_base64(&v.key).unwrap();
            let auth = authorization(&v.method, &url, headers.iter().copied(), &v.account, &key);
            assert_eq!(auth, v.authorization, "signature of vector {:?}", v.name);
        }
    }

    #[test]
    fn vectors_cover_the_required_cases() {
        let vectors = vectors();
        let any = |f: &dyn Fn(&Vector) -> bool| vectors.iter().any(f);
        assert!(any(&|v| v.url.contains(".blob.core.windows.net/")), "host-style");
        assert!(any(&|v| v.url.contains("/devstoreaccount1/")), "path-style");
        assert!(any(&|v| v.url.matches("include=").count() > 1), "repeated query");
        assert!(any(&|v| v.url.contains("Comp=")), "mixed-case query");
        assert!(any(&|v| v
            .headers
            .iter()
            .any(|(n, x)| n == "Content-Length" && x == "0")));
        assert!(any(&|v| v
            .headers
            .iter()
            .any(|(n, x)| n == "Content-Length" && x != "0")));
        assert!(any(&|v| v.headers.iter().any(|(n, _)| n.starts_with("x-ms-meta-"))));
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let url = Url::parse("https://a.blob.core.windows.net/c/b").unwrap();
        let a = string_to_sign("GET", &url, [("X-MS-Date", " d "), ("Content-Type", "t")], "a");
        let b = string_to_sign("GET", &url, [("x-ms-date", "d"), ("content-type", "t")], "a");
        assert_eq!(a, b);
    }
}
