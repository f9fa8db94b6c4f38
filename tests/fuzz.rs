//! Fuzzing on the stable toolchain: a seeded, mutation-based input generator drives every parser
//! that reads user or server input, and checks that none panics; plus the secrets property:
//! nothing a config built from a string containing a key prints (error `Display`/`Debug`, config
//! `Debug`) contains any 8-byte window of that key.
//!
//! The suite runs a short pass (20,000 inputs a target, 100,000 typo strings). The long run:
//!
//! ```text
//! AZMUTEX_FUZZ_ITERS=1000000 AZMUTEX_FUZZ_SEED=7 cargo test --release --test fuzz
//! ```
//!
//! A failing input is printed with its seed and iteration, so it can be replayed. `fuzz/` holds
//! the same targets for cargo-fuzz (libFuzzer, nightly), calling [`targets`] through the crate.

use std::time::Instant;

use azmutex::StorageConfig;
use base64::Engine as _;

fn iterations(default: u64) -> u64 {
    std::env::var("AZMUTEX_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("AZMUTEX_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

/// Pieces mutations splice in: separators, keys, schemes, entities, escapes, big numbers.
const DICTIONARY: &[&str] = &[
    ";",
    "=",
    ",",
    ":",
    " ",
    "\t",
    "\n",
    "\r\n",
    "&",
    "?",
    "#",
    "/",
    "\\",
    "%",
    "%2",
    "%67",
    "%00",
    "@",
    "..",
    ".",
    "AccountName",
    "AccountKey",
    "DefaultEndpointsProtocol",
    "EndpointSuffix",
    "BlobEndpoint",
    "SharedAccessSignature",
    "UseDevelopmentStorage",
    "DevelopmentStorageProxyUri",
    "QueueEndpoint",
    "true",
    "https://",
    "http://",
    "ftp://",
    "[::1]",
    "127.0.0.1",
    ":0",
    ":65536",
    "core.windows.net",
    "sig=",
    "sv=",
    "se=",
    "sp=rw",
    "si%67=",
    "<Error>",
    "</Error>",
    "<Code>",
    "</Code>",
    "<Message>",
    "</Message>",
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#x1b;",
    "&#0;",
    "&#1114112;",
    "&bogus;",
    "<e:Code>",
    "xmlns:e=\"u\"",
    "\u{1b}[2J",
    "\u{9b}",
    "\u{202e}",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "18446744073709551615",
    "9223372036854775808",
    "-1",
    "0",
    "99999999999999999999999",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "-",
    "_",
    "k_1",
];

const SEEDS: &[&str] = &[
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
    "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://u:p@proxy:8080",
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=2025-11-05&sp=rw&sig=a%2Bb",
    "sv=2025-11-05&ss=b&srt=co&sp=rwdc&se=2026-01-01T00:00:00Z&spr=https&sig=abc%3D",
    "https://acct.blob.core.windows.net/c/b?sv=1&sig=x",
    "<?xml version=\"1.0\"?><Error><Code>LeaseAlreadyPresent</Code><Message>There is a lease.\nRequestId:1</Message></Error>",
    "jobs/nightly/report",
    "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "120",
    "Wed, 21 Oct 2015 07:28:00 GMT",
];

/// One mutated input: a seed or dictionary splice, then 1-8 mutations.
fn input(rng: &mut fastrand::Rng) -> Vec<u8> {
    input_from(rng, SEEDS)
}

/// [`input`] from other seeds.
fn input_from(rng: &mut fastrand::Rng, seeds: &[&str]) -> Vec<u8> {
    let mut v: Vec<u8> = if rng.u8(..) < 200 {
        seeds[rng.usize(..seeds.len())].as_bytes().to_vec()
    } else {
        Vec::new()
    };
    for _ in 0..rng.usize(1..=8) {
        let at = rng.usize(..=v.len());
        match rng.u8(..6) {
            0 => {
                let piece = DICTIONARY[rng.usize(..DICTIONARY.len())].as_bytes();
                v.splice(at..at, piece.iter().copied());
            }
            1 if !v.is_empty() => {
                let end = (at + rng.usize(1..16)).min(v.len());
                v.drain(at.min(v.len())..end);
            }
            2 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            3 => {
                let n = rng.usize(1..8);
                v.splice(at..at, (0..n).map(|_| rng.u8(..)));
            }
            4 if !v.is_empty() => {
                let start = rng.usize(..v.len());
                let end = (start + rng.usize(1..64)).min(v.len());
                let copy = v[start..end].to_vec();
                for _ in 0..rng.usize(1..4) {
                    v.extend_from_slice(&copy);
                }
            }
            _ => {
                let other = seeds[rng.usize(..seeds.len())].as_bytes();
                let cut = rng.usize(..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[cut..]);
            }
        }
    }
    v
}

mod fuzz_targets;
use fuzz_targets as targets;

/// Runs `target` on `n` generated inputs; reports the failing input on panic.
fn drive(name: &str, n: u64, target: fn(&[u8])) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed ^ fxhash(name));
    let started = Instant::now();
    for i in 0..n {
        let data = input(&mut rng);
        let result = std::panic::catch_unwind(|| target(&data));
        if result.is_err() {
            panic!(
                "fuzz target {name} panicked (seed {seed}, iteration {i}) on input {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
    eprintln!("fuzz {name}: {n} inputs in {:.1}s", started.elapsed().as_secs_f64());
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                drive(stringify!($name), iterations(20_000), targets::$name);
            }
        )*
    };
}

