//! One consumer's messages through a long-lived pull subscription, asking for the next
//! batch while half of the last one is still due.
//!
//! Why not async-nats' own pull stream (`consumer.stream().messages()`): it adds a pull
//! request's batch to the count of messages it expects only once the request has been
//! queued, and takes every arriving message off that count with a saturating subtraction.
//! When all of a request's messages arrive before the request's bookkeeping does (a worker
//! thread preempted at the wrong moment, on a busy machine), the count ends a batch too high:
//! the stream then waits for messages the server has already delivered and asks for nothing
//! more. A server trace of such a stall showed every pull request fulfilled, the client
//! holding all the messages, `waiting_pulls=0`, and no request for two seconds, until the
//! missed heartbeats were noticed. Here a request is counted before it is sent.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{HeaderMap, StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tracing::warn;

/// Why a pull feed stopped giving messages.
#[derive(Debug, thiserror::Error)]
pub(super) enum PullError {
    /// Nothing came for two heartbeat intervals although a pull request is due: the server
    /// holds none (a lost server, a lost request) or cannot be reached.
    #[error("no message and no heartbeat for {0:?}")]
    MissedHeartbeat(Duration),
    /// The consumer cannot be pulled from any more (deleted, push based, a request the
    /// server refuses): it has to be created again.
    #[error("the server ended the pull: {0}")]
    Ended(String),
    /// The pull request could not be sent, or the subscription closed (the client shut down).
    #[error("{0}")]
    Connection(String),
}

/// How a feed asks: messages per request, how long a request stays open on the server, and
/// the idle heartbeat the server sends while a request waits without messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct PullSettings {
    pub batch: usize,
    pub expires: Duration,
    pub heartbeat: Duration,
}

/// A consumer's pull subscription and the count of messages its requests still have due.
pub(super) struct PullFeed {
    consumer: PullConsumer,
    context: jetstream::Context,
    client: async_nats::Client,
    subscriber: Subscriber,
    inbox: Subject,
    /// `$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}`.
    next_subject: String,
    request: bytes::Bytes,
    settings: PullSettings,
    /// Messages the server still owes on the requests sent.
    due: usize,
}

impl PullFeed {
    /// Subscribes a fresh inbox for `consumer`; the first request goes out with the first
    /// [`PullFeed::next`].
    pub async fn open(
        context: &jetstream::Context,
        consumer: PullConsumer,
        settings: PullSettings,
    ) -> Result<PullFeed, PullError> {
        let client = context.client();
        let info = consumer.cached_info();
        let next_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        );
        let inbox = Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await.map_err(|e| {
            PullError::Connection(format!("cannot subscribe for the consumer's messages: {e}"))
        })?;
        let request = serde_json::json!({
            "batch": settings.batch,
            "expires": nanos(settings.expires),
            "idle_heartbeat": nanos(settings.heartbeat),
        });
        Ok(PullFeed {
            consumer,
            context: context.clone(),
            client,
            subscriber,
            inbox,
            next_subject,
            request: bytes::Bytes::from(request.to_string()),
            settings,
            due: 0,
        })
    }

    /// The next message. A future dropped while it sends a request may leave that request
    /// counted but unsent; the silence check then notices within two heartbeat intervals
    /// (the host drops a feed only with its whole pump, so this does not happen in use).
    pub async fn next(&mut self) -> Result<jetstream::Message, PullError> {
        let silence = self.settings.heartbeat * 2;
        loop {
            if self.due <= self.settings.batch / 2 {
                self.due += self.settings.batch;
                let sent = self
                    .client
                    .publish_with_reply(
                        self.next_subject.clone(),
                        self.inbox.clone(),
                        self.request.clone(),
                    )
                    .await;
                if let Err(e) = sent {
                    self.due -= self.settings.batch;
                    return Err(PullError::Connection(format!(
                        "cannot send a pull request: {e}"
                    )));
                }
            }
            // A message already buffered, the common case under load, arms no timer.
            let message = match crate::capabilities::within(silence, self.subscriber.next()).await {
                None => return Err(PullError::MissedHeartbeat(silence)),
                Some(None) => {
                    return Err(PullError::Connection(
                        "the consumer's subscription closed".into(),
                    ))
                }
                Some(Some(message)) => message,
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.due = self.due.saturating_sub(1);
                    return Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                // A request that ended (expired, or cut short) before it delivered all of
                // its batch: what it still owed is no longer due.
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    let description = message.description.clone().unwrap_or_default();
                    if ends_the_consumer(&description) {
                        return Err(PullError::Ended(description));
                    }
                    let left =
                        pending_messages(message.headers.as_ref()).unwrap_or(self.settings.batch);
                    self.due = self.due.saturating_sub(left);
                }
                Some(status) => {
                    return Err(PullError::Ended(format!(
                        "status {status} {}",
                        message.description.unwrap_or_default()
                    )))
                }
            }
        }
    }
}

impl PullFeed {
    /// After two heartbeat intervals of silence: whether the server still holds a pull
    /// request of this consumer (a heartbeat late on a busy server); it does not when the
    /// request was lost with a server that went away, and then nothing more comes until a
    /// new one is sent. `None`: no answer within `wait`.
    pub async fn server_holds_a_pull(&self, agent: &str, wait: Duration) -> Option<bool> {
        let info = tokio::time::timeout(wait, self.consumer.get_info())
            .await
            .ok()?
            .ok()?;
        if info.num_waiting == 0 {
            warn!(
                agent = %agent,
                consumer = %info.name,
                waiting_pulls = info.num_waiting,
                pending = info.num_pending,
                unacked = info.num_ack_pending,
                "durable consumer: the server holds no pull request of ours while the client counts on one (the heartbeats stopped); pulling afresh"
            );
        }
        Some(info.num_waiting > 0)
    }
}

/// Statuses after which pulling again from the same consumer cannot work.
fn ends_the_consumer(description: &str) -> bool {
    description == "Consumer Deleted"
        || description == "Consumer is push based"
        || description.starts_with("Exceeded MaxRequest")
}

/// What a request that ended still owed, from the server's `Nats-Pending-Messages`.
fn pending_messages(headers: Option<&HeaderMap>) -> Option<usize> {
    headers?
        .get("Nats-Pending-Messages")?
        .as_str()
        .trim()
        .parse()
        .ok()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_request_releases_what_it_still_owed() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Pending-Messages", "17");
        assert_eq!(pending_messages(Some(&headers)), Some(17));
        assert_eq!(pending_messages(None), None);
        assert_eq!(pending_messages(Some(&HeaderMap::new())), None);
    }

    #[test]
    fn only_a_gone_or_refused_consumer_ends_the_feed() {
        assert!(ends_the_consumer("Consumer Deleted"));
        assert!(ends_the_consumer("Exceeded MaxRequestBatch of 10"));
        assert!(!ends_the_consumer("Request Timeout"));
        assert!(!ends_the_consumer("Message Size Exceeds MaxBytes"));
    }
}
