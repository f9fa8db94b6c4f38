//! What clap's usage errors may quote: words typed on the command line and values of the
//! variables it reads, any of which may be a secret given to the wrong flag.

/// The variables clap reads for flags: their values may appear in its errors too.
pub(super) const CLAP_VARIABLES: [&str; 11] = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SERVICE_ENDPOINT",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZMUTEX_API_VERSION",
    "AZMUTEX_AUTH",
    "AZMUTEX_SPREAD_NAMES",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
];

/// Whether a word clap may quote can be shown: a flag name (`--account-key`, `-v`), or a word
/// too short to hold 12 characters of a secret. Anything else the user typed (a value, a
/// misplaced value, a variable's value) may be a key, a SAS, a client secret or a proxy
/// password given to the wrong flag, and is not repeated.
fn quotable(word: &str) -> bool {
    let flag = word.starts_with('-')
        && word.len() <= 40
        && word
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    flag || word.chars().count() < azmutex::auth::scrub::MIN_SECRET_RUN
}

/// `text` (a clap error) with every command-line word and every value of a variable clap reads
/// that is not [`quotable`] (and every `=`-separated part of one, as in `--account-key=KEY`)
/// replaced by `[redacted]`, and any 12-character run of one hidden in every encoding.
pub(super) fn redact_typed_secrets(text: &str, args: &[String], vars: &[String]) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    for word in args.iter().skip(1).chain(vars) {
        for part in std::iter::once(word.as_str()).chain(word.split_once('=').map(|(_, v)| v)) {
            if !part.is_empty() && !quotable(part) {
                secrets.push(part);
            }
        }
    }
    // Longest first, so that a whole word goes before a part of it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_string();
    for secret in &secrets {
        text = text.replace(secret, "[redacted]");
    }
    azmutex::auth::scrub::scrub_secrets(&text, &secrets)
}
