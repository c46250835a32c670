//! Choosing nodes: one trait, [`BackendSelection`], one file per strategy under `selection/`.
//!
//! A strategy doesn't return *a* node but an ordering of all of them, preferred first. The
//! proxy walks it, skipping draining, unhealthy and breaker-open nodes and taking the next one
//! for a retry, so none of that is special-cased in any strategy (PG-lb `BackendIter`).
//!
//! Each worker builds its own strategy objects from the published node set (see
//! [`crate::worker`]), so their counters are never shared between cores; they only read the
//! nodes' live load figures, which are atomics.
//!
//! Adding a strategy: a new file with a type implementing [`BackendSelection`], a variant in
//! [`StrategyName`](crate::config::StrategyName), and an arm in [`build`].

mod consistent;
mod least_conn;
mod power_of_two;
mod random;
mod round_robin;
mod weighted;

use std::{fmt, net::IpAddr, sync::Arc};

use base64::Engine as _;
use http::HeaderMap;

pub use self::consistent::ConsistentHash;
pub use self::least_conn::LeastConnections;
pub use self::power_of_two::PowerOfTwo;
pub use self::random::Random;
pub use self::round_robin::RoundRobin;
pub use self::weighted::WeightedRoundRobin;
use crate::{
    backend::{NodeState, Traffic},
    config::{StrategyName, StrategySettings},
};

/// What a strategy may look at for one request.
#[derive(Debug)]
pub struct PickContext<'a> {
    /// The node set the strategy was built for, in the same order.
    pub nodes: &'a [Arc<NodeState>],
    /// Which load figure counts (requests in flight or open tunnels).
    pub traffic: Traffic,
    /// The request's hash key (only computed when [`BackendSelection::needs_key`]).
    pub key: Option<&'a [u8]>,
}

/// A load-balancing algorithm over one node set.
pub trait BackendSelection: Send + Sync + 'static {
    /// Appends every index of `ctx.nodes` to `out` exactly once, preferred first.
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>);

    /// Whether [`PickContext::key`] must be filled in.
    fn needs_key(&self) -> bool {
        false
    }
}

/// Builds strategy `name` over `nodes`.
pub fn build(
    name: StrategyName,
    nodes: &[Arc<NodeState>],
    settings: &StrategySettings,
) -> Box<dyn BackendSelection> {
    match name {
        StrategyName::RoundRobin => Box::new(RoundRobin::new()),
        StrategyName::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(nodes)),
        StrategyName::LeastConnections => Box::new(LeastConnections::new()),
        StrategyName::PowerOfTwo => Box::new(PowerOfTwo),
        StrategyName::ConsistentHash => Box::new(ConsistentHash::new(
            nodes,
            settings.virtual_nodes,
            settings.bounded_load_factor,
        )),
        StrategyName::Random => Box::new(Random),
    }
}

/// The name of a strategy as written in the settings (and the `strategy` metric label).
pub fn strategy_name(name: StrategyName) -> &'static str {
    match name {
        StrategyName::RoundRobin => "round-robin",
        StrategyName::WeightedRoundRobin => "weighted-round-robin",
        StrategyName::LeastConnections => "least-connections",
        StrategyName::PowerOfTwo => "power-of-two",
        StrategyName::ConsistentHash => "consistent-hash",
        StrategyName::Random => "random",
    }
}

/// Appends `start, start+1, …` modulo `n`, skipping indices in `skip`.
fn rotation(start: usize, n: usize, skip: &[usize], out: &mut Vec<usize>) {
    for offset in 0..n {
        let index = (start + offset) % n;
        if !skip.contains(&index) {
            out.push(index);
        }
    }
}

// === HashKey ===

