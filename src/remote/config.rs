//! Configuring a store from the environment and the storage options, as the cloud tools
//! do: for S3 the `AWS_*` variables (keys, session token, region, `AWS_ENDPOINT_URL[_S3]`,
//! web identity, container credentials), `~/.aws` profiles (`AWS_PROFILE`),
//! `AWS_CA_BUNDLE`; for GCS the `GOOGLE_*` variables; for Azure the `AZURE_*` ones. Options
//! set in plaid take precedence over the environment.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};

use super::http::{check_client_option, is_region, Connector, Redirects};
use super::StorageOptions;
use super::{Location, Scheme, REMOTE_IN_FLIGHT, REMOTE_MERGE_GAP, REMOTE_REQUEST_BYTES};
use crate::error::{Error, Result};
use crate::source::SourceHints;

/// plaid's own keys (the rest are `object_store`'s).
const PLAID_KEYS: [&str; 8] = [
    "max_retries",
    "retry_timeout",
    "aws_profile",
    "aws_ca_bundle",
    "ca_bundle",
    "upload_part_size",
    "upload_parts_in_flight",
    "profile",
];

/// Smallest part of a multipart upload S3 accepts (but the last).
pub(crate) const MIN_PART_SIZE: u64 = 5 << 20;
/// Largest part S3 accepts.
pub(crate) const MAX_PART_SIZE: u64 = 5 << 30;
/// Default part size of uploads.
pub(crate) const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Default parts uploaded at once.
pub(crate) const DEFAULT_PARTS_IN_FLIGHT: usize = 8;

/// Whether `key` is a storage option of plaid's or of any store `object_store` knows: the
/// check made when an option is set.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if PLAID_KEYS.contains(&key) || is_store_key(key) || ClientConfigKey::from_str(key).is_ok() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "'{key}' is not a storage option (object_store's keys such as aws_region, aws_endpoint, \
         timeout, google_service_account, azure_storage_account_name; or plaid's: {})",
        PLAID_KEYS.join(", ")
    )))
}

/// What plaid itself takes from the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// How sources of this store are read.
    pub(crate) hints: SourceHints,
    /// Bytes per part of an upload.
    pub(crate) part_size: u64,
    /// Parts uploaded at once.
    pub(crate) parts_in_flight: usize,
    /// The time one operation's requests may spend retrying: `retry_timeout`.
    pub(crate) retry_timeout: Duration,
    /// The longest one request may take: the client's `timeout`.
    pub(crate) request_timeout: Duration,
}

/// The client's request timeout unless set (`object_store`'s default).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a configuration value came from, for messages: a storage option or an
/// environment variable.
fn origin_of(key: &str, from_env: Option<&str>) -> String {
    match from_env {
        Some(var) => format!("{var} (from the environment)"),
        None => format!("storage option {key}"),
    }
}

/// Check one value of a store's configuration, whatever the store: no control characters
/// anywhere (they end up in headers and URLs), a URL where one is meant, a region name
/// where a region is. `name` is the key's canonical name (`aws_endpoint`), `from_env` the
/// environment variable it came from.
fn check_value(key: &str, value: &str, from_env: Option<&str>) -> Result<()> {
    let bad = |what: &str| {
        Err(Error::invalid(format!(
            "{}: {what}",
            origin_of(key, from_env)
        )))
    };
    let name = canonical(key);
    let name = name.as_str();
    // Documents (a PEM certificate, a service account's JSON) span lines; nothing else may
    // hold a control character (values end up in headers and URLs).
    let document = matches!(name, "proxy_ca_certificate" | "google_service_account_key");
    let allowed = |c: char| document && matches!(c, '\n' | '\r' | '\t');
    if value.chars().any(|c| c.is_control() && !allowed(c)) {
        return bad("the value holds a control character");
    }
    let is_url = name.ends_with("endpoint")
        || name.ends_with("_url")
        || name.ends_with("_full_uri")
        || name.starts_with("aws_endpoint_url")
        || name.ends_with("authority_host");
    let is_region_key = name == "aws_region" || name == "aws_default_region";
    if (is_url || is_region_key) && value.trim().is_empty() {
        return bad("the value is empty (leave the option out instead)");
    }
    if is_url {
        match url::Url::parse(value) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty()) => {}
            Ok(u) => {
                return bad(&format!(
                    "'{value}' is not an http:// or https:// URL with a host (scheme '{}')",
                    u.scheme()
                ))
            }
            Err(e) => return bad(&format!("'{value}' is not a valid URL ({e})")),
        }
    }
    if is_region_key && !is_region(value) {
        return bad(&format!(
            "'{value}' is not a region name (letters, digits, '-', '_' and '.')"
        ));
    }
    Ok(())
}

