use std::time::{Duration, Instant, SystemTime};

use super::error_body::MAX_CODE_CHARS;
use reqwest::header::{HeaderMap, HeaderValue};

use super::version::*;
use super::*;

#[test]
fn error_bodies() {
    let body = br#"<?xml version="1.0" encoding="utf-8"?><Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.
RequestId:abc
Time:2026-11-23T01:00:00Z</Message></Error>"#;
    let (code, msg) = parse_error_body(body);
    assert_eq!(code.as_deref(), Some("LeaseAlreadyPresent"));
    assert_eq!(msg.as_deref(), Some("There is already a lease present."));
    assert_eq!(parse_error_body(b""), (None, None));
    assert_eq!(parse_error_body(b"not xml <<"), (None, None));
}

#[test]
fn error_bodies_with_entities_cdata_and_namespaces() {
    let (code, msg) = parse_error_body(
        br#"<e:Error xmlns:e="urn:x"><e:Code>Lease&#65;lready&amp;Present</e:Code><e:Message>a &lt;b&gt; <![CDATA[c & d]]> &quot;e&apos; &#x263A;</e:Message></e:Error>"#,
    );
    assert_eq!(code.as_deref(), Some("LeaseAlready&Present"));
    assert_eq!(msg.as_deref(), Some("a <b> c & d \"e' \u{263A}"));
    // Nested elements inside <Message> do not end it early; unknown entities are dropped.
    let (_, msg) = parse_error_body(b"<Error><Message>x<b>y</b>z &bogus; w</Message></Error>");
    assert_eq!(msg.as_deref(), Some("xyz  w"));
    // A cut body still gives the code.
    let (code, msg) = parse_error_body(b"<Error><Code>ServerBusy</Code><Message>abc");
    assert_eq!((code.as_deref(), msg), (Some("ServerBusy"), None));
}

#[test]
fn server_text_is_bounded_and_inert() {
    let mut body = b"<Error><Code>X</Code><Message>".to_vec();
    body.extend(std::iter::repeat_n(b"\x1b[2J\xc2\x9b".as_slice(), 100_000).flatten());
    body.extend_from_slice(b"</Message></Error>");
    let (_, msg) = parse_error_body(&body);
    let msg = msg.unwrap();
    assert!(msg.chars().count() <= MAX_MESSAGE_CHARS + 1, "{}", msg.len());
    assert!(!msg.chars().any(crate::error::is_unsafe_char));
    let mut headers = HeaderMap::new();
    headers.insert("x-ms-error-code", HeaderValue::from_str(&"C".repeat(10_000)).unwrap());
    let e = service_error(500, &headers, b"");
    assert!(e.code.unwrap().chars().count() <= MAX_CODE_CHARS + 1);
}

#[test]
fn retry_after_is_clamped() {
    for huge in [
        "9223372036854775808",
        "18446744073709551615",
        "184467440737095516150000",
    ] {
        assert_eq!(parse_retry_after(huge), Some(MAX_RETRY_AFTER), "{huge}");
    }
    assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
    assert_eq!(
        parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("-1"), None);
}

#[test]
fn backoff_is_capped_and_jittered() {
    let p = RetryPolicy::default();
    for i in 1..40 {
        let d = p.backoff(i);
        assert!(d <= p.max_backoff && d >= p.initial_backoff / 2, "{i}: {d:?}");
    }
    assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn version_refusals_are_recognised_and_nothing_else() {
    let resp = |code: &str, body: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-error-code", HeaderValue::from_str(code).unwrap());
        RestResponse {
            status: 400,
            headers,
            sent_at: Instant::now(),
            sent_at_wall: SystemTime::now(),
            attempts: 1,
            earlier_outcome_unknown: false,
            body: body.as_bytes().to_vec(),
        }
    };
    // Azure / Azure Stack Hub (with the byte-order mark Azure puts before error bodies).
    let hub = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidHeaderValue</Code><Message>The value for one of the HTTP headers is not in the correct format.\nRequestId:x</Message><HeaderName>x-ms-version</HeaderName><HeaderValue>2025-11-05</HeaderValue></Error>";
    assert!(refuses_version(&resp("InvalidHeaderValue", hub), false));
    // Azurite's wording.
    let azurite = "<Error><Code>InvalidHeaderValue</Code><Message>The API version 2099-01-01 is not supported by Azurite. Please upgrade Azurite</Message></Error>";
    assert!(refuses_version(&resp("InvalidHeaderValue", azurite), false));
    // Another header, or no body on a PUT: not a version problem.
    let lease = hub.replace("x-ms-version", "x-ms-lease-duration");
    assert!(!refuses_version(&resp("InvalidHeaderValue", &lease), false));
    assert!(!refuses_version(&resp("InvalidHeaderValue", ""), false));
    assert!(!refuses_version(&resp("InvalidQueryParameterValue", hub), false));
    // A HEAD answer has no body: the code alone.
    assert!(refuses_version(&resp("InvalidHeaderValue", ""), true));
    assert!(!refuses_version(&resp("LeaseNotPresentWithLeaseOperation", ""), true));
}

#[test]
fn pinned_versions_are_checked() {
    for ok in ["2015-02-21", "2017-11-09", "2025-11-05", "2099-12-31"] {
        assert!(check_api_version(ok, false).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "2017-11-9",
        "2017_11_09",
        "20171109",
        "2017-11-09 ",
        "2015-02-20",
        "２０１７-11-09",
    ] {
        assert!(check_api_version(bad, false).is_err(), "{bad:?}");
    }
    assert!(check_api_version("2017-04-17", false).is_ok());
    assert!(check_api_version("2017-04-17", true).is_err());
    assert!(check_api_version("2017-11-09", true).is_ok());
}

#[test]
fn urls_are_encoded_and_sas_appended() {
    let cfg = StorageConfig::parse_connection_string(
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=1&sig=a%2Bb",
    )
    .unwrap();
    let c = BlobClient::new(&cfg, ClientOptions::default()).unwrap();
    let url = c
        .url("locks", Some("nightly job/é"), &[("comp", "lease".into())])
        .unwrap();
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:10000/devstoreaccount1/locks/nightly%20job/%C3%A9?comp=lease&sv=1&sig=a%2Bb"
    );
    assert!(!format!("{c:?}").contains("a%2Bb"));
}
