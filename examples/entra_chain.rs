//! How long the default Entra ID chain takes to fail on a machine with nothing configured:
//! no `AZURE_*` variables, no `az` on PATH, and an instance metadata endpoint that accepts
//! connections but never answers (the worst case: a firewall that drops) or refuses them.
//!
//! ```text
//! cargo run --release --example entra_chain
//! ```
//!
//! Only loopback is contacted: the metadata endpoint is pointed at a local port.

use std::time::Instant;

use azmutex::auth::entra::EntraCredential;
use azmutex::TokenProvider;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    for (what, port) in [
        ("never answers", silent.local_addr().expect("addr").port()),
        ("refuses connections", refusing),
    ] {
        let credential = EntraCredential::builder()
            .vars(|name| (name == "PATH").then(|| "/nonexistent".to_string()))
            .imds_endpoint(format!("http://127.0.0.1:{port}/metadata/identity/oauth2/token"))
            .chain()
            .expect("the chain builds");
        let started = Instant::now();
        let err = credential.token().await.expect_err("nothing is configured");
        println!(
            "metadata endpoint that {what}: failed in {:.3} s\n  {err}",
            started.elapsed().as_secs_f64()
        );
    }
}
