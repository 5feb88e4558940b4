//! Outbound URL safety: the guard against server-side request forgery (SSRF).
//!
//! Tern calls URLs that its clients choose (webhooks, upstream APIs, callbacks). Left
//! unchecked, a client could point Tern at its own network: loopback admin ports, a
//! private database, the cloud metadata service that hands out credentials. So every
//! outbound address is checked after DNS resolution, inside the HTTP client's resolver:
//! the client then connects only to addresses that passed, which closes the window a
//! DNS-rebinding attacker would use between a check and a separate lookup. Redirects
//! are not followed, because a redirect target would be a URL nobody checked.
//!
//! Non-public addresses are refused unless configuration lists their network in
//! `allowed_networks` (local development and tests allow loopback).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// Decides which IP addresses Tern may connect to.
#[derive(Clone, Debug, Default)]
pub struct UrlGuard {
    allowed: Vec<IpNet>,
}

/// Why an address or host was refused; the message names the address and the range.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// The address lies in a non-public range.
    #[error("{ip} is {what} ({range}); outbound calls to non-public networks are refused")]
    NonPublic {
        /// The refused address.
        ip: IpAddr,
        /// The special-purpose range it lies in (for IPv6 outside 2000::/3, that range).
        range: IpNet,
        /// What the range is for, e.g. "a loopback address".
        what: &'static str,
    },
    /// An IPv6 address that carries a non-public IPv4 address (mapped, NAT64, 6to4...).
    #[error(
        "{ip} embeds the IPv4 address {embedded}, which is {what} ({range}); outbound calls to non-public networks are refused"
    )]
    NonPublicEmbedded {
        /// The refused IPv6 address.
        ip: Ipv6Addr,
        /// The IPv4 address it carries.
        embedded: Ipv4Addr,
        /// The special-purpose range the IPv4 address lies in.
        range: Ipv4Net,
        /// What the range is for.
        what: &'static str,
    },
    /// Every address a host name resolved to was refused.
    #[error("{host} resolves only to refused addresses: {reason}")]
    HostRefused {
        /// The host name as it appeared in the URL.
        host: String,
        /// Why the first of its addresses was refused.
        reason: Box<GuardError>,
    },
}

/// Why a URL was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// The URL exceeds the configured length.
    #[error("URL is longer than {max_len} characters")]
    TooLong {
        /// The limit in characters.
        max_len: usize,
    },
    /// The URL has no scheme (a relative URL or a bare host name).
    #[error("URL must be absolute, starting with http:// or https://")]
    NotAbsolute,
    /// The URL does not parse.
    #[error("URL is not valid: {0}")]
    Invalid(url::ParseError),
    /// The scheme is neither http nor https.
    #[error("URL must use http or https, not \"{scheme}\"")]
    UnsupportedScheme {
        /// The scheme that was given.
        scheme: String,
    },
    /// The URL has no host.
    #[error("URL has no host")]
    MissingHost,
    /// The URL carries a user name or password.
    #[error("URL must not contain credentials (user:password@)")]
    HasCredentials,
    /// The host is an address (or name) the guard refuses.
    #[error(transparent)]
    Refused(#[from] GuardError),
}

struct Special<N: 'static> {
    net: N,
    what: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, what: &'static str) -> Special<Ipv4Net> {
    Special {
        net: Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix),
        what,
    }
}

const fn v6(segments: [u16; 8], prefix: u8, what: &'static str) -> Special<Ipv6Net> {
    let [a, b, c, d, e, f, g, h] = segments;
    Special {
        net: Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix),
        what,
    }
}

