//! The NATS transport: the same [`Transport`] contract as the embedded bus, on a real NATS
//! server or cluster (docs/design.md, Backends), so agents behave the same on one machine
//! and across nodes.
//!
//! One connection per node carries everything: every agent subscription, every publish and
//! every request (async-nats multiplexes requests over one wildcard reply subscription).
//! The client reconnects by itself with backoff; disconnects and reconnects are logged and
//! counted. While it is away, core NATS gives no delivery guarantee: messages published to
//! the node's subjects in that time are not delivered to it (durable delivery through
//! JetStream is what closes that gap).
//!
//! Each subscription, agent inboxes included, gets the host's own bounded buffer
//! ([`subscription_channel`], `[node] mailbox_capacity` for an inbox), fed by a small task,
//! so a slow agent loses new messages exactly as on the embedded bus: every drop counted per
//! subscription, on the agent (`mailbox_dropped`) and in [`Transport::dropped`], and logged
//! at most once a second. (Reading inboxes straight from the client's buffer would spare
//! that hop, but the client reports drops through an event queue that itself drops under a
//! flood, so the counts would be short; see BENCHMARKS.md.) Drops inside the client
//! (its per-subscription buffer, `[nats] subscription_capacity`, which the feeding task
//! keeps empty) can still happen if a feeder falls that far behind; they are counted from
//! those events, so that count is a lower bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, Event, HeaderMap, RequestErrorKind};
use futures::future::Either;
use futures::{FutureExt, StreamExt};

use super::{
    subscription_channel, BusError, BusMessage, BusState, Delivery, MailboxLimits, Subscription,
    Transport, MAX_HEADERS,
};
use crate::bounded::within;
use crate::subjects;
pub(crate) use headers::from_nats;
use headers::{encoded_header_len, to_nats_headers};
use url::NatsUrl;

mod headers;
mod url;

/// What the transport needs to connect.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// One URL or several, comma-separated (`nats://a:4222,nats://b:4222`).
    pub url: String,
    /// Shown in the server's connection list (`nats server report connections`), so an
    /// operator can tell which node a connection belongs to.
    pub connection_name: String,
    /// How long one connection attempt may take, at start and on each reconnect.
    pub connect_timeout: Duration,
    /// Messages the client buffers per subscription before it drops new ones (a slow
    /// consumer, counted and logged); agent inboxes read from this buffer directly.
    pub subscription_capacity: usize,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed), for servers in
    /// operator/JWT mode (Synadia Cloud, `nsc`-managed accounts).
    pub credentials_file: Option<std::path::PathBuf>,
}

impl NatsOptions {
    /// Options for `url` with a 5 s connect timeout and a generic connection name.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            connection_name: "agent-host".to_string(),
            connect_timeout: Duration::from_secs(5),
            subscription_capacity: 64 * 1024,
            credentials_file: None,
        }
    }
}

/// The NATS [`Transport`]. Cloning is cheap and shares the one connection.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    shared: Arc<Shared>,
}

/// Counters shared with the client's event callback.
struct Shared {
    url: String,
    dropped: AtomicU64,
    /// Connect events seen, to tell the first connect from a reconnect in the log only:
    /// [`NatsBus::reconnects`] reads the client's own count, which never lags its state.
    connects: AtomicU64,
    disconnects: AtomicU64,
    /// The client reports each message it drops; one warning a second is enough.
    slow_consumer_warnings: crate::log_sample::LogSample,
    /// Bounds how long a publish or subscribe may wait for room in the client's outgoing
    /// queue, which stops draining while the server is away.
    send_timeout: Duration,
}

