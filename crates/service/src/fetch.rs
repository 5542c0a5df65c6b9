//! Downloading the photo for `POST /labelling/url` — the SSRF surface.
//!
//! A client chooses the URL, so without care the server becomes a proxy into
//! its own network (cloud metadata at 169.254.169.254, admin ports on
//! loopback, the intranet). The defences, in order:
//!
//! 1. The URL is at most [`FetchConfig::max_url_len`] characters, parses as
//!    WHATWG URL (so `http://2130706433/` and `http://0x7f.1/` are seen as
//!    the 127.0.0.1 they are), is `http` or `https`, and carries no
//!    credentials.
//! 2. Every address the host resolves to must pass the [`AddressPolicy`]:
//!    by default [`is_public`], which refuses loopback, private, link-local,
//!    CGNAT, multicast, documentation and reserved ranges, and IPv6 forms that
//!    embed a forbidden IPv4 address. If *any* address is refused the URL is.
//! 3. The connection goes only to the addresses that were checked: the HTTP
//!    client's DNS resolver *is* the checking resolver, so a second lookup
//!    (DNS rebinding) cannot slip another address in. No proxy is used.
//! 4. Redirects are followed by hand, at most [`FetchConfig::max_redirects`],
//!    each hop checked like the first URL.
//! 5. Connect and total timeouts; the body is streamed with a size cap.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, ACCEPT, LOCATION, USER_AGENT};
use url::{Host, Url};

/// How URL downloads are limited.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Skip the address check (`--allow-private-urls`); everything else stays.
    pub allow_private: bool,
    /// Largest body downloaded, in bytes.
    pub max_bytes: usize,
    /// Whole download, redirects included.
    pub total_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_redirects: usize,
    /// Longest URL accepted, in bytes.
    pub max_url_len: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_bytes: 20 * 1024 * 1024,
            total_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 3,
            max_url_len: 2048,
        }
    }
}

/// Why a URL was refused. Clients see only "The URL is not valid"; this is
/// for the log.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL longer than {0} bytes")]
    TooLong(usize),
    #[error("URL does not parse: {0}")]
    Malformed(#[from] url::ParseError),
    #[error("scheme `{0}` is not http or https")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("URL carries credentials")]
    Credentials,
    #[error("address {0} is not allowed")]
    ForbiddenAddress(IpAddr),
    #[error("host could not be resolved")]
    Unresolvable,
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect without a usable Location")]
    BadRedirect,
    #[error("server answered {0}")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("download took too long")]
    Timeout,
    #[error("HTTP error: {0}")]
    Http(String),
    #[error("HTTP client could not be built: {0}")]
    Client(String),
}

/// Turns a host name into addresses. Injectable so tests can map a name to
/// loopback without touching DNS.
pub trait HostResolver: Send + Sync + 'static {
    fn resolve(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Decides which addresses the server may connect to.
pub trait AddressPolicy: Send + Sync + 'static {
    fn allows(&self, ip: IpAddr) -> bool;
}

/// The default: only globally routable unicast addresses ([`is_public`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PublicOnly;

impl AddressPolicy for PublicOnly {
    fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip)
    }
}

/// `--allow-private-urls`: every address.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnyAddress;

impl AddressPolicy for AnyAddress {
    fn allows(&self, _ip: IpAddr) -> bool {
        true
    }
}

/// Whether `ip` is a globally routable unicast address that a URL download
/// may connect to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const FORBIDDEN: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT shared address space
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
    ];
    !FORBIDDEN
        .iter()
        .any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // Forms that carry an IPv4 address: judged by the address they carry.
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) // IPv4-mapped
        || in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    // NAT64 well-known prefix
    {
        return is_public_v4(low32);
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) {
        // IPv4-compatible (deprecated), and :: and ::1 themselves.
        return ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST && is_public_v4(low32);
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4: the IPv4 address is bits 16..48.
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return is_public_v4(v4);
    }
    const FORBIDDEN: &[([u16; 8], u32)] = &[
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments, Teredo
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation
        ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // SRv6 SIDs
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
    ];
    // Only 2000::/3 is allocated as global unicast.
    in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3)
        && !FORBIDDEN
            .iter()
            .any(|(net, prefix)| in_v6(ip, *net, *prefix))
}

/// The resolver the HTTP client uses: resolves through [`HostResolver`] and
/// refuses the name if any address fails the policy, so the client can only
/// ever connect to checked addresses.
struct VettingResolver {
    resolver: Arc<dyn HostResolver>,
    policy: Arc<dyn AddressPolicy>,
}

impl reqwest::dns::Resolve for VettingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.resolver.clone();
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let refuse =
                |e: FetchError| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) };
            let ips = resolver
                .resolve(&host)
                .await
                .map_err(|_| refuse(FetchError::Unresolvable))?;
            if ips.is_empty() {
                return Err(refuse(FetchError::Unresolvable));
            }
            if let Some(ip) = ips.iter().find(|ip| !policy.allows(**ip)) {
                return Err(refuse(FetchError::ForbiddenAddress(*ip)));
            }
            // The port is taken from the URL; the one here is ignored.
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Downloads images for the URL endpoint.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<dyn AddressPolicy>,
    config: FetchConfig,
}

