//! Where outbound connections may go.
//!
//! Every connection that carries a credential or reaches an app or a directory source (SCIM
//! requests, OAuth token fetches, connection tests, LDAP binds and searches) is checked
//! against a [`TargetPolicy`] on the address it actually connects to: after DNS, whatever the
//! notation of the URL (`http://2852039166/`, `http://0251.0376.0251.0376/`,
//! `http://[::ffff:a9fe:a9fe]/` are all 169.254.169.254).
//!
//! - Always refused: 0.0.0.0/8 and `::` (they reach this host), link-local 169.254.0.0/16
//!   (cloud metadata services) and fe80::/10, multicast 224.0.0.0/4 and ff00::/8, and the
//!   broadcast address 255.255.255.255.
//! - Refused with `deny_private`: loopback 127.0.0.0/8 and `::1`, private 10.0.0.0/8,
//!   172.16.0.0/12, 192.168.0.0/16 and unique-local fc00::/7.
//! - An address inside an allowed range is always allowed (allow wins over deny).
//!
//! HTTP clients use [`TargetPolicy::resolver`] as their DNS resolver (it drops refused
//! addresses, and fails when none is left), check URLs whose host is an IP address with
//! [`TargetPolicy::check_url`] (resolvers are skipped for those), and use no proxy, so that
//! the checked address is the one connected to. Other clients (LDAP) resolve with
//! [`TargetPolicy::resolve`] and connect to one of the addresses it returns.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A range of addresses: `10.0.0.0/8`, `fe80::/10`; a bare address is a range of one. The
/// arithmetic is `ipnet`'s; this type adds the reading an operator expects of a flag (a bare or
/// bracketed address, host bits cleared) and messages that say what a range looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self(IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)))
    }

    const fn v6(first: u16, last: u16, prefix: u8) -> Self {
        Self(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, last), prefix)))
    }

    /// The range of `prefix` leading bits of `network` (the other bits are cleared).
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        IpNet::new(network, prefix).map(|n| Self(n.trunc())).map_err(|_| {
            CidrError(format!("the prefix length of an IPv{} range is at most {max}", if max == 32 { 4 } else { 6 }))
        })
    }

    pub fn network(&self) -> IpAddr {
        self.0.network()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` is in the range (an IPv4 address is never in an IPv6 range, nor the
    /// other way round: compare [`canonical`] addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A range that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let network: IpAddr = addr.parse().map_err(|_| {
            CidrError(format!("{s:?} is not an address range such as 10.0.0.0/8, 192.0.2.7 or fd00::/8"))
        })?;
        let prefix = match prefix {
            None => {
                if network.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(p) => {
                p.parse::<u8>().map_err(|_| CidrError(format!("{s:?}: the prefix length after / must be a number")))?
            }
        };
        Self::new(network, prefix).map_err(|e| CidrError(format!("{s:?}: {e}")))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) as the IPv4 address it reaches;
/// any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A refused range and what it is.
struct Refusal {
    range: Cidr,
    what: &'static str,
}

/// Refused whatever the settings (unless allowed by a range).
const ALWAYS_REFUSED: [Refusal; 7] = [
    Refusal { range: Cidr::v4(169, 254, 0, 0, 16), what: "link-local (cloud metadata services answer there)" },
    Refusal { range: Cidr::v4(0, 0, 0, 0, 8), what: "\"this network\" (it reaches this host)" },
    Refusal { range: Cidr::v4(224, 0, 0, 0, 4), what: "multicast" },
    Refusal { range: Cidr::v4(255, 255, 255, 255, 32), what: "broadcast" },
    Refusal { range: Cidr::v6(0, 0, 128), what: "unspecified (it reaches this host)" },
    Refusal { range: Cidr::v6(0xfe80, 0, 10), what: "link-local" },
    Refusal { range: Cidr::v6(0xff00, 0, 8), what: "multicast" },
];

/// Refused with `--deny-private-targets`.
const PRIVATE: [Refusal; 6] = [
    Refusal { range: Cidr::v4(127, 0, 0, 0, 8), what: "loopback" },
    Refusal { range: Cidr::v4(10, 0, 0, 0, 8), what: "private" },
    Refusal { range: Cidr::v4(172, 16, 0, 0, 12), what: "private" },
    Refusal { range: Cidr::v4(192, 168, 0, 0, 16), what: "private" },
    Refusal { range: Cidr::v6(0, 1, 128), what: "loopback" },
    Refusal { range: Cidr::v6(0xfc00, 0, 7), what: "unique-local (private)" },
];

/// An address the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "outbound connections to {addr} are refused: {range} is {what}{}; nothing was sent",
    if *.private { " and --deny-private-targets is set" } else { "" }
)]
pub struct Refused {
    /// The address as it would have been connected to (IPv4-mapped addresses as IPv4).
    pub addr: IpAddr,
    /// The refused range it is in.
    pub range: Cidr,
    pub what: &'static str,
    /// Refused only because private ranges are denied.
    pub private: bool,
}

/// Why a connection target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Refused(#[from] Refused),
    /// Every address the name resolves to is refused.
    #[error("{host} resolves only to refused addresses: {refused}")]
    RefusedName { host: String, refused: Refused },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

impl TargetError {
    /// Refused by the policy (rather than not resolvable).
    pub fn is_refused(&self) -> bool {
        !matches!(self, Self::Resolve { .. })
    }

    /// The first [`TargetError`] in an error's chain of sources (e.g. inside an HTTP client's
    /// connection error).
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a TargetError> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(t) = e.downcast_ref::<TargetError>() {
                return Some(t);
            }
            next = e.source();
        }
        None
    }
}

/// Which addresses outbound connections may reach. The default refuses only the ranges that
/// are never a legitimate app or directory (see the crate's documentation): loopback and
/// private ranges, where tests and on-premises apps live, stay allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    deny_private: bool,
    allow: Vec<Cidr>,
}

impl TargetPolicy {
    /// `deny_private` also refuses loopback and private ranges; an address inside one of the
    /// `allow` ranges is always allowed.
    pub fn new(deny_private: bool, allow: Vec<Cidr>) -> Self {
        Self { deny_private, allow }
    }

    pub fn denies_private(&self) -> bool {
        self.deny_private
    }

    pub fn allowed_ranges(&self) -> &[Cidr] {
        &self.allow
    }

    /// Whether a connection to `ip` is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let addr = canonical(ip);
        if self.allow.iter().any(|r| r.contains(ip) || r.contains(addr)) {
            return Ok(());
        }
        let refusal = |list: &[Refusal], private: bool| {
            list.iter().find(|r| r.range.contains(addr)).map(|r| Refused {
                addr,
                range: r.range,
                what: r.what,
                private,
            })
        };
        if let Some(r) = refusal(&ALWAYS_REFUSED, false) {
            return Err(r);
        }
        if self.deny_private {
            if let Some(r) = refusal(&PRIVATE, true) {
                return Err(r);
            }
        }
        Ok(())
    }

    /// Checks a URL whose host is an IP address (in any notation the URL parser reads). Host
    /// names are checked when they are resolved ([`Self::resolve`], [`Self::resolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(a)) => self.check(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => self.check(IpAddr::V6(a)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// The allowed addresses of `host` (a name, or an IP address with or without brackets) on
    /// `port`, in the resolver's order; an error when there is none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| TargetError::Resolve { host: bare.to_owned(), reason: e.to_string() })?;
        self.filter(bare, found)
    }

    fn filter(&self, host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, TargetError> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.check(a.ip()) {
                Ok(()) => true,
                Err(r) => {
                    refused.get_or_insert(r);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(TargetError::RefusedName { host: host.to_owned(), refused }),
            (true, None) => Err(TargetError::Resolve { host: host.to_owned(), reason: "no address found".into() }),
        }
    }

    /// A DNS resolver for reqwest that applies the policy (use it with
    /// `ClientBuilder::dns_resolver`, together with `no_proxy()` and [`Self::check_url`]).
    pub fn resolver(&self) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver { policy: self.clone() })
    }
}

