//! The built `azmutex` binary against a real Azurite.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use azmutex::{BreakPeriod, LeaseDuration};

const BIN: &str = env!("CARGO_BIN_EXE_azmutex");

fn azmutex(container: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_CONNECTION_STRING", &common::service().connection_string)
        .args(["--container", container]);
    c
}

fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

fn parse_spans(text: &str) -> Vec<(u128, u128)> {
    let mut spans = Vec::new();
    let mut start = None;
    for line in text.lines() {
        let (what, t) = line.split_once(' ').unwrap();
        let t: u128 = t.trim().parse().unwrap();
        match what {
            "start" => start = Some(t),
            "end" => spans.push((start.take().unwrap(), t)),
            _ => panic!("{line}"),
        }
    }
    spans
}

#[test]
fn runs_never_overlap_and_no_wait_exits_75() {
    let c = common::unique("cli-excl");
    let dir = std::env::temp_dir().join(common::unique("azmutex-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let script = format!(
        "echo start $(date +%s%N) >> {0}; sleep 1; echo end $(date +%s%N) >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..3)
        .map(|_| {
            let mut cmd = azmutex(&c);
            cmd.args(["-q", "run", "job", "--", "sh", "-c", &script])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let spans = parse_spans(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(spans.len(), 3);
    let mut sorted = spans.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        assert!(w[0].1 <= w[1].0, "commands overlapped: {sorted:?}");
    }

    // --no-wait while another holds the lock: 75, command not run.
    let mut holder = azmutex(&c);
    let mut holder = holder
        .args(["-q", "run", "job", "--", "sleep", "4"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_leased(&c, "job");
    let marker = dir.join("marker");
    let mut cmd = azmutex(&c);
    cmd.args(["run", "job", "--no-wait", "--", "touch"]).arg(&marker);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    assert!(!marker.exists());
    let mut cmd = azmutex(&c);
    cmd.args([
        "-q",
        "run",
        "job",
        "--no-wait",
        "--conflict-exit-code",
        "9",
        "--",
        "true",
    ]);
    assert_eq!(output(cmd).status.code(), Some(9));
    let mut cmd = azmutex(&c);
    cmd.args(["-q", "run", "job", "--wait", "1s", "--", "true"]);
    assert_eq!(output(cmd).status.code(), Some(75));
    assert!(holder.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

fn wait_until_leased(container: &str, lock: &str) {
    let started = Instant::now();
    loop {
        let mut cmd = azmutex(container);
        cmd.args(["-q", "status", lock, "--json"]);
        let out = output(cmd);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if v["state"] == "leased" {
                return;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "lock never became leased");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exit_code_environment_and_increasing_fencing_tokens() {
    let c = common::unique("cli-env");
    let mut last = 0u64;
    for i in 0..4 {
        let mut cmd = azmutex(&c);
        cmd.args(["-q", "run", "job", "--", "sh", "-c"]).arg(format!(
            "echo \"$AZMUTEX_LOCK $AZMUTEX_LEASE_ID $AZMUTEX_FENCING_TOKEN\"; exit {}",
            i + 3
        ));
        let out = output(cmd);
        assert_eq!(out.status.code(), Some(i + 3));
        let text = String::from_utf8(out.stdout).unwrap();
        let parts: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(parts[0], "job");
        azmutex::LeaseId::parse(parts[1]).unwrap();
        let token: u64 = parts[2].parse().unwrap();
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
    // A command that cannot be found.
    let mut cmd = azmutex(&c);
    cmd.args(["-q", "run", "job", "--", "/nonexistent/program"]);
    assert_eq!(output(cmd).status.code(), Some(127));
}

#[test]
fn a_broken_lease_stops_the_command_and_exits_70() {
    let c = common::unique("cli-break");
    // The command ignores SIGTERM, so the SIGKILL after the grace period is exercised too.
    let mut cmd = azmutex(&c);
    cmd.args([
        "run",
        "job",
        "--lease",
        "15",
        "--kill-grace",
        "2s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.2; done",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until_leased(&c, "job");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::mutex(&c).break_lease("job", Some(BreakPeriod::NOW)))
        .unwrap();
    let broke = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = broke.elapsed();
    assert_eq!(out.status.code(), Some(70), "{}", String::from_utf8_lossy(&out.stderr));
    // One renewal interval (5 s) plus the grace period (2 s), with slack for process start-up.
    assert!(took < Duration::from_secs(9), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost"), "{stderr}");
}

#[test]
fn sigterm_stops_the_command_and_releases_the_lock() {
    let c = common::unique("cli-term");
    let mut cmd = azmutex(&c);
    let child = cmd
        .args(["-q", "run", "job", "--lease", "60", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_leased(&c, "job");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "the child's death by SIGTERM is passed on"
    );
    // Released: another process gets it at once.
    let mut cmd = azmutex(&c);
    cmd.args(["-q", "run", "job", "--no-wait", "--", "true"]);
    assert_eq!(output(cmd).status.code(), Some(0));
}

#[test]
fn configuration_and_connection_errors_have_their_exit_codes_and_no_secrets() {
    let c = common::unique("cli-err");
    let wrong = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    let check = |out: &Output, code: i32| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(!stderr.contains(wrong) && !stderr.contains("AAECAwQF"), "{stderr}");
        assert!(!stderr.trim().is_empty());
    };
    // Wrong key: 77.
    let mut cmd = azmutex(&c);
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!(
            "AccountName=devstoreaccount1;AccountKey={wrong};BlobEndpoint={}",
            common::service().endpoint
        ),
    );
    cmd.args(["run", "job", "--", "true"]);
    check(&output(cmd), 77);
    // Malformed connection string: 78.
    let mut cmd = azmutex(&c);
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!("AccountName=devstoreaccount1;AccountKey={wrong};Protocol=ftp"),
    );
    cmd.args(["status", "job"]);
    check(&output(cmd), 78);
    let mut cmd = azmutex(&c);
    cmd.env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env("AZURE_STORAGE_ACCOUNT", "acct")
        .env("AZURE_STORAGE_KEY", "%%%");
    cmd.args(["status", "job"]);
    check(&output(cmd), 78);
    // Unreachable endpoint: 69, in bounded time.
    // Port 1: nothing listens there (a freed ephemeral port could be given to another server).
    let port = 1;
    let mut cmd = azmutex(&c);
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!(
            "AccountName=devstoreaccount1;AccountKey={wrong};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
        ),
    );
    cmd.args(["--timeout", "2s", "run", "job", "--", "true"]);
    let started = Instant::now();
    check(&output(cmd), 69);
    assert!(started.elapsed() < Duration::from_secs(15));
    // Usage errors: 2.
    let mut cmd = azmutex(&c);
    cmd.args(["run", "job"]);
    assert_eq!(output(cmd).status.code(), Some(2));
    let mut cmd = azmutex(&c);
    cmd.args(["run", "bad//name", "--", "true"]);
    check(&output(cmd), 2);
    let mut cmd = azmutex(&c);
    cmd.args(["acquire", "job", "--lease", "5"]);
    check(&output(cmd), 2);
}

#[test]
fn status_json_reflects_a_lease_held_by_another_client() {
    let c = common::unique("cli-status");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = azmutex::Holder {
        owner: Some("nightly \"report\"".into()),
        host: Some("etl-3".into()),
        pid: Some(77),
    };
    let m = azmutex::AzureMutex::builder(common::config(), &c)
        .fencing(true)
        .holder(holder)
        .build()
        .unwrap();
    let lease = rt.block_on(m.acquire("report", LeaseDuration::Infinite)).unwrap();

    let mut cmd = azmutex(&c);
    cmd.args(["status", "report", "--json"]);
    let out = output(cmd);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lock"], "report");
    assert_eq!(v["state"], "leased");
    assert_eq!(v["status"], "locked");
    assert_eq!(v["duration"], "infinite");
    assert_eq!(v["holder"]["owner"], "nightly \"report\"");
    assert_eq!(v["holder"]["host"], "etl-3");
    assert_eq!(v["holder"]["pid"], 77);
    assert!(v["holder"]["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["fencing_token"].as_u64(), lease.fencing_token());

    // acquire/renew/release for scripts.
    rt.block_on(m.release(&lease)).unwrap();
    let mut cmd = azmutex(&c);
    cmd.args(["acquire", "report", "--lease", "20", "--json"]);
    let out = output(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["lease_id"].as_str().unwrap().to_string();
    assert!(v["fencing_token"].as_u64().unwrap() > lease.fencing_token().unwrap());
    assert!(v["deadline"].as_str().unwrap().ends_with('Z'));
    let mut cmd = azmutex(&c);
    cmd.args(["renew", "report", "--lease-id", &id]);
    assert!(output(cmd).status.success());
    let mut cmd = azmutex(&c);
    cmd.args(["release", "report", "--lease-id", &id]);
    assert!(output(cmd).status.success());
    let mut cmd = azmutex(&c);
    cmd.args(["release", "report", "--lease-id", &id]);
    assert_eq!(
        output(cmd).status.code(),
        Some(70),
        "releasing a lease we no longer hold"
    );
    let mut cmd = azmutex(&c);
    cmd.args(["status", "report", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&output(cmd).stdout).unwrap();
    assert_eq!(v["state"], "available");
    assert!(v["holder"].is_null());
}

#[test]
fn explicit_endpoint_flags_and_sas_token() {
    let c = common::unique("cli-flags");
    // Path-style endpoint given as a URL (as for Azure Stack), with name and key flags.
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "--container",
            &c,
            "--account-url",
            &common::service().endpoint,
            "--account-name",
            "devstoreaccount1",
            "--account-key",
            common::DEV_KEY,
            "-q",
            "run",
            "job",
            "--",
            "true",
        ]);
    let out = output(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same with a SAS token from the environment.
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_SERVICE_ENDPOINT", &common::service().endpoint)
        .env("AZURE_STORAGE_SAS_TOKEN", common::sas("account_sas_rwdlac"))
        .args(["--container", &c, "status", "job", "--json"]);
    let out = output(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "available");
    // A bad SAS token names the flag and variable, not the token.
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_SERVICE_ENDPOINT", &common::service().endpoint)
        .env("AZURE_STORAGE_SAS_TOKEN", "sv=2025-11-05&sp=rw")
        .args(["status", "job"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sas-token") && stderr.contains("sig"), "{stderr}");
}

#[test]
fn with_nothing_configured_it_says_it_uses_development_storage() {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--timeout", "1s", "status", "job"]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UseDevelopmentStorage=true"), "{stderr}");
    // 0 if an Azurite happens to listen on 127.0.0.1:10000, else "nothing listens there" at
    // once (78: configuration), not 69 after --timeout of retries.
    assert!(matches!(out.status.code(), Some(0) | Some(78)), "{stderr}");
}