impl NatsBus {
    /// Connects to the server(s) at `options.url`. Fails at once, naming the URL and what to
    /// check, when no server answers: a node that silently ran without its bus would look
    /// healthy while no agent heard anything.
    pub async fn connect(options: &NatsOptions) -> Result<NatsBus, BusError> {
        let url = NatsUrl::parse(&options.url).map_err(BusError::Unavailable)?;
        let shared = Arc::new(Shared {
            url: url.shown.clone(),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            slow_consumer_warnings: crate::log_sample::LogSample::new(),
            send_timeout: options.connect_timeout.max(Duration::from_secs(1)),
        });
        let events = shared.clone();
        let client = url
            .sign_in_options(options.credentials_file.as_deref())
            .await
            .map_err(BusError::Unavailable)?;
        let client = client
            .name(&options.connection_name)
            .connection_timeout(options.connect_timeout)
            .subscription_capacity(options.subscription_capacity.max(1))
            // Every subject this host hands the client is checked first ([`NatsBus::check`]
            // for publishes and requests, the KV key rules for storage) or built by the host;
            // checking each one again in the client was a share of the request path.
            .skip_subject_validation(true)
            .event_callback(move |event| {
                let shared = events.clone();
                async move { shared.on_event(event) }
            })
            .connect(url.servers.as_slice())
            .await
            .map_err(|e| BusError::Unavailable(connect_error(&shared.url, &e)))?;
        let info = client.server_info();
        tracing::info!(
            url = %shared.url,
            server = %info.server_name,
            version = %info.version,
            max_payload = info.max_payload,
            jetstream = info.jetstream,
            "connected to NATS"
        );
        Ok(NatsBus { client, shared })
    }

    /// The underlying connection, for JetStream (KV) on the same socket.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The URL this bus connected to, for logs and errors: passwords and tokens masked.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Successful reconnects since start (the first connect does not count).
    ///
    /// Read from the client's own statistics, which it counts before it flips its state to
    /// connected: `/health` then never shows the node connected again with the reconnect not
    /// yet counted, as it did when this came from the event callback (which runs later, on
    /// another task, and whose events the client drops when their queue is full).
    pub fn reconnects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(Ordering::Acquire)
            .saturating_sub(1)
    }

    /// Times the connection was lost since start.
    pub fn disconnects(&self) -> u64 {
        self.shared.disconnects.load(Ordering::Relaxed)
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Checks size, subject and headers before anything is queued, so a refused message is
    /// refused with the reason instead of closing the connection or timing out.
    /// Takes the headers out of `msg` (moved into the client's map, not copied), and adds
    /// `sender`'s stamp when given.
    fn check(
        &self,
        msg: &mut BusMessage,
        sender: Option<&str>,
    ) -> Result<(HeaderMap, usize), BusError> {
        subjects::validate_subject(&msg.subject).map_err(BusError::InvalidSubject)?;
        if let Some(reply_to) = &msg.reply_to {
            subjects::validate_subject(reply_to).map_err(BusError::InvalidSubject)?;
        }
        // The sender stamp is one of them, as on the embedded bus.
        let count = msg.headers.len() + usize::from(sender.is_some());
        if count > MAX_HEADERS {
            return Err(BusError::InvalidHeaders(format!(
                "the message has {count} headers; at most {MAX_HEADERS} are allowed per message"
            )));
        }
        let size = msg.payload.len() + encoded_header_len(&msg.headers, sender);
        let max = self.client.max_payload();
        if size > max {
            return Err(BusError::TooLarge { size, max });
        }
        let headers = to_nats_headers(std::mem::take(&mut msg.headers), sender)?;
        Ok((headers, size))
    }

    /// Publishes `msg`, stamped by `sender` when given. The checks run before the future
    /// is made, which holds only the client's publish: it is boxed for every message (the
    /// transport is a trait object), and a larger one costs a larger copy and allocation.
    fn send(
        &self,
        mut msg: BusMessage,
        sender: Option<&str>,
    ) -> impl std::future::Future<Output = Result<(), BusError>> + Send + '_ {
        let headers = match self.check(&mut msg, sender) {
            Ok((headers, _)) => headers,
            Err(e) => return Either::Left(std::future::ready(Err(e))),
        };
        let BusMessage {
            subject,
            reply_to,
            payload,
            ..
        } = msg;
        // One future for either kind of publish, bounded by the send timeout: the client's
        // queue almost always has room, so the first poll finishes it and no timer is made.
        let send = match reply_to {
            Some(reply) => Either::Left(
                self.client
                    .publish_with_reply_and_headers(subject, reply, headers, payload),
            ),
            None => Either::Right(self.client.publish_with_headers(subject, headers, payload)),
        };
        Either::Right(
            within(self.shared.send_timeout, send).map(|sent| match sent {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(BusError::Unavailable(format!(
                    "publish to NATS at {} failed: {e}",
                    self.shared.url
                ))),
                None => Err(self.unreachable("publish")),
            }),
        )
    }

    /// Sends `msg` as a request, stamped by `sender` when given, and waits for the reply.
    async fn ask(
        &self,
        mut msg: BusMessage,
        sender: Option<&str>,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let (headers, size) = self.check(&mut msg, sender)?;
        let subject = msg.subject;
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(msg.payload)
            .timeout(Some(timeout));
        // The client's own timeout does not cover queueing the request while disconnected.
        let sent = self.client.send_request(subject.clone(), request);
        match tokio::time::timeout(timeout + Duration::from_millis(50), sent).await {
            Ok(Ok(reply)) => Ok(from_nats(reply)),
            Ok(Err(e)) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout,
                RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                RequestErrorKind::InvalidSubject => {
                    BusError::InvalidSubject(format!("NATS refused the subject '{subject}': {e}"))
                }
                RequestErrorKind::MaxPayloadExceeded => BusError::TooLarge {
                    size,
                    max: self.client.max_payload(),
                },
                RequestErrorKind::Other => BusError::Unavailable(format!(
                    "request to '{subject}' on NATS at {} failed: {e}",
                    self.shared.url
                )),
            }),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn confirm(&self, what: &str) {
        confirm_processed(
            &self.client,
            self.shared.send_timeout,
            &self.shared.url,
            what,
        )
        .await;
    }

    fn unreachable(&self, what: &str) -> BusError {
        BusError::Unavailable(format!(
            "{what}: NATS at {} did not take the message within {:?} (disconnected: the host is reconnecting by itself)",
            self.shared.url, self.shared.send_timeout
        ))
    }
}