/// The canonical name of a configuration key (`aws_endpoint` for `endpoint`), where a
/// store knows it.
fn canonical(key: &str) -> String {
    AmazonS3ConfigKey::from_str(key)
        .map(|k| k.as_ref().to_owned())
        .or_else(|_| GoogleConfigKey::from_str(key).map(|k| k.as_ref().to_owned()))
        .or_else(|_| AzureConfigKey::from_str(key).map(|k| k.as_ref().to_owned()))
        .unwrap_or_else(|_| key.to_owned())
}

/// Check the values the environment gives a store that reads it itself (GCS, Azure): each
/// variable `PREFIX*` that names one of its keys `K`.
fn check_env<K: FromStr>(prefix: &str) -> Result<()> {
    for (var, value) in std::env::vars_os() {
        let (Some(var), Some(value)) = (var.to_str(), value.to_str()) else {
            continue;
        };
        if !var.starts_with(prefix) || value.is_empty() {
            continue;
        }
        if K::from_str(&var.to_ascii_lowercase()).is_ok() {
            check_value(&var.to_ascii_lowercase(), value, Some(var))?;
        }
    }
    Ok(())
}

/// Run a store builder's `build`, a panic inside it (a value `object_store` failed to
/// anticipate) being an error too.
fn guarded(
    root: &str,
    build: impl FnOnce() -> object_store::Result<Arc<dyn ObjectStore>>,
) -> Result<Arc<dyn ObjectStore>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(Error::invalid(format!("{root}: {e}"))),
        Err(_) => Err(Error::invalid(format!(
            "{root}: the storage configuration was refused by the store's client (it panicked \
             on a value it could not use): check the endpoint, region and other options"
        ))),
    }
}

/// A builder of the store for `location`, with the settings it implies: checked now, so a
/// bad value fails when the URL is opened; run on the client's runtime.
pub(crate) type Build = Box<dyn Fn() -> Result<Arc<dyn ObjectStore>> + Send + Sync>;

/// A number option.
fn number<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("storage option {key}: '{value}' is not a number")))
}

/// A duration option: `30s`, `500ms`, `2m`, `1h`, or plain seconds.
pub(crate) fn duration(key: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    let (digits, scale) = if let Some(d) = v.strip_suffix("ms") {
        (d, 0.001)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1.0)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60.0)
    } else if let Some(d) = v.strip_suffix('h') {
        (d, 3600.0)
    } else {
        (v, 1.0)
    };
    match digits.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale < 1e9 => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(Error::invalid(format!(
            "storage option {key}: '{value}' is not a duration (like 30s, 500ms, 2m)"
        ))),
    }
}

/// The builder and settings for `location`.
pub(crate) fn builder(location: &Location, storage: &StorageOptions) -> Result<(Settings, Build)> {
    let mut retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    };
    let mut part_size = DEFAULT_PART_SIZE;
    let mut parts_in_flight = DEFAULT_PARTS_IN_FLIGHT;
    for (key, value) in storage.pairs() {
        match key {
            "max_retries" => retry.max_retries = number(key, value)?,
            "retry_timeout" => retry.retry_timeout = duration(key, value)?,
            "upload_part_size" => {
                part_size = number(key, value)?;
                if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
                    return Err(Error::invalid(format!(
                        "storage option upload_part_size: {part_size} is not between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes"
                    )));
                }
            }
            "upload_parts_in_flight" => {
                parts_in_flight = number(key, value)?;
                if !(1..=256).contains(&parts_in_flight) {
                    return Err(Error::invalid(format!(
                        "storage option upload_parts_in_flight: {parts_in_flight} is not between 1 and 256"
                    )));
                }
            }
            _ => {}
        }
    }
    // Every value, of any key, is checked now: a bad one is an error naming its key when
    // the URL is opened, never a failure (or a panic) deep inside a request.
    for (key, value) in storage.pairs() {
        check_value(key, value, None)?;
        if let Ok(k) = ClientConfigKey::from_str(key) {
            check_client_option(k, value).map_err(Error::invalid)?;
        }
    }
    let settings = Settings {
        hints: SourceHints::new(REMOTE_REQUEST_BYTES, REMOTE_MERGE_GAP, REMOTE_IN_FLIGHT),
        part_size,
        parts_in_flight,
        retry_timeout: retry.retry_timeout,
        // Checked above.
        request_timeout: storage
            .get("timeout")
            .and_then(super::http::duration)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
    };
    let build: Build = match location.scheme {
        Scheme::Http => http(location, storage, retry)?,
        Scheme::S3 => s3(location, storage, retry)?,
        Scheme::Gcs => cloud::<GoogleCloudStorageBuilder>(location, storage, retry)?,
        Scheme::Azure => cloud::<MicrosoftAzureBuilder>(location, storage, retry)?,
    };
    Ok((settings, build))
}

