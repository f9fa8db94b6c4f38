//! The Azure CLI: `az account get-access-token --resource https://storage.azure.com/ --output
//! json`, for developer machines signed in with `az login`. Bounded by [`AZURE_CLI_TIMEOUT`].
//! See [az account get-access-token](https://learn.microsoft.com/en-us/cli/azure/account#az-account-get-access-token).
//!
//! The answer's `expires_on` (epoch seconds, Azure CLI 2.54 and later) is preferred; older CLIs
//! give only `expiresOn`, a local time without offset, so `az` runs with `TZ=UTC` and that
//! time is read as UTC.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{
    checked_token, json, parse_secs, until_epoch, EntraBuilder, EntraError, EntraKind, FetchFuture, Fetched,
    TokenSource, STORAGE_RESOURCE,
};

const KIND: EntraKind = EntraKind::AzureCli;

/// The longest `az account get-access-token` may run before it is killed (it starts a Python
/// interpreter and may refresh its own token over the network).
pub const AZURE_CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The most output read from `az`.
const MAX_OUTPUT: u64 = 64 * 1024;

/// The `az` program -> a token.
pub(crate) struct AzureCli {
    program: PathBuf,
    timeout: Duration,
}

impl AzureCli {
    pub(crate) fn configure(b: &EntraBuilder) -> Result<Self, EntraError> {
        let program = match &b.az_command {
            Some(p) => p.clone(),
            None => find_on_path(&b.var("PATH").ok().flatten().unwrap_or_default()).ok_or_else(|| {
                EntraError::NotConfigured {
                    kind: KIND,
                    why: "`az` is not on PATH".into(),
                }
            })?,
        };
        Ok(Self {
            program,
            timeout: AZURE_CLI_TIMEOUT,
        })
    }

    /// Runs `az`, bounded: its answer is taken when `az` itself exits (a child it left behind
    /// holding the output pipe open does not make it wait), then its whole process group (on
    /// Unix) is killed, so nothing it started outlives the request; on timeout, or if this
    /// future is dropped, likewise.
    async fn run(&self) -> Result<(bool, Vec<u8>, Vec<u8>), EntraError> {
        let mut cmd = Command::new(&self.program);
        cmd.args([
            "account",
            "get-access-token",
            "--resource",
            STORAGE_RESOURCE,
            "--output",
            "json",
        ])
        .env("TZ", "UTC")
        .env("AZURE_CORE_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| EntraError::NotConfigured {
            kind: KIND,
            why: format!("cannot run `{}`: {e}", self.program.display()),
        })?;
        // From here on, whatever happens (timeout, this future dropped), the group dies.
        let group = GroupGuard(child.id());
        let out = Captured::start(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = Captured::start(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(|s| s.success()).unwrap_or(false));
        });
        let ok = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(_)) => {
                return Err(EntraError::Transient {
                    kind: KIND,
                    why: "`az` could not be waited for".into(),
                })
            }
            Err(_) => {
                drop(group);
                return Err(EntraError::Transient {
                    kind: KIND,
                    why: format!("`az` did not finish within {} s (killed)", self.timeout.as_secs()),
                });
            }
        };
        // `az` has exited: its output is complete unless a child holds the pipes. A moment
        // for the readers, then the group goes (closing any pipe a child held).
        let grace = Instant::now() + OUTPUT_GRACE;
        out.wait_until(grace).await;
        err.wait_until(grace).await;
        drop(group);
        let later = Instant::now() + OUTPUT_GRACE;
        out.wait_until(later).await;
        err.wait_until(later).await;
        Ok((ok, out.take(), err.take()))
    }
}

/// How long the output readers get after `az` exits (and again after its group is killed).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Kills `az`'s process group when dropped.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// One output pipe read to its end (at most [`MAX_OUTPUT`] bytes) on a thread of its own; what
/// was read so far is available at any time.
struct Captured {
    data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Captured {
    fn start(pipe: Option<Box<dyn Read + Send>>) -> Self {
        let data = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, done) = tokio::sync::watch::channel(false);
        let sink = data.clone();
        std::thread::spawn(move || {
            if let Some(pipe) = pipe {
                let mut pipe = pipe.take(MAX_OUTPUT);
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            }
            let _ = tx.send(true);
        });
        Self { data, done }
    }

