//! Second hostile review (issues 8 and 9), against a real Azurite. Each test is an attack that
//! broke a promise at commit b8af6ac, named after what went wrong then; it passes when the
//! promise holds. Kept as regression tests.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use azmutex::rest::RestRequest;
use azmutex::{BreakPeriod, LeaseDuration, LeaseState};
use cli::*;
use common::http_proxy::{Action, HttpProxy, Match};

const KEY: &str = common::DEV_KEY;

fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Any 8-byte window of the key.
fn leaks_key(s: &str) -> bool {
    KEY.as_bytes()
        .windows(8)
        .any(|w| s.contains(std::str::from_utf8(w).unwrap()))
}

/// A pipe whose reader is already gone (`azmutex ... | head -0`, a restarted log shipper).
fn broken_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a local array; the read end is closed at once, the write end is
    // handed to the child (and owned by the `Stdio`).
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        use std::os::fd::FromRawFd;
        Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A loopback server that answers each request with `answer(request head)`; the connection
/// is kept open for the next request.
fn raw_server(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        if conn.write_all(&answer(&head)).is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// 1. Secrets

/// README "Secrets": "A key or SAS signature never appears in any output, whatever was typed".
/// clap's usage errors quote the offending argument verbatim. A stray space after `=`
/// (`--account-key= "$KEY"`), a key landing in `--timeout`, or one argument too many all print
/// the whole account key (exit 2).
#[test]
fn break2_usage_errors_quote_the_account_key() {
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--account-name".into(),
            "devstoreaccount1".into(),
            "--account-key=".into(),
            KEY.into(),
            "status".into(),
            "job".into(),
        ],
        vec!["--timeout".into(), KEY.into(), "status".into(), "job".into()],
        vec!["status".into(), "job".into(), KEY.into()],
        vec![
            "--connection-string=".into(),
            format!("AccountName=a;AccountKey={KEY}"),
            "status".into(),
            "job".into(),
        ],
    ];
    let mut leaked = Vec::new();
    for args in cases {
        let mut c = Command::new(bin());
        c.env_clear().args(&args);
        let o = output(c);
        let all = text(&o);
        if leaks_key(&all) {
            leaked.push(format!("azmutex {}  ->  {}", args.join(" "), all.replace('\n', " | ")));
        }
    }
    assert!(leaked.is_empty(), "the account key was printed:\n{}", leaked.join("\n"));
}

