//! The HTTP client that webhook deliveries go through, and the only one: it refuses to connect
//! to an address that is not public (see `address`) unless `HERD_WEBHOOK_ALLOW_PRIVATE` is on.
//!
//! The check is made on the addresses a connection will actually use, after name resolution,
//! for every connection, so a public name that resolves to a private address (an `/etc/hosts`
//! entry, a rebinding DNS name) is refused like a private literal:
//! - a name goes through [`GuardedResolver`], which hands the connector only checked addresses
//!   (the connector connects to nothing else);
//! - an IP literal never reaches a resolver (hyper connects to it directly), so
//!   [`WebhookClient::post`] checks it before sending;
//! - redirects are not followed and no proxy is used (a proxy would resolve the name where herd
//!   cannot check it);
//! - after the answer, the peer address is checked once more, so that a path this module did
//!   not foresee still fails closed (nothing of the answer is kept either way).
//!
//! It must not read the answer's body: a failed delivery records a status code and a fixed
//! message, never bytes from the receiver (which might be an internal service).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address::{is_localhost_name, is_public};

/// Per-request timeout of a delivery.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Where names are looked up: the system's resolver, or a fixed table that tests inject (so a
/// name can resolve to loopback without editing `/etc/hosts`). Either way the answers are
/// checked by [`GuardedResolver`].
#[derive(Clone, Debug, Default)]
pub enum Lookup {
    /// `getaddrinfo`, on tokio's blocking pool.
    #[default]
    System,
    /// Names (lower case, no trailing dot) and their addresses; any other name does not resolve.
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    async fn addresses(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Lookup::System => Ok(tokio::net::lookup_host((name, 0)).await?.collect()),
            Lookup::Fixed(table) => {
                let key = name.trim_end_matches('.').to_ascii_lowercase();
                let ips = table.get(&key).ok_or_else(|| std::io::Error::other("no such name"))?;
                Ok(ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect())
            }
        }
    }
}

/// Why a delivery was not sent, or failed: each a fixed message, safe to record and show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target is, or resolves to, an address that is not public.
    #[error("refused: the target is not a public address (HERD_WEBHOOK_ALLOW_PRIVATE is off)")]
    Refused,
    /// The name did not resolve.
    #[error("could not resolve the target's host name")]
    NotResolved,
    /// No answer within [`TIMEOUT`].
    #[error("timed out")]
    TimedOut,
    /// Connection refused or reset, TLS failed, or the answer was not HTTP.
    #[error("could not connect or the answer was not HTTP")]
    Failed,
}

/// A name resolver that refuses a name if any of its addresses is not public (unless private
/// targets are allowed), so the connector is never handed one.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    lookup: Lookup,
    allow_private: bool,
}

/// The resolver's error; `post` finds it in reqwest's error chain and answers
/// [`SendError::Refused`] or [`SendError::NotResolved`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ResolveError(SendError);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (lookup, allow_private) = (self.lookup.clone(), self.allow_private);
        let name = name.as_str().to_owned();
        Box::pin(async move {
            if !allow_private && is_localhost_name(&name) {
                return Err(Box::new(ResolveError(SendError::Refused)) as _);
            }
            let addresses = lookup.addresses(&name).await.map_err(|_| ResolveError(SendError::NotResolved))?;
            if addresses.is_empty() {
                return Err(Box::new(ResolveError(SendError::NotResolved)) as _);
            }
            // All or nothing: a name with one private address among public ones is refused, so
            // which address the connector happens to try first never matters.
            if !allow_private && addresses.iter().any(|address| !is_public(address.ip())) {
                return Err(Box::new(ResolveError(SendError::Refused)) as _);
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// The webhook deliveries' HTTP client. Built once at start-up (failing start-up if it cannot
/// be): a default client would follow redirects, use proxies and wait forever.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl WebhookClient {
    /// The client herd runs with: the system's resolver, checked.
    pub fn new(allow_private: bool) -> Result<Self, reqwest::Error> {
        Self::with_lookup(allow_private, Lookup::System)
    }

    /// A client whose names are looked up by `lookup` (tests inject a fixed table).
    pub fn with_lookup(allow_private: bool, lookup: Lookup) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { lookup, allow_private }))
            .timeout(TIMEOUT)
            .user_agent(concat!("herd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, allow_private })
    }

    /// POSTs `body` with `headers` to `url` and answers the status code. The answer's body is
    /// never read.
    pub(crate) async fn post(
        &self,
        url: &reqwest::Url,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> Result<reqwest::StatusCode, SendError> {
        check_literal(url, self.allow_private)?;
        let response = self.http.post(url.clone()).headers(headers).body(body).send().await.map_err(classify)?;
        if !self.allow_private && response.remote_addr().is_none_or(|peer| !is_public(peer.ip())) {
            tracing::error!(%url, "a webhook delivery reached a non-public address past the checks");
            return Err(SendError::Refused);
        }
        Ok(response.status())
    }
}

/// Refuses a URL whose host is a literal address that is not public (unless private targets
/// are allowed). The URL parser has already normalised every spelling of an IPv4 address
/// (`2130706433`, `0x7f.1`) and IPv6 (`[::ffff:7f00:1]`).
fn check_literal(url: &reqwest::Url, allow_private: bool) -> Result<(), SendError> {
    let host = url.host_str().ok_or(SendError::Refused)?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) if !allow_private && !is_public(ip) => Err(SendError::Refused),
        _ => Ok(()),
    }
}