/// The options that are not plaid's own, with an error for a key that belongs to no store
/// (keys of other kinds of store are passed over: one set of options may serve several).
fn store_pairs(storage: &StorageOptions) -> impl Iterator<Item = (&str, &str)> {
    storage.pairs().filter(|(k, _)| !PLAID_KEYS.contains(k))
}

/// Client options from `pairs` (client keys only, checked already: [`builder`] checks the
/// options, [`s3`] the environment), and the CA bundle's certificates (which plaid's client
/// trusts: [`Connector`]).
fn client_options(
    url: &str,
    pairs: &[(ClientConfigKey, String)],
    ca_bundle: Option<&str>,
    allow_http: bool,
) -> Result<(ClientOptions, Vec<reqwest::Certificate>)> {
    let mut client = ClientOptions::new();
    if allow_http {
        client = client.with_allow_http(true);
    }
    for (key, value) in pairs {
        client = client.with_config(*key, value.clone());
    }
    let mut certificates = Vec::new();
    if let Some(path) = ca_bundle.filter(|p| !p.is_empty()) {
        let pem = std::fs::read(path)
            .map_err(|e| Error::io(format!("{url}: reading the CA bundle {path}"), e))?;
        certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::invalid(format!(
                "{url}: the CA bundle {path} is not PEM certificates ({e})"
            ))
        })?;
    }
    Ok((client, certificates))
}

fn http(location: &Location, storage: &StorageOptions, retry: RetryConfig) -> Result<Build> {
    let mut pairs = Vec::new();
    for (key, value) in store_pairs(storage) {
        if let Ok(k) = ClientConfigKey::from_str(key) {
            pairs.push((k, value.to_owned()));
        }
    }
    let ca = storage.get("ca_bundle").map(str::to_owned);
    let (client, certificates) = client_options(
        &location.url,
        &pairs,
        ca.as_deref(),
        location.root.starts_with("http://"),
    )?;
    let basic_auth = location.basic_auth()?;
    let redirects = Redirects::for_http(basic_auth.is_some());
    let root = location.root.clone();
    Ok(Box::new(move || {
        let connector = Connector::new(certificates.clone(), redirects, basic_auth.clone());
        guarded(&root, || {
            let store = HttpBuilder::new()
                .with_url(root.clone())
                .with_client_options(client.clone())
                .with_retry(retry.clone())
                .with_http_connector(connector)
                .build()?;
            Ok(Arc::new(store) as Arc<dyn ObjectStore>)
        })
    }))
}