fuzz_tests!(
    connection_string,
    environment,
    sas,
    url,
    names,
    durations,
    retry_after,
    error_body,
    response,
    signer
);

/// A typo a careless user makes in a connection string.
fn typo(rng: &mut fastrand::Rng, s: &str, key: &str) -> String {
    let mut s = s.to_string();
    match rng.u8(..14) {
        0 => s = s.replace(';', [",", "\n", " ", "\t", ", ", "|", ".", ":", " ; "][rng.usize(..9)]),
        1 => {
            s = s.replacen(
                "AccountKey=",
                [
                    "AccountKey:",
                    "AccountKey ",
                    "AccountKey",
                    "AccountKey==",
                    "Accountkey =",
                ][rng.usize(..5)],
                1,
            )
        }
        2 => s = s.replacen("AccountKey=", "", 1),
        3 => {
            // Delete a run of characters anywhere.
            let chars: Vec<char> = s.chars().collect();
            let at = rng.usize(..chars.len());
            let end = (at + rng.usize(1..6)).min(chars.len());
            s = chars[..at].iter().chain(&chars[end..]).collect();
        }
        4 => {
            // Insert a stray character.
            let chars: Vec<char> = s.chars().collect();
            let at = rng.usize(..=chars.len());
            let c = [';', '=', ',', ' ', '"', '\'', '\n', '\\', '/', ':'][rng.usize(..10)];
            s = chars[..at]
                .iter()
                .chain(std::iter::once(&c))
                .chain(&chars[at..])
                .collect();
        }
        5 => s = s.replacen(";", "", 1),
        6 => s = s.replace("=", [":", " = ", "=="][rng.usize(..3)]),
        7 => s = format!("\"{s}\""),
        8 => s = s.to_uppercase(),
        // A cut key. At least 25 characters stay: a shorter fragment of lower-case letters and
        // digits is a valid account name, which is printed as one, by design.
        9 => s = s.replacen(key, &key[..rng.usize(25..key.len())], 1),
        10 => {
            let mut parts: Vec<&str> = s.split(';').collect();
            rng.shuffle(&mut parts);
            let i = rng.usize(..parts.len());
            let dup = parts[i];
            parts.push(dup);
            s = parts.join(";");
        }
        11 => s = s.replacen(';', ";;", 1),
        12 => s = format!("{s}{}", [";", ";x", "\n", " ", ";AccountKey"][rng.usize(..5)]),
        _ => {}
    }
    s
}

