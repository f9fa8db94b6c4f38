//! The CLI as scripts use it, one process per call: the whole-process time of `--version`,
//! `status`, `acquire` + `release` and `run LOCK -- true` (minimum, median and maximum of 21
//! runs each, after 3 unmeasured ones; `run` also 300 ms apart, as a lone call pays), and the HTTP requests each sends (from `-vv`), against a
//! local Azurite started here over `http://` and over `https://` (a certificate from a test
//! CA, trusted with `--ca-cert`).
//!
//!     cargo bench --features cli --bench one_shot
//!
//! `AZMUTEX_BENCH_BIN=/path/to/azmutex` measures another build (e.g. an older commit's release
//! binary) against the same Azurite. Not criterion: it prints its own figures.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/token_server.rs"]
mod token_server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 21;
const WARM_UP: usize = 3;

fn bin() -> String {
    std::env::var("AZMUTEX_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_azmutex").to_string())
}

struct Target {
    connection_string: String,
    extra: Vec<String>,
}

impl Target {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AZURE_STORAGE_CONNECTION_STRING", &self.connection_string)
            // The machine's own trust settings, as a user's shell has them (reading a large
            // SSL_CERT_DIR is what http:// endpoints no longer pay for).
            .envs(
                ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .args(&self.extra)
            .args(["--container", "oneshot"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `args` once; its stdout, and whether it succeeded.
    fn once(&self, args: &[&str]) -> (String, bool) {
        let out = self.command(args).stderr(Stdio::null()).output().expect("azmutex runs");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            out.status.success(),
        )
    }

    /// The requests `args` sends, as `-vv` counts them.
    fn requests(&self, args: &[&str]) -> String {
        let mut full = vec!["-vv"];
        full.extend(args);
        let out = self.command(&full).output().expect("azmutex runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .lines()
            .find(|l| l.contains("HTTP requests sent to storage"))
            .and_then(|l| l.rsplit("requests=").next())
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| "?".into())
    }
}

fn stats(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:5.1} ms  median {:5.1} ms  max {:6.1} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    )
}

/// Times `step` (one or more processes) RUNS times after WARM_UP unmeasured runs.
fn time(mut step: impl FnMut()) -> Vec<Duration> {
    for _ in 0..WARM_UP {
        step();
    }
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed()
        })
        .collect()
}

fn measure(name: &str, t: &Target) {
    println!("{name}:");
    let version = time(|| {
        t.once(&["--version"]);
    });
    println!("  --version              {}  requests 0", stats(version));
    // The lock blob exists before anything is timed (the first acquire creates it).
    assert!(t.once(&["run", "lock", "--", "true"]).1, "run works against {name}");
    let status = time(|| {
        t.once(&["-q", "status", "lock"]);
    });
    println!(
        "  status                 {}  requests {}",
        stats(status),
        t.requests(&["-q", "status", "lock"])
    );
    let mut acquire_release = Vec::new();
    let pair = time(|| {
        let start = Instant::now();
        let (id, ok) = t.once(&["acquire", "lock", "--lease", "15"]);
        assert!(ok, "acquire");
        acquire_release.push(start.elapsed());
        assert!(t.once(&["release", "lock", "--lease-id", &id]).1, "release");
    });
    println!(
        "  acquire + release      {}  (acquire alone: median {:.1} ms)",
        stats(pair),
        {
            acquire_release.sort();
            acquire_release[acquire_release.len() / 2].as_secs_f64() * 1000.0
        }
    );
    let run = time(|| {
        assert!(t.once(&["run", "lock", "--", "true"]).1, "run");
    });
    println!(
        "  run lock -- true       {}  requests {}",
        stats(run),
        t.requests(&["run", "lock", "--", "true"])
    );
    // As cron or a script with other work between calls starts it: 300 ms apart. Back to back,
    // the kernel's bookkeeping for moving a process into a cgroup stays warm (an RCU grace
    // period is waited for only when none passed recently), which hides what a lone call pays.
    let spaced = time(|| {
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        assert!(t.once(&["run", "lock", "--", "true"]).1, "run");
        SPACED.with(|s| s.borrow_mut().push(t0.elapsed()));
    });
    drop(spaced);
    let spaced = SPACED.with(|s| std::mem::take(&mut *s.borrow_mut()));
    println!("  run, 300 ms apart      {}", stats(spaced[WARM_UP..].to_vec()));
}

thread_local! {
    static SPACED: std::cell::RefCell<Vec<Duration>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    println!(
        "binary: {}; SSL_CERT_FILE {:?}, SSL_CERT_DIR {:?}",
        bin(),
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("SSL_CERT_DIR")
    );
    let http = Target {
        connection_string: common::service().connection_string.clone(),
        extra: vec![],
    };
    measure("http:// (Azurite on loopback)", &http);

    let pki = token_server::make_pki(std::env::temp_dir().join(common::unique("azmutex-oneshot-pki")));
    let cert = pki.dir.join("cert.pem");
    let key = pki.dir.join("key.pem");
    let azurite = common::start_azurite(
        "https",
        &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    );
    let https = Target {
        connection_string: azurite.connection_string.clone(),
        extra: vec!["--ca-cert".into(), pki.dir.join("ca.pem").display().to_string()],
    };
    measure("https:// (Azurite with a test CA's certificate, --ca-cert)", &https);
    let _ = std::fs::remove_dir_all(&pki.dir);
}