fn s3(location: &Location, storage: &StorageOptions, retry: RetryConfig) -> Result<Build> {
    let url = &location.url;
    // The environment first (as object_store's from_env reads it), then the options.
    let mut pairs: Vec<(AmazonS3ConfigKey, String)> = Vec::new();
    fn set(pairs: &mut Vec<(AmazonS3ConfigKey, String)>, key: AmazonS3ConfigKey, value: String) {
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => pairs.push((key, value)),
        }
    }
    let mut env_profile = None;
    let mut env_ca = None;
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.into_string().ok()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("AWS_") else {
            continue;
        };
        if value.is_empty() {
            continue; // an empty variable is an unset one, as the AWS tools read them
        }
        match rest {
            "PROFILE" => env_profile = Some(value),
            "CA_BUNDLE" => env_ca = Some(value),
            _ => {
                if let Ok(key) = AmazonS3ConfigKey::from_str(&name.to_ascii_lowercase()) {
                    check_value(&name.to_ascii_lowercase(), &value, Some(name))?;
                    if let AmazonS3ConfigKey::Client(k) = key {
                        check_client_option(k, &value).map_err(|why| {
                            Error::invalid(format!("{name} (from the environment): {why}"))
                        })?;
                    }
                    set(&mut pairs, key, value);
                }
            }
        }
    }
    for (key, value) in keys_of::<AmazonS3ConfigKey>(location, storage, "S3")? {
        set(&mut pairs, key, value);
    }
    let has = |pairs: &[(AmazonS3ConfigKey, String)], key: &AmazonS3ConfigKey| {
        pairs.iter().any(|(k, v)| k == key && !v.is_empty())
    };
    // A profile: named by an option, else AWS_PROFILE, else "default" where the files hold it.
    let named = storage
        .get("aws_profile")
        .or(storage.get("profile"))
        .map(str::to_owned)
        .or(env_profile);
    let profile = super::profile::load(named.as_deref())?;
    let mut credentials = None;
    let mut ca_bundle = storage
        .get("aws_ca_bundle")
        .or(storage.get("ca_bundle"))
        .map(str::to_owned)
        .or(env_ca);
    if let Some(profile) = profile {
        if !has(&pairs, &AmazonS3ConfigKey::Region)
            && !has(&pairs, &AmazonS3ConfigKey::DefaultRegion)
        {
            if let Some(region) = profile.region {
                set(&mut pairs, AmazonS3ConfigKey::Region, region);
            }
        }
        if !has(&pairs, &AmazonS3ConfigKey::Endpoint)
            && !has(&pairs, &AmazonS3ConfigKey::S3Endpoint)
        {
            if let Some(endpoint) = profile.endpoint_url {
                check_value(
                    "aws_endpoint",
                    &endpoint,
                    Some("endpoint_url of the AWS profile"),
                )?;
                set(&mut pairs, AmazonS3ConfigKey::Endpoint, endpoint);
            }
        }
        if ca_bundle.is_none() {
            ca_bundle = profile.ca_bundle;
        }
        // Keys in the environment or the options come before a profile's (as in the
        // AWS CLI's chain).
        if !has(&pairs, &AmazonS3ConfigKey::AccessKeyId) {
            credentials = profile.credentials;
        }
    }
    // An http:// endpoint is used as given (as boto3 and the AWS CLI do).
    let endpoint = pairs
        .iter()
        .find(|(k, _)| *k == AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| {
            pairs
                .iter()
                .find(|(k, _)| *k == AmazonS3ConfigKey::Endpoint)
        })
        .map(|(_, v)| v.clone());
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    let mut client_pairs = Vec::new();
    let mut store_keys = Vec::new();
    for (key, value) in pairs {
        match key {
            AmazonS3ConfigKey::Client(k) => client_pairs.push((k, value)),
            other => store_keys.push((other, value)),
        }
    }
    let (client, certificates) =
        client_options(url, &client_pairs, ca_bundle.as_deref(), allow_http)?;
    let bucket_url = location.root.clone();
    Ok(Box::new(move || {
        let mut builder = AmazonS3Builder::new()
            .with_url(bucket_url.clone())
            .with_client_options(client.clone())
            .with_retry(retry.clone())
            .with_http_connector(Connector::new(
                certificates.clone(),
                Redirects::Refuse("S3"),
                None,
            ));
        for (key, value) in &store_keys {
            builder = builder.with_config(*key, value.clone());
        }
        if let Some(provider) = &credentials {
            builder = builder.with_credentials(provider.clone());
        }
        guarded(&bucket_url, || {
            Ok(Arc::new(builder.build()?) as Arc<dyn ObjectStore>)
        })
    }))
}

/// Whether `key` is a configuration key of any kind of store `object_store` knows.
fn is_store_key(key: &str) -> bool {
    AmazonS3ConfigKey::from_str(key).is_ok()
        || GoogleConfigKey::from_str(key).is_ok()
        || AzureConfigKey::from_str(key).is_ok()
}

/// The storage options that are keys `K` of the store of `location` (`kind` names it in
/// messages); keys of other kinds of store are passed over (one set of options may serve
/// several), plaid's own are handled elsewhere, and anything else is an error.
fn keys_of<K: FromStr>(
    location: &Location,
    storage: &StorageOptions,
    kind: &str,
) -> Result<Vec<(K, String)>> {
    let mut pairs = Vec::new();
    for (key, value) in store_pairs(storage) {
        match K::from_str(key) {
            Ok(k) => pairs.push((k, value.to_owned())),
            Err(_) if is_store_key(key) => {}
            Err(_) => {
                return Err(Error::invalid(format!(
                    "{}: storage option '{key}' does not apply to {kind}",
                    location.url
                )))
            }
        }
    }
    Ok(pairs)
}

