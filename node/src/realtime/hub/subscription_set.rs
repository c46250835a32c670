//! The subscriptions of one log, indexed by connection: a connection that ends, or leaves a
//! topic, finds its own subscriptions without scanning everyone's (the `orders` log has one
//! per connection of every user, so a reconnect storm of n connections was n² work under the
//! hub's lock).

use std::collections::HashMap;

use super::{ConnId, Subscription};

/// One log's subscriptions, by connection (a connection may follow a log under several topic
/// names, so each has a short list).
#[derive(Default)]
pub(super) struct SubscriptionSet {
    by_conn: HashMap<ConnId, Vec<Subscription>>,
}

impl SubscriptionSet {
    /// Whether no connection follows the log.
    pub(super) fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Adds `sub` for connection `conn`, replacing its subscription to the same topic.
    pub(super) fn insert(&mut self, conn: ConnId, sub: Subscription) {
        let subs = self.by_conn.entry(conn).or_default();
        subs.retain(|s| s.topic != sub.topic);
        subs.push(sub);
    }

    /// Connection `conn`'s subscription to `topic`, if it has one.
    pub(super) fn get_mut(&mut self, conn: ConnId, topic: &str) -> Option<&mut Subscription> {
        self.by_conn
            .get_mut(&conn)?
            .iter_mut()
            .find(|s| &*s.topic == topic)
    }

    /// Ends connection `conn`'s subscription to `topic`; whether it had one.
    pub(super) fn remove(&mut self, conn: ConnId, topic: &str) -> bool {
        let Some(subs) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| &*s.topic != topic);
        let removed = subs.len() != before;
        if subs.is_empty() {
            self.by_conn.remove(&conn);
        }
        removed
    }

    /// Whether connection `conn` follows the log under any topic.
    pub(super) fn has_connection(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Ends every subscription of connection `conn`; whether it had any.
    pub(super) fn remove_connection(&mut self, conn: ConnId) -> bool {
        self.by_conn.remove(&conn).is_some()
    }

    /// Every subscription with its connection.
    pub(super) fn iter(&self) -> impl Iterator<Item = (ConnId, &Subscription)> {
        self.by_conn
            .iter()
            .flat_map(|(conn, subs)| subs.iter().map(move |sub| (*conn, sub)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::topic::Audience;

    fn sub(topic: &str) -> Subscription {
        Subscription {
            topic: topic.into(),
            audience: Audience::Everyone,
            after: None,
            active: false,
        }
    }

    /// Connection 1 on `orders` and `orders:mine`, connection 2 on `orders`.
    fn two_connections() -> SubscriptionSet {
        let mut set = SubscriptionSet::default();
        set.insert(1, sub("orders"));
        set.insert(1, sub("orders:mine"));
        set.insert(2, sub("orders"));
        set
    }

    fn topics(set: &SubscriptionSet) -> Vec<(ConnId, String)> {
        let mut all: Vec<_> = set.iter().map(|(c, s)| (c, s.topic.to_string())).collect();
        all.sort();
        all
    }

    #[test]
    fn inserting_the_same_topic_again_replaces_it() {
        let mut set = SubscriptionSet::default();
        set.insert(1, sub("orders"));
        set.get_mut(1, "orders").unwrap().active = true;
        set.insert(1, sub("orders"));
        assert_eq!(topics(&set), [(1, "orders".to_owned())]);
        assert!(!set.get_mut(1, "orders").unwrap().active);
    }

    #[test]
    fn removing_one_topic_keeps_the_connections_other_topics_and_other_connections() {
        let mut set = two_connections();
        assert!(set.remove(1, "orders"));
        assert!(!set.remove(1, "orders"), "already gone");
        assert!(set.has_connection(1));
        assert_eq!(
            topics(&set),
            [(1, "orders:mine".to_owned()), (2, "orders".to_owned())]
        );
        assert!(set.remove(1, "orders:mine"));
        assert!(!set.has_connection(1), "no topic left");
        assert!(!set.is_empty());
    }

    #[test]
    fn removing_a_connection_ends_all_its_subscriptions_only() {
        let mut set = two_connections();
        assert!(set.remove_connection(1));
        assert!(!set.remove_connection(1));
        assert_eq!(topics(&set), [(2, "orders".to_owned())]);
        assert!(set.remove_connection(2));
        assert!(set.is_empty());
        assert_eq!(set.get_mut(2, "orders").map(|s| s.active), None);
    }
}