impl Fetcher {
    /// The system resolver, and [`PublicOnly`] unless `allow_private`.
    pub fn new(config: FetchConfig) -> Result<Self, FetchError> {
        let policy: Arc<dyn AddressPolicy> = if config.allow_private {
            Arc::new(AnyAddress)
        } else {
            Arc::new(PublicOnly)
        };
        Self::with_parts(config, Arc::new(SystemResolver), policy)
    }

    /// With an injected resolver and address policy (tests, embedding).
    /// `config.allow_private` is ignored: the policy decides.
    pub fn with_parts(
        config: FetchConfig,
        resolver: Arc<dyn HostResolver>,
        policy: Arc<dyn AddressPolicy>,
    ) -> Result<Self, FetchError> {
        // reqwest is built without a bundled crypto provider; use ring. An
        // error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(VettingResolver {
                resolver,
                policy: policy.clone(),
            }))
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Self {
            client,
            policy,
            config,
        })
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Checks what can be checked without the network: length, syntax,
    /// scheme, credentials, and a literal IP address.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        check_url(url, &self.config, &*self.policy)
    }

    /// Downloads `url` (following checked redirects) within the limits.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let url = validate_url(url, &self.config, &*self.policy)?;
        match tokio::time::timeout(self.config.total_timeout, self.fetch_checked(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    /// `url` has passed [`validate_url`]; every redirect target is checked
    /// the same way before it is requested.
    async fn fetch_checked(&self, mut url: Url) -> Result<Bytes, FetchError> {
        let mut redirects = 0;
        loop {
            let response = self
                .client
                .get(url.clone())
                .header(
                    USER_AGENT,
                    HeaderValue::from_static(concat!("photolabel/", env!("CARGO_PKG_VERSION"))),
                )
                .header(
                    ACCEPT,
                    HeaderValue::from_static("image/jpeg, image/png, image/*"),
                )
                .send()
                .await
                .map_err(classify)?;
            let status = response.status();
            if status.is_redirection() {
                if redirects >= self.config.max_redirects {
                    return Err(FetchError::TooManyRedirects(self.config.max_redirects));
                }
                redirects += 1;
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(FetchError::BadRedirect)?;
                if location.len() > self.config.max_url_len {
                    return Err(FetchError::TooLong(self.config.max_url_len));
                }
                url = url.join(location)?;
                self.check_url(&url)?;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            return self.read_body(response).await;
        }
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<Bytes, FetchError> {
        let max = self.config.max_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > max as u64)
        {
            return Err(FetchError::TooLarge(max));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// Everything about a client's URL that can be checked without the
/// network: length, WHATWG syntax, scheme, credentials, and a literal IP
/// address against `policy`. [`Fetcher::fetch`] starts with it; it is also
/// what the URL fuzz target drives.
pub fn validate_url(
    url: &str,
    config: &FetchConfig,
    policy: &dyn AddressPolicy,
) -> Result<Url, FetchError> {
    if url.len() > config.max_url_len {
        return Err(FetchError::TooLong(config.max_url_len));
    }
    let url = Url::parse(url)?;
    check_url(&url, config, policy)?;
    Ok(url)
}

/// [`validate_url`] for an already parsed URL (also each redirect hop).
fn check_url(
    url: &Url,
    config: &FetchConfig,
    policy: &dyn AddressPolicy,
) -> Result<(), FetchError> {
    if url.as_str().len() > config.max_url_len {
        return Err(FetchError::TooLong(config.max_url_len));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials);
    }
    let ip = match url.host() {
        None => return Err(FetchError::NoHost),
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        // The WHATWG parser already turned every IPv4 spelling into
        // Host::Ipv4; this is a second guard in case a name still reads
        // as an address to the connector.
        Some(Host::Domain(name)) => name.parse::<IpAddr>().ok(),
    };
    match ip {
        Some(ip) if !policy.allows(ip) => Err(FetchError::ForbiddenAddress(ip)),
        _ => Ok(()),
    }
}

/// Finds our own refusal inside a reqwest error, for an honest log line.
fn classify(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(ours) = e.downcast_ref::<FetchError>() {
            return match ours {
                FetchError::ForbiddenAddress(ip) => FetchError::ForbiddenAddress(*ip),
                FetchError::Unresolvable => FetchError::Unresolvable,
                other => FetchError::Http(other.to_string()),
            };
        }
        source = e.source();
    }
    FetchError::Http(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn forbidden_addresses() {
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "3fff::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn public_addresses() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(s)), "{s} must be allowed");
        }
    }

    #[test]
    fn whatwg_parsing_exposes_loopback() {
        let fetcher = Fetcher::new(FetchConfig::default()).expect("client");
        for s in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let url = Url::parse(s).expect("parses");
            assert!(
                matches!(
                    fetcher.check_url(&url),
                    Err(FetchError::ForbiddenAddress(_))
                ),
                "{s}"
            );
        }
        let url = Url::parse("http://user:pw@example.com/").expect("parses");
        assert!(matches!(
            fetcher.check_url(&url),
            Err(FetchError::Credentials)
        ));
    }
}
