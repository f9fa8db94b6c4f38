//! `azmutex elect`: campaign for leadership of a name; lead by running a command under the
//! same supervision as `run`, or by holding until a signal.

use std::ffi::OsString;
use std::time::Duration;

use azmutex::{Election, LockError, Released};
use clap::Args;

use super::metrics::{serve_if, Health, Phase};
use super::output::{out, parse_duration, say};
use super::run::{holder, supervised, supervised_options, Outcome, Spec};
use super::signals::Signals;
use super::{exit, Context, Failure};

/// What `elect --help` and azmutex-elect(1) add after the options.
pub const ELECT_AFTER_HELP: &str = "\
Campaigns until elected, then leads: runs the command (as `run` does: its own process group,
every descendant stopped before the lease can end) with
  AZMUTEX_LOCK       the name
  AZMUTEX_EPOCH      the term's epoch: larger than any earlier term's (the fencing token);
                     pass it to resources that can refuse a deposed leader's writes
  AZMUTEX_LEASE_ID   the lease id
When leadership is lost the command is stopped and azmutex campaigns again (--once: exits 70).
When the command exits by itself azmutex resigns and exits with its code. SIGTERM or SIGINT
stops the command (SIGKILL after --kill-grace), resigns and exits, so a standby takes over at
once instead of after the lease runs out. Without a command, azmutex prints the epoch when
elected and leads until a signal (exit 0 after resigning).

Exit codes: as `run`'s; 70 leadership lost with --once (or the release could not confirm it
was ours); 128+N when signal N ended a campaign before it was elected.

Examples:
  azmutex elect scheduler --value \"$(hostname):8080\" -- ./scheduler
  azmutex elect scheduler --once --lease 15 -- ./scheduler     # exit 70 on loss
  azmutex elect scheduler --value primary                       # prints the epoch; Ctrl-C resigns
  azmutex observe scheduler --json                              # who leads, at every change";