/// The fixed message for a failed send; the details go to the log only.
fn classify(error: reqwest::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(ResolveError(reason)) = current.downcast_ref::<ResolveError>() {
            return *reason;
        }
        source = current.source();
    }
    tracing::debug!(%error, "a webhook delivery failed");
    if error.is_timeout() {
        SendError::TimedOut
    } else {
        SendError::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn table(entries: &[(&str, &[&str])]) -> Lookup {
        let map = entries
            .iter()
            .map(|(name, ips)| (name.to_string(), ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect();
        Lookup::Fixed(Arc::new(map))
    }

    async fn resolve(resolver: &GuardedResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        let name: Name = name.parse().unwrap();
        match resolver.resolve(name).await {
            Ok(addresses) => Ok(addresses.collect()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The resolver refuses names that resolve to any non-public address, without connecting
    /// anywhere (the table stands in for DNS).
    #[tokio::test]
    async fn the_resolver_hands_out_only_public_addresses() {
        let lookup = table(&[
            ("public.test", &["8.8.8.8", "2606:4700:4700::1111"]),
            ("metadata.test", &["169.254.169.254"]),
            ("mixed.test", &["8.8.8.8", "10.0.0.1"]),
            ("mapped.test", &["::ffff:127.0.0.1"]),
            ("nat64.test", &["64:ff9b::7f00:1"]),
            ("cgnat.test", &["100.64.0.1"]),
            ("ula.test", &["fd00::1"]),
        ]);
        let guarded = GuardedResolver { lookup: lookup.clone(), allow_private: false };
        let addresses = resolve(&guarded, "public.test").await.unwrap();
        assert_eq!(addresses.len(), 2);
        assert_eq!(addresses[0].ip(), IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)));
        let refused = SendError::Refused.to_string();
        for name in ["metadata.test", "mixed.test", "mapped.test", "nat64.test", "cgnat.test", "ula.test"] {
            assert_eq!(resolve(&guarded, name).await.unwrap_err(), refused, "{name}");
        }
        // `localhost` and its forms are refused before any lookup.
        for name in ["localhost", "localhost.", "LOCALHOST", "api.localhost"] {
            assert_eq!(resolve(&guarded, name).await.unwrap_err(), refused, "{name}");
        }
        assert_eq!(resolve(&guarded, "unknown.test").await.unwrap_err(), SendError::NotResolved.to_string());

        let open = GuardedResolver { lookup, allow_private: true };
        assert_eq!(resolve(&open, "metadata.test").await.unwrap()[0].ip().to_string(), "169.254.169.254");
    }

    /// Literal targets never reach the resolver, so `post` refuses them itself. Pure: nothing
    /// here connects anywhere.
    #[test]
    fn literal_targets_that_are_not_public_are_refused() {
        for target in [
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fe80::1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://100.64.0.1/",
            "http://0.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1:8443/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]:9/",
        ] {
            let url = reqwest::Url::parse(target).unwrap();
            assert_eq!(check_literal(&url, false), Err(SendError::Refused), "{target}");
            assert_eq!(check_literal(&url, true), Ok(()), "{target}");
        }
        for target in ["https://8.8.8.8/", "https://[2606:4700:4700::1111]/", "https://hooks.example.com/"] {
            assert_eq!(check_literal(&reqwest::Url::parse(target).unwrap(), false), Ok(()), "{target}");
        }
    }

    /// And `post` does run that check before connecting: the targets are loopback, so even a
    /// broken check could only ever reach this machine.
    #[tokio::test]
    async fn post_refuses_literal_loopback_before_connecting() {
        let client = WebhookClient::new(false).unwrap();
        for target in ["http://[::ffff:127.0.0.1]:9/", "http://127.0.0.1:9/", "http://[::1]:9/"] {
            let url = reqwest::Url::parse(target).unwrap();
            assert_eq!(client.post(&url, Default::default(), Vec::new()).await, Err(SendError::Refused), "{target}");
        }
    }
}
