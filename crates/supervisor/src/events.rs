//! The event stream: every lifecycle event of every server, numbered, in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use roster_core::LifecycleEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// One published event, stamped by the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEvent {
    /// Position in the supervisor-wide stream, from 1, without gaps.
    pub seq: u64,
    /// The server it concerns.
    pub server: String,
    /// When it was published, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: LifecycleEvent,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next event.
    Event(Arc<ServerEvent>),
    /// The subscriber fell behind and this many events were dropped for it; the
    /// stream continues with the oldest event still buffered.
    Missed(u64),
}

/// Numbers events and fans them out. Sequence numbering and sending happen under
/// one lock, so every subscriber sees the same order.
#[derive(Debug)]
pub(crate) struct EventBus {
    inner: Mutex<BusInner>,
    /// Events dropped for subscribers that fell behind, all subscribers together.
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
struct BusInner {
    seq: u64,
    tx: broadcast::Sender<Arc<ServerEvent>>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { inner: Mutex::new(BusInner { seq: 0, tx }), dropped: Arc::default() }
    }

    pub(crate) fn publish(&self, server: &str, event: LifecycleEvent, wall: SystemTime) {
        let at_unix_ms =
            wall.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.seq += 1;
        let ev = Arc::new(ServerEvent { seq: inner.seq, server: server.to_owned(), at_unix_ms, event });
        // No subscriber is not an error: events are for whoever listens.
        let _ = inner.tx.send(ev);
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        let rx = self.inner.lock().unwrap_or_else(PoisonError::into_inner).tx.subscribe();
        Subscription { rx, dropped: self.dropped.clone() }
    }

    /// Events dropped so far for subscribers that fell behind (each subscriber's
    /// losses count, once each, when it learns of them).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A subscription to the event stream. It sees every event published after it
/// was made; one that falls more than the buffer behind is told how many it missed.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<ServerEvent>>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event, or how many were missed; `None` once the supervisor is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(ev) => Some(Received::Event(ev)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(self.missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Like [`Subscription::recv`] without waiting: `None` when nothing is buffered.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.rx.try_recv() {
            Ok(ev) => Some(Received::Event(ev)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(self.missed(n)),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => None,
        }
    }

    fn missed(&self, n: u64) -> Received {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        Received::Missed(n)
    }
}

#[cfg(test)]
mod tests {
    use roster_core::{Health, State};

    use super::*;

    fn ev() -> LifecycleEvent {
        LifecycleEvent {
            reason: None,
            previous_state: State::Unknown,
            state: State::Starting,
            previous_health: Health::Unknown,
            health: Health::Unknown,
            error: None,
            failures: 0,
            retry_in_ms: None,
        }
    }

    #[test]
    fn sequence_numbers_have_no_gaps_and_laggards_are_told_what_they_missed() {
        let bus = EventBus::new(4);
        let mut sub = bus.subscribe();
        for _ in 0..10 {
            bus.publish("a", ev(), UNIX_EPOCH);
        }
        assert_eq!(sub.try_recv(), Some(Received::Missed(6)));
        let seqs: Vec<u64> = std::iter::from_fn(|| match sub.try_recv() {
            Some(Received::Event(e)) => Some(e.seq),
            Some(Received::Missed(_)) | None => None,
        })
        .collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
        assert_eq!(bus.dropped(), 6);
    }

    #[test]
    fn drops_are_counted_for_every_laggard_and_only_once() {
        let bus = EventBus::new(16);
        let (mut slow, mut slower, mut keeping_up) = (bus.subscribe(), bus.subscribe(), bus.subscribe());
        for _ in 0..20 {
            bus.publish("a", ev(), UNIX_EPOCH);
            while keeping_up.try_recv().is_some() {}
        }
        assert_eq!(bus.dropped(), 0, "nothing is dropped before a subscriber learns of it");
        assert_eq!(slow.try_recv(), Some(Received::Missed(4)));
        for _ in 0..10 {
            bus.publish("a", ev(), UNIX_EPOCH);
        }
        assert_eq!(slower.try_recv(), Some(Received::Missed(14)));
        assert_eq!(bus.dropped(), 18);
        while slower.try_recv().is_some() {}
        assert_eq!(bus.dropped(), 18, "reading on adds nothing");
    }
}
