//! Median latency of an acquire+release cycle against a local Azurite started by the bench:
//! `AzureMutex` beside the same two requests written by hand with bare reqwest (and the same
//! signer), in one run: bare, AzureMutex, bare again (so that drift over the run shows). The
//! ratio shows what the crate's layer costs.
//!
//!     cargo bench --bench lease

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::SystemTime;

use azmutex::auth::{signer, AccountKey};
use azmutex::{AzureMutex, LeaseDuration, LeaseId};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let container = common::unique("bench");
    let mutex = AzureMutex::builder(common::config(), &container).build().unwrap();
    let duration = LeaseDuration::seconds(15).unwrap();
    // Create the container and lock blob once.
    rt.block_on(async {
        let lease = mutex.acquire("lock", duration).await.unwrap();
        mutex.release(&lease).await.unwrap();
    });

    let http = reqwest::Client::new();
    let key = AccountKey::from_base64(common::DEV_KEY).unwrap();
    let url = url::Url::parse(&format!("{}/{container}/lock?comp=lease", common::service().endpoint)).unwrap();
    let bare = |action: &'static str, id: String| {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-date", date),
            ("x-ms-version", "2025-11-05".into()),
            ("x-ms-lease-action", action.into()),
            ("content-length", "0".into()),
        ];
        if action == "acquire" {
            headers.push(("x-ms-lease-duration", "15".into()));
            headers.push(("x-ms-proposed-lease-id", id));
        } else {
            headers.push(("x-ms-lease-id", id));
        }
        let auth = signer::authorization(
            "PUT",
            &url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            "devstoreaccount1",
            &key,
        );
        let mut req = http.put(url.clone()).header("authorization", auth);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    // Warm Azurite (node's JIT) up first: its latency drifts down over the first seconds.
    rt.block_on(async {
        let warm = std::time::Instant::now();
        while warm.elapsed() < std::time::Duration::from_secs(10) {
            let lease = mutex.acquire("lock", duration).await.unwrap();
            mutex.release(&lease).await.unwrap();
            let id = LeaseId::new_random().to_string();
            bare("acquire", id.clone()).await.unwrap();
            bare("release", id).await.unwrap();
        }
    });
    let bare_cycle = || async {
        let id = LeaseId::new_random().to_string();
        let r = bare("acquire", id.clone()).await.unwrap();
        assert_eq!(r.status(), 201);
        let r = bare("release", id).await.unwrap();
        assert_eq!(r.status(), 200);
    };
    let mut group = c.benchmark_group("acquire+release");
    group.sample_size(200);
    group.bench_function("bare reqwest", |b| b.to_async(&rt).iter(bare_cycle));
    group.bench_function("AzureMutex", |b| {
        b.to_async(&rt).iter(|| async {
            let lease = mutex.acquire("lock", duration).await.unwrap();
            mutex.release(&lease).await.unwrap();
        })
    });

    group.bench_function("bare reqwest (again)", |b| b.to_async(&rt).iter(bare_cycle));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