/// README "Secrets" / holder records: `run`'s default owner is the command line, written to the
/// lock blob's metadata for every reader and printed by `status` and by every waiting client's
/// "waiting for lock" line, on other machines. A command that takes a secret on its command line
/// (`az storage ... --account-key`, `curl -H 'Authorization: ...'`, `azmutex --account-key`)
/// publishes it.
#[test]
fn break2_run_publishes_a_secret_from_the_command_line_as_owner() {
    let c = common::unique("b2-owner");
    let mut holder = azmutex(&c);
    holder
        .args([
            "-q",
            "run",
            "job",
            "--",
            "sh",
            "-c",
            "sleep 4",
            "upload",
            "--account-key",
            KEY,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = holder.spawn().unwrap();
    wait_until_leased(&c);
    let mut status = azmutex(&c);
    status.args(["status", "job", "--json"]);
    let status = output(status);
    let mut waiter = azmutex(&c);
    waiter.args(["run", "job", "--wait", "1s", "--", "true"]);
    let waiter = output(waiter);
    let _ = holder.wait();
    assert!(
        !leaks_key(&text(&status)) && !leaks_key(&text(&waiter)),
        "another process sees the key:\n{}\n{}",
        text(&status),
        text(&waiter)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Panics and server text

/// Issue 9 "no panics" and README exit-code table (no 101): `acquire` whose stdout is a broken
/// pipe acquires the lease, then `println!` panics (exit 101); the lease id is lost with the
/// panic and the lock stays held for the whole lease (with `--infinite`: until broken).
#[test]
fn break2_acquire_with_a_closed_stdout_panics_and_strands_the_lease() {
    let c = common::unique("b2-epipe");
    let mut a = azmutex(&c);
    a.args(["acquire", "job", "--lease", "60"])
        .stdin(Stdio::null())
        .stdout(broken_pipe())
        .stderr(Stdio::piped());
    let o = a.output().unwrap();
    let state = state(&c);
    assert!(
        o.status.code() != Some(101) && state != LeaseState::Leased,
        "acquire exit {:?}, lock left {state:?}; stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// Same for `status` (e.g. `azmutex status job | head -1`).
#[test]
fn break2_status_with_a_closed_stdout_panics() {
    let c = common::unique("b2-epipe-st");
    let mut a = azmutex(&c);
    a.args(["status", "job"])
        .stdin(Stdio::null())
        .stdout(broken_pipe())
        .stderr(Stdio::piped());
    let o = a.output().unwrap();
    assert_ne!(
        o.status.code(),
        Some(101),
        "status panicked: {}",
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// README "Hostile input": server text is cut before it is printed. An acquire answered 201
/// with a 300 KB `x-ms-lease-id` prints all of it in one line (`mutex.rs` `acquire_until`,
/// `resp.header("x-ms-lease-id")` formatted raw into the error detail).
#[test]
fn break2_a_huge_lease_id_header_is_printed_uncut() {
    let addr = raw_server(|head| {
        if head.contains("comp=lease") && head.to_ascii_lowercase().contains("x-ms-lease-action: acquire") {
            let mut a = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nx-ms-lease-id: ".to_vec();
            a.extend(std::iter::repeat_n(b'A', 300_000));
            a.extend_from_slice(b"\r\n\r\n");
            a
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
        }
    });
    let mut a = azmutex_with("locks", &connection_via(addr));
    a.args(["acquire", "job", "--timeout", "5s"]);
    let o = output(a);
    let longest = String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        text(&o).chars().take(300).collect::<String>()
    );
    assert!(
        longest < 2_000,
        "exit {:?}; a stderr line of {longest} bytes",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Honest exit codes

/// README exit codes: 69 is "storage unreachable after retries". A lock blob with 150 small
/// metadata items (legal: Azure allows 8 KiB of metadata; any lock user can add them) makes
/// every HEAD answer too large for the HTTP client's header limit (hyper's 100 headers):
/// `status` retries for the whole `--timeout` and exits 69 "unreachable" although storage is
/// fine; `run`/`acquire` with fencing or holder records fail the same way.
#[test]
fn break2_many_metadata_items_look_like_an_outage() {
    let c = common::unique("b2-meta");
    let rt = rt();
    rt.block_on(async {
        common::create_container(&c).await;
        let mut req =
            RestRequest::new("put", reqwest::Method::PUT, &c, Some("job")).header("x-ms-blob-type", "BlockBlob");
        for i in 0..150 {
            req = req.header_owned(&format!("x-ms-meta-m{i}"), "1").unwrap();
        }
        let r = common::send(req).await;
        assert_eq!(r.status, 201, "{:?}", r.error());
    });
    let started = Instant::now();
    let mut s = azmutex(&c);
    s.args(["status", "job", "--timeout", "3s"]);
    let o = output(s);
    assert_eq!(o.status.code(), Some(0), "after {:?}: {}", started.elapsed(), text(&o));
}

/// README exit code 70: "the release showed (or could not rule out) that the lease was not
/// ours until the command ended". The lease is broken and taken by another client while the
/// command runs (between renewals); the release is then refused by storage (503, never
/// applied) for the whole --timeout, so nothing rules out the break, yet `run` exits 0 with a
/// "warning" (run.rs `supervise`, the `Err(e) => say(...)` arm): success reported for a command
/// that ran while another client held the lock.
#[test]
fn break2_a_failed_release_hides_a_stolen_lock() {
    let c = common::unique("b2-relfail");
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(Match::LeaseAction("release"), Action::Respond(503, "ServerBusy"), None);
    let mut run = azmutex_with(&c, &connection_via(proxy.addr));
    run.args([
        "-q",
        "--timeout",
        "3s",
        "run",
        "job",
        "--lease",
        "15",
        "--",
        "sleep",
        "4",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = run.spawn().unwrap();
    wait_until_leased(&c);
    std::thread::sleep(Duration::from_millis(500));
    let rt = rt();
    let m = common::mutex(&c);
    rt.block_on(m.break_lease("job", Some(BreakPeriod::NOW))).unwrap();
    let other = rt
        .block_on(m.acquire("job", LeaseDuration::seconds(15).unwrap()))
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let _ = rt.block_on(m.release(&other));
    assert_eq!(
        o.status.code(),
        Some(70),
        "another client held the lock while the command ran, and the release could not rule it out: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The watchdog and stops

/// README `run`: the watchdog "stops the group within 50 ms if azmutex is stopped (SIGSTOP, a
/// debugger)", and azmutex continues the group when it runs again. One SIGSTOP + SIGCONT of
/// azmutex (no terminal) leaves azmutex AND the command stopped for good: the watchdog's stop
/// of the command reaches azmutex as SIGCHLD, `leader_stopped()` takes it for a Ctrl-Z, and
/// `suspend_with_leader()` (no terminal) SIGSTOPs azmutex itself. Nothing continues it again;
/// SIGTERM then does nothing either (run.rs `supervise`, `Event::Child`).
#[test]
fn break2_one_stop_and_continue_leaves_azmutex_and_its_command_stopped() {
    let c = common::unique("b2-stopcont");
    let dir = scratch("b2-stopcont");
    let pidfile = dir.join("pid");
    let mut run = azmutex(&c);
    run.env("PIDFILE", &pidfile)
        .args([
            "-q",
            "run",
            "job",
            "--",
            "sh",
            "-c",
            "echo $$ > \"$PIDFILE\"; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    wait_until_leased(&c);
    std::thread::sleep(Duration::from_millis(500));
    let cmd: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let pid = child.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1500));
    let (azm, command) = (proc_state(pid), proc_state(cmd));
    // Clean up whatever the outcome.
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        azm != 'T' && command != 'T',
        "1.5 s after SIGCONT: azmutex state {azm}, command state {command} (T = stopped)"
    );
}
