//! Log lines on stderr for `-v`/`-vv` and `AZMUTEX_LOG`: a level per target group and one
//! line per event, written by a small `tracing` subscriber of our own (no spans are used, no
//! regex-based filter directives, no colours).

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use super::output::{emit, rfc3339, say};

/// What `AZMUTEX_LOG` accepts, for its error message and `--help`.
pub const SYNTAX: &str = "error|warn|info|debug|trace|off, or azmutex=<level>";

/// Which events are written: one level for azmutex's own events, one for other crates'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    own: LevelFilter,
    others: LevelFilter,
}

impl Filter {
    /// The filter for `-v` given `count` times: errors only; then azmutex's info; then its debug.
    pub fn verbosity(count: u8) -> Self {
        match count {
            0 => Filter {
                own: LevelFilter::ERROR,
                others: LevelFilter::ERROR,
            },
            1 => Filter {
                own: LevelFilter::INFO,
                others: LevelFilter::OFF,
            },
            _ => Filter {
                own: LevelFilter::DEBUG,
                others: LevelFilter::OFF,
            },
        }
    }

    /// Parses an `AZMUTEX_LOG` value: a level for everything (`debug`), or a level for
    /// azmutex's events only (`azmutex=debug`). Levels are case-insensitive; spaces around
    /// the value are ignored.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        match value.split_once('=') {
            None => level(value).map(|l| Filter { own: l, others: l }),
            Some((target, l)) if target.trim() == "azmutex" => level(l.trim()).map(|l| Filter {
                own: l,
                others: LevelFilter::OFF,
            }),
            Some(_) => None,
        }
    }

    fn allows(&self, target: &str, level: &Level) -> bool {
        let limit = if is_own(target) { self.own } else { self.others };
        *level <= limit
    }
}

fn level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

fn is_own(target: &str) -> bool {
    target == "azmutex" || target.starts_with("azmutex::")
}

/// Installs the subscriber: `AZMUTEX_LOG` if set (a value it cannot read is reported on
/// stderr, then ignored), else `-v` × `verbose`.
pub fn init(verbose: u8) {
    let filter = match std::env::var_os("AZMUTEX_LOG") {
        None => Filter::verbosity(verbose),
        Some(raw) => {
            let text = raw.to_string_lossy();
            Filter::parse(&text).unwrap_or_else(|| {
                // Not quoted: a value that is not a filter may be anything pasted by mistake,
                // a key or a token included.
                say(format_args!(
                    "azmutex: ignoring AZMUTEX_LOG ({} characters): expected {SYNTAX}",
                    text.chars().count()
                ));
                Filter::verbosity(verbose)
            })
        }
    };
    let _ = tracing::subscriber::set_global_default(StderrLog { filter });
}

/// A subscriber writing each enabled event as one line on stderr:
/// `<RFC 3339 time> <LEVEL> <message> key=value…`.
struct StderrLog {
    filter: Filter,
}

impl Subscriber for StderrLog {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.filter.allows(meta.target(), meta.level()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.filter.allows(meta.target(), meta.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.own.max(self.filter.others))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        // One line per write, queued: a log line never blocks (see `output::emit`).
        emit(format_event(SystemTime::now(), event));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn format_event(now: SystemTime, event: &Event<'_>) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let level = match *event.metadata().level() {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    };
    let mut line = format!("{} {level} {}", rfc3339(now), inert(&fields.message));
    for (name, value) in &fields.rest {
        let _ = write!(line, " {name}={}", inert(value));
    }
    line.push('\n');
    line
}

/// An event's message and other fields, formatted.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.push((field.name(), text));
        }
    }
}

/// `s` with control and invisible formatting characters escaped (`\u{1b}`), so that text from
/// a server or a hostile lock name cannot drive the terminal or forge a log line.
fn inert(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if azmutex::error::is_unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_the_azmutex_form_parse() {
        for (text, own, others) in [
            ("debug", LevelFilter::DEBUG, LevelFilter::DEBUG),
            ("WARN", LevelFilter::WARN, LevelFilter::WARN),
            (" Trace ", LevelFilter::TRACE, LevelFilter::TRACE),
            ("off", LevelFilter::OFF, LevelFilter::OFF),
            ("azmutex=debug", LevelFilter::DEBUG, LevelFilter::OFF),
            ("azmutex = Info", LevelFilter::INFO, LevelFilter::OFF),
        ] {
            assert_eq!(Filter::parse(text), Some(Filter { own, others }), "{text}");
        }
        for bad in [
            "",
            "loud",
            "hyper=debug",
            "azmutex=",
            "azmutex=debug,warn",
            "azmutex::rest=debug",
            "[x]=debug",
        ] {
            assert_eq!(Filter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn verbosity_widens_azmutex_only() {
        let (own, other) = ("azmutex::rest", "hyper::client");
        assert!(!Filter::verbosity(0).allows(own, &Level::INFO));
        assert!(Filter::verbosity(0).allows(own, &Level::ERROR));
        assert!(Filter::verbosity(1).allows(own, &Level::INFO));
        assert!(!Filter::verbosity(1).allows(own, &Level::DEBUG));
        assert!(Filter::verbosity(2).allows(own, &Level::DEBUG));
        assert!(!Filter::verbosity(2).allows(own, &Level::TRACE));
        assert!(Filter::verbosity(0).allows(other, &Level::ERROR));
        assert!(!Filter::verbosity(2).allows(other, &Level::ERROR));
        assert!(Filter::verbosity(2).allows("azmutex", &Level::DEBUG));
        assert!(!Filter::verbosity(2).allows("azmutexx::a", &Level::DEBUG));
    }

    #[test]
    fn text_is_made_inert() {
        assert_eq!(inert("a\u{1b}[2J\nb\u{202e}ü"), "a\\u{1b}[2J\\u{a}b\\u{202e}ü");
    }
}
