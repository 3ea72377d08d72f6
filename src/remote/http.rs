//! The HTTP client under every store, built by plaid rather than by `object_store`, so that
//! plaid decides where a request may go:
//!
//! - Redirects are not followed for S3, GCS and Azure: a redirect would carry the request's
//!   credentials to whatever origin it names (the client drops `Authorization` on the way
//!   to another origin, but not `x-amz-security-token`, the session token of temporary
//!   AWS credentials). A redirect is an error that names where it pointed, and for S3 the
//!   bucket's region where the answer gives it (S3 signals a bucket in another region with
//!   a 301).
//! - Plain HTTP(S) follows up to ten redirects, to any origin, because no credential is
//!   configured for it (the ETag pinned at open is asked `If-Match` at the new origin too);
//!   a URL with a user and password sends them as basic authentication and follows none.
//!   A credential option for HTTP, when one is added, must turn them off the same way
//!   ([`Redirects::for_http`]).
//! - A URL that `object_store` formed from a malformed configuration is an error, not the
//!   panic its own client would raise.
//!
//! Everything else is as `object_store` configures its client: the values of its client
//! options are read back from the [`ClientOptions`] each store passes (the same parsing
//! rules), with the CA bundle's certificates held here.

use std::error::Error as StdError;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};
use reqwest::header::{HeaderValue, AUTHORIZATION, LOCATION};

/// How many redirects plain HTTP follows.
const MAX_REDIRECTS: usize = 10;

/// Whether the requests of a store follow redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Redirects {
    /// Follow up to ten, to any origin.
    Follow,
    /// Never: a redirect is an error. The name is the store's, for messages.
    Refuse(&'static str),
}

impl Redirects {
    /// Plain HTTP(S): followed unless the request carries a credential (a user and
    /// password in the URL; any header or token option added later belongs here too).
    pub(crate) fn for_http(has_credentials: bool) -> Redirects {
        match has_credentials {
            true => Redirects::Refuse("an HTTP server with credentials"),
            false => Redirects::Follow,
        }
    }
}

/// The error of a client option's value, naming the option.
pub(crate) fn check_client_option(key: ClientConfigKey, value: &str) -> Result<(), String> {
    let expected = match key {
        ClientConfigKey::AllowHttp
        | ClientConfigKey::AllowInvalidCertificates
        | ClientConfigKey::NoSystemCertificates
        | ClientConfigKey::Http1Only
        | ClientConfigKey::Http2Only
        | ClientConfigKey::Http2KeepAliveWhileIdle
        | ClientConfigKey::RandomizeAddresses => boolean(value)
            .is_none()
            .then_some("a boolean (true, false, 1, 0, yes, no, on, off)"),
        ClientConfigKey::ConnectTimeout
        | ClientConfigKey::ReadTimeout
        | ClientConfigKey::Timeout
        | ClientConfigKey::PoolIdleTimeout
        | ClientConfigKey::Http2KeepAliveInterval
        | ClientConfigKey::Http2KeepAliveTimeout => duration(value)
            .is_none()
            .then_some("a duration (like 30s, 500ms, 2m)"),
        ClientConfigKey::PoolMaxIdlePerHost => {
            value.trim().parse::<usize>().is_err().then_some("a count")
        }
        // HTTP/2's bounds (RFC 9113 6.5.2): the client refuses others.
        ClientConfigKey::Http2MaxFrameSize => match value.trim().parse::<u32>() {
            Ok(n) if (1 << 14..1 << 24).contains(&n) => None,
            _ => Some("a frame size from 16384 to 16777215"),
        },
        ClientConfigKey::UserAgent | ClientConfigKey::DefaultContentType => {
            HeaderValue::from_str(value)
                .is_err()
                .then_some("a valid header value")
        }
        ClientConfigKey::ProxyUrl => (reqwest::Proxy::all(value).is_err()
            || url::Url::parse(value).is_err())
        .then_some("a proxy URL"),
        ClientConfigKey::ProxyCaCertificate => reqwest::Certificate::from_pem(value.as_bytes())
            .is_err()
            .then_some("a PEM certificate"),
        // A list of hosts; whatever it holds, it only exempts hosts from the proxy.
        _ => None,
    };
    match expected {
        Some(what) => Err(format!(
            "storage option {}: '{value}' is not {what}",
            key.as_ref()
        )),
        None => Ok(()),
    }
}

/// A boolean as `object_store` reads its options.
fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// A duration as `object_store` reads its options (humantime: `30s`, `500ms`, `2m`, `1h 5m`).
pub(crate) fn duration(value: &str) -> Option<Duration> {
    humantime::parse_duration(value.trim()).ok()
}

