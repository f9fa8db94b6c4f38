//! [`LockGuard`]: the local deadline, the lost-lock signal, release.

use super::*;

/// Until when a grant is trusted locally: its send time plus the lease (or, for an infinite
/// lease, [`INFINITE_LEASE_WINDOW`]) minus the safety margin, on the monotonic clock and on the
/// wall clock (which keeps counting while the machine sleeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Validity {
    pub(super) until: Instant,
    pub(super) wall_until: SystemTime,
    /// The server-side end of the lease: no request for it is useful after this.
    pub(super) lease_end: Option<Instant>,
}

impl Validity {
    pub(super) fn of(grant: Grant, options: &LockerOptions) -> Self {
        let span = options.window().saturating_sub(options.safety_margin);
        Self {
            // On overflow the grant counts as already invalid: never trust what cannot be computed.
            until: grant.sent_at.checked_add(span).unwrap_or(grant.sent_at),
            wall_until: grant.sent_at_wall.checked_add(span).unwrap_or(grant.sent_at_wall),
            lease_end: grant.deadline,
        }
    }

    pub(super) fn holds(&self, now: Instant, wall_now: SystemTime) -> bool {
        now < self.until && wall_now < self.wall_until
    }
}

/// The renewer's state. Transitions: `Held → Held` (a renewal confirmed in time),
/// `Held → Lost` (a definite answer, or the local deadline), `Held | Lost → Released`.
/// `Lost` is final: nothing turns it back into `Held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Held(Validity),
    Lost(LostReason),
    Released,
}

pub(super) enum Command {
    Release(Option<oneshot::Sender<Result<Released, Error>>>),
}

/// Owns a lease: renews it in the background, tells when it is lost, releases it on
/// [`release`](LockGuard::release) or drop.
///
/// Dropping the guard stops renewal and releases the lease in the background on the runtime
/// that created it. If that runtime is gone, nothing is sent and the lease expires by itself
/// (after at most the lease duration; an infinite lease stays until broken).
#[must_use = "dropping a LockGuard releases the lock at once; bind it (`let guard = ...`) for as long as the work runs"]
pub struct LockGuard {
    pub(super) lock: LockName,
    pub(super) lease_id: LeaseId,
    pub(super) fencing_token: Option<u64>,
    pub(super) state: watch::Receiver<State>,
    pub(super) commands: Option<oneshot::Sender<Command>>,
    pub(super) released: Option<Result<Released, Error>>,
    /// Set by whoever first sees the local deadline pass (the guard, a `lost()` future, the
    /// renewer): from then on the lock counts as lost even if a clock steps back.
    pub(super) lapsed: Arc<AtomicBool>,
    /// The lease in the count of leases held (shared with the renewer, which ends it).
    pub(super) holding: Arc<Holding>,
}

/// A read-only view of a [`LockGuard`]'s state ([`LockGuard::status`]): the same answers as
/// the guard's own [`is_held`](LockGuard::is_held), [`lost_reason`](LockGuard::lost_reason) and
/// [`valid_until`](LockGuard::valid_until), without borrowing it.
#[derive(Clone)]
pub struct LockStatus {
    state: watch::Receiver<State>,
    lapsed: Arc<AtomicBool>,
}