// The first match names the address, so the more specific entries come first (the
// metadata address before link-local, broadcast before reserved).
const V4_REFUSED: &[Special<Ipv4Net>] = &[
    v4(169, 254, 169, 254, 32, "the cloud metadata service address"),
    // Azure's WireServer: a public-looking address that only the platform answers.
    v4(
        168,
        63,
        129,
        16,
        32,
        "Azure's platform (WireServer) address",
    ),
    v4(0, 0, 0, 0, 8, "a \"this network\" address"),
    v4(10, 0, 0, 0, 8, "a private address"),
    v4(100, 64, 0, 0, 10, "a carrier-grade NAT (shared) address"),
    v4(127, 0, 0, 0, 8, "a loopback address"),
    v4(169, 254, 0, 0, 16, "a link-local address"),
    v4(172, 16, 0, 0, 12, "a private address"),
    v4(192, 0, 0, 0, 24, "an IETF protocol assignment address"),
    v4(192, 0, 2, 0, 24, "a documentation address"),
    v4(192, 88, 99, 0, 24, "a 6to4 relay anycast address"),
    v4(192, 168, 0, 0, 16, "a private address"),
    v4(198, 18, 0, 0, 15, "a benchmarking address"),
    v4(198, 51, 100, 0, 24, "a documentation address"),
    v4(203, 0, 113, 0, 24, "a documentation address"),
    v4(224, 0, 0, 0, 4, "a multicast address"),
    v4(255, 255, 255, 255, 32, "the broadcast address"),
    v4(240, 0, 0, 0, 4, "a reserved address"),
];

const V6_REFUSED: &[Special<Ipv6Net>] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "the unspecified address"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "a loopback address"),
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
        128,
        "the AWS metadata service address",
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "a local-use NAT64 address",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
    // Teredo tunnels reach whatever IPv4 host the obfuscated address names.
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo tunnel address"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "a benchmarking address"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "an ORCHID address"),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "a documentation address",
    ),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "a unique local (private) address",
    ),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
];

// Only 2000::/3 is handed out for global unicast; any other address not named above is
// reserved or unassigned and has no business receiving webhooks.
const OUTSIDE_GLOBAL_UNICAST: Special<Ipv6Net> = v6(
    [0x2000, 0, 0, 0, 0, 0, 0, 0],
    3,
    "outside the global unicast range",
);