impl Shared {
    fn on_event(&self, event: Event) {
        let url = &self.url;
        match event {
            Event::Connected => {
                let n = self.connects.fetch_add(1, Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(%url, reconnects = n, "reconnected to NATS; subscriptions restored");
                }
            }
            Event::Disconnected => {
                let n = self.disconnects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(%url, disconnects = n, "disconnected from NATS; reconnecting in the background (messages sent to this node meanwhile are not delivered to core subscriptions)");
            }
            Event::SlowConsumer(sid) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if self.slow_consumer_warnings.due() {
                    tracing::warn!(%url, subscription = sid, dropped = total, "slow consumer: the NATS client's buffer for a subscription is full, dropping messages");
                }
            }
            Event::LameDuckMode => {
                tracing::warn!(%url, "the NATS server is shutting down (lame duck mode); the client will move to another server")
            }
            Event::ServerError(e) => tracing::warn!(%url, "NATS server error: {e}"),
            Event::ClientError(e) => tracing::warn!(%url, "NATS client error: {e}"),
            Event::Draining => tracing::info!(%url, "NATS connection draining"),
            Event::Closed => tracing::info!(%url, "NATS connection closed"),
        }
    }
}

#[async_trait::async_trait]
impl Transport for NatsBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        self.send(msg, None).await
    }

    /// The stamp goes straight into the client's header map under a name made once, not
    /// as a header in the list whose name is copied, checked and converted on every reply.
    async fn publish_stamped(&self, msg: BusMessage, sender: &str) -> Result<(), BusError> {
        self.send(msg, Some(sender)).await
    }

    async fn subscribe_with(
        &self,
        pattern: &str,
        limits: MailboxLimits,
    ) -> Result<Subscription, BusError> {
        subjects::validate_pattern(pattern).map_err(BusError::InvalidSubject)?;
        let subscribe = self.client.subscribe(pattern.to_string());
        let mut incoming = match tokio::time::timeout(self.shared.send_timeout, subscribe).await {
            Ok(Ok(sub)) => sub,
            Ok(Err(e)) => {
                return Err(BusError::Unavailable(format!(
                    "subscribe to '{pattern}' on NATS at {} failed: {e}",
                    self.shared.url
                )))
            }
            Err(_) => return Err(self.unreachable("subscribe")),
        };
        self.confirm(&format!("subscription to '{pattern}'")).await;
        let (sink, sub) = subscription_channel(pattern, limits);
        let shared = self.shared.clone();
        let feeder = tokio::spawn(async move {
            while let Some(m) = incoming.next().await {
                if sink.deliver(from_nats(m), &shared.dropped) == Delivery::Closed {
                    break;
                }
            }
            // Dropping `incoming` here unsubscribes on the server.
        });
        let feeder = feeder.abort_handle();
        Ok(sub.on_drop(move || feeder.abort()))
    }

    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<BusMessage, BusError> {
        self.ask(msg, None, timeout).await
    }

    async fn request_stamped(
        &self,
        msg: BusMessage,
        sender: &str,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        self.ask(msg, Some(sender), timeout).await
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The connected server's `max_payload` (headers included), refreshed on reconnect.
    fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// The client's latest server INFO names the server, refreshed on every reconnect.
    fn state(&self) -> BusState {
        let connected = self.is_connected();
        let info = connected.then(|| self.client.server_info());
        BusState {
            backend: "nats".to_string(),
            connected,
            server_name: info.as_ref().map(|i| i.server_name.clone()),
            server_address: info.map(|i| format!("{}:{}", i.host, i.port)),
            reconnects: self.reconnects(),
            dropped: self.dropped(),
        }
    }
}

