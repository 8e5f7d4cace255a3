//! How long an export call has run and how long it has waited: the CPU budget's clock,
//! and the bound on time blocked in one host call (see the module docs of `limits`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// The trap raised when a guest stays inside one host call longer than the node allows.
#[derive(Debug, thiserror::Error)]
#[error("blocked in one host call for more than {:.1} s (the node's bound on a host call: [defaults] host_call_timeout_ms, or [llm] timeout_ms if longer, plus a margin)", .limit.as_secs_f64())]
pub struct HostCallTooLong {
    pub limit: Duration,
}

/// The trap raised when one of an instance's lifecycle calls (`init`, `version`,
/// `snapshot`, `restore`) runs longer in all than the node allows. Each of its host calls may
/// be short (the host-call bound does not fire), yet while it runs the agent serves nothing
/// (a hand-off) or the load waits (init): so the whole call is bounded by wall time.
#[derive(Debug, thiserror::Error)]
#[error("{call} did not finish within {:.1} s ({field}); the instance was abandoned", .limit.as_secs_f64())]
pub struct LifecycleTooLong {
    /// The export: `init`, `version`, `snapshot` or `restore`.
    pub call: &'static str,
    pub limit: Duration,
    /// The node config field that sets `limit`.
    pub field: &'static str,
}

/// Runs `call`, an export call already bounded by [`HostCallWatch::bound`], for at most
/// `limit` of wall time in all; past it, the call is dropped (the instance must not be used
/// again) and [`LifecycleTooLong`] returned.
pub async fn within_lifecycle_bound<T>(
    call: &'static str,
    limit: Duration,
    field: &'static str,
    run: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match tokio::time::timeout(limit, run).await {
        Ok(result) => result,
        Err(_) => Err(LifecycleTooLong { call, limit, field }.into()),
    }
}

