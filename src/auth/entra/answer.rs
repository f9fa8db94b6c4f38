//! Token endpoint answers: lifetimes, token checks, and error texts scrubbed of secrets.

use std::time::{Duration, SystemTime};

use super::*;

/// Seconds as the endpoints write them: a JSON number or a string holding one (IMDS and App
/// Service send strings): digits, possibly with a fraction and an exponent (`3.5e3` is 3500
/// seconds; a fraction of a second is dropped). `None` if not that, negative, or past `u64`.
pub(crate) fn parse_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    // The JSON number grammar (without a sign), then its value.
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (mantissa.contains('.') && !digits(frac)) {
        return None;
    }
    if let Some(e) = exponent {
        if !digits(e.strip_prefix(['+', '-']).unwrap_or(e)) {
            return None;
        }
    }
    let value: f64 = text.parse().ok()?;
    // u64::MAX as f64 rounds up to 2^64: anything at or past it is not a number of seconds.
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.floor() as u64)
}

/// The longest lifetime believed (anything longer is clamped; no arithmetic overflows).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A token's lifetime from `expires_in` (relative, preferred: immune to clock skew) or
/// `expires_on` (epoch seconds, minus the wall clock when the request was sent).
pub(crate) fn lifetime(members: &[(String, json::Value)], sent_wall: SystemTime) -> Option<Duration> {
    if let Some(secs) = json::get(members, "expires_in").and_then(|v| parse_secs(v.text())) {
        return Some(Duration::from_secs(secs).min(MAX_LIFETIME));
    }
    let on = json::get(members, "expires_on").and_then(|v| parse_secs(v.text()))?;
    Some(until_epoch(on, sent_wall))
}

/// The time from `wall` to the epoch second `secs` (zero if past), clamped.
pub(crate) fn until_epoch(secs: u64, wall: SystemTime) -> Duration {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(1 << 40));
    at.duration_since(wall).unwrap_or_default().min(MAX_LIFETIME)
}

/// Checks a token is fit for an `Authorization` header (visible ASCII, not empty).
pub(crate) fn checked_token(kind: EntraKind, token: &str) -> Result<AccessToken, EntraError> {
    if token.is_empty() || token.len() > MAX_BODY_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EntraError::Transient {
            kind,
            why: "the answer's token is empty or not printable ASCII".into(),
        });
    }
    Ok(AccessToken(token.to_string()))
}

/// Text from an endpoint or from `az`, fit for an error: every run of 12 or more characters
/// shared with a value we sent (client id, client secret, client assertion, identity header,
/// user-assigned identity), in any encoding an endpoint may echo it in, replaced by
/// `<redacted>` ([`crate::auth::scrub::scrub_secrets`]), and every JWT-shaped run (`eyJ...`, an
/// access or federated token) by `<token>`. Then cut to `max` characters and stripped of
/// control characters. Applied before the cut, so a secret cannot survive in part.
pub(crate) fn scrub(text: &str, secrets: &[&str], max: usize) -> String {
    let text = crate::auth::scrub::scrub_secrets(text, secrets);
    // JWT-shaped runs: `eyJ` (base64url of `{"`) followed by base64url characters and dots.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("eyJ") {
        out.push_str(&rest[..i]);
        let run = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
            .unwrap_or(rest.len() - i);
        if run >= 16 {
            out.push_str("<token>");
        } else {
            out.push_str(&rest[i..i + run]);
        }
        rest = &rest[i + run..];
    }
    out.push_str(rest);
    sanitize_text(&out, max)
}

