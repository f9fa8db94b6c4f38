//! The signals azmutex handles while it waits for a lock or supervises a command.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{exit, Failure};

/// What a signal to azmutex means while the command runs.
pub(super) enum Event {
    /// Pass it on to the command's group. A stop request (SIGTSTP) is meant for the job: the
    /// command's stop then stops azmutex too.
    Forward(libc::c_int),
    /// A child changed state (SIGCHLD).
    Child,
    /// azmutex was continued after a stop (SIGCONT).
    Continued,
}

/// The signals azmutex listens to (SIGTERM, SIGINT, SIGHUP, SIGTSTP, SIGCHLD, SIGCONT).
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    tstp: Signal,
    child: Signal,
    cont: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Self, Failure> {
        let make = |k| signal(k).map_err(|e| Failure::new(exit::OTHER, format!("cannot handle signals: {e}")));
        Ok(Self {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
            tstp: make(SignalKind::from_raw(libc::SIGTSTP))?,
            child: make(SignalKind::child())?,
            cont: make(SignalKind::from_raw(libc::SIGCONT))?,
        })
    }

    /// The next signal while the command runs.
    pub(super) async fn event(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Forward(libc::SIGTERM),
            _ = self.int.recv() => Event::Forward(libc::SIGINT),
            _ = self.hup.recv() => Event::Forward(libc::SIGHUP),
            _ = self.tstp.recv() => Event::Forward(libc::SIGTSTP),
            _ = self.child.recv() => Event::Child,
            _ = self.cont.recv() => Event::Continued,
        }
    }

    /// Listens to SIGTERM, SIGINT and SIGHUP only, from now on (Ctrl-Z still stops the
    /// process): for a one-shot command whose wait must end cleanly, not by the signal's
    /// default action in the middle of a request. The future completes with the first of them.
    pub(super) fn terminating() -> Result<impl std::future::Future<Output = i32>, Failure> {
        let make = |k| signal(k).map_err(|e| Failure::new(exit::OTHER, format!("cannot handle signals: {e}")));
        let (mut term, mut int, mut hup) = (
            make(SignalKind::terminate())?,
            make(SignalKind::interrupt())?,
            make(SignalKind::hangup())?,
        );
        Ok(async move {
            tokio::select! {
                _ = term.recv() => libc::SIGTERM,
                _ = int.recv() => libc::SIGINT,
                _ = hup.recv() => libc::SIGHUP,
            }
        })
    }

    /// The next of SIGTERM, SIGINT, SIGHUP.
    pub(super) async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