/// Shared between an instance's store and whoever awaits its export calls: how long the
/// current call has run, and how long it has been waiting, readable while the call is in
/// progress.
///
/// A call's future is pending only while the call waits: inside a host call waiting for I/O
/// (a request, an LLM call, a WASI sleep) or for its next turn after an epoch yield. So the
/// time it ran is its wall time less its waits, which costs a clock read at its start and
/// one at each end of a wait; a call that finishes in one poll, the common case, reads the
/// clock once. A wait for a turn ends as soon as the runtime polls the call again, so a
/// wait longer than the limit is a host call that does not return: that is what the watch
/// abandons, without a hook on every guest-host transition (a wasmtime call hook was the
/// largest single cost of the component call on the message path).
pub struct HostCallWatch {
    limit: Duration,
    /// The most wall time the first check may charge (two epoch ticks): see
    /// [`Self::running_time`].
    first_check_cap: u64,
    /// Nanoseconds since [`origin`] when the current export call began.
    started: AtomicU64,
    /// Nanoseconds since [`origin`] when the current call last returned `Pending`; 0 while
    /// it is being polled.
    waiting_since: AtomicU64,
    /// Nanoseconds the current call spent waiting, in waits that ended.
    waited: AtomicU64,
    /// Whether the current call is measured in thread CPU time (from its first check on).
    precise: AtomicBool,
    /// Nanoseconds charged to the current call before the poll in progress (precise mode).
    polled: AtomicU64,
    /// The thread's CPU clock, in nanoseconds, when the poll in progress began (precise).
    poll_cpu_began: AtomicU64,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `at` as nanoseconds since [`origin`], never 0 (0 means "none" in the watch's fields).
fn since_origin(at: Instant) -> u64 {
    u64::try_from(at.duration_since(origin()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl HostCallWatch {
    /// A watch that abandons calls blocked in one host call for longer than `limit`, for an
    /// engine whose epoch advances every `epoch_tick` (when the CPU budget is checked).
    pub fn new(limit: Duration, epoch_tick: Duration) -> Arc<HostCallWatch> {
        origin();
        Arc::new(HostCallWatch {
            limit,
            first_check_cap: u64::try_from(epoch_tick.as_nanos().saturating_mul(2))
                .unwrap_or(u64::MAX),
            started: AtomicU64::new(since_origin(Instant::now())),
            waiting_since: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            precise: AtomicBool::new(false),
            polled: AtomicU64::new(0),
            poll_cpu_began: AtomicU64::new(0),
        })
    }

    /// Wall time since the current (or last) export call began: one clock read, in the
    /// watch's own units rather than through an `Instant` rebuilt from them.
    pub fn since_call_start(&self) -> Duration {
        Duration::from_nanos(
            since_origin(Instant::now()).saturating_sub(self.started.load(Ordering::Relaxed)),
        )
    }

    /// Runs an export call, abandoning it (an error, as if it trapped) when it waits longer
    /// than the limit in one go: blocked in a host call. Dropping the call unwinds the
    /// guest; the instance must not be used again.
    ///
    /// The watchdog is a timer armed when the call first waits, for the end of the limit
    /// from the start of that wait. When it fires, the watch looks before polling the call:
    /// if that wait is still going on, the call is abandoned; otherwise the timer is armed
    /// again for the wait in progress after the poll. So a call that never waits never
    /// starts a timer, and a stuck call is abandoned between one and two limits after its
    /// stuck wait began.
    pub async fn bound<T>(
        &self,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        self.started
            .store(since_origin(Instant::now()), Ordering::Relaxed);
        self.waiting_since.store(0, Ordering::Relaxed);
        self.waited.store(0, Ordering::Relaxed);
        self.polled.store(0, Ordering::Relaxed);
        self.precise.store(false, Ordering::Relaxed);
        let mut call = std::pin::pin!(call);
        // The watchdog: its timer, and the start of the wait it was armed for.
        let mut watchdog: Option<(std::pin::Pin<Box<tokio::time::Sleep>>, u64)> = None;
        std::future::poll_fn(|cx| {
            if let Some((timer, armed_for)) = watchdog.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    if self.waiting_since.load(Ordering::Relaxed) == *armed_for {
                        return Poll::Ready(Err(HostCallTooLong { limit: self.limit }.into()));
                    }
                    watchdog = None;
                }
            }
            let result = self.timed_poll(call.as_mut(), cx);
            if result.is_pending() && watchdog.is_none() {
                let since = self.waiting_since.load(Ordering::Relaxed);
                let deadline = origin() + Duration::from_nanos(since) + self.limit;
                let mut timer = Box::pin(tokio::time::sleep_until(deadline.into()));
                // Registers the timer with this task. Should the limit be shorter than the
                // time since the wait began, look again at once rather than wait for a
                // wake-up the spent timer will not send.
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                watchdog = Some((timer, since));
            }
            result
        })
        .await
    }

    /// How long the current export call has run, for its CPU budget; call it only from
    /// inside the call (the epoch callback). Until the first check, its wall time less its
    /// waits: neither a host call's I/O nor the wait for a turn after an epoch yield, long on
    /// a busy node, is in it. From the first check on, the thread's CPU time during its
    /// polls, which a machine whose cores are taken by other work does not inflate either.
    /// Most calls end before the first check and never read the thread clock (a system
    /// call).
    ///
    /// The first check charges at most two epoch ticks: a call that runs is checked within
    /// about a tick of its start, so wall time beyond that was spent off the CPU (its thread
    /// preempted, or its virtual CPU stolen by the hypervisor, for hundreds of ms on a
    /// shared machine). Charging it tripped the budget of calls that had run for
    /// microseconds, and the trap restarted the agent from its last snapshot, losing the
    /// messages since. The price: when the epoch ticker itself runs late, a call may run
    /// that much longer uncharged before the checks measure it.
    pub fn running_time(&self) -> Duration {
        if self.precise.load(Ordering::Relaxed) {
            let current =
                thread_cpu_nanos().saturating_sub(self.poll_cpu_began.load(Ordering::Relaxed));
            return Duration::from_nanos(
                self.polled.load(Ordering::Relaxed).saturating_add(current),
            );
        }
        // Charge the wall time so far less the waits, and measure the rest in CPU time.
        let wall = since_origin(Instant::now())
            .saturating_sub(self.started.load(Ordering::Relaxed))
            .saturating_sub(self.waited.load(Ordering::Relaxed))
            .min(self.first_check_cap);
        self.polled.store(wall, Ordering::Relaxed);
        self.poll_cpu_began
            .store(thread_cpu_nanos(), Ordering::Relaxed);
        self.precise.store(true, Ordering::Relaxed);
        Duration::from_nanos(wall)
    }

    /// Polls `call` once, keeping the account [`Self::running_time`] reads: when each wait
    /// began and how long the waits took, and in precise mode the thread CPU time of each
    /// poll.
    fn timed_poll<T>(
        &self,
        call: std::pin::Pin<&mut impl Future<Output = T>>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<T> {
        let waiting_since = self.waiting_since.swap(0, Ordering::Relaxed);
        if waiting_since != 0 {
            let waited = since_origin(Instant::now()).saturating_sub(waiting_since);
            self.waited.fetch_add(waited, Ordering::Relaxed);
        }
        if self.precise.load(Ordering::Relaxed) {
            self.poll_cpu_began
                .store(thread_cpu_nanos(), Ordering::Relaxed);
        }
        let result = call.poll(cx);
        // The call may have switched to CPU time during this poll.
        if self.precise.load(Ordering::Relaxed) {
            let took =
                thread_cpu_nanos().saturating_sub(self.poll_cpu_began.load(Ordering::Relaxed));
            self.polled.fetch_add(took, Ordering::Relaxed);
        }
        if result.is_pending() {
            self.waiting_since
                .store(since_origin(Instant::now()), Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's default epoch tick.
    const TICK: Duration = Duration::from_millis(10);

    /// A call that waits in one host call past the limit is abandoned; one that makes many
    /// short waits for longer than the limit in all is not. The bounds leave a loaded
    /// machine room to poll late: the stuck call would wait 3 s, the short waits sum to 1.5
    /// times their watch's limit.
    #[tokio::test]
    async fn only_a_call_stuck_in_one_host_call_is_abandoned() {
        let limit = Duration::from_millis(60);
        let watch = HostCallWatch::new(limit, TICK);
        let stuck = watch.bound(async {
            tokio::time::sleep(limit * 50).await;
            Ok(())
        });
        let started = Instant::now();
        let err = stuck.await.unwrap_err();
        assert!(err.downcast_ref::<HostCallTooLong>().is_some(), "{err:#}");
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "abandoned soon after the limit, not when the wait ended"
        );

        let limit = Duration::from_secs(1);
        let watch = HostCallWatch::new(limit, TICK);
        let busy = watch.bound(async {
            for _ in 0..150 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        });
        busy.await
            .expect("many short host calls are not one long one");
    }

    /// A call that yields for its turn (the epoch callback's yield) is polled again at once
    /// and never looks blocked, however long it runs in all.
    #[tokio::test]
    async fn a_call_that_keeps_yielding_is_not_abandoned() {
        let limit = Duration::from_millis(40);
        let watch = HostCallWatch::new(limit, TICK);
        let started = Instant::now();
        watch
            .bound(async {
                while started.elapsed() < limit * 4 {
                    tokio::task::yield_now().await;
                }
                Ok(())
            })
            .await
            .expect("yielding is not blocking");
    }

    /// Time the call spends waiting (not polled) is not charged; time it is polled is.
    #[tokio::test]
    async fn a_call_is_charged_the_time_it_runs_not_the_time_it_waits() {
        // A slow tick (the first check may charge up to 1 s) so that a late wake-up from
        // the work's sleep stays far below what charging the wait would give (≥ 820 ms).
        let watch = HostCallWatch::new(Duration::from_secs(5), Duration::from_millis(500));
        let charged = watch
            .bound(async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                std::thread::sleep(Duration::from_millis(20));
                Ok(watch.running_time())
            })
            .await
            .unwrap();
        assert!(
            charged >= Duration::from_millis(20) && charged < Duration::from_millis(600),
            "charged {charged:?} for 20 ms of work and 800 ms of waiting"
        );
    }

    /// A call whose thread is off the CPU before the budget is first checked (preempted, or
    /// its virtual CPU stolen) is not charged that time: it has not used it. After the first
    /// check the thread's CPU clock is read, which a sleep does not advance; a hypervisor
    /// that steals the virtual CPU while the thread is on it does advance it (CI failed once
    /// on 10 ms of such time), so the bound there is far below the wall time, not zero.
    #[tokio::test]
    async fn time_off_the_cpu_before_the_first_check_is_not_charged() {
        let watch = HostCallWatch::new(Duration::from_secs(5), TICK);
        let charged = watch
            .bound(async {
                // Neither running nor waiting on the host: what a preempted thread looks like.
                std::thread::sleep(Duration::from_millis(300));
                let first = watch.running_time();
                std::thread::sleep(Duration::from_millis(300));
                Ok((first, watch.running_time()))
            })
            .await
            .unwrap();
        assert!(
            charged.0 <= TICK * 2 && charged.1 < TICK * 2 + Duration::from_millis(150),
            "charged {charged:?} for 600 ms off the CPU (the budget's checks every {TICK:?})"
        );
    }
}
