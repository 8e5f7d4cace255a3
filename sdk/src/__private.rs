//! The glue `export_agent!` expands to: one agent value per instance, created lazily.

use std::any::Any;
use std::cell::RefCell;

use crate::{Agent, AgentRef, Message};

thread_local! {
    static AGENT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_agent<A: Agent, R>(f: impl FnOnce(&mut A) -> R) -> R {
    AGENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let agent = slot.get_or_insert_with(|| Box::new(A::default()));
        let agent = agent
            .downcast_mut::<A>()
            .expect("one agent type per component");
        f(agent)
    })
}

pub fn init<A: Agent>(me: AgentRef) -> Result<(), String> {
    with_agent::<A, _>(|a| a.init(&me)).map_err(|e| e.to_string())
}

pub fn handle<A: Agent>(msg: Message) -> Result<(), String> {
    crate::message::set_current_reply_to(msg.reply_to.as_deref());
    with_agent::<A, _>(|a| a.handle(msg)).map_err(|e| e.to_string())
}

pub fn snapshot<A: Agent>() -> Vec<u8> {
    with_agent::<A, _>(|a| a.snapshot())
}

pub fn restore<A: Agent>(from_version: &str, state: &[u8]) -> Result<(), String> {
    with_agent::<A, _>(|a| a.restore(from_version, state)).map_err(|e| e.to_string())
}

pub fn health<A: Agent>() -> Result<(), String> {
    with_agent::<A, _>(|a| a.health()).map_err(|e| e.to_string())
}
