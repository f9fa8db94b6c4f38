//! Cost of signing one request with SharedKey (string-to-sign + HMAC-SHA256 + base64).
//!
//!     cargo bench --bench signer

use azmutex::auth::{signer, AccountKey};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use url::Url;

fn bench(c: &mut Criterion) {
    let key = AccountKey::from_base64(
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    )
    .unwrap();
    let url = Url::parse("https://myaccount.blob.core.windows.net/locks/nightly-report?comp=lease").unwrap();
    let headers = [
        ("x-ms-date", "Mon, 23 Nov 2026 01:30:00 GMT"),
        ("x-ms-version", "2025-11-05"),
        ("x-ms-client-request-id", "b0c7e2a4-5d1f-4e59-9c2e-1a2b3c4d5e6f"),
        ("x-ms-lease-action", "acquire"),
        ("x-ms-lease-duration", "30"),
        ("x-ms-proposed-lease-id", "3f2504e0-4f89-41d3-9a0c-0305e82c3301"),
        ("content-length", "0"),
        ("user-agent", "azmutex/0.1.0"),
    ];
    c.bench_function("sign acquire request (SharedKey)", |b| {
        b.iter(|| {
            signer::authorization(
                "PUT",
                black_box(&url),
                black_box(headers.iter().copied()),
                "myaccount",
                &key,
            )
        })
    });
    c.bench_function("string-to-sign only", |b| {
        b.iter(|| signer::string_to_sign("PUT", black_box(&url), black_box(headers.iter().copied()), "myaccount"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
