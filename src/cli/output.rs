//! Small formatting helpers: durations on the command line, RFC 3339 times, JSON strings.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parses a duration: a bare number of seconds (`30`, `1.5`), or numbers with units `ms`, `s`,
/// `m`, `h`, several in a row (`500ms`, `30s`, `5m`, `1h30m`, `2m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 1h30m; a bare number is seconds)");
    if s.is_empty() {
        return Err(bad());
    }
    let mut secs = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            // A bare number only on its own: `1h30` is a typo, not 1 h 30 s.
            "" if rest.len() == s.len() => 1.0,
            "s" => 1.0,
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad()),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {s:?} (use ms, s, m or h; a bare number is seconds)"
                ))
            }
        };
        secs += n * scale;
        rest = tail;
    }
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--timeout`: a duration greater than zero (a zero deadline would fail every call at once).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the timeout must be greater than 0 (e.g. 500ms, 30s)".into());
    }
    Ok(d)
}

/// Server- or user-controlled text for one line of terminal output: control and invisible
/// formatting characters escaped, at most `max` characters. See [`azmutex::error::sanitize_text`].
pub fn printable(s: &str, max: usize) -> String {
    azmutex::error::sanitize_text(s, max)
}

/// The wall-clock time of a monotonic `Instant`.
pub fn wall_clock(at: Instant) -> SystemTime {
    let now_i = Instant::now();
    let now_s = SystemTime::now();
    if at >= now_i {
        now_s + (at - now_i)
    } else {
        now_s - (now_i - at)
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T01:30:00.250Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A JSON string literal. Besides what JSON requires, C1 controls and invisible formatting
/// characters are escaped (`\u009b` is a CSI to some terminals), so printed JSON is inert.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if azmutex::error::is_unsafe_char(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a line to stdout. `false` if it could not be written (a closed pipe, as with
/// `| head`): never a panic, unlike `println!`.
pub fn out(args: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{args}").and_then(|()| stdout.flush()).is_ok()
}

/// Writes a line to stderr without ever blocking: see [`emit`].
pub fn say(args: std::fmt::Arguments<'_>) {
    emit(format!("{args}\n"));
}

/// How many lines may wait for stderr before new ones are dropped.
const STDERR_QUEUE: usize = 256;

/// The queue to the stderr writer thread, and the lines written and dropped.
struct StderrQueue {
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    pending: std::sync::atomic::AtomicUsize,
    dropped: std::sync::atomic::AtomicU64,
}

/// Made (and its writer thread started) by the first line queued.
static QUEUE: std::sync::OnceLock<StderrQueue> = std::sync::OnceLock::new();

fn queue() -> &'static StderrQueue {
    use std::sync::atomic::{AtomicU64, AtomicUsize};
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(STDERR_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("azmutex-stderr".into())
            .spawn(move || {
                use std::io::Write;
                for line in rx {
                    // A closed or failing stderr must never stop azmutex: the error is ignored.
                    let _ = std::io::stderr().write_all(line.as_bytes());
                    queue().pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        StderrQueue {
            tx: spawned.is_ok().then_some(tx),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    })
}

/// Queues `line` (one or more whole lines) for stderr and returns at once. A thread of its own
/// writes the queue out; when stderr is not being read (a full pipe: a hung log shipper, a
/// caller that stopped reading) and [`STDERR_QUEUE`] lines wait already, the line is dropped
/// (and counted) rather than waited for: while a command runs under a lock, nothing — not its
/// "lock lost" line, not a log line — may hold back stopping it. Used for every line azmutex
/// writes to stderr once it has parsed its arguments, log lines included.
pub fn emit(line: String) {
    use std::sync::atomic::Ordering;
    let q = queue();
    let Some(tx) = &q.tx else {
        // No writer thread could be started: drop rather than risk blocking.
        q.dropped.fetch_add(1, Ordering::SeqCst);
        return;
    };
    q.pending.fetch_add(1, Ordering::SeqCst);
    if tx.try_send(line).is_err() {
        q.pending.fetch_sub(1, Ordering::SeqCst);
        q.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// At exit: waits until the queued lines are written, at most `limit` (stderr may never drain),
/// and says how many lines were dropped, if any.
pub fn flush_stderr(limit: std::time::Duration) {
    use std::sync::atomic::Ordering;
    // Nothing was ever queued (a quiet `run`, `status`): no writer thread to start for nothing.
    let Some(q) = QUEUE.get() else {
        return;
    };
    let dropped = q.dropped.swap(0, Ordering::SeqCst);
    if dropped > 0 {
        emit(format!(
            "azmutex: {dropped} line(s) of stderr output dropped: stderr was not being read\n"
        ));
    }
    let started = std::time::Instant::now();
    while q.pending.load(Ordering::SeqCst) > 0 && started.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2m30s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("1s500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("1e3").is_err());
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("0ms").is_err());
        assert_eq!(parse_timeout("1ms").unwrap(), Duration::from_millis(1));
    }

    #[test]
    fn json_strings_are_inert() {
        assert_eq!(json_str("a\u{1b}[2J\u{9b}b\u{202e}"), "\"a\\u001b[2J\\u009bb\\u202e\"");
        assert_eq!(json_str("ünï \"q\""), "\"ünï \\\"q\\\"\"");
        assert_eq!(json_str("a\\b\n\t\r\u{0}\u{1f}"), r#""a\\b\n\t\r\u0000\u001f""#);
        assert_eq!(json_str("😀\u{feff}"), "\"😀\\ufeff\"");
        // What serde_json reads back is the original text.
        for s in ["plain", "q\"\\\u{7f}\u{2028}x", "\u{1b}[31m\u{9b}", "😀"] {
            assert_eq!(serde_json::from_str::<String>(&json_str(s)).unwrap(), s);
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_397_400_250)),
            "2026-11-23T01:30:00.250Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
