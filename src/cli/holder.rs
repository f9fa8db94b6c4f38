//! This process as a lock holder (owner, host, pid), and a recorded holder described for a
//! "busy" or "waiting" line, printed inert and short.

use azmutex::Holder;

use super::output::{printable, rfc3339};

/// This process as a lock holder.
pub fn holder(owner: Option<String>) -> Holder {
    Holder {
        owner,
        host: hostname(),
        pid: Some(std::process::id()),
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
}

/// ` (held by …)` for a busy line: the recorded holder, printed inert and short.
pub fn describe_holder(info: &azmutex::LockInfo) -> String {
    let Some(h) = &info.holder else {
        return if info.locked {
            " (holder not recorded)".into()
        } else {
            String::new()
        };
    };
    // Anyone who can take the lock can write these: print them inert and short.
    let mut parts = Vec::new();
    match &h.holder.owner {
        // Escaped once (printable), quoted once: not run through `{:?}` on top.
        Some(o) => parts.push(format!("\"{}\"", printable(o, 200))),
        // Not "held by on vm": someone, somewhere.
        None => parts.push("a holder with no name".into()),
    }
    if let Some(host) = &h.holder.host {
        parts.push(format!("on {}", printable(host, 100)));
    }
    if let Some(pid) = h.holder.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(since) = h.since {
        parts.push(format!("since {}", rfc3339(since)));
    }
    format!(" (held by {})", parts.join(" "))
}