/// Makes the HTTP clients of one store (the store's own and those of its credential
/// providers, each with the options it passes).
#[derive(Debug)]
pub(crate) struct Connector {
    /// The CA bundle's certificates, trusted beside (or, with `disable_system_certificates`,
    /// instead of) the system's.
    certificates: Vec<reqwest::Certificate>,
    redirects: Redirects,
    /// `Authorization: Basic ...` from the user and password of an HTTP URL.
    basic_auth: Option<HeaderValue>,
}

impl Connector {
    pub(crate) fn new(
        certificates: Vec<reqwest::Certificate>,
        redirects: Redirects,
        basic_auth: Option<HeaderValue>,
    ) -> Connector {
        Connector {
            certificates,
            redirects,
            basic_auth,
        }
    }
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = client(options, &self.certificates, self.redirects).map_err(|why| {
            object_store::Error::Generic {
                store: "HTTP client",
                source: why.into(),
            }
        })?;
        Ok(HttpClient::new(Service {
            client,
            redirects: self.redirects,
            basic_auth: self.basic_auth.clone(),
        }))
    }
}

/// A reqwest client configured from `options` as `object_store` would configure it, with
/// `certificates` and the redirect policy.
fn client(
    options: &ClientOptions,
    certificates: &[reqwest::Certificate],
    redirects: Redirects,
) -> Result<reqwest::Client, String> {
    use ClientConfigKey as K;
    let get = |key: K| -> Result<Option<String>, String> {
        match options.get_config_value(&key) {
            Some(value) => check_client_option(key, &value).map(|()| Some(value)),
            None => Ok(None),
        }
    };
    let flag = |key: K| -> Result<bool, String> {
        Ok(get(key)?.and_then(|v| boolean(&v)).unwrap_or(false))
    };
    let time =
        |key: K| -> Result<Option<Duration>, String> { Ok(get(key)?.and_then(|v| duration(&v))) };
    let mut builder = reqwest::ClientBuilder::new();
    builder = match get(K::UserAgent)? {
        Some(agent) => builder.user_agent(agent),
        None => builder.user_agent(concat!("plaid/", env!("CARGO_PKG_VERSION"))),
    };
    if let Some(headers) = options.get_default_headers() {
        builder = builder.default_headers(headers.clone());
    }
    if let Some(url) = get(K::ProxyUrl)? {
        let mut proxy = reqwest::Proxy::all(&url).map_err(|e| format!("proxy_url: {e}"))?;
        if let Some(pem) = get(K::ProxyCaCertificate)? {
            let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| format!("proxy_ca_certificate: {e}"))?;
            builder = builder.tls_certs_merge(std::iter::once(certificate));
        }
        if let Some(excludes) = get(K::ProxyExcludes)? {
            proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&excludes));
        }
        builder = builder.proxy(proxy);
    }
    let certificates = certificates.iter().cloned();
    builder = match flag(K::NoSystemCertificates)? {
        true => builder.tls_certs_only(certificates),
        false => builder.tls_certs_merge(certificates),
    };
    if let Some(t) = time(K::Timeout)? {
        builder = builder.timeout(t);
    }
    if let Some(t) = time(K::ConnectTimeout)? {
        builder = builder.connect_timeout(t);
    }
    if let Some(t) = time(K::ReadTimeout)? {
        builder = builder.read_timeout(t);
    }
    if let Some(t) = time(K::PoolIdleTimeout)? {
        builder = builder.pool_idle_timeout(t);
    }
    if let Some(n) = get(K::PoolMaxIdlePerHost)? {
        builder = builder.pool_max_idle_per_host(n.trim().parse().unwrap_or(usize::MAX));
    }
    if let Some(t) = time(K::Http2KeepAliveInterval)? {
        builder = builder.http2_keep_alive_interval(t);
    }
    if let Some(t) = time(K::Http2KeepAliveTimeout)? {
        builder = builder.http2_keep_alive_timeout(t);
    }
    if flag(K::Http2KeepAliveWhileIdle)? {
        builder = builder.http2_keep_alive_while_idle(true);
    }
    if let Some(n) = get(K::Http2MaxFrameSize)? {
        builder = builder.http2_max_frame_size(n.trim().parse::<u32>().ok());
    }
    if flag(K::Http1Only)? {
        builder = builder.http1_only();
    }
    if flag(K::Http2Only)? {
        builder = builder.http2_prior_knowledge();
    }
    if flag(K::AllowInvalidCertificates)? {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if flag(K::RandomizeAddresses)? {
        builder = builder.dns_resolver(std::sync::Arc::new(ShuffledAddresses));
    }
    // Compression would change the lengths that ranges and Content-Length describe.
    builder = builder.no_gzip().no_brotli().no_zstd().no_deflate();
    let policy = match redirects {
        Redirects::Follow => reqwest::redirect::Policy::limited(MAX_REDIRECTS),
        Redirects::Refuse(_) => reqwest::redirect::Policy::none(),
    };
    builder
        .https_only(!flag(K::AllowHttp)?)
        .redirect(policy)
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// The requests of one store: checked, sent, and redirects refused where they must be.
#[derive(Debug)]
struct Service {
    client: reqwest::Client,
    redirects: Redirects,
    basic_auth: Option<HeaderValue>,
}

/// Why a request was not sent, or its answer not taken.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Refused {}

/// An error that `object_store` does not retry.
fn refused(why: String) -> HttpError {
    HttpError::new(HttpErrorKind::Unknown, Refused(why))
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        // The conversion to reqwest's request unwraps this parse: a URL made from a
        // malformed endpoint or region is an error here instead.
        let uri = request.uri().to_string();
        if let Err(e) = reqwest::Url::parse(&uri) {
            return Err(refused(format!(
                "the request's URL is not valid ({e}): check the endpoint and region options"
            )));
        }
        if let Some(auth) = &self.basic_auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let response = HttpService::call(&self.client, request).await?;
        let status = response.status();
        match self.redirects {
            Redirects::Refuse(store)
                if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED =>
            {
                Err(refused(redirect_refused(store, &response)))
            }
            _ => Ok(response),
        }
    }
}

