//! A bound on how long a backend call may take that costs nothing when the call finishes
//! at once, as almost all do: a publish into the client's queue, an in-memory KV commit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// Runs `call` bounded by `limit`: `None` when it did not finish in time. The limit counts
/// from the first time the call has to wait. The timer is made only then, and on the heap:
/// a timer per message showed in profiles, and one kept inline made every future that
/// awaits this one a timer larger, and each such future is copied when it is boxed or
/// moved, which showed too.
pub fn within<F: Future>(limit: Duration, call: F) -> Within<F> {
    Within {
        call,
        limit,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`].
    pub struct Within<F> {
        #[pin]
        call: F,
        limit: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(done) = this.call.poll(cx) {
            return Poll::Ready(Some(done));
        }
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_finishes_at_once_needs_no_timer() {
        let mut call = std::pin::pin!(within(Duration::from_millis(1), async { 7 }));
        assert_eq!(futures::poll!(call.as_mut()), Poll::Ready(Some(7)));
        assert!(call.timer.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_gets_the_limit_from_its_first_wait() {
        let slow = within(Duration::from_millis(50), async {
            tokio::time::sleep(Duration::from_millis(80)).await;
        });
        assert_eq!(slow.await, None, "80 ms of waiting is past a 50 ms limit");
        let in_time = within(Duration::from_millis(50), async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            "done"
        });
        assert_eq!(in_time.await, Some("done"));
    }
}
