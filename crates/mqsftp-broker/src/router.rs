//! Who is connected and subscribed to what, and where a published message goes. Holds no messages itself: every
//! connection has its own bounded outgoing queue ([`Outbox`]), and the publisher's connection waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, Notify};

use crate::topic::{matches, Subscription};

/// A message on its way to one subscriber.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    /// The QoS it is delivered with: the lower of the publish's and the subscription's.
    pub(crate) qos: QoS,
}

/// Asks a connection to close, and says why.
#[derive(Debug, Default)]
pub(crate) struct Kick {
    notify: Notify,
    reason: OnceLock<&'static str>,
}

impl Kick {
    /// Closes the connection (once; later reasons are ignored).
    pub(crate) fn kick(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.notify.notify_one();
    }

    /// Resolves once [`Kick::kick`] was called, with the reason.
    pub(crate) async fn kicked(&self) -> &'static str {
        self.notify.notified().await;
        self.reason.get().copied().unwrap_or("closed by the broker")
    }
}

/// The way into one connection: its bounded queue of deliveries and its kick switch.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub(crate) client_id: Arc<str>,
    pub(crate) tx: mpsc::Sender<Delivery>,
    pub(crate) kick: Arc<Kick>,
}

/// One place a message must go.
pub(crate) struct Target {
    pub(crate) outbox: Outbox,
    pub(crate) qos: QoS,
}

#[derive(Debug)]
struct Conn {
    outbox: Outbox,
    /// Plain subscriptions: filter and granted QoS.
    filters: Vec<(String, QoS)>,
}

#[derive(Debug, Default)]
struct Group {
    /// Members: connection id and granted QoS, in the order they joined.
    members: Vec<(u64, QoS)>,
    /// Index of the member that gets the next message.
    next: usize,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u64, Conn>,
    /// Client id → connection id of the connection that holds it now.
    by_client: HashMap<Arc<str>, u64>,
    /// Shared subscriptions by (group, filter).
    groups: HashMap<(String, String), Group>,
}

/// The subscription table. Lookups scan every subscription: fine for the handful of clients of a demo or dev
/// setup, not meant for thousands.
#[derive(Debug, Default)]
pub(crate) struct Router {
    inner: Mutex<Inner>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The table stays consistent even if a holder panicked (every change is a single insert or remove).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a connection. An older connection with the same client id is removed and kicked (client takeover).
    pub(crate) fn register(&self, conn_id: u64, outbox: Outbox) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_client.insert(outbox.client_id.clone(), conn_id) {
            if let Some(conn) = remove_conn(&mut inner, old) {
                conn.outbox.kick.kick("another connection took over its client id");
            }
        }
        inner.conns.insert(conn_id, Conn { outbox, filters: Vec::new() });
    }

    /// Removes a connection and all its subscriptions (nothing if it was already taken over).
    pub(crate) fn unregister(&self, conn_id: u64) {
        let mut inner = self.lock();
        if let Some(conn) = remove_conn(&mut inner, conn_id) {
            if inner.by_client.get(&conn.outbox.client_id) == Some(&conn_id) {
                inner.by_client.remove(&conn.outbox.client_id);
            }
        }
    }

    /// Adds or updates a subscription of `conn_id`.
    pub(crate) fn subscribe(&self, conn_id: u64, sub: &Subscription, qos: QoS) {
        let mut inner = self.lock();
        if !inner.conns.contains_key(&conn_id) {
            return;
        }
        match sub {
            Subscription::Plain(filter) => {
                if let Some(conn) = inner.conns.get_mut(&conn_id) {
                    match conn.filters.iter_mut().find(|(f, _)| f == filter) {
                        Some(existing) => existing.1 = qos,
                        None => conn.filters.push((filter.clone(), qos)),
                    }
                }
            }
            Subscription::Shared { group, filter } => {
                let group = inner.groups.entry((group.clone(), filter.clone())).or_default();
                match group.members.iter_mut().find(|(c, _)| *c == conn_id) {
                    Some(existing) => existing.1 = qos,
                    None => group.members.push((conn_id, qos)),
                }
            }
        }
    }

    /// Removes a subscription of `conn_id`, if it has it.
    pub(crate) fn unsubscribe(&self, conn_id: u64, sub: &Subscription) {
        let mut inner = self.lock();
        match sub {
            Subscription::Plain(filter) => {
                if let Some(conn) = inner.conns.get_mut(&conn_id) {
                    conn.filters.retain(|(f, _)| f != filter);
                }
            }
            Subscription::Shared { group, filter } => {
                let key = (group.clone(), filter.clone());
                if let Some(g) = inner.groups.get_mut(&key) {
                    leave(g, conn_id);
                    if g.members.is_empty() {
                        inner.groups.remove(&key);
                    }
                }
            }
        }
    }

    /// Where a message on `topic` goes: every connection with a matching plain subscription (once, with the highest
    /// QoS it was granted), and one member of each shared group with a matching filter (round robin).
    pub(crate) fn targets(&self, topic: &str) -> Vec<Target> {
        let mut inner = self.lock();
        let Inner { conns, groups, .. } = &mut *inner;
        let mut targets = Vec::new();
        for conn in conns.values() {
            let best = conn.filters.iter().filter(|(f, _)| matches(topic, f)).map(|(_, q)| *q).reduce(max_qos);
            if let Some(qos) = best {
                targets.push(Target { outbox: conn.outbox.clone(), qos });
            }
        }
        for ((_, filter), group) in groups.iter_mut() {
            if group.members.is_empty() || !matches(topic, filter) {
                continue;
            }
            let index = group.next % group.members.len();
            group.next = (index + 1) % group.members.len();
            let (member, qos) = group.members[index];
            if let Some(conn) = conns.get(&member) {
                targets.push(Target { outbox: conn.outbox.clone(), qos });
            }
        }
        targets
    }
}

