//! Service versions: which `x-ms-version` a client sends, pinned versions checked before the
//! network, and the one step down when an endpoint refuses the default.

use std::sync::atomic::Ordering;

use super::error_body::MAX_CODE_CHARS;
use super::*;

/// The `x-ms-version` sent first when no version is pinned ([`ClientOptions::api_version`]).
///
/// `2025-11-05` is accepted by Azure and by Azurite 3.35 and later (Azurite accepts only the
/// versions it knows, up to `2026-06-06` in 3.37). Endpoints that refuse it (Azure Stack Hub,
/// older Azurite) answer `400 InvalidHeaderValue` naming `x-ms-version`, and the client steps
/// down to [`FALLBACK_API_VERSION`] once, for good.
/// See [Versioning for the Azure Storage services](https://learn.microsoft.com/en-us/rest/api/storageservices/versioning-for-the-azure-storage-services).
pub const DEFAULT_API_VERSION: &str = "2025-11-05";

/// The version a client steps down to when the endpoint refuses [`DEFAULT_API_VERSION`].
///
/// `2017-11-09` is the oldest version that carries every feature this crate uses: lease
/// actions with proposed lease ids and page blob sequence numbers (both `2012-02-12`), the
/// `Content-Length: 0` signing rule (`2015-02-21`), `x-ms-error-code` on every failure
/// (`2017-07-29`) and bearer tokens (`2017-11-09`). Azure Stack Hub and every Azurite release
/// of recent years accept it.
pub const FALLBACK_API_VERSION: &str = "2017-11-09";

/// The versions a client without a pinned version tries, in order: one step down at most.
pub const API_VERSIONS: [&str; 2] = [DEFAULT_API_VERSION, FALLBACK_API_VERSION];

/// The oldest version that may be pinned: older versions sign `Content-Length: 0` differently
/// and lack error codes in headers.
pub const MIN_API_VERSION: &str = "2015-02-21";

impl BlobClient {
    /// Whether `resp` refuses `version` (400 `InvalidHeaderValue` naming `x-ms-version`, as
    /// Azure Stack Hub and Azurite answer) and this client stepped down to an older version
    /// for it. A pinned version is never changed; concurrent refusals step down once; and once
    /// the endpoint has answered a version (settled), a stray refusal is only that request's
    /// error: one odd answer (a misrouted request, a proxy's hiccup) must not downgrade the
    /// client and its clones for life.
    pub(super) fn step_down(&self, resp: &RestResponse, version: &str, head: bool) -> bool {
        if self.inner.options.api_version.is_some()
            || self.inner.settled.load(Ordering::Acquire)
            || resp.status != 400
            || !refuses_version(resp, head)
        {
            return false;
        }
        let Some(from) = API_VERSIONS.iter().position(|v| *v == version) else {
            return false;
        };
        if from + 1 >= API_VERSIONS.len() {
            return false;
        }
        // Another request may have stepped down already: then just retry with its choice.
        let _ = self
            .inner
            .version
            .compare_exchange(from, from + 1, Ordering::Relaxed, Ordering::Relaxed);
        if from + 2 >= API_VERSIONS.len() {
            self.inner.settled.store(true, Ordering::Release);
        }
        true
    }
}

/// Whether an answer says the `x-ms-version` is not accepted: error code `InvalidHeaderValue`
/// with `<HeaderName>x-ms-version</HeaderName>` in the body (Azure, Azure Stack Hub), with a
/// message about the API version (Azurite), or any `InvalidHeaderValue` answer to a `HEAD`
/// (which has no body to say which header; every other header this client sends is checked
/// before the network, and a wrong guess only costs the step down to a version that also works).
pub(super) fn refuses_version(resp: &RestResponse, head: bool) -> bool {
    let e = resp.error();
    if e.code.as_deref() != Some("InvalidHeaderValue") {
        return false;
    }
    if head {
        return true;
    }
    match error_body_field(resp.body(), b"HeaderName") {
        Some(h) => h.trim().eq_ignore_ascii_case("x-ms-version"),
        None => e.message.is_some_and(|m| m.contains("API version")),
    }
}

/// The text of the first element named `name` in an XML error body (bounded, like every body).
fn error_body_field(body: &[u8], name: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut inside = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == name => inside = true,
            Ok(Event::Text(t)) if inside => return Some(sanitize_text(&t.decode().ok()?, MAX_CODE_CHARS)),
            Ok(Event::End(_)) if inside => return Some(String::new()),
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// Checks a pinned `x-ms-version`: a `YYYY-MM-DD` date no older than [`MIN_API_VERSION`] (and
/// `2017-11-09` for bearer tokens).
pub(super) fn check_api_version(v: &str, bearer: bool) -> Result<(), InvalidInput> {
    let refuse = |why: String| InvalidInput::Option {
        option: "api_version",
        why,
    };
    let b = v.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
    let number = |r: std::ops::Range<usize>| v.get(r).and_then(|d| d.parse::<u32>().ok()).unwrap_or(0);
    if !shape || !(1..=12).contains(&number(5..7)) || !(1..=31).contains(&number(8..10)) {
        return Err(refuse(format!(
            "a service version is a date such as {DEFAULT_API_VERSION} ({} characters given)",
            v.chars().count()
        )));
    }
    if v < MIN_API_VERSION {
        return Err(refuse(format!(
            "{v} is older than {MIN_API_VERSION}, the oldest version this client can sign for"
        )));
    }
    if bearer && v < FALLBACK_API_VERSION {
        return Err(refuse(format!(
            "{v} does not accept bearer tokens (Entra ID needs {FALLBACK_API_VERSION} or later)"
        )));
    }
    Ok(())
}