impl fmt::Debug for LockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockStatus")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl LockStatus {
    /// See [`LockGuard::is_held`].
    pub fn is_held(&self) -> bool {
        self.lost_reason().is_none() && matches!(*self.state.borrow(), State::Held(_))
    }

    /// See [`LockGuard::lost_reason`].
    pub fn lost_reason(&self) -> Option<LostReason> {
        let renewer_gone = self.state.has_changed().is_err();
        match *self.state.borrow() {
            State::Lost(r) => Some(r),
            State::Held(v)
                if self.lapsed.load(Ordering::SeqCst)
                    || renewer_gone
                    || !v.holds(Instant::now(), SystemTime::now()) =>
            {
                self.lapsed.store(true, Ordering::SeqCst);
                Some(LostReason::Expired)
            }
            _ => None,
        }
    }

    /// See [`LockGuard::valid_until`].
    pub fn valid_until(&self) -> Option<Instant> {
        if self.lost_reason().is_some() {
            return None;
        }
        match *self.state.borrow() {
            State::Held(v) => Some(v.until),
            _ => None,
        }
    }

    /// Whether the guard was released (by its owner; not lost).
    pub fn is_released(&self) -> bool {
        matches!(*self.state.borrow(), State::Released)
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lock)
            .field("lease_id", &self.lease_id)
            .field("fencing_token", &self.fencing_token)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl LockGuard {
    pub(super) fn start(mutex: AzureMutex, lease: Lease, options: &LockerOptions) -> Self {
        let (state_tx, state_rx) = watch::channel(State::Held(Validity::of(lease.grant(), options)));
        let (cmd_tx, cmd_rx) = oneshot::channel();
        let guard = Self {
            lock: lease.lock().clone(),
            lease_id: lease.id(),
            fencing_token: lease.fencing_token(),
            state: state_rx,
            commands: Some(cmd_tx),
            released: None,
            lapsed: Arc::default(),
            holding: Arc::new(Holding::start()),
        };
        let renewer = Renewer {
            mutex,
            lease,
            state: state_tx,
            options: options.clone(),
            lapsed: guard.lapsed.clone(),
            last_attempt: None,
            holding: guard.holding.clone(),
        };
        tokio::spawn(renewer.run(cmd_rx));
        guard
    }

    /// Marks this lock as leading `election` (the `azmutex_leader` gauge at 1 until the lock
    /// is released or lost).
    pub(crate) fn mark_leader(&self, election: String) {
        self.holding.lead(election);
    }

    /// The lock.
    pub fn lock_name(&self) -> &LockName {
        &self.lock
    }

    /// The lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.lease_id
    }

    /// The fencing token, when the mutex has fencing on.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// Whether the lock is still ours: not lost, not released, before the local deadline on
    /// both clocks, and the renewal task alive. Cheap (no I/O).
    pub fn is_held(&self) -> bool {
        self.status().is_held()
    }

    /// Why the lock was lost, if it was (including a passed local deadline and a renewal task
    /// that stopped without a verdict, both [`LostReason::Expired`]).
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.status().lost_reason()
    }

    /// The local deadline: until when the lock counts as held unless a renewal is confirmed
    /// first (the lease's end counted from the *send* time of the last confirmed request, minus
    /// the safety margin). It moves forward with every confirmed renewal; `None` once the lock
    /// is lost or released. A supervisor that must stop work by the lease's end can arm its
    /// own timer with it (see [`LockGuard::changed`]).
    pub fn valid_until(&self) -> Option<Instant> {
        self.status().valid_until()
    }

    /// A read-only view of this guard's state that does not borrow it (cheap to clone): for a
    /// health check, a dashboard or a watchdog beside the work that holds the guard.
    pub fn status(&self) -> LockStatus {
        LockStatus {
            state: self.state.clone(),
            lapsed: self.lapsed.clone(),
        }
    }

    /// A future that completes at the guard's next change: a renewal confirmed (a new
    /// [`valid_until`](LockGuard::valid_until)), the lock lost, or released. Changes before
    /// this call do not count: call it, then read `valid_until`, then await it, and no change
    /// is missed. It does not borrow the guard.
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        state.borrow_and_update();
        async move {
            // An ended renewal task is a change too (the lock counts as lost).
            let _ = state.changed().await;
        }
    }

    /// A future that completes when the lock is lost, with the reason. It does not borrow the
    /// guard, so it can sit in a `tokio::select!` beside work that uses it. It never completes
    /// after a release.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut state = self.state.clone();
        let lapsed = self.lapsed.clone();
        async move {
            loop {
                let current = *state.borrow_and_update();
                if lapsed.load(Ordering::SeqCst) && matches!(current, State::Held(_)) {
                    return LostReason::Expired;
                }
                let validity = match current {
                    State::Lost(r) => return r,
                    State::Released => std::future::pending::<Validity>().await,
                    State::Held(v) => v,
                };
                // Fire at the local deadline even if the renewal task is late, and check the
                // wall clock every second in case the machine slept.
                let expiry = async {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = sleep_until(validity.until.into()) => return,
                            _ = tick.tick() => {
                                if !validity.holds(Instant::now(), SystemTime::now()) {
                                    return;
                                }
                            }
                        }
                    }
                };
                tokio::select! {
                    changed = state.changed() => {
                        if changed.is_err() {
                            // The renewal task ended without a verdict: treat as lost.
                            return LostReason::Expired;
                        }
                    }
                    _ = expiry => {
                        lapsed.store(true, Ordering::SeqCst);
                        return LostReason::Expired;
                    }
                }
            }
        }
    }

    /// Runs `work` while the lock is held; if the lock is lost first, `work` is dropped
    /// (cancelled) and the reason returned. Also `Err` if `work` completed but the lock was no
    /// longer held when it did.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LostReason> {
        let lost = self.lost();
        let out = tokio::select! {
            biased;
            reason = lost => return Err(reason),
            out = work => out,
        };
        match self.lost_reason() {
            Some(reason) => Err(reason),
            None => Ok(out),
        }
    }

    /// Stops renewal and releases the lease (one request, bounded by the lease's own end).
    ///
    /// `Ok` (always [`Released::Confirmed`]) only if the service confirmed that the lock was
    /// ours until the release. [`Error::LeaseLost`] when the lock had been lost (noticed before,
    /// or shown by the release's answer), or with [`LostReason::Unconfirmed`] when an earlier
    /// attempt's answer was lost and the retry found the lease gone (see
    /// [`AzureMutex::release`]); a lease that may still be ours on the server is released all
    /// the same. Other errors (network) mean the lease will expire by itself. Idempotent: later
    /// calls return the first call's result.
    pub async fn release(&mut self) -> Result<Released, Error> {
        if let Some(done) = &self.released {
            return done.clone();
        }
        let result = match self.commands.take() {
            None => Ok(Released::Confirmed),
            Some(commands) => {
                let (tx, rx) = oneshot::channel();
                if commands.send(Command::Release(Some(tx))).is_err() {
                    Err(self.lost_error(LostReason::Expired))
                } else {
                    rx.await.unwrap_or_else(|_| Err(self.lost_error(LostReason::Expired)))
                }
            }
        };
        self.released = Some(result.clone());
        result
    }

    pub(super) fn lost_error(&self, reason: LostReason) -> Error {
        Error::LeaseLost {
            lock: self.lock.to_string(),
            reason,
            service: None,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Release(None));
        }
    }
}