/// Where `consistent-hash` takes a request's key from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum HashKey {
    /// The `sub` claim of the bearer token (read, not verified: routing only).
    JwtSub,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        let invalid =
            || format!("`{value}` is not one of jwt-sub, header:<name>, cookie:<name>, client-ip");
        match value.as_str() {
            "jwt-sub" => Ok(HashKey::JwtSub),
            "client-ip" => Ok(HashKey::ClientIp),
            other => match other.split_once(':') {
                Some(("header", name))
                    if !name.is_empty() && http::HeaderName::try_from(name).is_ok() =>
                {
                    Ok(HashKey::Header(name.to_ascii_lowercase()))
                }
                Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_owned())),
                _ => Err(invalid()),
            },
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::JwtSub => f.write_str("jwt-sub"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::ClientIp => f.write_str("client-ip"),
        }
    }
}

impl HashKey {
    /// The key of a request; the client IP when the configured source is absent, so every
    /// request has a stable key.
    pub fn extract(&self, headers: &HeaderMap, client_ip: IpAddr) -> Vec<u8> {
        let found = match self {
            HashKey::JwtSub => jwt_sub(headers),
            HashKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
            HashKey::Cookie(name) => cookie(headers, name),
            HashKey::ClientIp => None,
        };
        found.unwrap_or_else(|| client_ip.to_string().into_bytes())
    }
}

/// The `sub` claim of `Authorization: Bearer <jwt>`, without verifying the token.
fn jwt_sub(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    match &claims["sub"] {
        serde_json::Value::String(sub) => Some(sub.clone().into_bytes()),
        serde_json::Value::Number(sub) => Some(sub.to_string().into_bytes()),
        _ => None,
    }
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes().to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        backend::{Backend, Discovered, Membership},
        config::Settings,
        metrics::Metrics,
    };

    /// `weights.len()` fresh nodes `n0`, `n1`, … with the given weights.
    pub(crate) fn nodes(weights: &[u32]) -> Vec<Arc<NodeState>> {
        let membership = Membership::default();
        let found = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr: SocketAddr = ([127, 0, 0, 1], 10_000 + i as u16).into();
                (
                    Discovered {
                        backend: Backend {
                            id: format!("n{i}"),
                            addr: addr.to_string(),
                            weight: *w,
                        },
                        draining: false,
                        zone: String::new(),
                    },
                    addr,
                )
            })
            .collect();
        membership.update(found, &Settings::default(), &Metrics::new());
        membership.current().to_vec()
    }

    /// How often each node is picked first in `rounds` picks.
    pub(crate) fn first_picks(
        strategy: &dyn BackendSelection,
        nodes: &[Arc<NodeState>],
        rounds: usize,
    ) -> Vec<usize> {
        let mut counts = vec![0; nodes.len()];
        let mut out = Vec::new();
        for _ in 0..rounds {
            out.clear();
            strategy.candidates(
                &PickContext {
                    nodes,
                    traffic: Traffic::Http,
                    key: None,
                },
                &mut out,
            );
            assert_eq!(out.len(), nodes.len(), "every node is a candidate once");
            counts[out[0]] += 1;
        }
        counts
    }

    #[test]
    fn hash_key_parses_the_documented_forms() {
        assert_eq!(HashKey::try_from("jwt-sub".to_owned()), Ok(HashKey::JwtSub));
        assert_eq!(
            HashKey::try_from("header:X-User".to_owned()),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!(
            HashKey::try_from("cookie:sid".to_owned()),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(HashKey::try_from("cookie:".to_owned()).is_err());
        assert!(HashKey::try_from("ip".to_owned()).is_err());
    }

    #[test]
    fn hash_key_extracts_jwt_sub_cookie_and_falls_back_to_client_ip() {
        let ip: IpAddr = [10, 0, 0, 7].into();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"u42"}"#);
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer xx.{payload}.yy").parse().unwrap(),
        );
        headers.insert("cookie", "a=1; sid=abc".parse().unwrap());
        assert_eq!(HashKey::JwtSub.extract(&headers, ip), b"u42");
        assert_eq!(HashKey::Cookie("sid".into()).extract(&headers, ip), b"abc");
        assert_eq!(
            HashKey::Header("x-none".into()).extract(&headers, ip),
            b"10.0.0.7"
        );
    }
}