/// Connection strings (and environments) that carry `key` in some place.
fn carrier(rng: &mut fastrand::Rng, key: &str) -> String {
    let templates = [
        format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"),
        format!("AccountName=acct;AccountKey={key}"),
        format!("AccountKey={key};AccountName=acct"),
        format!("BlobEndpoint=https://acct.blob.core.windows.net/;AccountName=acct;AccountKey={key}"),
        format!("AccountName=acct;AccountKey={key};BlobEndpoint=http://127.0.0.1:10000/acct"),
        format!("AccountName={key};AccountKey=acct"),
        format!("AccountName=acct;EndpointSuffix={key};AccountKey=a2V5"),
        format!("BlobEndpoint=https://a.b/{key};AccountName=acct;AccountKey=a2V5"),
        format!("BlobEndpoint=https://acct.blob.core.windows.net/{key};SharedAccessSignature=sv=1&sig=x"),
        format!("BlobEndpoint={key};SharedAccessSignature=sv=1&sig=x"),
        format!("BlobEndpoint=https://a.b;SharedAccessSignature=sv=1&se={key}&sig=x"),
        format!("BlobEndpoint=https://a.b;SharedAccessSignature=sv=1&sig={key}"),
        format!("BlobEndpoint=https://a.b;SharedAccessSignature={key}"),
        format!("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://u:{key}@p:1"),
        format!("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://p/{key}"),
        format!("DefaultEndpointsProtocol={key};AccountName=acct;AccountKey=a2V5"),
        format!("UseDevelopmentStorage={key}"),
        key.to_string(),
        format!("AccountName=acct;{key}=x"),
    ];
    templates[rng.usize(..templates.len())].clone()
}

/// Every 8-byte window of `key` that `out` contains, if any.
fn leaked(out: &str, key: &str) -> Option<String> {
    key.as_bytes()
        .windows(8)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .find(|w| out.contains(w.as_str()))
}

