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
//!
//! `AZMUTEX_BENCH_BASELINE=/path/to/azmutex` adds a paired comparison: this build and the
//! baseline run in turn (A B A B …, 100 pairs a command, each build with a container of its own
//! so that each makes its own kind of lock blob), and the median of the pair-by-pair ratios is
//! printed beside both medians. Pairing keeps the ratio meaningful on a machine whose speed
//! drifts (other work, frequency changes) more than the difference being measured.

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
        self.command_of(&bin(), "oneshot", args)
    }

    fn command_of(&self, binary: &str, container: &str, args: &[&str]) -> Command {
        let mut c = Command::new(binary);
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
            .args(["--container", container])
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

/// This build against `baseline`, in turn, `PAIRS` times for each command (see the module
/// docs): both medians and the median ratio.
fn paired(name: &str, t: &Target, baseline: &str) {
    const PAIRS: usize = 100;
    println!("{name}, paired against {baseline}:");
    let ours = bin();
    let commands: [(&str, &[&str]); 2] = [
        ("status", &["-q", "status", "lock"]),
        ("run lock -- true", &["run", "lock", "--", "true"]),
    ];
    // Each build makes its own lock blob first (its own kind), untimed.
    for (binary, container) in [(ours.as_str(), "pair-a"), (baseline, "pair-b")] {
        let ok = t
            .command_of(binary, container, &["run", "lock", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{binary} runs against {name}");
    }
    for (label, args) in commands {
        let once = |binary: &str, container: &str| {
            let started = Instant::now();
            let ok = t
                .command_of(binary, container, args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{binary} {args:?}");
            started.elapsed()
        };
        let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..PAIRS + WARM_UP {
            // Alternate which goes first, so that neither always follows the other.
            let (x, y) = if i % 2 == 0 {
                let x = once(&ours, "pair-a");
                (x, once(baseline, "pair-b"))
            } else {
                let y = once(baseline, "pair-b");
                (once(&ours, "pair-a"), y)
            };
            if i >= WARM_UP {
                a.push(x);
                b.push(y);
                ratio.push(x.as_secs_f64() / y.as_secs_f64());
            }
        }
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1000.0
        };
        ratio.sort_by(f64::total_cmp);
        println!(
            "  {label:<22} this build median {:5.1} ms, baseline {:5.1} ms, ratio (median of pairs) {:.3}",
            median(a),
            median(b),
            ratio[ratio.len() / 2]
        );
    }
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
    let baseline = std::env::var("AZMUTEX_BENCH_BASELINE").ok();
    if let Some(baseline) = &baseline {
        paired("http:// (Azurite on loopback)", &http, baseline);
    }

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
    if let Some(baseline) = &baseline {
        paired(
            "https:// (Azurite with a test CA's certificate, --ca-cert)",
            &https,
            baseline,
        );
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}