/// Why the first connection failed, with the URL and what to check.
fn connect_error(url: &str, e: &async_nats::ConnectError) -> String {
    let check = match e.kind() {
        ConnectErrorKind::ServerParse => {
            "check the URL's form, e.g. nats://127.0.0.1:4222 ([nats] url or NATS_URL)"
        }
        ConnectErrorKind::Dns => "check the host name in [nats] url or NATS_URL",
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            "check the user and password (nats://user:password@host:4222) or token (nats://token@host:4222) in [nats] url or NATS_URL, or the user in [nats] credentials_file / NATS_CREDS"
        }
        ConnectErrorKind::Tls => "check the server's TLS settings and the URL scheme (tls://)",
        _ => {
            "check that nats-server is running and reachable there, and that [nats] url / NATS_URL \
             is right; remove both to run on the embedded bus"
        }
    };
    format!("cannot connect to NATS at {url}: {e}; {check}")
}

/// Waits until the server has processed everything `client` sent so far (here: a SUB), so
/// a message published anywhere after this returns reaches the new subscription, as on the
/// embedded bus. `flush` only empties the socket: the server reads each connection on its
/// own, so another client's publish could still be routed before the SUB. A request to a
/// subject nobody serves is a true round trip (the server answers "no responders" after
/// everything before it). Bounded, so a subscribe during an outage does not hang: the client
/// re-sends subscriptions on reconnect anyway.
pub(crate) async fn confirm_processed(
    client: &async_nats::Client,
    timeout: Duration,
    url: &str,
    what: &str,
) {
    let probe = format!("_HOST.sync.{}", uuid::Uuid::now_v7().simple());
    let request = async_nats::Request::new().timeout(Some(timeout));
    let round_trip = client.send_request(probe, request);
    match tokio::time::timeout(timeout, round_trip).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {}
        Ok(Err(e)) => {
            tracing::warn!(%url, "{what}: not confirmed by the server yet ({e}); it takes effect once connected")
        }
        Err(_) => {
            tracing::warn!(%url, "{what}: not confirmed by the server within {timeout:?}; it takes effect once connected")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsable_url_says_what_form_is_expected() {
        let text = tokio::runtime::Runtime::new().unwrap().block_on(async {
            match NatsBus::connect(&NatsOptions::new("nats://[::1")).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("connected to a bad URL"),
            }
        });
        assert!(text.contains("nats://[::1"), "{text}");
        assert!(text.contains("[nats] url or NATS_URL"), "{text}");
    }
}