// IPv6 forms that carry an IPv4 address which the packet is ultimately meant for, or
// which a dual-stack host treats as that IPv4 address; the IPv4 rules must apply to it.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // IPv4-compatible ::a.b.c.d (deprecated); :: and ::1 are IPv6's own.
        [0, 0, 0, 0, 0, 0, _, _] if s[6] != 0 || s[7] > 1 => Some(low),
        // NAT64 well-known prefix 64:ff9b::/96
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 2002:a.b.c.d::/48
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static Special<Ipv4Net>> {
    V4_REFUSED.iter().find(|s| s.net.contains(&ip))
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static Special<Ipv6Net>> {
    V6_REFUSED
        .iter()
        .find(|s| s.net.contains(&ip))
        .or_else(|| (!OUTSIDE_GLOBAL_UNICAST.net.contains(&ip)).then_some(&OUTSIDE_GLOBAL_UNICAST))
}

impl UrlGuard {
    /// A guard that refuses every non-public address outside `allowed_networks`.
    pub fn new(allowed_networks: Vec<IpNet>) -> Self {
        Self {
            allowed: allowed_networks,
        }
    }

    /// The networks let through despite being non-public.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Ok when `ip` is public or inside an allowed network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), GuardError> {
        if self.is_allowed(ip) {
            return Ok(());
        }
        match ip {
            IpAddr::V4(v4) => match refused_v4(v4) {
                Some(s) => Err(GuardError::NonPublic {
                    ip,
                    range: s.net.into(),
                    what: s.what,
                }),
                None => Ok(()),
            },
            IpAddr::V6(v6) => {
                if let Some(embedded) = embedded_ipv4(v6) {
                    return match refused_v4(embedded) {
                        Some(s) => Err(GuardError::NonPublicEmbedded {
                            ip: v6,
                            embedded,
                            range: s.net,
                            what: s.what,
                        }),
                        None => Ok(()),
                    };
                }
                match refused_v6(v6) {
                    Some(s) => Err(GuardError::NonPublic {
                        ip,
                        range: s.net.into(),
                        what: s.what,
                    }),
                    None => Ok(()),
                }
            }
        }
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        // A dual-stack socket may report an IPv4 peer as ::ffff:a.b.c.d; it is the same
        // host, so an allowance for the IPv4 network covers it.
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    }

    /// Refuses a URL whose host the resolver will never see: an IP literal, or a
    /// `localhost` name while loopback is not allowed.
    ///
    /// The HTTP client connects to IP literals without asking its resolver, so
    /// [`GuardedResolver`] cannot check them: call this on every URL right before
    /// sending it, not only when it is first accepted.
    pub fn check_url_host(&self, url: &Url) -> Result<(), GuardError> {
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(Host::Domain(name)) if is_localhost(name) => {
                // RFC 6761 makes these names loopback whatever DNS says; refusing them
                // here gives an immediate answer instead of one at delivery time.
                let v4 = self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
                let v6 = self.check_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
                match (v4, v6) {
                    (Err(reason), Err(_)) => Err(GuardError::HostRefused {
                        host: name.to_owned(),
                        reason: Box::new(reason),
                    }),
                    _ => Ok(()),
                }
            }
            Some(Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Syntax + policy check done at the API edge before accepting a URL: absolute
    /// http/https only, a host present, no userinfo (user:pass@), length <= max_len, and
    /// if the host is an IP literal it must pass check_ip. Returns the parsed url::Url.
    pub fn validate_url(&self, raw: &str, max_len: usize) -> Result<Url, UrlError> {
        // The byte length bounds the character count, so the count is only taken for
        // strings that might be too long.
        if raw.len() > max_len && raw.chars().count() > max_len {
            return Err(UrlError::TooLong { max_len });
        }
        let url = Url::parse(raw).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => UrlError::NotAbsolute,
            url::ParseError::EmptyHost => UrlError::MissingHost,
            other => UrlError::Invalid(other),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host().is_none() {
            return Err(UrlError::MissingHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::HasCredentials);
        }
        self.check_url_host(&url)?;
        Ok(url)
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .len()
            .checked_sub(".localhost".len())
            .and_then(|i| name.get(i..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
}

/// A reqwest DNS resolver that resolves with the system resolver and drops addresses
/// refused by the guard; if every address is refused it fails with a [`GuardError`].
///
/// Because reqwest connects only to the addresses a resolver returns, the address that
/// was checked is the address that is used.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: Arc<UrlGuard>,
}

impl GuardedResolver {
    /// A resolver enforcing `guard`.
    pub fn new(guard: UrlGuard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = Arc::clone(&self.guard);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0 tells reqwest to put in the URL's port (or the scheme's default).
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut usable: Vec<SocketAddr> = Vec::new();
            let mut first_refusal = None;
            for addr in resolved {
                match guard.check_ip(addr.ip()) {
                    Ok(()) => usable.push(addr),
                    Err(refusal) => {
                        tracing::debug!(%host, ip = %addr.ip(), %refusal, "dropping refused address");
                        first_refusal.get_or_insert(refusal);
                    }
                }
            }
            if usable.is_empty() {
                let err: Box<dyn StdError + Send + Sync> = match first_refusal {
                    Some(reason) => Box::new(GuardError::HostRefused {
                        host,
                        reason: Box::new(reason),
                    }),
                    None => Box::new(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} has no addresses"),
                    )),
                };
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

/// Builds the outbound HTTP client: guarded resolver, no redirects, no proxy, the given
/// user agent and connect timeout, large idle pool, TCP_NODELAY.
///
/// The resolver only sees host names: check IP-literal URLs with
/// [`UrlGuard::check_url_host`] before sending. Fails only if the user agent is not a
/// valid header value or TLS cannot be set up.
pub fn http_client(
    guard: UrlGuard,
    user_agent: &str,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built with `rustls-no-provider`, so a process-wide provider must exist
    // before the first client; an Err only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .dns_resolver(GuardedResolver::new(guard))
        .redirect(reqwest::redirect::Policy::none())
        // A proxy (e.g. from HTTP_PROXY) would resolve and connect on our behalf,
        // out of the guard's reach.
        .no_proxy()
        .user_agent(user_agent)
        .connect_timeout(connect_timeout)
        // Workers fan out to many receivers and hit some very often; a small idle pool
        // would keep reopening TLS connections to the busy ones.
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
}

/// Classification of a failed outbound request, for attempt records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The request (or its connect phase) ran out of time.
    Timeout,
    /// No connection could be made (refused, reset, unreachable).
    Connect,
    /// The host name could not be resolved.
    Dns,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The URL guard refused every address of the host.
    RefusedByGuard,
    /// Anything else (body, protocol, decoding errors).
    Other,
}

impl FailureKind {
    /// The stable name stored in attempt records and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::RefusedByGuard => "refused-by-guard",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies a failed outbound request by walking its error source chain.
pub fn classify(err: &reqwest::Error) -> FailureKind {
    // The guard refusal travels inside reqwest's DNS error, so it is looked for first.
    if chain_contains::<GuardError>(err) {
        FailureKind::RefusedByGuard
    } else if err.is_timeout() {
        FailureKind::Timeout
    } else if chain_contains::<rustls::Error>(err) {
        FailureKind::Tls
    } else if err.is_dns() {
        FailureKind::Dns
    } else if err.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Other
    }
}

fn chain_contains<T: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        // io::Error::source() skips the error it wraps and returns that error's source,
        // so a rustls::Error inside an io::Error would be missed without this step.
        current = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn loopback_allowed() -> UrlGuard {
        UrlGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    #[test]
    fn refuses_every_non_public_ipv4_range() {
        let guard = UrlGuard::default();
        let cases = [
            ("0.0.0.0", "this network"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("168.63.129.16", "WireServer"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.192", "IETF protocol"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ];
        for (addr, what) in cases {
            let err = guard.check_ip(ip(addr)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(addr), "{msg}");
            assert!(msg.contains(what), "{addr}: {msg}");
        }
    }

    #[test]
    fn refuses_every_non_public_ipv6_range() {
        let guard = UrlGuard::default();
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", "AWS metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("4000::1", "outside the global unicast range (2000::/3)"),
            ("::ffff:0:1.2.3.4", "outside the global unicast range"),
        ];
        for (addr, what) in cases {
            let err = guard.check_ip(ip(addr)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(what), "{addr}: {msg}");
        }
    }

    #[test]
    fn judges_the_ipv4_address_inside_ipv6_forms() {
        let guard = UrlGuard::default();
        for (addr, inner) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::0.0.0.2", "0.0.0.2"),
            ("64:ff9b::10.0.0.1", "10.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
            ("2002:c0a8:0101::1", "192.168.1.1"),
            ("2002:7f00:1::", "127.0.0.1"),
        ] {
            let err = guard.check_ip(ip(addr)).unwrap_err();
            assert!(
                matches!(err, GuardError::NonPublicEmbedded { embedded, .. } if embedded.to_string() == inner),
                "{addr}: {err}"
            );
            assert!(err.to_string().contains(inner));
        }
    }

    #[test]
    fn allows_public_addresses() {
        let guard = UrlGuard::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            guard.check_ip(ip(addr)).unwrap();
        }
    }

    #[test]
    fn allowed_networks_let_listed_ranges_through() {
        let guard = loopback_allowed();
        guard.check_ip(ip("127.0.0.1")).unwrap();
        guard.check_ip(ip("127.9.9.9")).unwrap();
        guard.check_ip(ip("::1")).unwrap();
        guard.check_ip(ip("::ffff:127.0.0.1")).unwrap();
        assert!(guard.check_ip(ip("10.0.0.1")).is_err());
        assert!(guard.check_ip(ip("169.254.169.254")).is_err());
        assert!(guard.check_ip(ip("fe80::1")).is_err());

        let lab = UrlGuard::new(vec!["10.20.0.0/16".parse().unwrap()]);
        lab.check_ip(ip("10.20.3.4")).unwrap();
        assert!(lab.check_ip(ip("10.21.3.4")).is_err());
        assert_eq!(lab.allowed_networks().len(), 1);
    }

    #[test]
    fn refusal_message_names_the_address_and_range() {
        let err = UrlGuard::default().check_ip(ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "127.0.0.1 is a loopback address (127.0.0.0/8); outbound calls to non-public networks are refused"
        );
    }

    #[test]
    fn validate_url_accepts_ordinary_urls() {
        let guard = UrlGuard::default();
        let url = guard
            .validate_url("https://hooks.example.com/tern?x=1", 2048)
            .unwrap();
        assert_eq!(url.host_str(), Some("hooks.example.com"));
        guard.validate_url("http://8.8.8.8:8080/", 2048).unwrap();
        guard
            .validate_url("https://[2606:4700::1111]/", 2048)
            .unwrap();
    }

    #[test]
    fn validate_url_rejects_bad_syntax() {
        let guard = UrlGuard::default();
        let cases: [(&str, UrlError); 8] = [
            (
                "ftp://example.com/file",
                UrlError::UnsupportedScheme {
                    scheme: "ftp".into(),
                },
            ),
            (
                "file:///etc/passwd",
                UrlError::UnsupportedScheme {
                    scheme: "file".into(),
                },
            ),
            ("example.com/hook", UrlError::NotAbsolute),
            ("", UrlError::NotAbsolute),
            ("http://", UrlError::MissingHost),
            ("https://user:pass@example.com/", UrlError::HasCredentials),
            ("https://user@example.com/", UrlError::HasCredentials),
            (
                "http://example.com:99999/",
                UrlError::Invalid(url::ParseError::InvalidPort),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(guard.validate_url(raw, 2048).unwrap_err(), want, "{raw:?}");
        }
        let err = guard
            .validate_url("ftp://example.com/", 2048)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "URL must use http or https, not \"ftp\"");
    }

    #[test]
    fn validate_url_enforces_the_length_limit() {
        let guard = UrlGuard::default();
        let long = format!("https://example.com/{}", "a".repeat(2048));
        let err = guard.validate_url(&long, 2048).unwrap_err();
        assert_eq!(err, UrlError::TooLong { max_len: 2048 });
        assert_eq!(err.to_string(), "URL is longer than 2048 characters");
        let exact = format!("https://example.com/{}", "a".repeat(2048 - 20));
        assert_eq!(exact.len(), 2048);
        guard.validate_url(&exact, 2048).unwrap();
    }

    #[test]
    fn validate_url_refuses_non_public_literals_in_every_spelling() {
        let guard = UrlGuard::default();
        for raw in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[fd00:ec2::254]/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            let err = guard.validate_url(raw, 2048).unwrap_err();
            assert!(matches!(err, UrlError::Refused(_)), "{raw}: {err}");
        }
        let err = guard.validate_url("http://0x7f.1/", 2048).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("127.0.0.1 is a loopback address")
        );
    }

    #[test]
    fn validate_url_lets_allowed_literals_through() {
        let guard = loopback_allowed();
        guard
            .validate_url("http://127.0.0.1:3000/hook", 2048)
            .unwrap();
        guard.validate_url("http://[::1]:3000/hook", 2048).unwrap();
        guard
            .validate_url("http://localhost:3000/hook", 2048)
            .unwrap();
        assert!(guard.validate_url("http://10.0.0.1/", 2048).is_err());
    }

    #[test]
    fn localhost_names() {
        assert!(is_localhost("localhost"));
        assert!(is_localhost("LocalHost."));
        assert!(is_localhost("a.b.localhost"));
        assert!(!is_localhost("notlocalhost"));
        assert!(!is_localhost("localhost.example.com"));
        assert!(!is_localhost(""));
    }

    #[test]
    fn failure_kind_names() {
        let all = [
            (FailureKind::Timeout, "timeout"),
            (FailureKind::Connect, "connect"),
            (FailureKind::Dns, "dns"),
            (FailureKind::Tls, "tls"),
            (FailureKind::RefusedByGuard, "refused-by-guard"),
            (FailureKind::Other, "other"),
        ];
        for (kind, name) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
        }
    }

    /// A loopback HTTP/1.1 server answering every connection with `response`, recording
    /// each request head it received.
    struct TestServer {
        port: u16,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn serve(response: impl Fn(u16) -> String + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let response = Arc::new(response);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                let response = Arc::clone(&response);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = sock.write_all(response(port).as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestServer { port, requests }
    }

    fn ok_response(_port: u16) -> String {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
    }

    fn client(guard: UrlGuard) -> reqwest::Client {
        http_client(guard, "tern-test/1", Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn default_guard_refuses_localhost_and_says_so() {
        let server = serve(ok_response).await;
        let err = client(UrlGuard::default())
            .get(format!("http://localhost:{}/", server.port))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify(&err), FailureKind::RefusedByGuard, "{err:?}");
        assert!(server.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn allowed_loopback_succeeds_with_the_user_agent() {
        let server = serve(ok_response).await;
        let resp = client(loopback_allowed())
            .post(format!("http://localhost:{}/hook", server.port))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        let requests = server.requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].starts_with("POST /hook HTTP/1.1"));
        assert!(
            requests[0].contains("user-agent: tern-test/1"),
            "{}",
            requests[0]
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let server = serve(|port| {
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://localhost:{port}/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        })
        .await;
        let resp = client(loopback_allowed())
            .get(format!("http://localhost:{}/start", server.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        let requests = server.requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].starts_with("GET /start "));
    }

    #[tokio::test]
    async fn ip_literals_bypass_the_resolver_so_check_url_host_exists() {
        // reqwest connects to IP literals without resolving them; this pins that
        // behaviour so that check_url_host stays documented as required.
        let server = serve(ok_response).await;
        let url = Url::parse(&format!("http://127.0.0.1:{}/", server.port)).unwrap();
        let guard = UrlGuard::default();
        assert!(guard.check_url_host(&url).is_err());
        let resp = client(guard).get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn connection_refused_is_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = client(loopback_allowed())
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify(&err), FailureKind::Connect, "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_is_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let err = client(loopback_allowed())
            .get(format!("http://localhost:{port}/"))
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify(&err), FailureKind::Timeout, "{err:?}");
        holder.abort();
    }

    #[tokio::test]
    async fn tls_to_a_plain_http_server_is_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let _ = sock
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let err = client(loopback_allowed())
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify(&err), FailureKind::Tls, "{err:?}");
    }

    struct FailingResolver;

    impl reqwest::dns::Resolve for FailingResolver {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            Box::pin(async {
                let err: Box<dyn StdError + Send + Sync> =
                    Box::new(io::Error::other("failed to lookup address information"));
                Err(err)
            })
        }
    }

    #[tokio::test]
    async fn resolver_failure_is_dns() {
        // A stub resolver, because a real lookup of a missing name would leave the machine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .dns_resolver(FailingResolver)
            .no_proxy()
            .build()
            .unwrap();
        let err = client.get("http://missing.test/").send().await.unwrap_err();
        assert_eq!(classify(&err), FailureKind::Dns, "{err:?}");
    }

    #[tokio::test]
    async fn resolver_drops_refused_addresses() {
        use reqwest::dns::Resolve;
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();

        let refused = GuardedResolver::new(UrlGuard::default())
            .resolve(name("localhost"))
            .await
            .err()
            .unwrap();
        let guard_err = refused.downcast_ref::<GuardError>().unwrap();
        assert!(matches!(guard_err, GuardError::HostRefused { host, .. } if host == "localhost"));
        let msg = guard_err.to_string();
        assert!(
            msg.starts_with("localhost resolves only to refused addresses: ")
                && msg.contains("is a loopback address"),
            "{msg}"
        );

        let addrs: Vec<SocketAddr> = GuardedResolver::new(loopback_allowed())
            .resolve(name("localhost"))
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn classify_finds_errors_wrapped_in_io_errors() {
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("bad".into()),
        );
        assert!(chain_contains::<rustls::Error>(&wrapped));
        assert!(!chain_contains::<GuardError>(&wrapped));
    }

    #[test]
    fn http_client_rejects_an_invalid_user_agent() {
        assert!(http_client(UrlGuard::default(), "bad\nagent", Duration::from_secs(1)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Strings that look like URLs often enough to reach every check.
    fn url_like() -> impl Strategy<Value = String> {
        (
            "(https?|HTTP|ftp|javascript|)",
            "(:|://|:/|:///)",
            "([a-z]{1,5}(:[a-z]{0,5})?@)?",
            prop_oneof![
                "[a-z0-9.-]{0,20}",
                any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
                any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
                "(0x[0-9a-f]{1,8}|[0-9]{1,10}|0[0-7]{1,11})",
                Just("localhost".to_string()),
            ],
            "(:[0-9]{0,6})?",
            "(/[ -~]{0,20})?",
        )
            .prop_map(|(scheme, sep, creds, host, port, path)| {
                format!("{scheme}{sep}{creds}{host}{port}{path}")
            })
    }

    proptest! {
        #[test]
        fn validation_never_panics(input in any::<String>(), max_len in 0usize..4096) {
            let _ = UrlGuard::new(Vec::new()).validate_url(&input, max_len);
        }

        /// Whatever passes is an absolute http(s) URL with a host, no credentials and
        /// not a non-public address literal, within the length limit.
        #[test]
        fn accepted_urls_are_safe_to_call(input in url_like()) {
            let guard = UrlGuard::new(Vec::new());
            if let Ok(url) = guard.validate_url(&input, 2048) {
                prop_assert!(matches!(url.scheme(), "http" | "https"), "{input}");
                prop_assert!(url.username().is_empty() && url.password().is_none(), "{input}");
                match url.host() {
                    Some(url::Host::Ipv4(ip)) => prop_assert!(guard.check_ip(ip.into()).is_ok(), "{input}"),
                    Some(url::Host::Ipv6(ip)) => prop_assert!(guard.check_ip(ip.into()).is_ok(), "{input}"),
                    Some(url::Host::Domain(name)) => prop_assert!(!is_localhost(name), "{input}"),
                    None => prop_assert!(false, "no host: {input}"),
                }
            }
        }

        #[test]
        fn the_length_limit_holds(path in "[a-z]{0,300}", max_len in 10usize..200) {
            let url = format!("https://example.com/{path}");
            let result = UrlGuard::new(Vec::new()).validate_url(&url, max_len);
            if url.chars().count() > max_len {
                prop_assert_eq!(result.unwrap_err(), UrlError::TooLong { max_len });
            } else {
                prop_assert!(result.is_ok());
            }
        }

        /// Private, loopback and link-local IPv4 space is refused in every spelling
        /// an HTTP client would connect to, including inside IPv6.
        #[test]
        fn private_ipv4_is_refused_in_every_spelling(
            net in prop::sample::select(vec![(10u8, 0u8, 8u8), (127, 0, 8), (169, 254, 16), (192, 168, 16), (172, 16, 12)]),
            rest in any::<u32>(),
        ) {
            let (a, b, bits) = net;
            let base = u32::from(Ipv4Addr::new(a, b, 0, 0));
            let ip = Ipv4Addr::from(base | (rest >> bits));
            let guard = UrlGuard::new(Vec::new());
            prop_assert!(guard.check_ip(ip.into()).is_err(), "{ip}");
            prop_assert!(guard.check_ip(ip.to_ipv6_mapped().into()).is_err(), "{ip} mapped");
            let as_integer = u32::from(ip).to_string();
            for url in [format!("http://{ip}/"), format!("http://{as_integer}/"), format!("http://[::ffff:{ip}]/")] {
                prop_assert!(guard.validate_url(&url, 2048).is_err(), "{url}");
            }
        }

        #[test]
        fn checking_any_address_never_panics(ip in any::<IpAddr>()) {
            let _ = UrlGuard::new(Vec::new()).check_ip(ip);
            let _ = UrlGuard::new(vec!["0.0.0.0/0".parse().unwrap()]).check_ip(ip);
        }
    }
}
