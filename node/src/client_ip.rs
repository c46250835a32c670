//! Who the client is, by IP: the TCP peer, or — when the peer is a trusted proxy (a balancer,
//! an ingress) — the right-most `X-Forwarded-For` address that is not itself trusted.
//!
//! Right-most, not left-most: every proxy appends the address it received the request from, so
//! only the entries added by trusted proxies are facts; whatever a client writes into the header
//! itself stays to the left of them and is never believed. A client talking to a node directly
//! is not a trusted peer, so its `X-Forwarded-For` is ignored altogether.

use std::{net::IpAddr, str::FromStr, sync::Arc};

use ipnet::IpNet;
use poem::{http::HeaderMap, Endpoint, Request};

/// The client's address, put into every request's extensions by [`TrustedProxies::tag`];
/// handlers take it as `Data<&ClientIp>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The networks whose `X-Forwarded-For` entries are believed (`rate_limit.trusted_proxies`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TryFrom<String> for TrustedProxies {
    type Error = String;

    fn try_from(list: String) -> Result<Self, Self::Error> {
        list.parse()
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated CIDRs (`10.0.0.0/8, ::1/128`) or single addresses; empty trusts nobody.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{item}` is not an address or a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(nets.into()))
    }
}

impl TrustedProxies {
    /// Whether `ip` belongs to a trusted network.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For field, in order, as one list; walked from the right.
        let mut hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        while let Some(hop) = hops.pop() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        return client;
                    }
                }
                // Garbage where an address should be: the last trusted hop is the client.
                Err(_) => return client,
            }
        }
        client
    }

    /// Middleware body: tags the request with its [`ClientIp`].
    pub async fn tag<E: Endpoint>(&self, next: E, mut req: Request) -> poem::Result<E::Output> {
        let peer = req
            .remote_addr()
            .as_socket_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
        let client = self.client_ip(peer, req.headers());
        req.extensions_mut().insert(ClientIp(client));
        next.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted: TrustedProxies = "127.0.0.1/32, ::1/128".parse().unwrap();
        let claims = headers(&["6.6.6.6"]);
        assert_eq!(
            trusted.client_ip(ip("127.0.0.50"), &claims),
            ip("127.0.0.50")
        );
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), &claims),
            ip("203.0.113.9")
        );
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client_ip(ip("127.0.0.1"), &claims), ip("127.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let trusted: TrustedProxies = "10.0.0.0/8,127.0.0.1".parse().unwrap();
        // The client forged the first entry; the balancer appended the real one.
        let forged = headers(&["6.6.6.6, 198.51.100.7"]);
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &forged),
            ip("198.51.100.7")
        );
        // Two trusted proxies in a row (ingress → balancer), the header split over two fields.
        let chained = headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &chained),
            ip("198.51.100.7")
        );
        // Nothing forwarded: the proxy itself is the client.
        assert_eq!(
            trusted.client_ip(ip("10.9.9.9"), &HeaderMap::new()),
            ip("10.9.9.9")
        );
        // Every hop trusted: the left-most is as far as the facts go.
        let internal = headers(&["10.0.0.5, 10.0.0.6"]);
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &internal),
            ip("10.0.0.5")
        );
        // Garbage in the hop next to a trusted one: stop at the last trusted hop.
        let garbage = headers(&["198.51.100.7, not-an-ip, 10.0.0.6"]);
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), &garbage), ip("10.0.0.6"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted: TrustedProxies = "127.0.0.1/32".parse().unwrap();
        let mapped = ip("::ffff:127.0.0.1");
        assert!(trusted.trusts(mapped));
        assert_eq!(
            trusted.client_ip(mapped, &headers(&["::ffff:192.0.2.1"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn lists_are_validated() {
        assert!("".parse::<TrustedProxies>().is_ok());
        assert!("10.0.0.0/8, fd00::/8, 192.0.2.1"
            .parse::<TrustedProxies>()
            .is_ok());
        let err = "10.0.0.0/33".parse::<TrustedProxies>().unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }
}
