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
/// The order is the service's, not byte order: see [`compare_header_names`].
fn canonicalized_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut String) {
    let mut ms: Vec<(String, &str)> = headers
        .into_iter()
        .filter(|(name, _)| name.len() > 5 && name.is_char_boundary(5) && name[..5].eq_ignore_ascii_case("x-ms-"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    ms.sort_by(|a, b| compare_header_names(&a.0, &b.0));
    for (name, value) in ms {
        out.push_str(&name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
}

/// Orders header names the way the service does when it rebuilds the string-to-sign.
///
/// Azure sorts canonicalized headers with a Windows culture collation, not by bytes: `_` sorts
/// before digits and digits before letters (so `x-ms-meta-k_1` comes before `x-ms-meta-k1`,
/// the reverse of byte order), and `-` and `'` are ignored except to break ties. Microsoft's own
/// SDKs emulate it with three levels of weights (.NET `StorageSharedKeyPipelinePolicy`'s
/// `HeaderStringComparer`, Python `_shared/authentication.py`; see azure-sdk-for-net#41328 and
/// azure-sdk-for-python#10277); this is the same comparison for names that differ in more than
/// `-` and `'` (ties are broken consistently, see below). Azurite sorts with JavaScript's
/// `localeCompare`, which agrees on every name made of letters, digits and `_` (metadata names
/// are C# identifiers, so they are), and on the standard `x-ms-*` header names.
pub fn compare_header_names(a: &str, b: &str) -> std::cmp::Ordering {
    // Level 1: primary weight; 0 = ignored at this level. Level 2: upper case.
    fn primary(c: u8) -> u16 {
        match c {
            b'!' => 0x71c,
            b'#' => 0x71f,
            b'$' => 0x721,
            b'%' => 0x723,
            b'&' => 0x725,
            b'*' => 0x72d,
            b'.' => 0x733,
            b'^' => 0x743,
            b'_' => 0x744,
            b'`' => 0x748,
            b'|' => 0x74c,
            b'~' => 0x750,
            b'+' => 0x803,
            b'0' => 0xd03,
            b'1'..=b'9' => 0xd1a + 2 * u16::from(c - b'1'),
            b'a'..=b'z' => LETTERS[usize::from(c - b'a')],
            b'A'..=b'Z' => LETTERS[usize::from(c - b'A')],
            _ => 0,
        }
    }
    const LETTERS: [u16; 26] = [
        0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51, 0xe70, 0xe7c, 0xe7e,
        0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9,
    ];
    fn case(c: u8) -> u16 {
        if c.is_ascii_uppercase() {
            0x12
        } else {
            0
        }
    }
    // Level 1 and 2 are what the SDKs compute: the names' weights, zero weights skipped,
    // compared in order (a name that runs out first sorts first). The SDKs' third level (where
    // `-` and `'` break ties by position) is not a consistent order (a < b < c but c < a
    // exists; Rust's sort panics on that, and the names can come from the server's metadata),
    // so ties after level 2 are broken by the bytes instead: only names equal but for `-` and
    // `'` can order differently, and neither this crate nor metadata names have such pairs.
    let weights = |s: &'_ str, level: fn(u8) -> u16| -> Vec<u16> { s.bytes().map(level).filter(|w| *w != 0).collect() };
    weights(a, primary)
        .cmp(&weights(b, primary))
        .then_with(|| weights(a, case).cmp(&weights(b, case)))
        .then_with(|| a.cmp(b))
}

/// A header value's bytes as the service reads them: ASCII as is, other bytes as ISO-8859-1
/// (one character per byte), which is what HTTP/1.1 servers (Node's, so Azurite's) do.
pub fn latin1(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
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
    fn headers_sort_like_the_service() {
        use std::cmp::Ordering::*;
        // `_` before digits before letters (byte order says the opposite of the first).
        assert_eq!(compare_header_names("x-ms-meta-k_1", "x-ms-meta-k1"), Less);
        assert_eq!(compare_header_names("x-ms-meta-i_", "x-ms-meta-i0"), Less);
        assert_eq!(compare_header_names("x-ms-meta-a9", "x-ms-meta-aa"), Less);
        assert_eq!(compare_header_names("x-ms-meta-ab", "x-ms-meta-ab"), Equal);
        assert_eq!(compare_header_names("x-ms-meta-a", "x-ms-meta-ab"), Less);
        assert_eq!(compare_header_names("x-ms-version", "x-ms-meta-z"), Greater);
        // The order Azurite's `localeCompare` gives for this set (checked with node).
        let mut names = vec![
            "x-ms-version",
            "x-ms-meta-k1",
            "x-ms-meta-azmutexsince",
            "x-ms-meta-k_1",
            "x-ms-lease-id",
            "x-ms-date",
            "x-ms-meta-_x",
            "x-ms-meta-k10",
            "x-ms-meta-k_",
        ];
        names.sort_by(|a, b| compare_header_names(a, b));
        assert_eq!(
            names,
            [
                "x-ms-date",
                "x-ms-lease-id",
                "x-ms-meta-_x",
                "x-ms-meta-azmutexsince",
                "x-ms-meta-k_",
                "x-ms-meta-k_1",
                "x-ms-meta-k1",
                "x-ms-meta-k10",
                "x-ms-version",
            ]
        );
    }

    #[test]
    fn header_order_is_a_total_order() {
        // Found by libFuzzer: the SDKs' third level is not transitive, and Rust's sort panics
        // on such comparators. Check every triple of short names over the tricky characters.
        let alphabet = ["-", "'", "a", "A", "_", "1", "%", "\u{e9}"];
        let mut names = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.sort();
        names.dedup();
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| compare_header_names(a, b));
        for w in sorted.windows(2) {
            assert_ne!(compare_header_names(&w[0], &w[1]), std::cmp::Ordering::Greater);
        }
        let few: Vec<&String> = names.iter().filter(|n| n.chars().count() <= 2).collect();
        for a in &few {
            for b in &few {
                let ab = compare_header_names(a, b);
                assert_eq!(ab, compare_header_names(b, a).reverse());
                assert_eq!(ab == std::cmp::Ordering::Equal, a == b);
                for c in &few {
                    if ab.is_le() && compare_header_names(b, c).is_le() {
                        assert!(compare_header_names(a, c).is_le(), "{a:?} {b:?} {c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn header_order_matches_azurite_vectors() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/header_order.json")).unwrap();
        let sorted: Vec<&str> = json["sorted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(sorted.len() > 300);
        let mut mine = sorted.clone();
        mine.reverse();
        mine.sort_by(|a, b| compare_header_names(a, b));
        assert_eq!(mine, sorted);
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let url = Url::parse("https://a.blob.core.windows.net/c/b").unwrap();
        let a = string_to_sign("GET", &url, [("X-MS-Date", " d "), ("Content-Type", "t")], "a");
        let b = string_to_sign("GET", &url, [("x-ms-date", "d"), ("content-type", "t")], "a");
        assert_eq!(a, b);
    }
}
