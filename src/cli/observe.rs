//! `azmutex observe`: the leader of a name now and at every change.

use std::time::Duration;

use azmutex::election::Leader;
use azmutex::Election;
use clap::Args;

use super::output::{json_str, out, parse_duration, printable, rfc3339};
use super::signals::Signals;
use super::{Context, Failure};

/// `observe` options.
#[derive(Args, Debug)]
#[command(after_help = "\
Prints one line now and one per change until interrupted (SIGINT/SIGTERM: exit 0). `no leader`
when the lease is free, broken or expired. One request per --interval.

Examples:
  azmutex observe scheduler
  azmutex observe scheduler --json | while read -r line; do echo \"$line\"; done")]
pub struct ObserveArgs {
    /// The name whose leader to follow.
    pub name: String,
    /// Print JSON lines: {\"leader\":null} or {\"leader\":{\"value\":…,\"epoch\":…,\"since\":…,\"holder\":{…}}}.
    #[arg(long)]
    pub json: bool,
    /// How often to read the leader (at least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// `leader` as JSON: `null` or `{"value":…,"epoch":…,"since":…,"holder":{…}}`.
pub fn leader_json(leader: &Option<Leader>) -> String {
    let opt = |s: Option<String>| s.map_or("null".to_string(), |s| json_str(&s));
    let Some(l) = leader else {
        return "null".into();
    };
    let holder = match &l.holder {
        Some(h) => format!(
            "{{\"owner\":{},\"host\":{},\"pid\":{}}}",
            opt(h.owner.clone()),
            opt(h.host.clone()),
            h.pid.map_or("null".into(), |p| p.to_string())
        ),
        None => "null".into(),
    };
    format!(
        "{{\"value\":{},\"epoch\":{},\"since\":{},\"holder\":{holder}}}",
        json_str(&l.value),
        l.epoch,
        opt(l.since.map(rfc3339)),
    )
}

/// One line for `leader`.
pub fn line(leader: &Option<Leader>, json: bool) -> String {
    match (leader, json) {
        (_, true) => format!("{{\"leader\":{}}}", leader_json(leader)),
        (None, false) => "no leader".into(),
        (Some(l), false) => {
            // Any leader sets these: never print them raw.
            let mut text = format!("leader: {} (epoch {}", printable(&l.value, 400), l.epoch);
            if let Some(since) = l.since {
                text.push_str(&format!(", since {}", rfc3339(since)));
            }
            if let Some(h) = &l.holder {
                if let Some(o) = &h.owner {
                    text.push_str(&format!(", {}", printable(o, 200)));
                }
                if let Some(host) = &h.host {
                    text.push_str(&format!(" on {}", printable(host, 100)));
                }
                if let Some(pid) = h.pid {
                    text.push_str(&format!(" pid {pid}"));
                }
            }
            text.push(')');
            text
        }
    }
}

pub async fn observe(ctx: &Context, args: ObserveArgs) -> Result<u8, Failure> {
    let election = Election::new(ctx.mutex(true, None)?, args.name.as_str())?
        .observe_interval(args.interval)
        .map_err(|e| Failure::new(super::exit::USAGE, format!("--interval: {e}")))?;
    let mut observer = election.observe();
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            leader = observer.next() => {
                if !out(format_args!("{}", line(&leader?, args.json))) {
                    return Ok(0); // stdout closed (`| head -1`)
                }
            }
            _ = signals.next() => return Ok(0),
        }
    }
}