/// The secrets property, over at least 100,000 generated strings with typos.
#[test]
fn no_output_contains_any_8_byte_window_of_the_key() {
    let n = iterations(20_000).max(100_000);
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let engine = base64::engine::general_purpose::STANDARD;
    let (mut ok, mut err) = (0u64, 0u64);
    for i in 0..n {
        let mut raw = [0u8; 64];
        raw.iter_mut().for_each(|b| *b = rng.u8(..));
        let key = engine.encode(raw);
        let mut s = carrier(&mut rng, &key);
        for _ in 0..rng.usize(1..=3) {
            s = typo(&mut rng, &s, &key);
        }
        let out = match StorageConfig::parse_connection_string(&s) {
            Ok(c) => {
                ok += 1;
                format!("{c:?} {:?} {}", c.credential, azmutex::config::redact_url(&c.endpoint))
            }
            Err(e) => {
                err += 1;
                format!("{e} {e:?}")
            }
        };
        if let Some(w) = leaked(&out, &key) {
            panic!("iteration {i} (seed {seed}): {s:?} printed {w:?}:\n{out}");
        }
        // The same text given through each environment variable.
        let var = [
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_KEY",
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_SERVICE_ENDPOINT",
        ][rng.usize(..5)];
        let out = match StorageConfig::from_vars(|name| {
            if name == var {
                Some(s.clone())
            } else if name == "AZURE_STORAGE_ACCOUNT" {
                Some("acct".into())
            } else {
                None
            }
        }) {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        if let Some(w) = leaked(&out, &key) {
            panic!("iteration {i} (seed {seed}): {var}={s:?} printed {w:?}:\n{out}");
        }
    }
    eprintln!("secrets property: {n} strings ({ok} parsed, {err} refused)");
    assert!(ok > 0 && err > 0, "the generator must reach both outcomes");
}

// ---------------------------------------------------------------------------------------------
// Issue 17: the Entra ID readers (JSON, token answers, `az` output). The long run (release,
// 1,000,000 inputs each, peak RSS printed):
//
//     AZMUTEX_FUZZ_ITERS=1000000 cargo test --release --test fuzz -- entra_ --test-threads 1 --nocapture
// ---------------------------------------------------------------------------------------------

/// Token answers and `az` output as endpoints and the CLI write them, and hostile shapes.
#[cfg(feature = "entra")]
const ENTRA_SEEDS: &[&str] = &[
    "\u{0}{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,\"access_token\":\"eyJ0eXAi.eyJhdWQi.c2ln\"}",
    "\u{0}{\"access_token\":\"tok\",\"expires_in\":\"3599\",\"expires_on\":\"1700003599\",\"resource\":\"https://storage.azure.com/\",\"token_type\":\"Bearer\"}",
    "\u{0}{\"access_token\":\"tok\",\"expires_in\":3.5e3}",
    "\u{0}{\"access_token\":\"a\",\"access_token\":\"b\",\"expires_in\":1}",
    "\u{4}{\"error\":\"unauthorized_client\",\"error_description\":\"AADSTS700016: Application with identifier '$S' was not found.\\r\\nTrace ID: 1\",\"error_codes\":[700016],\"timestamp\":\"2024-01-01 00:00:00Z\"}",
    "\u{5}{\"error\":\"invalid_client\",\"error_description\":\"client_secret=$S&client_id=x\"}",
    "\u{6}{\"error\":{\"code\":\"x\",\"message\":\"$S\"},\"message\":\"%24S $S\"}",
    "\u{b}<html><body>503 Service Unavailable</body></html>",
    "{\"accessToken\":\"eyJ0eXAi.eyJhdWQi.c2ln\",\"expiresOn\":\"2023-10-31 11:59:33.000000\",\"expires_on\":1698753573,\"subscription\":\"0\",\"tenant\":\"t\",\"tokenType\":\"Bearer\"}",
    "{\"accessToken\":\"tok\",\"expiresOn\":\"2024-02-29T23:59:59\"}",
    "ERROR: Please run 'az login' to setup account.",
    "ERROR: AADSTS70043: The refresh token has expired. eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl",
    "[1,{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]",
    "{\"n\":-0.0e-0,\"s\":\"\\ud83d\\ude00\\u0000\",\"t\":true,\"f\":false,\"z\":null}",
];

/// Peak resident set size of this process so far (bytes).
#[cfg(feature = "entra")]
fn peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

#[cfg(feature = "entra")]
fn drive_entra(name: &str, target: fn(&[u8])) {
    let n = iterations(20_000);
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed ^ fxhash(name));
    let started = Instant::now();
    let mut bytes = 0u64;
    for i in 0..n {
        let data = input_from(&mut rng, ENTRA_SEEDS);
        bytes += data.len() as u64;
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            panic!(
                "fuzz target {name} panicked (seed {seed}, iteration {i}) on input {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
    eprintln!(
        "fuzz {name}: {n} inputs ({bytes} bytes) in {:.1}s, peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        peak_rss() / 1024
    );
}

/// The token-answer seeds start with a status byte: the JSON and `az` targets skip it.
#[cfg(feature = "entra")]
fn body(data: &[u8]) -> &[u8] {
    match data.split_first() {
        Some((&b, rest)) if b < 0x10 => rest,
        _ => data,
    }
}

#[cfg(feature = "entra")]
#[test]
fn entra_json_reader() {
    drive_entra("entra_json_reader", |d| azmutex::auth::entra::fuzzing::json(body(d)));
}

#[cfg(feature = "entra")]
#[test]
fn entra_token_answers() {
    drive_entra("entra_token_answers", azmutex::auth::entra::fuzzing::token_answer);
}

#[cfg(feature = "entra")]
#[test]
fn entra_az_output() {
    drive_entra("entra_az_output", |d| azmutex::auth::entra::fuzzing::az_output(body(d)));
}