impl fmt::Display for TargetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.deny_private {
            "refusing link-local, multicast, broadcast, 0.0.0.0/8, loopback and private ranges"
        } else {
            "refusing link-local, multicast, broadcast and 0.0.0.0/8"
        })?;
        if !self.allow.is_empty() {
            let ranges: Vec<String> = self.allow.iter().map(Cidr::to_string).collect();
            write!(f, "; allowing {}", ranges.join(", "))?;
        }
        Ok(())
    }
}

/// reqwest's DNS resolution through a [`TargetPolicy`].
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = policy.resolve(&host, 0).await.map_err(|e| Box::new(e) as Box<dyn StdError + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url_check(policy: &TargetPolicy, url: &str) -> Result<(), Refused> {
        policy.check_url(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn ranges_are_read_and_matched() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")) && !c.contains(ip("11.0.0.1")) && !c.contains(ip("::1")));
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().to_string(), "192.0.2.7/32");
        assert_eq!("fe80::/10".parse::<Cidr>().unwrap().to_string(), "fe80::/10");
        assert_eq!("[::1]".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("203.0.113.9")));
        let fe80: Cidr = "fe80::/10".parse().unwrap();
        assert!(fe80.contains(ip("febf::1")) && !fe80.contains(ip("fec0::1")));
        for bad in ["10.0.0.0/33", "::/129", "x/8", "10.0.0.0/", "10.0.0.0/a", "", "example.com"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_refuses_link_local_this_network_multicast_and_broadcast() {
        let p = TargetPolicy::default();
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
        ] {
            let e = p.check(ip(refused)).expect_err(refused);
            assert!(!e.private, "{refused}");
            assert!(e.to_string().contains("refused"), "{e}");
        }
        let e = p.check(ip("::ffff:a9fe:a9fe")).unwrap_err();
        assert_eq!(e.addr, ip("169.254.169.254"), "an IPv4-mapped address is reported as the IPv4 it reaches");
        assert_eq!(
            e.to_string(),
            "outbound connections to 169.254.169.254 are refused: 169.254.0.0/16 is link-local \
             (cloud metadata services answer there); nothing was sent"
        );
    }

    #[test]
    fn loopback_and_private_ranges_are_allowed_by_default_and_refused_when_denied() {
        let open = TargetPolicy::default();
        let closed = TargetPolicy::new(true, vec![]);
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(open.check(ip(private)), Ok(()), "{private}");
            let e = closed.check(ip(private)).expect_err(private);
            assert!(e.private && e.to_string().contains("--deny-private-targets"), "{e}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1", "192.0.2.1"] {
            assert_eq!(open.check(ip(public)), Ok(()), "{public}");
            assert_eq!(closed.check(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn an_allowed_range_wins_over_every_refusal() {
        let p = TargetPolicy::new(true, vec!["127.0.0.1/32".parse().unwrap(), "169.254.10.0/24".parse().unwrap()]);
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert!(p.check(ip("127.0.0.2")).is_err());
        assert_eq!(p.check(ip("169.254.10.9")), Ok(()));
        assert_eq!(p.check(ip("::ffff:169.254.10.9")), Ok(()));
        assert!(p.check(ip("169.254.169.254")).is_err());
    }

    #[test]
    fn every_notation_of_a_url_host_is_checked_as_the_address_it_reaches() {
        let p = TargetPolicy::default();
        for refused in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0251.0376.0251.0376/",
            "http://0xa9fea9fe/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "https://0/",
            "http://0.0.0.0:8080/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://255.255.255.255/",
            "http://224.0.0.251/",
        ] {
            assert!(url_check(&p, refused).is_err(), "{refused}");
        }
        for allowed in ["http://127.0.0.1:9/", "http://[::1]/", "https://app.example.com/scim/v2", "http://10.0.0.5/"] {
            assert_eq!(url_check(&p, allowed), Ok(()), "{allowed}");
        }
        let closed = TargetPolicy::new(true, vec![]);
        assert!(url_check(&closed, "http://2130706433/").is_err(), "127.0.0.1 written as one number");
        assert!(url_check(&closed, "http://0x7f.1/").is_err(), "127.0.0.1 in hex, short form");
    }

    #[tokio::test]
    async fn resolving_checks_every_address_whatever_the_notation() {
        let p = TargetPolicy::default();
        // An LDAP URL's host is not read as a number by the URL parser; the resolver reads it.
        for host in ["2852039166", "0251.0376.0251.0376", "0xa9fea9fe", "[::ffff:a9fe:a9fe]", "169.254.169.254", "0"] {
            let e = p.resolve(host, 389).await.expect_err(host);
            assert!(e.is_refused(), "{host}: {e}");
            assert!(e.to_string().contains("169.254.0.0/16") || e.to_string().contains("0.0.0.0/8"), "{host}: {e}");
        }
        assert_eq!(p.resolve("127.0.0.1", 389).await.unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], 389))]);
        assert!(!p.resolve("localhost", 389).await.unwrap().is_empty());
        let closed = TargetPolicy::new(true, vec![]);
        let e = closed.resolve("localhost", 389).await.unwrap_err();
        assert!(matches!(e, TargetError::RefusedName { .. }), "{e}");
        assert!(e.to_string().starts_with("localhost resolves only to refused addresses"), "{e}");
        let e = p.resolve("no-such-host.invalid", 389).await.unwrap_err();
        assert!(!e.is_refused(), "{e}");
    }

    #[test]
    fn a_name_with_some_refused_addresses_keeps_the_allowed_ones() {
        let p = TargetPolicy::default();
        let addrs = [SocketAddr::from(([169, 254, 169, 254], 80)), SocketAddr::from(([192, 0, 2, 1], 80))];
        assert_eq!(p.filter("mixed.example", addrs).unwrap(), vec![addrs[1]]);
    }

    #[test]
    fn a_refusal_is_found_inside_another_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let inner = TargetError::from(TargetPolicy::default().check(ip("169.254.169.254")).unwrap_err());
        let outer = Outer(Box::new(inner.clone()));
        assert_eq!(TargetError::find(&outer), Some(&inner));
        assert_eq!(TargetError::find(&Outer("other".into())), None);
    }
}