/// The builder of a GCS or an Azure store: both are made alike, but for their types.
trait CloudBuilder: Sized + 'static {
    /// The store's configuration keys.
    type Key: FromStr + Copy + Send + Sync + 'static;
    /// The store's name in messages.
    const KIND: &'static str;
    /// The prefix of the environment variables the builder reads.
    const ENV_PREFIX: &'static str;
    /// A builder from the environment for `root`, with the client options (the CA
    /// bundle's), the retries and plaid's connector.
    fn make(root: String, client: ClientOptions, retry: RetryConfig, connector: Connector) -> Self;
    fn apply(self, key: Self::Key, value: String) -> Self;
    fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>>;
}

macro_rules! cloud_builder {
    ($builder:ty, $key:ty, $kind:literal, $env_prefix:literal) => {
        impl CloudBuilder for $builder {
            type Key = $key;
            const KIND: &'static str = $kind;
            const ENV_PREFIX: &'static str = $env_prefix;
            fn make(
                root: String,
                client: ClientOptions,
                retry: RetryConfig,
                connector: Connector,
            ) -> Self {
                <$builder>::from_env()
                    .with_url(root)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(connector)
            }
            fn apply(self, key: $key, value: String) -> Self {
                self.with_config(key, value)
            }
            fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>> {
                Ok(Arc::new(self.build()?))
            }
        }
    };
}

cloud_builder!(
    GoogleCloudStorageBuilder,
    GoogleConfigKey,
    "Google Cloud Storage",
    "GOOGLE_"
);
cloud_builder!(MicrosoftAzureBuilder, AzureConfigKey, "Azure", "AZURE_");

/// A builder of GCS or Azure stores (`B`): from the environment, the client options (with
/// the CA bundle) and the retries, then the keys applied.
fn cloud<B: CloudBuilder>(
    location: &Location,
    storage: &StorageOptions,
    retry: RetryConfig,
) -> Result<Build> {
    check_env::<B::Key>(B::ENV_PREFIX)?;
    let pairs = keys_of::<B::Key>(location, storage, B::KIND)?;
    let ca = storage.get("ca_bundle").map(str::to_owned);
    let (client, certificates) = client_options(&location.url, &[], ca.as_deref(), false)?;
    let root = location.root.clone();
    Ok(Box::new(move || {
        let connector = Connector::new(certificates.clone(), Redirects::Refuse(B::KIND), None);
        let mut builder = B::make(root.clone(), client.clone(), retry.clone(), connector);
        for (key, value) in &pairs {
            builder = builder.apply(*key, value.clone());
        }
        guarded(&root, || builder.build_store())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_naming_their_key() {
        let message = |key: &str, value: &str, env: Option<&str>| {
            check_value(key, value, env).unwrap_err().to_string()
        };
        let m = message("endpoint", "ht!tp://bad url", None);
        assert!(
            m.contains("storage option endpoint") && m.contains("not a valid URL"),
            "{m}"
        );
        let m = message("aws_endpoint_url", "http://", Some("AWS_ENDPOINT_URL"));
        assert!(m.contains("AWS_ENDPOINT_URL (from the environment)"), "{m}");
        assert!(message("region", "eu west", None).contains("region name"));
        assert!(message("aws_endpoint", "", None).contains("empty"));
        assert!(message("aws_session_token", "a\nb", None).contains("control character"));
        assert!(message("google_base_url", "file:///etc", None).contains("http://"));
        for (key, value) in [
            ("aws_endpoint", "http://127.0.0.1:9000"),
            ("aws_region", "eu-west-1"),
            ("aws_session_token", "FwoGZXIvYXdzE//+abc="),
            (
                "proxy_ca_certificate",
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ),
            (
                "google_service_account_key",
                "{\n  \"type\": \"service_account\"\n}",
            ),
        ] {
            assert!(check_value(key, value, None).is_ok(), "{key}={value:?}");
        }
    }

    #[test]
    fn keys_are_checked() {
        for ok in [
            "aws_region",
            "aws_endpoint",
            "endpoint",
            "timeout",
            "allow_http",
            "aws_skip_signature",
            "google_service_account",
            "azure_storage_account_name",
            "max_retries",
            "aws_profile",
        ] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        assert!(check_key("no_such_key").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(duration("k", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("k", "1.5").unwrap(), Duration::from_millis(1500));
        assert!(duration("k", "soon").is_err());
        assert!(duration("k", "-1s").is_err());
    }
}