    /// Waits until the pipe is read to its end, or `until`.
    async fn wait_until(&self, until: Instant) {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout_at(until, done.wait_for(|d| *d)).await;
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Kills `az` and what it started (its own process group on Unix).
fn kill_group(pid: u32) {
    #[cfg(unix)]
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    #[cfg(windows)]
    let _ = Command::new("taskkill")
        .args(["/F", "/T", "/PID", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `az` (or `az.cmd` on Windows) in one of the `PATH` directories.
fn find_on_path(path: &str) -> Option<PathBuf> {
    let names: &[&str] = if cfg!(windows) {
        &["az.cmd", "az.exe", "az"]
    } else {
        &["az"]
    };
    std::env::split_paths(path).find_map(|dir| names.iter().map(|n| dir.join(n)).find(|p| is_executable(p)))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

impl TokenSource for AzureCli {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let sent_at = Instant::now();
            let sent_wall = SystemTime::now();
            let (ok, out, err) = self.run().await?;
            if !ok {
                return Err(failure(&err));
            }
            parse_output(&out, sent_at, sent_wall)
        })
    }
}

/// `az`'s failure from its stderr: its first line (tokens blanked, cut, sanitized), definite
/// when it says to sign in or quotes Entra's refusal (AADSTS...), else transient (a network
/// error inside `az` may pass).
pub(crate) fn failure(err: &[u8]) -> EntraError {
    let text = String::from_utf8_lossy(err);
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message");
    // Tokens in `az`'s words (a wrapper or extension may print one) are blanked.
    let description = super::scrub(first, &[], 300);
    let lower = text.to_ascii_lowercase();
    if lower.contains("az login") || text.contains("AADSTS") {
        EntraError::Refused {
            kind: KIND,
            status: None,
            code: None,
            description,
        }
    } else {
        EntraError::Transient {
            kind: KIND,
            why: format!("`az` failed: {description}"),
        }
    }
}

/// Reads `az account get-access-token --output json`.
pub(crate) fn parse_output(out: &[u8], sent_at: Instant, sent_wall: SystemTime) -> Result<Fetched, EntraError> {
    let bad = |why: String| EntraError::Transient { kind: KIND, why };
    let members = json::parse_object(out).map_err(|e| bad(format!("unreadable `az` output ({e})")))?;
    let token = json::get(&members, "accessToken").ok_or_else(|| bad("`az` output has no `accessToken`".into()))?;
    let token = checked_token(KIND, token.text())?;
    let expires = json::get(&members, "expires_on")
        .and_then(|v| parse_secs(v.text()))
        .or_else(|| json::get(&members, "expiresOn").and_then(|v| parse_utc(v.text())))
        .ok_or_else(|| bad("`az` output has no readable `expires_on` or `expiresOn`".into()))?;
    Ok(Fetched {
        token,
        sent_at,
        lifetime: until_epoch(expires, sent_wall),
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` as UTC epoch seconds.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let num = |t: &str, len: usize| -> Option<i64> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let time = time.split('.').next()?;
    let mut t = time.split(':');
    let (hh, mm, ss) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    if d.next().is_some()
        || t.next().is_some()
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_expiry_forms() {
        assert_eq!(parse_utc("1970-01-01 00:00:00.000000"), Some(0));
        assert_eq!(parse_utc("2023-10-31 11:59:33.000000"), Some(1_698_753_573));
        assert_eq!(parse_utc("2024-02-29T23:59:59"), Some(1_709_251_199));
        for bad in [
            "",
            "2023-13-01 00:00:00",
            "2023-1-01 00:00:00",
            "2023-10-31",
            "x-y-z 1:2:3",
            "2023-10-31 24:00:00",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
        let now = SystemTime::now();
        let in_an_hour = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 3600;
        let out = format!(
            r#"{{"accessToken":"tok","expiresOn":"2000-01-01 00:00:00.000000","expires_on":{in_an_hour},"tokenType":"Bearer"}}"#
        );
        let f = parse_output(out.as_bytes(), Instant::now(), now).unwrap();
        assert!(f.lifetime > Duration::from_secs(3590));
        assert!(parse_output(b"{\"accessToken\":\"tok\"}", Instant::now(), now).is_err());
        assert!(parse_output(b"ERROR: something", Instant::now(), now).is_err());
    }
}
