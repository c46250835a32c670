//! Topics a connection can subscribe to, which log each one reads, and who may see what.
//!
//! | topic | log (stream) | who may subscribe | what they receive |
//! | --- | --- | --- | --- |
//! | `pets` | `pets` | anyone authenticated | every pet event |
//! | `orders` | `orders` | anyone authenticated | admins: every order event; others: their own |
//! | `user:<id>` | `orders` | that user (or an admin) | the user's order events |
//! | `room:<id>` | `room:<id>` | members (after `room:join`) | room messages, joins, leaves, replicated custom events |
//! | `<event name>` | `custom:<name>` | anyone authenticated | replicable custom events emitted without a room |
//!
//! Order events are published once, to `orders`; `user:<id>` is a filtered view of the same
//! log, so its offsets are those of `orders` (with gaps where other users' events were).

use std::fmt;

use uuid::Uuid;

use super::protocol::WsError;
use crate::auth::Claims;

/// A topic as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Pet events.
    Pets,
    /// Order events (filtered for non-admins).
    Orders,
    /// One user's order events.
    User(Uuid),
    /// One room's events.
    Room(String),
    /// A registered custom event name.
    Custom(String),
}

/// Which of a log's events one subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// All of them.
    Everyone,
    /// Those whose `owner` is this user.
    Owner(Uuid),
}

impl Audience {
    /// Whether an event owned by `owner` reaches this audience. The caller parses the event's
    /// `owner` once ([`owner_of`]), not once per subscription it checks.
    pub fn admits(&self, owner: Option<Uuid>) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Owner(user) => owner == Some(*user),
        }
    }
}

/// The user an event's `owner` field names, if it names one.
pub fn owner_of(owner: Option<&str>) -> Option<Uuid> {
    owner.and_then(|o| o.parse().ok())
}

/// Whether `id` is a valid room id: 1–64 of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Topic {
    /// Parses a topic name.
    pub fn parse(name: &str) -> Result<Self, WsError> {
        match name {
            "pets" => return Ok(Topic::Pets),
            "orders" => return Ok(Topic::Orders),
            _ => {}
        }
        if let Some(id) = name.strip_prefix("user:") {
            return id
                .parse()
                .map(Topic::User)
                .map_err(|_| WsError::invalid(format!("topic {name}: not a user id")));
        }
        if let Some(id) = name.strip_prefix("room:") {
            if !is_valid_room_id(id) {
                return Err(WsError::invalid(format!(
                    "topic {name}: a room id is 1 to 64 of A-Z a-z 0-9 _ . -"
                )));
            }
            return Ok(Topic::Room(id.to_owned()));
        }
        if crate::subscribers::is_well_formed_event_name(name) {
            return Ok(Topic::Custom(name.to_owned()));
        }
        Err(WsError::invalid(format!(
            "topic {name:?}: expected pets, orders, user:<id>, room:<id> or an event name"
        )))
    }

    /// The log this topic reads.
    pub fn log(&self) -> String {
        match self {
            Topic::Pets => "pets".into(),
            Topic::Orders | Topic::User(_) => "orders".into(),
            Topic::Room(id) => room_log(id),
            Topic::Custom(name) => custom_log(name),
        }
    }

    /// Who may subscribe, and what they then receive. Rooms are checked by the caller
    /// (membership is per connection); custom names by the subscriber registry.
    pub fn audience(&self, claims: &Claims) -> Result<Audience, WsError> {
        match self {
            Topic::Pets | Topic::Room(_) | Topic::Custom(_) => Ok(Audience::Everyone),
            Topic::Orders if claims.is_admin() => Ok(Audience::Everyone),
            Topic::Orders => Ok(Audience::Owner(claims.sub)),
            Topic::User(user) if *user == claims.sub || claims.is_admin() => {
                Ok(Audience::Owner(*user))
            }
            Topic::User(_) => Err(WsError::new(
                super::protocol::ErrorCode::Forbidden,
                "you may only subscribe to your own user topic",
            )),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Pets => f.write_str("pets"),
            Topic::Orders => f.write_str("orders"),
            Topic::User(id) => write!(f, "user:{id}"),
            Topic::Room(id) => write!(f, "room:{id}"),
            Topic::Custom(name) => f.write_str(name),
        }
    }
}

/// The log of room `id`.
pub fn room_log(id: &str) -> String {
    format!("room:{id}")
}

/// The log of custom event `name` emitted without a room.
pub fn custom_log(name: &str) -> String {
    format!("custom:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn claims(role: Role) -> Claims {
        Claims {
            sub: Uuid::now_v7(),
            role,
            jti: Uuid::now_v7(),
            iat: 0,
            exp: 0,
            iss: String::new(),
            aud: String::new(),
        }
    }

    #[test]
    fn topic_names_parse_and_print_back() {
        let user = Uuid::now_v7();
        for name in [
            "pets".to_owned(),
            "orders".to_owned(),
            format!("user:{user}"),
            "room:lobby-1".to_owned(),
            "chat:typing".to_owned(),
        ] {
            assert_eq!(Topic::parse(&name).unwrap().to_string(), name);
        }
        for bad in ["", "user:nope", "room:", "room:a b", "9lives", "x y"] {
            assert!(Topic::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Topic::parse(&format!("user:{user}")).unwrap().log(),
            "orders"
        );
        assert_eq!(
            Topic::parse("chat:typing").unwrap().log(),
            "custom:chat:typing"
        );
    }

    #[test]
    fn order_topics_are_filtered_by_owner_unless_admin() {
        let user = claims(Role::User);
        let admin = claims(Role::Admin);
        assert_eq!(Topic::Orders.audience(&admin).unwrap(), Audience::Everyone);
        let own = Topic::Orders.audience(&user).unwrap();
        assert!(own.admits(owner_of(Some(&user.sub.to_string()))));
        assert!(!own.admits(owner_of(Some(&admin.sub.to_string()))));
        assert!(!own.admits(owner_of(Some("not-a-user-id"))));
        assert!(!own.admits(None));
        assert!(Topic::User(admin.sub).audience(&user).is_err());
        assert!(Topic::User(user.sub).audience(&admin).is_ok());
    }
}
