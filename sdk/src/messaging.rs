//! Publish, send to other agents and make requests. The host checks each call against the
//! manifest's `[messaging]` grants and returns [`HostError::Denied`](crate::HostError)
//! naming the grant to add.

use std::time::Duration;

use crate::bindings::agent::host::messaging as wit;
use crate::error::host;
use crate::{AgentCommand, AgentTarget, Destination, Header, Message, OutgoingRequest, Result};

/// Publishes `payload` to `subject`.
pub fn publish(subject: &str, payload: impl AsRef<[u8]>) -> Result<()> {
    publish_with_headers(subject, &[], payload)
}

/// Publishes with headers. The host adds the sender's `Agent-Ref` header itself.
pub fn publish_with_headers(
    subject: &str,
    headers: &[Header],
    payload: impl AsRef<[u8]>,
) -> Result<()> {
    host(wit::publish(subject, headers, payload.as_ref()))
}

/// Sends `command` to the agent named `to`; the host picks the subject scheme.
pub fn send(to: &str, command: &str, payload: impl AsRef<[u8]>) -> Result<()> {
    host(wit::send(
        &AgentTarget::Name(to.to_string()),
        command,
        &[],
        payload.as_ref(),
    ))
}

/// Sends a request to a subject and waits up to `timeout` for the reply.
pub fn request(subject: &str, payload: impl AsRef<[u8]>, timeout: Duration) -> Result<Message> {
    let dest = Destination::Subject(subject.to_string());
    host(wit::request(&dest, &[], payload.as_ref(), millis(timeout)))
}

/// Asks the agent named `to` to run `command` and waits for its reply.
pub fn ask(
    to: &str,
    command: &str,
    payload: impl AsRef<[u8]>,
    timeout: Duration,
) -> Result<Message> {
    let dest = agent_destination(to, command);
    host(wit::request(&dest, &[], payload.as_ref(), millis(timeout)))
}

/// A request for [`request_many`]: a command for the agent named `to`.
pub fn to_agent(to: &str, command: &str, payload: impl Into<Vec<u8>>) -> OutgoingRequest {
    OutgoingRequest {
        to: agent_destination(to, command),
        headers: Vec::new(),
        payload: payload.into(),
    }
}

/// A request for [`request_many`]: a raw subject.
pub fn to_subject(subject: &str, payload: impl Into<Vec<u8>>) -> OutgoingRequest {
    OutgoingRequest {
        to: Destination::Subject(subject.to_string()),
        headers: Vec::new(),
        payload: payload.into(),
    }
}

/// Runs all requests concurrently on the host; results come back in the same order.
pub fn request_many(requests: &[OutgoingRequest], timeout: Duration) -> Vec<Result<Message>> {
    wit::request_many(requests, millis(timeout))
        .into_iter()
        .map(|r| r.map_err(|e| crate::AgentError::new(crate::error::describe(&e))))
        .collect()
}

fn agent_destination(to: &str, command: &str) -> Destination {
    Destination::Agent(AgentCommand {
        to: AgentTarget::Name(to.to_string()),
        command: command.to_string(),
    })
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
