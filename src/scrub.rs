//! Keeping secrets out of text that is printed: endpoint answers, `az` output, error messages
//! that quote what a user typed.
//!
//! Two tools:
//! - [`scrub_secrets`] hides every run of [`MIN_SECRET_RUN`] or more characters that a known
//!   secret shares with a text, in every encoding an endpoint may echo it in (as is, form- and
//!   percent-encoded with upper- or lower-case hex, JSON-escaped, base64 and base64url at any
//!   alignment), compared without regard to ASCII case. A secret cut in half by an endpoint's
//!   own truncation is still found: any 12-character piece of it is.
//! - [`looks_like_secret`] says whether a value typed where a name, a path or an id was expected
//!   has the shape of a secret (an account key, a SAS, an Entra client secret, a JWT, a URL with
//!   a password), so that it is described instead of quoted.

use std::collections::HashSet;

use base64::Engine as _;

/// The shortest run of a secret's characters that is hidden: any output shares fewer than this
/// many consecutive characters with a secret.
pub const MIN_SECRET_RUN: usize = 12;

/// What replaces a hidden run.
pub const REDACTED: &str = "<redacted>";

/// The encodings of `secret` an endpoint (or a library) may echo, lower-cased.
fn forms(secret: &str) -> Vec<String> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    /// RFC 3986: everything but the unreserved characters.
    const RFC3986: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let bytes = secret.as_bytes();
    let mut forms = vec![
        secret.to_string(),
        url::form_urlencoded::byte_serialize(bytes).collect::<String>(),
        utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        utf8_percent_encode(secret, RFC3986).to_string(),
        secret.replace('\\', "\\\\").replace('"', "\\\"").replace('/', "\\/"),
        secret.replace('\\', "\\\\").replace('"', "\\\""),
    ];
    // Base64 at the three alignments: any piece of the secret encodes inside one of them.
    for skip in 0..3.min(bytes.len()) {
        let rest = &bytes[skip..];
        forms.push(base64::engine::general_purpose::STANDARD.encode(rest));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest));
    }
    forms.into_iter().map(|f| f.to_ascii_lowercase()).collect()
}

/// `text` with every run of [`MIN_SECRET_RUN`] or more characters shared with one of `secrets`
/// (in any of the encodings listed in the module documentation, ignoring ASCII case) replaced by [`REDACTED`]. Empty secrets and
/// secrets shorter than [`MIN_SECRET_RUN`] are compared whole.
pub fn scrub_secrets(text: &str, secrets: &[&str]) -> String {
    let lower = text.to_ascii_lowercase();
    let hay = lower.as_bytes();
    let mut covered = vec![false; hay.len()];
    for secret in secrets.iter().filter(|s| !s.trim().is_empty()) {
        for form in forms(secret) {
            let f = form.as_bytes();
            if f.len() < MIN_SECRET_RUN {
                // A short secret: hidden where it appears whole.
                if f.is_empty() || f.len() > hay.len() {
                    continue;
                }
                for i in 0..=hay.len() - f.len() {
                    if &hay[i..i + f.len()] == f {
                        covered[i..i + f.len()].iter_mut().for_each(|c| *c = true);
                    }
                }
                continue;
            }
            let windows: HashSet<&[u8]> = f.windows(MIN_SECRET_RUN).collect();
            for (i, w) in hay.windows(MIN_SECRET_RUN).enumerate() {
                if windows.contains(w) {
                    covered[i..i + MIN_SECRET_RUN].iter_mut().for_each(|c| *c = true);
                }
            }
        }
    }
    if !covered.contains(&true) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for (i, c) in text.char_indices() {
        let hidden = covered[i..i + c.len_utf8()].contains(&true);
        if hidden {
            if !in_run {
                out.push_str(REDACTED);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// Whether `value`, typed where a name, a file name or an id was expected, may be a secret:
/// a connection string or SAS (`AccountKey`, `SharedAccessSignature`, `sig=`), a URL with a
/// password, a JWT, or a run of 16 or more key-like characters (base64, base64url, the `~` and
/// `.` of Entra client secrets) mixing digits with upper- and lower-case letters. GUIDs, DNS
/// names and ordinary paths are not.
pub fn looks_like_secret(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if [
        "accountkey",
        "sharedaccesssignature",
        "sig=",
        "sig%3d",
        "password",
        "eyj",
    ]
    .iter()
    .any(|m| lower.contains(m))
    {
        return true;
    }
    // `scheme://user:password@host`
    if let Some((_, rest)) = value.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return true;
        }
    }
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_' | '~' | '.')))
        .flat_map(|word| word.split('/'))
        .any(|run| {
            run.len() >= 16
                && run.bytes().any(|b| b.is_ascii_digit())
                && run.bytes().any(|b| b.is_ascii_uppercase())
                && run.bytes().any(|b| b.is_ascii_lowercase())
        })
        || value.len() >= 40
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            && value.bytes().any(|b| b.is_ascii_digit())
}

/// `value` if it is fit to quote, else a description that holds none of it.
pub fn quote_or_describe(value: &str) -> String {
    if looks_like_secret(value) {
        format!(
            "<{} characters, not shown: they look like a key or token>",
            value.chars().count()
        )
    } else {
        crate::error::sanitize_text(value, 300)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Abc8Q~defGhiJKlmnoPQRsTuvWXyZ012345abcd";

    #[test]
    fn every_encoding_and_every_piece_is_hidden() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for echoed in [
            SECRET.to_string(),
            SECRET.to_ascii_lowercase(),
            url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>(),
            SECRET.replace('~', "%7e"),
            b64.encode(SECRET),
            b64.encode(&SECRET[1..]),
            b64.encode(&SECRET[5..20]),
            SECRET[..14].to_string(),
            SECRET[20..].to_string(),
        ] {
            let text = format!("AADSTS700016: Application with identifier '{echoed}' was not found");
            let out = scrub_secrets(&text, &[SECRET]);
            assert!(
                out.contains(REDACTED) && out.contains("AADSTS700016"),
                "{echoed}: {out}"
            );
            for i in 0..SECRET.len() - MIN_SECRET_RUN {
                assert!(!out.contains(&SECRET[i..i + MIN_SECRET_RUN]), "{echoed}: {out}");
            }
        }
        assert_eq!(scrub_secrets("nothing here", &[SECRET, ""]), "nothing here");
        assert_eq!(scrub_secrets("short pw1 here", &["pw1"]), "short <redacted> here");
        assert_eq!(scrub_secrets("é€ ü", &["zzzzzzzzzzzzzzzz"]), "é€ ü");
    }

    #[test]
    fn secret_shapes() {
        for secret in [
            SECRET,
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
            "sv=2025-11-05&sp=rw&sig=abc",
            "http://user:pass@proxy:3128",
            "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl",
        ] {
            assert!(looks_like_secret(secret), "{secret}");
        }
        for plain in [
            "11111111-2222-3333-4444-555555555555",
            "/etc/ssl/certs/ca-certificates.crt",
            "/home/me/certs/MyCA2024.pem",
            "locks",
            "contoso.onmicrosoft.com",
            "https://login.microsoftonline.com",
        ] {
            assert!(!looks_like_secret(plain), "{plain}");
        }
    }
}
