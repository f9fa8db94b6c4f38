use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;

#[test]
fn token_urls_are_checked() {
    let k = EntraKind::ClientSecret;
    assert_eq!(
        entra_token_url(k, "https://login.microsoftonline.us/", "contoso.onmicrosoft.com")
            .unwrap()
            .as_str(),
        "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    for (host, tenant) in [
        ("http://login.microsoftonline.com", "t"),
        ("https://login.microsoftonline.com?x=1", "t"),
        ("https://user:Secret99@login.microsoftonline.com", "t"),
        ("login.microsoftonline.com", "t"),
        (DEFAULT_AUTHORITY_HOST, "../evil"),
        (DEFAULT_AUTHORITY_HOST, "a/b"),
        (DEFAULT_AUTHORITY_HOST, ""),
    ] {
        assert!(entra_token_url(k, host, tenant).is_err(), "{host} {tenant}");
    }
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.as_bytes().to_vec(),
        sent_at: Instant::now(),
        sent_wall: SystemTime::now(),
    }
}

#[test]
fn token_answers_and_errors() {
    let k = EntraKind::ManagedIdentity;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let f = token_from_answer(
        k,
        &[],
        &answer(200, r#"{"access_token":"abc","expires_in":"3599","expires_on":"1"}"#),
    )
    .unwrap();
    assert_eq!(f.lifetime, Duration::from_secs(3599));
    let body = format!(r#"{{"access_token":"abc","expires_on":"{}"}}"#, now + 100);
    let f = token_from_answer(k, &[], &answer(200, &body)).unwrap();
    assert!(f.lifetime <= Duration::from_secs(100) && f.lifetime >= Duration::from_secs(98));
    let huge = token_from_answer(
        k,
        &[],
        &answer(200, r#"{"access_token":"a","expires_in":99999999999999999999}"#),
    );
    assert!(huge.is_err(), "a number past u64 is not a lifetime");
    let far = token_from_answer(
        k,
        &[],
        &answer(200, r#"{"access_token":"a","expires_in":9999999999999}"#),
    )
    .unwrap();
    assert_eq!(far.lifetime, MAX_LIFETIME);
    for (text, secs) in [
        ("3.5e3", Some(3500)),
        ("3599", Some(3599)),
        ("3599.9", Some(3599)),
        ("1E2", Some(100)),
        ("36e-1", Some(3)),
        ("1e30", None),
        ("-5", None),
        ("1e", None),
        (".5", None),
        ("0x10", None),
        ("inf", None),
        ("NaN", None),
    ] {
        assert_eq!(parse_secs(text), secs, "{text}");
    }
    let exp = token_from_answer(k, &[], &answer(200, r#"{"access_token":"a","expires_in":3.5e3}"#)).unwrap();
    assert_eq!(exp.lifetime, Duration::from_secs(3500));
    for bad in [
        r#"{"access_token":"a"}"#,
        r#"{"access_token":"a b","expires_in":1}"#,
        r#"{"access_token":"","expires_in":1}"#,
        r#"{"expires_in":1}"#,
        r#"{"access_token":"a","expires_in":"-5"}"#,
        "<html>",
    ] {
        let e = token_from_answer(k, &[], &answer(200, bad)).unwrap_err();
        assert!(!e.is_definite(), "{bad}: {e}");
    }
    let e = token_from_answer(
        EntraKind::ClientSecret,
        &[],
        &answer(401, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#),
    )
    .unwrap_err();
    assert!(e.is_definite());
    let text = e.to_string();
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215") && text.contains("401"),
        "{text}"
    );
    assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
    for status in [404, 410, 429, 500, 503] {
        assert!(
            !token_from_answer(k, &[], &answer(status, ""))
                .unwrap_err()
                .is_definite(),
            "{status}"
        );
    }
    assert!(token_from_answer(k, &[], &answer(400, "not json"))
        .unwrap_err()
        .is_definite());
}

#[test]
fn endpoint_text_never_carries_what_we_sent_or_a_token() {
    let secret = "s3cr3t+Val~ue/with \"quotes\"";
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl";
    for echoed in [
        secret.to_string(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string(),
        secret.replace('"', "\\\"").replace('/', "\\/"),
    ] {
        let text = format!("AADSTS900144: malformed request: client_secret={echoed}&assertion={jwt}");
        let out = scrub(&text, &[secret], 300);
        assert!(!out.contains("s3cr3t") && !out.contains("eyJhbGci"), "{out}");
        assert!(out.contains("AADSTS900144"), "{out}");
    }
    // Before the cut: a secret straddling the limit does not survive in part.
    let long = format!("{}{secret}", "x".repeat(290));
    assert!(!scrub(&long, &[secret], 300).contains("s3cr3t"));
    // Short `eyJ` words are left alone; empty secrets are ignored.
    assert_eq!(scrub("eyJ is short", &[""], 300), "eyJ is short");
}