/// A token answer (`access_token` + `expires_in`/`expires_on`) or the endpoint's error.
///
/// Statuses that may pass are transient: 404 and 410 (the instance metadata endpoint while an
/// identity is being assigned or the service updates), 408, 429 and 5xx; see
/// [IMDS retry guidance](https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#retry-guidance).
/// Other 4xx are refusals.
///
/// `secrets` are what the request carried that an endpoint might echo in its error text; they
/// never reach the error (see [`scrub`]).
pub(crate) fn token_from_answer(kind: EntraKind, secrets: &[&str], answer: &Answer) -> Result<Fetched, EntraError> {
    if (300..400).contains(&answer.status) {
        // Never followed (the request's secret would go wherever `Location` says).
        return Err(EntraError::Refused {
            kind,
            status: Some(answer.status),
            code: None,
            description: format!(
                "the token endpoint answered with a redirect (HTTP {}), which token requests never follow: \
                 point the configuration at the real endpoint",
                answer.status
            ),
        });
    }
    let parsed = json::parse_object(&answer.body);
    if !(200..300).contains(&answer.status) {
        let members = parsed.unwrap_or_default();
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| json::get(&members, n))
                .map(|v| scrub(v.text(), secrets, 300))
                .filter(|s| !s.is_empty())
        };
        let code = field(&["error"]);
        let description =
            field(&["error_description", "message", "Message"]).unwrap_or_else(|| "no description".to_string());
        if matches!(answer.status, 404 | 408 | 410 | 429 | 500..=599) {
            return Err(EntraError::Transient {
                kind,
                why: format!(
                    "HTTP {}{}: {description}",
                    answer.status,
                    code.map(|c| format!(" {c}")).unwrap_or_default()
                ),
            });
        }
        return Err(EntraError::Refused {
            kind,
            status: Some(answer.status),
            code,
            description,
        });
    }
    let members = parsed.map_err(|e| EntraError::Transient {
        kind,
        why: format!("unreadable answer ({e})"),
    })?;
    let token = json::get(&members, "access_token").ok_or_else(|| EntraError::Transient {
        kind,
        why: "the answer has no `access_token`".into(),
    })?;
    let token = checked_token(kind, token.text())?;
    let lifetime = lifetime(&members, answer.sent_wall).ok_or_else(|| EntraError::Transient {
        kind,
        why: "the answer has no readable `expires_in` or `expires_on`".into(),
    })?;
    Ok(Fetched {
        token,
        sent_at: answer.sent_at,
        lifetime,
    })
}

/// Entry points for the fuzz targets (`tests/fuzz.rs`, `fuzz/`): the JSON reader, token
/// endpoint answers and `az` output, each checked for its promises. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::SystemTime;

    use tokio::time::Instant;

    use super::{azure_cli, json, token_from_answer, Answer, EntraError, EntraKind};

    /// A secret the fuzzed answers may echo; it must never reach an error.
    pub const SECRET: &str = "Fz9Q~secretValue.ThatMustNotLeak42";

    /// Panics if an error text breaks its promises: bounded, one line, no secret.
    pub(super) fn check(e: &EntraError) {
        let text = e.to_string();
        assert!(text.len() < 4096, "error text of {} bytes", text.len());
        assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
        assert!(!text.contains(&SECRET[4..16]), "{text:?}");
    }

    /// The JSON reader on `data`: never panics; members are scalars, names unique.
    pub fn json(data: &[u8]) {
        if let Ok(members) = json::parse_object(data) {
            let mut names = std::collections::HashSet::new();
            for (k, _) in &members {
                assert!(names.insert(k.clone()), "duplicate {k:?}");
            }
        }
    }

    /// A token endpoint answer: the first byte picks the status, the rest is the body (with
    /// `SECRET` spliced in where the body says `$S`).
    pub fn token_answer(data: &[u8]) {
        let Some((&first, body)) = data.split_first() else {
            return;
        };
        let status = [200u16, 201, 301, 307, 400, 401, 403, 404, 408, 429, 500, 503][usize::from(first) % 12];
        let body = String::from_utf8_lossy(body).replace("$S", SECRET).into_bytes();
        let answer = Answer {
            status,
            body,
            sent_at: Instant::now(),
            sent_wall: SystemTime::now(),
        };
        for kind in [EntraKind::ClientSecret, EntraKind::ManagedIdentity] {
            match token_from_answer(kind, &[SECRET], &answer) {
                Ok(f) => {
                    assert!((200..300).contains(&status));
                    assert!(!f.token.0.is_empty() && f.token.0.bytes().all(|b| b.is_ascii_graphic()));
                    assert!(f.lifetime <= std::time::Duration::from_secs(7 * 24 * 3600));
                }
                Err(e) => check(&e),
            }
        }
    }

    /// `az` output: `data` as its stdout (success) and as its stderr (failure).
    pub fn az_output(data: &[u8]) {
        match azure_cli::parse_output(data, Instant::now(), SystemTime::now()) {
            Ok(f) => assert!(!f.token.0.is_empty() && f.token.0.bytes().all(|b| b.is_ascii_graphic())),
            Err(e) => check(&e),
        }
        let e = azure_cli::failure(data);
        let text = e.to_string();
        assert!(text.len() < 4096 && !text.contains('\n'), "{text:?}");
    }
}
