//! The NATS transport: the same [`Transport`] contract as the embedded bus, on a real NATS
//! server or cluster (DESIGN §6), so agents behave the same on one machine and across nodes.
//!
//! One connection per node carries everything: every agent subscription, every publish and
//! every request (async-nats multiplexes requests over one wildcard reply subscription).
//! The client reconnects by itself with backoff; disconnects and reconnects are logged and
//! counted. While it is away, core NATS gives no delivery guarantee: messages published to
//! the node's subjects in that time are not delivered to it (durable delivery through
//! JetStream is what closes that gap).
//!
//! Each subscription gets the host's own bounded buffer ([`subscription_channel`]), fed by
//! a small task, so a slow agent loses new messages exactly as on the embedded bus: counted
//! per subscription and in [`Transport::dropped`], and logged. Drops inside the client
//! (its per-subscription buffer, which the feeding task keeps empty) are counted from its
//! slow-consumer events and logged too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, Event, HeaderMap, HeaderName, HeaderValue, RequestErrorKind};
use futures::StreamExt;

use super::{
    subscription_channel, BusError, BusMessage, BusState, Delivery, Subscription, Transport,
};
use crate::subjects;
pub use url::{redacted, NatsUrl, SignIn};

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
    connects: AtomicU64,
    disconnects: AtomicU64,
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
            send_timeout: options.connect_timeout.max(Duration::from_secs(1)),
        });
        let events = shared.clone();
        let client = match (url.sign_in, &options.credentials_file) {
            (Some(_), Some(file)) => {
                return Err(BusError::Unavailable(format!(
                    "both [nats] url ({}) and [nats] credentials_file ({}) carry credentials; \
                     a node signs in once: keep one of them",
                    url.shown,
                    file.display()
                )))
            }
            (None, Some(file)) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!(
                        "cannot use the NATS credentials file {} ([nats] credentials_file or NATS_CREDS): {e}; \
                         expected a .creds file with a user JWT and its nkey seed, as `nsc generate creds` writes",
                        file.display()
                    ))
                })?,
            (Some(SignIn::UserPassword { user, password }), None) => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
            (Some(SignIn::Token(token)), None) => async_nats::ConnectOptions::with_token(token),
            (None, None) => async_nats::ConnectOptions::new(),
        };
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
    pub fn reconnects(&self) -> u64 {
        self.shared
            .connects
            .load(Ordering::Relaxed)
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
    /// Takes the headers out of `msg` (moved into the client's map, not copied).
    fn check(&self, msg: &mut BusMessage) -> Result<(HeaderMap, usize), BusError> {
        subjects::validate_subject(&msg.subject).map_err(BusError::InvalidSubject)?;
        if let Some(reply_to) = &msg.reply_to {
            subjects::validate_subject(reply_to).map_err(BusError::InvalidSubject)?;
        }
        let size = msg.payload.len() + encoded_header_len(&msg.headers);
        let max = self.client.max_payload();
        if size > max {
            return Err(BusError::TooLarge { size, max });
        }
        let headers = to_nats_headers(std::mem::take(&mut msg.headers))?;
        Ok((headers, size))
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

    /// Runs `send` bounded by the send timeout. The client's queue almost always has room,
    /// so the first poll usually finishes it and no timer is armed (a timer per publish was a
    /// measurable share of the request path).
    async fn within_send_timeout<F: std::future::Future>(
        &self,
        send: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        let mut send = std::pin::pin!(send);
        if let Some(done) = futures::FutureExt::now_or_never(&mut send) {
            return Ok(done);
        }
        tokio::time::timeout(self.shared.send_timeout, send).await
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
                tracing::warn!(%url, subscription = sid, dropped = total, "slow consumer: the NATS client's buffer for a subscription is full, dropping messages");
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
    async fn publish(&self, mut msg: BusMessage) -> Result<(), BusError> {
        let (headers, _) = self.check(&mut msg)?;
        let BusMessage {
            subject,
            reply_to,
            payload,
            ..
        } = msg;
        let sent = match reply_to {
            Some(reply) => {
                let send = self
                    .client
                    .publish_with_reply_and_headers(subject, reply, headers, payload);
                self.within_send_timeout(send).await
            }
            None => {
                let send = self.client.publish_with_headers(subject, headers, payload);
                self.within_send_timeout(send).await
            }
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(format!(
                "publish to NATS at {} failed: {e}",
                self.shared.url
            ))),
            Err(_) => Err(self.unreachable("publish")),
        }
    }

    async fn subscribe(&self, pattern: &str, capacity: usize) -> Result<Subscription, BusError> {
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
        let (sink, sub) = subscription_channel(pattern, capacity);
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

    /// Straight from the client's subscription buffer: no feeding task, one hop less per
    /// message. Sized by [`NatsOptions::subscription_capacity`]; drops are counted from the
    /// client's slow-consumer events.
    async fn subscribe_inbox(
        &self,
        pattern: &str,
        _capacity: usize,
    ) -> Result<Subscription, BusError> {
        subjects::validate_pattern(pattern).map_err(BusError::InvalidSubject)?;
        let subscribe = self.client.subscribe(pattern.to_string());
        let incoming = match tokio::time::timeout(self.shared.send_timeout, subscribe).await {
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
        Ok(Subscription::from_nats_subscriber(pattern, incoming))
    }

    async fn request(
        &self,
        mut msg: BusMessage,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let (headers, size) = self.check(&mut msg)?;
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

/// Host headers to NATS headers. Refuses what would break the NATS text protocol (CR or LF
/// anywhere, ':' or whitespace in a name), which the embedded bus has no reason to check.
fn to_nats_headers(headers: Vec<(String, String)>) -> Result<HeaderMap, BusError> {
    let mut map = HeaderMap::new();
    // Each name once (the usual case, e.g. only the stamped Agent-Ref): one hash per header
    // with `insert` instead of two with `append`. Names equal but for case count as repeats.
    let names_unique = headers.iter().enumerate().all(|(i, (key, _))| {
        !headers[..i]
            .iter()
            .any(|(earlier, _)| earlier.eq_ignore_ascii_case(key))
    });
    for (key, value) in headers {
        // The client's own rule for names (printable ASCII, no ':'), so the conversion
        // below cannot fail; and no line break in a value, which its conversion panics on.
        // Folds without early exit, so each scan takes many bytes per instruction.
        let bad_key = key.is_empty()
            || key
                .bytes()
                .fold(false, |bad, b| bad | !b.is_ascii_graphic() | (b == b':'));
        if bad_key {
            return Err(BusError::InvalidSubject(format!(
                "header name {key:?} is not allowed on NATS: names are non-empty, printable ASCII, without ':' or whitespace"
            )));
        }
        if value
            .bytes()
            .fold(false, |bad, b| bad | (b == b'\r') | (b == b'\n'))
        {
            return Err(BusError::InvalidSubject(format!(
                "header {key:?} has a line break in its value, which NATS cannot carry"
            )));
        }
        // Moved, not copied: the name's bytes become the client's, the value is a String.
        let name = HeaderName::try_from(key).map_err(|e| {
            BusError::InvalidSubject(format!("header name not allowed on NATS: {e}"))
        })?;
        let value = checked_header_value(value);
        if names_unique {
            map.insert(name, value);
        } else {
            map.append(name, value);
        }
    }
    Ok(map)
}

/// A header value already checked for line breaks, moved into the client's type as it is.
/// `HeaderValue::from(String)` searches it for them again, char by char: ~1,100 instructions
/// per reply for the stamped `Agent-Ref` (callgrind, the NATS bench), a tenth of the host's
/// own share of a request. The type's `Deserialize` is `transparent` over its `String`, so
/// deserializing from the owned `String` wraps it without a copy or a second scan.
fn checked_header_value(value: String) -> HeaderValue {
    use serde::de::value::{Error, StringDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let owned: StringDeserializer<Error> = value.into_deserializer();
    HeaderValue::deserialize(owned).expect("a HeaderValue deserializes from any String")
}

/// The bytes headers take on the wire (`NATS/1.0\r\n`, `k: v\r\n` each, `\r\n`), which
/// count against the server's max_payload.
fn encoded_header_len(headers: &[(String, String)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    12 + headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.len() + 2)
        .sum::<usize>()
}

/// A NATS message as a host message. NATS keeps repeated values of a header in order but
/// not the order between different names, so headers come out grouped by name.
pub(crate) fn from_nats(m: async_nats::Message) -> BusMessage {
    let mut headers = Vec::new();
    if let Some(map) = &m.headers {
        for (name, values) in map.iter() {
            for value in values {
                headers.push((name.to_string(), value.as_str().to_owned()));
            }
        }
    }
    // `as_str().to_owned()`, not `to_string()`: no formatting machinery per message.
    BusMessage {
        subject: m.subject.as_str().to_owned(),
        reply_to: m.reply.map(|r| r.as_str().to_owned()),
        headers,
        payload: m.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_keeping_repeats_in_order() {
        let headers = vec![
            ("Agent-Ref".to_string(), "c.n.1".to_string()),
            ("X-Tag".to_string(), "a".to_string()),
            ("X-Tag".to_string(), "b".to_string()),
        ];
        let map = to_nats_headers(headers).unwrap();
        let back = from_nats(async_nats::Message {
            subject: "a.b".into(),
            reply: None,
            payload: "x".into(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        });
        let msg = BusMessage {
            headers: back.headers.clone(),
            ..BusMessage::new("a.b", "x")
        };
        assert_eq!(msg.header("agent-ref"), Some("c.n.1"));
        let tags: Vec<_> = back
            .headers
            .iter()
            .filter(|(k, _)| k == "X-Tag")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn a_checked_value_becomes_the_same_header_value_the_clients_own_conversion_gives() {
        for value in [
            "default.echo.01936f11-4ea2-7000-8000-000000000001",
            "",
            "a: b, c",
        ] {
            assert_eq!(
                checked_header_value(value.to_string()),
                HeaderValue::from(value.to_string())
            );
        }
        // Names repeated in any case keep every value.
        let map = to_nats_headers(vec![
            ("X-Tag".to_string(), "a".to_string()),
            ("x-tag".to_string(), "b".to_string()),
        ])
        .unwrap();
        let back = from_nats(async_nats::Message {
            subject: "a.b".into(),
            reply: None,
            payload: "x".into(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        });
        let mut values: Vec<_> = back.headers.iter().map(|(_, v)| v.as_str()).collect();
        values.sort();
        assert_eq!(values, ["a", "b"], "{:?}", back.headers);
    }

    #[test]
    fn headers_that_would_break_the_protocol_are_refused_with_the_reason() {
        for (key, value, why) in [
            ("Bad Name", "v", "without ':' or whitespace"),
            ("Bad:Name", "v", "without ':' or whitespace"),
            ("", "v", "non-empty"),
            ("Grüße", "v", "printable ASCII"),
            ("X", "line\r\nPUB evil 1", "line break"),
            ("X", "a\rb", "line break"),
        ] {
            let err = to_nats_headers(vec![(key.to_string(), value.to_string())]).unwrap_err();
            assert!(err.to_string().contains(why), "{key:?}: {err}");
        }
    }

    #[test]
    fn header_bytes_count_toward_the_payload_limit() {
        assert_eq!(encoded_header_len(&[]), 0);
        // "NATS/1.0\r\n" + "Ab: c\r\n" + "\r\n"
        assert_eq!(encoded_header_len(&[("Ab".into(), "c".into())]), 12 + 7);
    }

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
