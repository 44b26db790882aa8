//! Who the client is: its IP address, read from `X-Forwarded-For` only when
//! the connection comes from a proxy listed in `TRUSTED_PROXIES`.
//!
//! A client can write any `X-Forwarded-For` it likes. Behind nginx the
//! header holds what each proxy saw, appended left to right; the right-most
//! address that is not one of our proxies is the first one that a trusted
//! hop vouches for, so that is the client. Everything left of it was written
//! by the client and is ignored.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated IP addresses or CIDR ranges; empty: none.
    fn from_str(raw: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{part:?} is neither an IP address nor a CIDR range"))?,
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's address: the peer's, unless the peer is a trusted
    /// proxy; then the right-most `X-Forwarded-For` entry that is not a
    /// trusted proxy (or the left-most one, if every entry is).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else { return peer };
            for hop in value.split(',') {
                // An entry that is not an address (a client's junk, or a
                // port we do not expect) ends what can be believed.
                match parse_hop(hop.trim()) {
                    Some(ip) => hops.push(ip),
                    None => hops.clear(),
                }
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.contains(hop) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
/// reports) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_believed_only_from_a_trusted_peer() {
        let trusted: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        let forged = headers(&["1.1.1.1"]);
        assert_eq!(trusted.client_ip(ip("203.0.113.9"), &forged), ip("203.0.113.9"), "untrusted peer");
        assert_eq!(trusted.client_ip(ip("10.1.2.3"), &forged), ip("1.1.1.1"));
        assert_eq!(trusted.client_ip(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
        // The client prepended a forged entry; nginx appended the real one.
        let appended = headers(&["6.6.6.6, 198.51.100.7"]);
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), &appended), ip("198.51.100.7"));
        // Two trusted hops.
        let chain = headers(&["198.51.100.7, 10.0.0.5"]);
        assert_eq!(trusted.client_ip(ip("10.0.0.6"), &chain), ip("198.51.100.7"));
        let split = headers(&["6.6.6.6", "198.51.100.7:4711"]);
        assert_eq!(trusted.client_ip(ip("10.0.0.6"), &split), ip("198.51.100.7"));
        // Junk ends what can be believed: the peer stands.
        let junk = headers(&["198.51.100.7, <script>"]);
        assert_eq!(trusted.client_ip(ip("10.0.0.6"), &junk), ip("10.0.0.6"));
        assert_eq!(TrustedProxies::default().client_ip(ip("10.0.0.6"), &forged), ip("10.0.0.6"));
        assert_eq!(trusted.client_ip(ip("::ffff:10.0.0.1"), &forged), ip("1.1.1.1"), "mapped IPv4");
    }

    #[test]
    fn the_setting_is_parsed_strictly() {
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!("10.0.0.0/8,::1, 172.16.0.0/12".parse::<TrustedProxies>().is_ok());
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nginx".parse::<TrustedProxies>().is_err());
    }
}