/// What a refused redirect says: its status, the origin it pointed to (never the rest of
/// the address, which may hold a signature), and the bucket's region where S3 gives it.
fn redirect_refused(store: &str, response: &HttpResponse) -> String {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let to = header(LOCATION.as_str())
        .and_then(|l| url::Url::parse(&l).ok())
        .map(|u| u.origin().ascii_serialization())
        .map(|origin| format!(" to {origin}"))
        .unwrap_or_default();
    let mut message = format!(
        "HTTP {} {}: a redirect{to}, which plaid does not follow for {store} (the request's \
         credentials would go with it)",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if let Some(region) = header("x-amz-bucket-region").filter(|r| is_region(r)) {
        message.push_str(&format!(
            "; the bucket is in region {region}: set aws_region (or AWS_REGION) to {region}"
        ));
    } else if status == reqwest::StatusCode::MOVED_PERMANENTLY {
        message.push_str("; S3 answers so for a bucket in another region: set aws_region");
    }
    message
}

/// Whether `text` is a plausible region name: letters, digits, `-`, `_` and `.`, at most
/// 64 of them (AWS's `eu-west-1`, other stores' `auto`, `garage`, `fr-par`).
pub(crate) fn is_region(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The system's resolver, its addresses shuffled (as `object_store` does by default), so
/// that the connections of many requests spread over a store's many addresses.
struct ShuffledAddresses;

impl reqwest::dns::Resolve for ShuffledAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || {
                (host.as_str(), 0).to_socket_addrs().map(Vec::from_iter)
            })
            .await;
            let mut addresses: Vec<SocketAddr> = match found {
                Ok(Ok(addresses)) => addresses,
                Ok(Err(e)) => return Err(Box::new(e) as Box<dyn StdError + Send + Sync>),
                Err(e) => return Err(Box::new(e) as Box<dyn StdError + Send + Sync>),
            };
            shuffle(&mut addresses);
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Shuffle `items` (Fisher-Yates) with a generator seeded from the standard library's
/// per-process random keys: an even spread, not a secret.
fn shuffle<T>(items: &mut [T]) {
    let mut state = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1;
    for i in (1..items.len()).rev() {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_options_are_checked_as_object_store_reads_them() {
        assert!(check_client_option(ClientConfigKey::Timeout, "30s").is_ok());
        assert!(check_client_option(ClientConfigKey::Timeout, "500ms").is_ok());
        let e = check_client_option(ClientConfigKey::Timeout, "soon").unwrap_err();
        assert!(e.contains("timeout") && e.contains("duration"), "{e}");
        assert!(check_client_option(ClientConfigKey::AllowHttp, "Yes").is_ok());
        assert!(check_client_option(ClientConfigKey::AllowHttp, "maybe").is_err());
        assert!(check_client_option(ClientConfigKey::ProxyUrl, "http://proxy:3128").is_ok());
        assert!(check_client_option(ClientConfigKey::ProxyUrl, "ht!tp://bad url").is_err());
        assert!(check_client_option(ClientConfigKey::UserAgent, "a\nb").is_err());
        assert!(check_client_option(ClientConfigKey::Http2MaxFrameSize, "1").is_err());
    }

    #[test]
    fn regions_are_names() {
        for ok in ["eu-west-1", "auto", "fr-par", "us_east.2"] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in ["", "eu west", "a/b", "x\ny", "é"] {
            assert!(!is_region(bad), "{bad:?}");
        }
    }

    #[test]
    fn shuffles_keep_every_item() {
        let mut items: Vec<u32> = (0..100).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
    }
}