/// The longest pause between a standby's attempts.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// `elect` options.
#[derive(Args, Debug)]
#[command(after_help = ELECT_AFTER_HELP)]
pub struct ElectArgs {
    /// The name to lead (a lock blob in the container).
    pub name: String,
    /// The value the leader publishes (shown by `observe` and `status`), e.g. its address.
    /// Default: this host's name and pid.
    #[arg(long, value_name = "TEXT")]
    pub value: Option<String>,
    /// Lease duration in seconds (15-60); renewed every third of it. A crashed leader's
    /// standby takes over after at most this long (on Azure, up to a minute more).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lease: u64,
    /// Exit 70 when leadership is lost instead of campaigning again.
    #[arg(long)]
    pub once: bool,
    /// When leadership may be lost the command gets SIGTERM, then SIGKILL after this long,
    /// 2 s before the lease can end (as `run --kill-grace`); also SIGTERM/SIGINT to SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// Who leads, as shown by `azmutex status` (default: the command's program name, or
    /// `azmutex`).
    #[arg(long)]
    pub owner: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (azmutex_leader says whether this process
    /// leads) and a health check on /healthz (503 when renewal is behind or leadership lost)
    /// while campaigning and leading. ADDR: PORT or :PORT (loopback), IP:PORT, [IPv6]:PORT.
    #[arg(long, value_name = "ADDR", value_parser = super::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The command to run while leading, after `--` (optional).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub async fn elect(ctx: &Context, args: ElectArgs) -> Result<u8, Failure> {
    // Storage failing for a whole --timeout ends a campaign (exit 69), as `run` without --wait.
    let mut options = supervised_options(args.lease, args.kill_grace, Some(ctx.conn.timeout))?;
    // Serving first: the recorder must be in place before the first request is counted.
    let health = Health::new(
        // The validity a confirmed renewal gives: the lease less the margin `lost()` keeps.
        Duration::from_secs(args.lease).saturating_sub(options.safety_margin),
        Duration::from_secs(args.lease) / 3,
    );
    health.set(Phase::Standby);
    let _serving = serve_if(args.metrics, &health, ctx.quiet).await?;
    // A standby tries every 0.25-0.5 s (jittered): a resigning leader's successor starts well
    // within a second (about two requests a second per standby).
    options.poll_max = STANDBY_POLL;
    let owner = args.owner.clone().unwrap_or_else(|| match args.command.first() {
        Some(program) => {
            let program = std::path::Path::new(program);
            let name = program.file_name().unwrap_or(program.as_os_str());
            name.to_string_lossy().chars().take(200).collect()
        }
        None => "azmutex".into(),
    });
    let me = holder(Some(owner));
    let value = args
        .value
        .clone()
        .unwrap_or_else(|| format!("{}:{}", me.host.as_deref().unwrap_or("localhost"), std::process::id()));
    let mutex = ctx.mutex(true, Some(me))?;
    let election = Election::with_options(mutex, args.name.as_str(), options)?;
    let mut signals = Signals::new()?;
    let spec = Spec {
        lock: &args.name,
        kill_grace: args.kill_grace,
        signals_end: true,
    };
    loop {
        let mut caught = None;
        let cancel = async {
            caught = Some(signals.next().await);
        };
        let mut leadership = match election.campaign_until(value.clone(), cancel).await {
            Ok(l) => l,
            // Nothing was led: no "lost" message, no command.
            Err(LockError::Cancelled { .. }) => return Ok(128 + caught.unwrap_or(libc::SIGTERM) as u8),
            Err(e) => return Err(e.into()),
        };
        health.set(Phase::Held(leadership.status()));
        if !ctx.quiet {
            say(format_args!(
                "azmutex: elected leader of {:?} (epoch {})",
                args.name,
                leadership.epoch()
            ));
        }
        if args.command.is_empty() {
            if !out(format_args!("{}", leadership.epoch())) {
                // Nobody reads the epoch: lead no further.
                let _ = leadership.resign().await;
                return Ok(exit::OTHER);
            }
            let lost = leadership.lost();
            tokio::select! {
                _ = signals.next() => {
                    return Ok(match leadership.resign().await {
                        Ok(Released::Confirmed) => 0,
                        _ => exit::LOST,
                    });
                }
                reason = lost => {
                    say(format_args!("azmutex: leadership of {:?} lost ({reason})", args.name));
                    let _ = leadership.resign().await;
                }
            }
        } else {
            let env = [
                ("AZMUTEX_LOCK", args.name.clone()),
                ("AZMUTEX_EPOCH", leadership.epoch().to_string()),
                ("AZMUTEX_FENCING_TOKEN", leadership.epoch().to_string()),
                ("AZMUTEX_LEASE_ID", leadership.lease_id().to_string()),
            ];
            let outcome = supervised(ctx, &spec, &args.command, &env, &mut leadership, &mut signals).await;
            if !matches!(outcome, Ok(Outcome::Lost)) {
                health.set(Phase::Done);
            }
            match outcome? {
                Outcome::Exited(code) => return Ok(code),
                Outcome::Lost => {}
            }
        }
        if args.once {
            health.set(Phase::Done);
            return Ok(exit::LOST);
        }
        health.set(Phase::Standby);
        if !ctx.quiet {
            say(format_args!("azmutex: campaigning again for {:?}", args.name));
        }
        // A deposed leader lets the standbys (polling every 0.25–0.5 s) go first: without this
        // pause `break` would only start a new term of the same holder, 30 ms later.
        tokio::select! {
            sig = signals.next() => return Ok(128 + sig as u8),
            () = tokio::time::sleep(DEPOSED_PAUSE) => {}
        }
    }
}

/// How long a leader that lost its term waits before campaigning again: twice the standbys'
/// slowest poll, so that one of them takes over when there is one.
const DEPOSED_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