fn remove_conn(inner: &mut Inner, conn_id: u64) -> Option<Conn> {
    let conn = inner.conns.remove(&conn_id)?;
    inner.groups.retain(|_, g| {
        leave(g, conn_id);
        !g.members.is_empty()
    });
    Some(conn)
}

/// Removes `conn_id` from a group, keeping the round robin on the member that was next.
fn leave(group: &mut Group, conn_id: u64) {
    if let Some(pos) = group.members.iter().position(|(c, _)| *c == conn_id) {
        group.members.remove(pos);
        if pos < group.next {
            group.next -= 1;
        }
        if group.next >= group.members.len() {
            group.next = 0;
        }
    }
}

/// The higher of two QoS levels.
pub(crate) fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

/// The lower of two QoS levels.
pub(crate) fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn outbox(id: &str) -> (Outbox, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(4);
        (Outbox { client_id: id.into(), tx, kick: Arc::default() }, rx)
    }

    fn ids(targets: &[Target]) -> Vec<String> {
        let mut v: Vec<String> = targets.iter().map(|t| t.outbox.client_id.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn shared_groups_take_turns_and_plain_subscribers_get_everything() {
        let router = Router::default();
        let (a, _ra) = outbox("a");
        let (b, _rb) = outbox("b");
        let (c, _rc) = outbox("c");
        router.register(1, a);
        router.register(2, b);
        router.register(3, c);
        let shared = Subscription::parse("$share/g/t/+").unwrap();
        router.subscribe(1, &shared, QoS::AtLeastOnce);
        router.subscribe(2, &shared, QoS::AtLeastOnce);
        router.subscribe(3, &Subscription::parse("t/#").unwrap(), QoS::AtMostOnce);
        router.subscribe(3, &Subscription::parse("t/x").unwrap(), QoS::AtLeastOnce);
        let first = router.targets("t/x");
        let second = router.targets("t/x");
        let third = router.targets("t/x");
        assert_eq!(ids(&first), ["a", "c"]);
        assert_eq!(ids(&second), ["b", "c"]);
        assert_eq!(ids(&third), ["a", "c"]);
        // c matched two filters: one delivery, with the higher QoS.
        assert!(first.iter().any(|t| &*t.outbox.client_id == "c" && t.qos == QoS::AtLeastOnce));
        router.unregister(1);
        // The group goes on with the members left.
        assert_eq!(ids(&router.targets("t/y")), ["b", "c"]);
        assert_eq!(ids(&router.targets("t/y")), ["b", "c"]);
        router.unsubscribe(2, &shared);
        assert_eq!(ids(&router.targets("t/y")), ["c"]);
        router.unsubscribe(3, &Subscription::parse("t/#").unwrap());
        assert!(router.targets("t/y").is_empty());
    }

    #[test]
    fn takeover_kicks_the_old_connection_and_keeps_the_new_one() {
        let router = Router::default();
        let (old, _r1) = outbox("same");
        let old_kick = old.kick.clone();
        let (new, _r2) = outbox("same");
        router.register(1, old);
        router.subscribe(1, &Subscription::parse("t").unwrap(), QoS::AtLeastOnce);
        router.register(2, new);
        assert_eq!(old_kick.reason.get().copied(), Some("another connection took over its client id"));
        assert!(router.targets("t").is_empty(), "the old connection's subscriptions are gone");
        router.subscribe(2, &Subscription::parse("t").unwrap(), QoS::AtLeastOnce);
        // The old connection's late clean-up does not remove the new one.
        router.unregister(1);
        assert_eq!(ids(&router.targets("t")), ["same"]);
    }
}
