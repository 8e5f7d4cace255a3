//! The node-wide limiter of one backend: at most `num_parallel` calls in flight, waiting
//! calls served round-robin between agents, and a bounded queue.
//!
//! Ollama serves `OLLAMA_NUM_PARALLEL` requests at once and queues the rest itself, in
//! arrival order; a GPU that small must never see more, and an agent that sends many calls
//! must not push another agent's calls to the back. So each agent has its own FIFO queue
//! and a free slot goes to the next agent in turn, not to the oldest call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

/// Why a call got no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFull {
    pub waiting: usize,
    pub capacity: usize,
}

/// The limiter of one backend.
pub struct Limiter {
    max_in_flight: usize,
    capacity: usize,
    state: Mutex<State>,
    in_flight_gauge: Gauge,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: usize,
    next_id: u64,
    /// Per agent, its waiting calls in arrival order.
    queues: HashMap<Arc<str>, VecDeque<Waiter>>,
    /// Agents with waiting calls, in the order they get the next free slot.
    turn: VecDeque<Arc<str>>,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

impl State {
    /// Hands the free slot to the next agent in turn; false when nobody waits.
    fn grant_next(&mut self) -> bool {
        while let Some(agent) = self.turn.pop_front() {
            let Some(queue) = self.queues.get_mut(&agent) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                self.queues.remove(&agent);
                continue;
            };
            if queue.is_empty() {
                self.queues.remove(&agent);
            } else {
                self.turn.push_back(agent);
            }
            self.waiting -= 1;
            self.in_flight += 1;
            // The receiver is alive: a waiter leaves its queue (under this lock) before it
            // drops its receiver.
            let _ = waiter.grant.send(());
            return true;
        }
        false
    }

    /// Removes a waiter that gave up; false when it was already granted a slot.
    fn withdraw(&mut self, agent: &Arc<str>, id: u64) -> bool {
        let Some(queue) = self.queues.get_mut(agent) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(pos);
        self.waiting -= 1;
        if queue.is_empty() {
            self.queues.remove(agent);
            self.turn.retain(|a| a != agent);
        }
        true
    }
}

/// A slot in flight; dropping it frees the slot for the next agent in turn.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

/// A call waiting for a slot. If the call is abandoned (timeout, agent unloaded) this
/// takes it out of the queue, or gives back the slot it was granted meanwhile.
struct Waiting {
    limiter: Arc<Limiter>,
    agent: Arc<str>,
    id: u64,
    granted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut state = self.limiter.state.lock().expect("limiter lock");
        if !state.withdraw(&self.agent, self.id) {
            // Granted between the wake-up and the drop: pass the slot on.
            state.in_flight -= 1;
            state.grant_next();
            self.limiter.in_flight_gauge.set(state.in_flight as i64);
        }
    }
}

impl Limiter {
    /// `max_in_flight` calls at once (at least 1), at most `capacity` waiting.
    pub fn new(max_in_flight: usize, capacity: usize, in_flight_gauge: Gauge) -> Arc<Limiter> {
        Arc::new(Limiter {
            max_in_flight: max_in_flight.max(1),
            capacity,
            state: Mutex::new(State::default()),
            in_flight_gauge,
        })
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().expect("limiter lock").in_flight
    }

    /// Calls waiting now.
    pub fn waiting(&self) -> usize {
        self.state.lock().expect("limiter lock").waiting
    }

    /// Waits for a slot for `agent`'s call. Refused at once when the queue is full.
    pub async fn acquire(self: &Arc<Self>, agent: &Arc<str>) -> Result<Permit, QueueFull> {
        let (id, granted) = {
            let mut state = self.state.lock().expect("limiter lock");
            if state.in_flight < self.max_in_flight && state.waiting == 0 {
                state.in_flight += 1;
                self.in_flight_gauge.set(state.in_flight as i64);
                return Ok(Permit {
                    limiter: self.clone(),
                });
            }
            if state.waiting >= self.capacity {
                return Err(QueueFull {
                    waiting: state.waiting,
                    capacity: self.capacity,
                });
            }
            let id = state.next_id;
            state.next_id += 1;
            let (grant, granted) = oneshot::channel();
            state.waiting += 1;
            match state.queues.get_mut(agent) {
                Some(queue) => queue.push_back(Waiter { id, grant }),
                None => {
                    state
                        .queues
                        .insert(agent.clone(), VecDeque::from([Waiter { id, grant }]));
                    state.turn.push_back(agent.clone());
                }
            }
            (id, granted)
        };
        let mut waiting = Waiting {
            limiter: self.clone(),
            agent: agent.clone(),
            id,
            granted: false,
        };
        // The sender is only dropped after a send, so this cannot fail while we hold the
        // limiter; treat a failure as a grant anyway so the slot count stays right.
        let _ = granted.await;
        waiting.granted = true;
        Ok(Permit {
            limiter: self.clone(),
        })
    }

    fn release(&self) {
        let mut state = self.state.lock().expect("limiter lock");
        state.in_flight -= 1;
        state.grant_next();
        self.in_flight_gauge.set(state.in_flight as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn agent(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[tokio::test]
    async fn never_more_than_the_limit_in_flight() {
        let l = Limiter::new(2, 10, Gauge::default());
        let a = agent("a");
        let p1 = l.acquire(&a).await.unwrap();
        let _p2 = l.acquire(&a).await.unwrap();
        let l2 = l.clone();
        let a2 = a.clone();
        let third = tokio::spawn(async move { l2.acquire(&a2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((l.in_flight(), l.waiting()), (2, 1));
        drop(p1);
        third.await.unwrap().unwrap();
        assert_eq!(l.waiting(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let l = Limiter::new(1, 1, Gauge::default());
        let a = agent("a");
        let _p = l.acquire(&a).await.unwrap();
        let l2 = l.clone();
        let a2 = a.clone();
        let _queued = tokio::spawn(async move { l2.acquire(&a2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = l.acquire(&a).await.err().unwrap();
        assert_eq!(
            err,
            QueueFull {
                waiting: 1,
                capacity: 1
            }
        );
    }

    #[tokio::test]
    async fn free_slots_go_round_robin_between_agents_not_by_arrival() {
        let l = Limiter::new(1, 100, Gauge::default());
        let first = l.acquire(&agent("flood")).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The flooding agent queues 5 calls before the light agent queues 1.
        for (i, who) in ["flood", "flood", "flood", "flood", "flood", "light"]
            .into_iter()
            .enumerate()
        {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = l.acquire(&agent(who)).await.unwrap();
                order.lock().unwrap().push(format!("{who}{i}"));
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "flood0");
        assert_eq!(order[1], "light5", "the light agent goes second: {order:?}");
    }

    #[tokio::test]
    async fn an_abandoned_wait_leaves_the_queue_and_loses_no_slot() {
        let l = Limiter::new(1, 10, Gauge::default());
        let a = agent("a");
        let p = l.acquire(&a).await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), l.acquire(&a)).await;
        assert!(gave_up.is_err());
        assert_eq!(l.waiting(), 0);
        drop(p);
        assert_eq!(l.in_flight(), 0);
        let _p = l.acquire(&a).await.unwrap();
        assert_eq!(l.in_flight(), 1);
    }
}
