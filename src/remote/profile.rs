//! AWS shared config and credentials profiles (`~/.aws/credentials` and `~/.aws/config`, or
//! the files named by `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`), which
//! object_store does not read itself.
//!
//! A profile gives a region, an endpoint URL, a CA bundle and, when it holds them, a way to
//! get credentials: static keys (re-read when the files change, so rotated keys are picked
//! up) or a `credential_process` (re-run before what it printed expires). Profiles that get
//! credentials through IAM Identity Center (SSO), an assumed role or a web identity token
//! are not read directly: the error says which `credential_process` line does the same.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::aws::{AwsCredential, AwsCredentialProvider};
use object_store::CredentialProvider;

use crate::error::{Error, Result};

/// How long a `credential_process` may run before it is killed.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials from a `credential_process` are renewed when less than this is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// After a failed `credential_process`, how long its error is reused before running it again
/// (so many requests waiting for credentials do not each run a failing command in turn).
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// How often static keys look at the files' modification times for rotated keys.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// At most this many bytes of a `credential_process`'s stderr go into an error message.
const STDERR_LIMIT: usize = 2000;

/// The store name object_store errors from these providers carry.
const STORE: &str = "S3";

/// What an AWS profile provides.
#[derive(Debug)]
pub(crate) struct Profile {
    /// The profile's name (`default` when none was chosen).
    #[cfg_attr(not(test), allow(dead_code))] // shown by Debug, checked by the tests
    pub(crate) name: String,
    /// `region`.
    pub(crate) region: Option<String>,
    /// The S3 endpoint: `endpoint_url` of the `s3` sub-section of the profile's
    /// `[services NAME]` section, else of the profile's own `s3` sub-section, else the
    /// profile's `endpoint_url`; none when `ignore_configured_endpoint_urls` is true.
    pub(crate) endpoint_url: Option<String>,
    /// `ca_bundle`.
    pub(crate) ca_bundle: Option<String>,
    /// None when the profile holds no way to get credentials (then the caller uses
    /// object_store's own chain).
    pub(crate) credentials: Option<AwsCredentialProvider>,
}

/// Loads an AWS profile from the shared credentials and config files.
///
/// `name`: the explicit profile (from an option) else `AWS_PROFILE` else "default".
/// Returns Ok(None) when no config/credentials file defines that profile and the profile was
/// not named explicitly (an explicit name, or an `AWS_PROFILE`, that is missing is an error
/// naming the profile and the files looked at).
pub(crate) fn load(name: Option<&str>) -> Result<Option<Profile>> {
    let from_env_var = name.is_none() && env_var("AWS_PROFILE").is_some();
    let name = name.map(str::to_owned).or_else(|| env_var("AWS_PROFILE"));
    let home = env_var("HOME").or_else(|| env_var("USERPROFILE"));
    let file = |var: &str, default: &str| {
        env_var(var)
            .map(|path| expand_home(&path, home.as_deref()))
            .or_else(|| home.as_ref().map(|home| Path::new(home).join(default)))
    };
    let credentials_path = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_path = file("AWS_CONFIG_FILE", ".aws/config");
    let settings = Settings {
        web_identity_env: env_var("AWS_ROLE_ARN").is_some()
            && env_var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some(),
        ..Settings::default()
    };
    let profile = load_from(
        name.as_deref(),
        credentials_path.as_deref(),
        config_path.as_deref(),
        &settings,
    )
    .map_err(|error| match error {
        Error::InvalidArgument(message) if from_env_var => Error::invalid(format!(
            "{message} (the profile was chosen by the AWS_PROFILE environment variable)"
        )),
        other => other,
    })?;
    let ignore_endpoints = env_var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    Ok(profile.map(|mut profile| {
        if ignore_endpoints {
            profile.endpoint_url = None;
        }
        profile
    }))
}

/// An environment variable's value, when set and not empty.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `path` with a leading `~` replaced by the home directory, as the AWS CLI does.
fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with(['/', '\\']) => {
            PathBuf::from(format!("{home}{rest}"))
        }
        _ => PathBuf::from(path),
    }
}

/// What `load_from` takes from the environment, and the timings that tests shorten.
#[derive(Debug, Clone)]
struct Settings {
    /// `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` are both set, so object_store's own
    /// chain assumes a role with a web identity token.
    web_identity_env: bool,
    /// How often static keys look for changed files.
    recheck: Duration,
    /// How long a `credential_process` may run.
    process_timeout: Duration,
}

impl Default for Settings {
    /// No web identity in the environment; the production timings.
    fn default() -> Self {
        Settings {
            web_identity_env: false,
            recheck: RECHECK_INTERVAL,
            process_timeout: PROCESS_TIMEOUT,
        }
    }
}

/// [`load`] with the profile and the two files given: `name` None means "default", not
/// named explicitly. A path of None (no home directory) is a file that does not exist.
fn load_from(
    name: Option<&str>,
    credentials_path: Option<&Path>,
    config_path: Option<&Path>,
    settings: &Settings,
) -> Result<Option<Profile>> {
    let explicit = name.is_some();
    let name = name.unwrap_or("default");
    let files = Files::read(credentials_path, config_path)?;
    let credentials_section = files.credentials.get(name);
    let config_section = files.config.get(name);
    if credentials_section.is_none() && config_section.is_none() {
        if explicit {
            return Err(Error::invalid(files.not_found(name)));
        }
        return Ok(None);
    }
    let merged = Section::merged(config_section, credentials_section);
    let credentials = match resolve_credentials(name, &files, settings.web_identity_env)? {
        Source::None => None,
        Source::Static(credential) => Some(Arc::new(StaticProvider::new(
            name,
            credentials_path,
            config_path,
            files.stamps,
            credential,
            settings.recheck,
        )) as AwsCredentialProvider),
        Source::Process(command) => Some(Arc::new(ProcessProvider::new(
            name,
            command,
            settings.process_timeout,
        )) as AwsCredentialProvider),
    };
    Ok(Some(Profile {
        name: name.to_owned(),
        region: merged.value("region").map(str::to_owned),
        endpoint_url: endpoint_url(&merged, &files),
        ca_bundle: merged.value("ca_bundle").map(str::to_owned),
        credentials,
    }))
}

/// The S3 endpoint a profile names (see [`Profile::endpoint_url`]).
fn endpoint_url(profile: &Section, files: &Files) -> Option<String> {
    if profile
        .value("ignore_configured_endpoint_urls")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    let from_services = profile
        .value("services")
        .and_then(|services| files.services.get(services))
        .and_then(|section| section.nested_value("s3", "endpoint_url"));
    from_services
        .or_else(|| profile.nested_value("s3", "endpoint_url"))
        .or_else(|| profile.value("endpoint_url"))
        .map(str::to_owned)
}

/// Where a profile's credentials come from.
enum Source {
    /// Nowhere in the profile: object_store's own chain applies.
    None,
    /// Static keys.
    Static(AwsCredential),
    /// A `credential_process` command.
    Process(String),
}

/// Picks a profile's credential source in the AWS CLI's order: a role to assume, a web
/// identity or SSO first (not read directly: an error, unless the profile also has a
/// `credential_process`, which is then used), then static keys from the credentials file,
/// then `credential_process`, then static keys from the config file.
fn resolve_credentials(name: &str, files: &Files, web_identity_env: bool) -> Result<Source> {
    let credentials_section = files.credentials.get(name);
    let config_section = files.config.get(name);
    let merged = Section::merged(config_section, credentials_section);
    let process = merged.value("credential_process");
    let role_arn = merged.value("role_arn").is_some();
    let web_identity = merged.value("web_identity_token_file").is_some();
    let sso = merged
        .values
        .iter()
        .any(|(key, value)| key.starts_with("sso_") && !value.is_empty());
    if role_arn || web_identity || sso {
        if let Some(command) = process {
            return Ok(Source::Process(command.to_owned()));
        }
        if role_arn && web_identity && web_identity_env {
            return Ok(Source::None);
        }
        let kind = if sso {
            "gets credentials through IAM Identity Center (SSO) (sso_* settings)"
        } else if web_identity {
            "assumes a role with a web identity token (role_arn with web_identity_token_file)"
        } else {
            "assumes a role (role_arn with source_profile or credential_source)"
        };
        return Err(Error::invalid(format!(
            "AWS profile '{name}' {kind}, which plaid does not read directly; add \
             `credential_process = aws configure export-credentials --profile {name} \
             --format process` to that profile in {} and plaid runs it to get the \
             credentials",
            files.config_description(),
        )));
    }
    if let Some(credential) = static_keys(name, credentials_section, &files.credentials_label)? {
        return Ok(Source::Static(credential));
    }
    if let Some(command) = process {
        return Ok(Source::Process(command.to_owned()));
    }
    if let Some(credential) = static_keys(name, config_section, &files.config_label)? {
        return Ok(Source::Static(credential));
    }
    Ok(Source::None)
}

/// The static keys in one file's section of a profile: None when it has neither key, an
/// error when it has only one of them.
fn static_keys(name: &str, section: Option<&Section>, file: &str) -> Result<Option<AwsCredential>> {
    let Some(section) = section else {
        return Ok(None);
    };
    let key_id = section.value("aws_access_key_id");
    let secret_key = section.value("aws_secret_access_key");
    match (key_id, secret_key) {
        (Some(key_id), Some(secret_key)) => Ok(Some(AwsCredential {
            key_id: key_id.to_owned(),
            secret_key: secret_key.to_owned(),
            token: section
                .value("aws_session_token")
                .or_else(|| section.value("aws_security_token"))
                .map(str::to_owned),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::invalid(format!(
            "AWS profile '{name}' in {file} has aws_access_key_id but no aws_secret_access_key"
        ))),
        (None, Some(_)) => Err(Error::invalid(format!(
            "AWS profile '{name}' in {file} has aws_secret_access_key but no aws_access_key_id"
        ))),
    }
}

/// One section of an INI file: its keys (lowercase) and values, and the sub-sections written
/// as `key =` followed by indented `key = value` lines.
// No Debug: sections hold secrets.
#[derive(Default, Clone)]
struct Section {
    /// Keys and values.
    values: HashMap<String, String>,
    /// Sub-section name, then its keys and values.
    nested: HashMap<String, HashMap<String, String>>,
}

impl Section {
    /// A value, when present and not empty.
    fn value(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// A value of a sub-section, when present and not empty.
    fn nested_value(&self, section: &str, key: &str) -> Option<&str> {
        self.nested
            .get(section)?
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// Adds `other`'s keys to this section, replacing those it has too.
    fn merge(&mut self, other: &Section) {
        self.values
            .extend(other.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (name, values) in &other.nested {
            self.nested
                .entry(name.clone())
                .or_default()
                .extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// A profile as the AWS CLI sees it: the config file's settings, with those of the
    /// credentials file on top.
    fn merged(config: Option<&Section>, credentials: Option<&Section>) -> Section {
        let mut merged = config.cloned().unwrap_or_default();
        if let Some(credentials) = credentials {
            merged.merge(credentials);
        }
        merged
    }
}

/// Splits `key = value` (or `key: value`) at the first delimiter: the lowercase key and the
/// value, both trimmed. None when there is no delimiter or no key.
fn split_key_value(line: &str) -> Option<(String, String)> {
    let at = line.find(['=', ':'])?;
    let key = line[..at].trim();
    if key.is_empty() {
        return None;
    }
    Some((key.to_lowercase(), line[at + 1..].trim().to_owned()))
}

/// Parses an INI file as the AWS CLI does: section headers (trimmed, as written) and their
/// contents, in file order (a header that appears twice appears twice here; the caller
/// merges them). `#` and `;` start comment lines; keys are
/// case-insensitive; an indented line continues the key above it (a sub-section entry when
/// that key has no value of its own). Lines that fit none of this are skipped.
fn parse_ini(text: &str) -> Vec<(String, Section)> {
    let mut sections: Vec<(String, Section)> = Vec::new();
    // The key the previous lines set: its name, indentation, and whether it opens a
    // sub-section.
    let mut current: Option<(String, usize, bool)> = None;
    // A byte order mark (some Windows editors write one) is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = None;
            if let Some(end) = header.find(']') {
                sections.push((header[..end].trim().to_owned(), Section::default()));
            }
            continue;
        }
        let Some((_, section)) = sections.last_mut() else {
            continue;
        };
        if let Some((key, key_indent, opens_nested)) = &current {
            if indent > *key_indent {
                if *opens_nested {
                    if let Some((sub_key, value)) = split_key_value(trimmed) {
                        section
                            .nested
                            .entry(key.clone())
                            .or_default()
                            .insert(sub_key, value);
                    }
                } else if let Some(value) = section.values.get_mut(key) {
                    value.push('\n');
                    value.push_str(trimmed);
                }
                continue;
            }
        }
        match split_key_value(trimmed) {
            Some((key, value)) => {
                let opens_nested = value.is_empty();
                section.values.insert(key.clone(), value);
                current = Some((key, indent, opens_nested));
            }
            None => current = None,
        }
    }
    sections
}

/// A file's modification time and length, or None when it does not exist (or cannot be
/// looked at): what changes when keys are rotated.
type Stamp = Option<(Option<SystemTime>, u64)>;

/// The stamp of the file at `path`.
fn stamp(path: Option<&Path>) -> Stamp {
    let metadata = std::fs::metadata(path?).ok()?;
    Some((metadata.modified().ok(), metadata.len()))
}

/// A file's text, or None when it does not exist. Any other failure is an error naming it.
fn read_optional(path: Option<&Path>, what: &str) -> Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io(
            format!("cannot read the AWS {what} file {}", path.display()),
            error,
        )),
    }
}

/// Both files, parsed into profiles.
// No Debug: the files hold secrets.
#[derive(Default)]
struct Files {
    /// The credentials file's sections: `[NAME]` is profile NAME.
    credentials: HashMap<String, Section>,
    /// The config file's profiles: `[profile NAME]`, and `[default]`.
    config: HashMap<String, Section>,
    /// The config file's `[services NAME]` sections.
    services: HashMap<String, Section>,
    /// The config file's other section headers (for a hint when `[NAME]` was written for
    /// `[profile NAME]`).
    config_other: HashSet<String>,
    /// The credentials file for messages: its path, and whether it exists.
    credentials_label: String,
    /// The config file for messages: its path, and whether it exists.
    config_label: String,
    /// The files' stamps, taken before they were read.
    stamps: [Stamp; 2],
}

impl Files {
    /// Reads and parses both files (either may be missing).
    fn read(credentials_path: Option<&Path>, config_path: Option<&Path>) -> Result<Files> {
        let stamps = [stamp(credentials_path), stamp(config_path)];
        let credentials_text = read_optional(credentials_path, "credentials")?;
        let config_text = read_optional(config_path, "config")?;
        let mut files = Files {
            credentials_label: label(credentials_path, credentials_text.is_some(), "credentials"),
            config_label: label(config_path, config_text.is_some(), "config"),
            stamps,
            ..Files::default()
        };
        for (name, section) in parse_ini(credentials_text.as_deref().unwrap_or("")) {
            files.credentials.entry(name).or_default().merge(&section);
        }
        // `[default]` first, so that `[profile default]` wins where both set a key.
        let mut config_sections = parse_ini(config_text.as_deref().unwrap_or(""));
        config_sections.sort_by_key(|(header, _)| header != "default");
        for (header, section) in config_sections {
            if header == "default" {
                files.config.entry(header).or_default().merge(&section);
            } else if let Some(name) = prefixed(&header, "profile") {
                files.config.entry(name).or_default().merge(&section);
            } else if let Some(name) = prefixed(&header, "services") {
                files.services.entry(name).or_default().merge(&section);
            } else {
                files.config_other.insert(header);
            }
        }
        Ok(files)
    }

    /// The error message for a profile that neither file defines.
    fn not_found(&self, name: &str) -> String {
        let mut message = format!(
            "AWS profile '{name}' is not defined: looked for [{name}] in {} and for \
             [profile {name}] in {}",
            self.credentials_label, self.config_label
        );
        if self.config_other.contains(name) {
            message.push_str(&format!(
                " (the config file has [{name}]; profiles there are written [profile {name}])"
            ));
        }
        message
    }

    /// The config file for messages.
    fn config_description(&self) -> &str {
        &self.config_label
    }
}

/// `header` without the word `prefix` and the whitespace after it, when it starts so.
fn prefixed(header: &str, prefix: &str) -> Option<String> {
    let rest = header.strip_prefix(prefix)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some(rest.trim().to_owned()).filter(|name| !name.is_empty())
}

/// A file as messages name it.
fn label(path: Option<&Path>, exists: bool, what: &str) -> String {
    match path {
        Some(path) if exists => format!("the {what} file {}", path.display()),
        Some(path) => format!("the {what} file {} (which does not exist)", path.display()),
        None => format!("no {what} file (no home directory)"),
    }
}

/// An object_store error carrying one of plaid's.
fn store_error(error: Error) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(error),
    }
}

/// The future `get_credential` returns.
type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = object_store::Result<Arc<AwsCredential>>> + Send + 'a>>;

/// Static keys from the files, re-read when a file's modification time or length changed
/// (looked at no more often than every `recheck`).
struct StaticProvider {
    /// The profile.
    name: String,
    /// The credentials file.
    credentials_path: Option<PathBuf>,
    /// The config file.
    config_path: Option<PathBuf>,
    /// How often the files are looked at.
    recheck: Duration,
    /// The keys and when they were last checked.
    state: std::sync::Mutex<StaticState>,
}

/// What [`StaticProvider`] last read.
struct StaticState {
    /// The keys.
    credential: Arc<AwsCredential>,
    /// The files' stamps when the keys were read.
    stamps: [Stamp; 2],
    /// When the stamps were last compared.
    checked: Instant,
}

impl StaticProvider {
    /// A provider starting from keys read from files with the given stamps.
    fn new(
        name: &str,
        credentials_path: Option<&Path>,
        config_path: Option<&Path>,
        stamps: [Stamp; 2],
        credential: AwsCredential,
        recheck: Duration,
    ) -> Self {
        StaticProvider {
            name: name.to_owned(),
            credentials_path: credentials_path.map(Path::to_path_buf),
            config_path: config_path.map(Path::to_path_buf),
            recheck,
            state: std::sync::Mutex::new(StaticState {
                credential: Arc::new(credential),
                stamps,
                checked: Instant::now(),
            }),
        }
    }

    /// The current keys, re-read first when the files changed. Keys that cannot be re-read
    /// (a file half written, the keys gone) are kept, and the files read again later.
    fn current(&self) -> Arc<AwsCredential> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if state.checked.elapsed() < self.recheck {
            return Arc::clone(&state.credential);
        }
        state.checked = Instant::now();
        let credentials_path = self.credentials_path.as_deref();
        let config_path = self.config_path.as_deref();
        if [stamp(credentials_path), stamp(config_path)] == state.stamps {
            return Arc::clone(&state.credential);
        }
        if let Ok(files) = Files::read(credentials_path, config_path) {
            if let Ok(Source::Static(credential)) = resolve_credentials(&self.name, &files, false) {
                state.credential = Arc::new(credential);
                state.stamps = files.stamps;
            }
        }
        Arc::clone(&state.credential)
    }
}

impl fmt::Debug for StaticProvider {
    /// The profile and files, never the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticProvider")
            .field("profile", &self.name)
            .field("credentials_path", &self.credentials_path)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl CredentialProvider for StaticProvider {
    type Credential = AwsCredential;

    /// The profile's keys, as the files hold them now.
    fn get_credential<'life0, 'async_trait>(&'life0 self) -> CredentialFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok(self.current()) })
    }
}

/// Credentials from a profile's `credential_process`, run again when they are about to
/// expire.
struct ProcessProvider {
    /// The profile.
    name: String,
    /// The command, run through `sh -c`.
    command: String,
    /// How long the command may run.
    timeout: Duration,
    /// The last result; the lock also makes concurrent callers wait for one run.
    state: tokio::sync::Mutex<ProcessState>,
}

/// What [`ProcessProvider`] last got.
#[derive(Default)]
struct ProcessState {
    /// The credentials and when they expire (never when None).
    cached: Option<(Arc<AwsCredential>, Option<SystemTime>)>,
    /// When the last run failed, and its error message.
    failure: Option<(Instant, String)>,
}

impl ProcessProvider {
    /// A provider that runs `command` when credentials are first asked for.
    fn new(name: &str, command: String, timeout: Duration) -> Self {
        ProcessProvider {
            name: name.to_owned(),
            command,
            timeout,
            state: tokio::sync::Mutex::new(ProcessState::default()),
        }
    }

    /// Cached credentials while more than [`REFRESH_MARGIN`] is left of them, else those of
    /// a new run of the command.
    async fn current(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        // Credentials still valid, if only for less than the margin: used when a run fails.
        let mut usable = None;
        if let Some((credential, expires)) = &state.cached {
            match expires.map(|expires| expires.duration_since(now)) {
                None => return Ok(Arc::clone(credential)),
                Some(Ok(left)) if left > REFRESH_MARGIN => return Ok(Arc::clone(credential)),
                Some(Ok(_)) => usable = Some(Arc::clone(credential)),
                Some(Err(_)) => {}
            }
        }
        if let Some((failed, message)) = &state.failure {
            if failed.elapsed() < FAILURE_BACKOFF {
                return match usable {
                    Some(credential) => Ok(credential),
                    None => Err(store_error(Error::invalid(message))),
                };
            }
        }
        let (name, command, timeout) = (self.name.clone(), self.command.clone(), self.timeout);
        let result =
            tokio::task::spawn_blocking(move || run_process(&name, &command, timeout)).await;
        let error = match result {
            Ok(Ok((credential, expires))) => {
                let credential = Arc::new(credential);
                state.cached = Some((Arc::clone(&credential), expires));
                state.failure = None;
                return Ok(credential);
            }
            Ok(Err(error)) => error,
            Err(join) => Error::io(
                format!("credential_process of AWS profile '{}'", self.name),
                std::io::Error::other(join.to_string()),
            ),
        };
        state.failure = Some((Instant::now(), error.to_string()));
        match usable {
            Some(credential) => Ok(credential),
            None => Err(store_error(error)),
        }
    }
}

impl fmt::Debug for ProcessProvider {
    /// The profile, never the command or the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessProvider")
            .field("profile", &self.name)
            .finish_non_exhaustive()
    }
}

impl CredentialProvider for ProcessProvider {
    type Credential = AwsCredential;

    /// The process's credentials, from the cache while they last.
    fn get_credential<'life0, 'async_trait>(&'life0 self) -> CredentialFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.current())
    }
}

/// Reads a pipe to its end on a thread of its own; the result arrives on the receiver.
fn drain(
    pipe: Option<impl Read + Send + 'static>,
) -> std::io::Result<mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::Builder::new()
            .name("plaid-credential-process".to_owned())
            .spawn(move || {
                let mut buffer = Vec::new();
                let result = pipe.read_to_end(&mut buffer).map(|_| buffer);
                let _ = sender.send(result);
            })?;
    } else {
        let _ = sender.send(Ok(Vec::new()));
    }
    Ok(receiver)
}

/// Runs a profile's `credential_process` through `sh -c`, for at most `timeout`, and parses
/// what it prints. Errors name the profile and carry the command's stderr, never its output.
fn run_process(
    name: &str,
    command: &str,
    timeout: Duration,
) -> Result<(AwsCredential, Option<SystemTime>)> {
    let context = format!("credential_process of AWS profile '{name}'");
    let deadline = Instant::now() + timeout;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| Error::io(format!("cannot start the {context}"), error))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (stdout, stderr) = match stdout.and_then(|stdout| Ok((stdout, stderr?))) {
        Ok(pipes) => pipes,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(&context, error));
        }
    };
    let timed_out = || {
        Error::io(
            &context,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("it did not finish within {} s", timeout.as_secs_f64()),
            ),
        )
    };
    let mut pause = Duration::from_millis(5);
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io(&context, error));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    // The pipes close when the command exits, unless something it started keeps them open.
    let collect = |receiver: mpsc::Receiver<std::io::Result<Vec<u8>>>| {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match receiver.recv_timeout(left) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) => Err(Error::io(&context, error)),
            Err(_) => Err(timed_out()),
        }
    };
    let stderr = collect(stderr)?;
    let stdout = collect(stdout)?;
    let stderr = stderr_text(&stderr);
    if !status.success() {
        let detail = if stderr.is_empty() {
            format!("{status}, with nothing on stderr")
        } else {
            format!("{status}; stderr: {stderr}")
        };
        return Err(Error::io(context, std::io::Error::other(detail)));
    }
    parse_process_output(&stdout).map_err(|reason| {
        let mut message = format!("{context} printed {reason}");
        if !stderr.is_empty() {
            message.push_str(&format!("; stderr: {stderr}"));
        }
        Error::invalid(message)
    })
}

/// A command's stderr for a message: trimmed, at most [`STDERR_LIMIT`] bytes.
fn stderr_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= STDERR_LIMIT {
        return text.to_owned();
    }
    let mut end = STDERR_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Parses a `credential_process`'s JSON (Version 1, AccessKeyId, SecretAccessKey, optional
/// SessionToken and RFC 3339 Expiration). The error (what was wrong, for "printed ...")
/// never quotes the output.
fn parse_process_output(
    output: &[u8],
) -> std::result::Result<(AwsCredential, Option<SystemTime>), String> {
    let json: serde_json::Value = serde_json::from_slice(output)
        .map_err(|error| format!("output that is not JSON ({error})"))?;
    let Some(object) = json.as_object() else {
        return Err("JSON that is not an object".to_owned());
    };
    match object.get("Version") {
        Some(version) if version.as_u64() == Some(1) => {}
        Some(version) if version.is_number() => {
            return Err(format!("JSON with Version {version}, not 1"));
        }
        _ => return Err("JSON without \"Version\": 1".to_owned()),
    }
    let text = |key: &str| -> std::result::Result<Option<String>, String> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(value)) if value.is_empty() => Ok(None),
            Some(serde_json::Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(format!("JSON whose {key} is not a string")),
        }
    };
    let required = |key: &str| text(key)?.ok_or_else(|| format!("JSON without {key}"));
    let credential = AwsCredential {
        key_id: required("AccessKeyId")?,
        secret_key: required("SecretAccessKey")?,
        token: text("SessionToken")?,
    };
    let expires = match text("Expiration")? {
        None => None,
        Some(expiration) => Some(parse_rfc3339(&expiration).ok_or_else(|| {
            format!("JSON whose Expiration {expiration:?} is not an RFC 3339 time")
        })?),
    };
    Ok((credential, expires))
}

/// An RFC 3339 time, or None when `text` is not one (or is beyond what the clock holds).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let seconds = time.timestamp();
    let nanos = Duration::from_nanos(u64::from(time.timestamp_subsec_nanos()));
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds.unsigned_abs()) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(seconds.unsigned_abs()))?
            .checked_add(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A directory with a credentials file and a config file.
    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new(credentials: Option<&str>, config: Option<&str>) -> Dir {
            let dir = tempfile::tempdir().unwrap();
            if let Some(text) = credentials {
                fs::write(dir.path().join("credentials"), text).unwrap();
            }
            if let Some(text) = config {
                fs::write(dir.path().join("config"), text).unwrap();
            }
            Dir { dir }
        }

        fn credentials(&self) -> PathBuf {
            self.dir.path().join("credentials")
        }

        fn config(&self) -> PathBuf {
            self.dir.path().join("config")
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn load_with(&self, name: Option<&str>, settings: &Settings) -> Result<Option<Profile>> {
            load_from(
                name,
                Some(&self.credentials()),
                Some(&self.config()),
                settings,
            )
        }

        fn load(&self, name: Option<&str>) -> Result<Option<Profile>> {
            self.load_with(name, &Settings::default())
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    fn credential(profile: &Profile) -> object_store::Result<Arc<AwsCredential>> {
        let provider = Arc::clone(profile.credentials.as_ref().unwrap());
        runtime().block_on(async move { provider.get_credential().await })
    }

    /// A credential_process that appends a line to `count` and prints credentials with the
    /// given key id and expiration.
    fn counting_process(count: &Path, key_id: &str, expiration: Option<&str>) -> String {
        let expiration = expiration
            .map(|time| format!(", \"Expiration\": \"{time}\""))
            .unwrap_or_default();
        format!(
            "echo run >> '{}'; printf '%s' '{{\"Version\": 1, \"AccessKeyId\": \"{key_id}\", \
             \"SecretAccessKey\": \"secret\", \"SessionToken\": \"token\"{expiration}}}'",
            count.display()
        )
    }

    fn runs(count: &Path) -> usize {
        fs::read_to_string(count)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    fn rfc3339_in(seconds: i64) -> String {
        let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
        (now + chrono::Duration::seconds(seconds)).to_rfc3339()
    }

    #[test]
    fn parses_sections_comments_case_and_nesting() {
        let text = "\u{feff}# comment\n; another\n[default]\nRegion = us-east-1\n\n[profile x]\n  \
                    region=eu-west-1 \nendpoint_url: http://localhost:9000\n# aws_access_key_id = no\n\
                    s3 =\n  endpoint_url = http://s3.local\n  ; skipped\n  addressing_style = path\n\
                    ca_bundle = /etc/ca.pem\nmulti = a\n  b\n[ spaced ] # trailing\nk = v = w\n";
        let sections: HashMap<_, _> = parse_ini(text).into_iter().collect();
        assert_eq!(sections["default"].value("region"), Some("us-east-1"));
        let x = &sections["profile x"];
        assert_eq!(x.value("region"), Some("eu-west-1"));
        assert_eq!(x.value("endpoint_url"), Some("http://localhost:9000"));
        assert_eq!(x.value("aws_access_key_id"), None);
        assert_eq!(
            x.nested_value("s3", "endpoint_url"),
            Some("http://s3.local")
        );
        assert_eq!(x.nested_value("s3", "addressing_style"), Some("path"));
        assert_eq!(x.value("ca_bundle"), Some("/etc/ca.pem"));
        assert_eq!(x.value("multi"), Some("a\nb"));
        assert_eq!(sections["spaced"].value("k"), Some("v = w"));
    }

    #[test]
    fn profile_settings_from_config() {
        let dir = Dir::new(
            Some("[x]\nregion = from-credentials\n"),
            Some(
                "[default]\nregion = us-east-2\n[x]\nregion = ignored\n[profile x]\n\
                 region = eu-west-1\nendpoint_url = http://global\nca_bundle = /ca.pem\n\
                 [profile y]\nendpoint_url = http://global\ns3 =\n  endpoint_url = http://nested\n\
                 [profile z]\nservices = local\nendpoint_url = http://global\n\
                 [services local]\ns3 =\n  endpoint_url = http://service\n\
                 [profile w]\nendpoint_url = http://global\nignore_configured_endpoint_urls = true\n",
            ),
        );
        let default = dir.load(None).unwrap().unwrap();
        assert_eq!(default.name, "default");
        assert_eq!(default.region.as_deref(), Some("us-east-2"));
        assert!(default.credentials.is_none());

        // The credentials file's settings win over the config file's, as in the AWS CLI.
        let x = dir.load(Some("x")).unwrap().unwrap();
        assert_eq!(x.region.as_deref(), Some("from-credentials"));
        assert_eq!(x.endpoint_url.as_deref(), Some("http://global"));
        assert_eq!(x.ca_bundle.as_deref(), Some("/ca.pem"));

        let endpoint = |name| dir.load(Some(name)).unwrap().unwrap().endpoint_url;
        assert_eq!(endpoint("y").as_deref(), Some("http://nested"));
        assert_eq!(endpoint("z").as_deref(), Some("http://service"));
        assert_eq!(endpoint("w"), None);
    }

    #[test]
    fn missing_profiles() {
        let dir = Dir::new(None, Some("[dev]\nregion = x\n"));
        // Not named: no profile, no error.
        assert!(dir.load(None).unwrap().is_none());
        // Named (an option or AWS_PROFILE): an error naming it and the files.
        let message = dir.load(Some("dev")).unwrap_err().to_string();
        assert!(message.contains("'dev'"), "{message}");
        assert!(
            message.contains(&dir.config().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&dir.credentials().display().to_string()),
            "{message}"
        );
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains("[profile dev]"), "{message}");
        // Named "default" explicitly, with no files at all.
        let empty = Dir::new(None, None);
        assert!(empty.load(Some("default")).is_err());
        assert!(empty.load(None).unwrap().is_none());
        let none = load_from(None, None, None, &Settings::default()).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let dir = Dir::new(None, None);
        fs::create_dir(dir.config()).unwrap();
        let message = dir.load(None).unwrap_err().to_string();
        assert!(
            message.contains(&dir.config().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn static_keys_credentials_file_first() {
        let dir = Dir::new(
            Some("[default]\nAWS_ACCESS_KEY_ID = cred-id\naws_secret_access_key = cred-secret\n"),
            Some(
                "[default]\naws_access_key_id = conf-id\naws_secret_access_key = conf-secret\n\
                 [profile c]\naws_access_key_id = c-id\naws_secret_access_key = c-secret\n\
                 aws_session_token = c-token\n[profile half]\naws_access_key_id = only\n",
            ),
        );
        let default = credential(&dir.load(None).unwrap().unwrap()).unwrap();
        assert_eq!(default.key_id, "cred-id");
        assert_eq!(default.secret_key, "cred-secret");
        assert_eq!(default.token, None);
        let c = credential(&dir.load(Some("c")).unwrap().unwrap()).unwrap();
        assert_eq!(c.key_id, "c-id");
        assert_eq!(c.token.as_deref(), Some("c-token"));
        let message = dir.load(Some("half")).unwrap_err().to_string();
        assert!(message.contains("aws_secret_access_key"), "{message}");
    }

    #[test]
    fn static_keys_rotation_is_picked_up() {
        let dir = Dir::new(
            Some("[default]\naws_access_key_id = old\naws_secret_access_key = s1\n"),
            None,
        );
        let settings = Settings {
            recheck: Duration::ZERO,
            ..Settings::default()
        };
        let profile = dir.load_with(None, &settings).unwrap().unwrap();
        let provider = Arc::clone(profile.credentials.as_ref().unwrap());
        let runtime = runtime();
        let get = || runtime.block_on(provider.get_credential()).unwrap();
        assert_eq!(get().key_id, "old");
        fs::write(
            dir.credentials(),
            "[default]\naws_access_key_id = new\naws_secret_access_key = s2\n",
        )
        .unwrap();
        let file = fs::File::options()
            .write(true)
            .open(dir.credentials())
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        let rotated = get();
        assert_eq!(
            (rotated.key_id.as_str(), rotated.secret_key.as_str()),
            ("new", "s2")
        );
        // A half-written file keeps the last good keys.
        fs::write(dir.credentials(), "[default]\naws_access_key_id = newer\n").unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(20))
            .unwrap();
        assert_eq!(get().key_id, "new");
    }

    #[test]
    fn static_keys_are_not_reread_within_the_interval() {
        let dir = Dir::new(
            Some("[default]\naws_access_key_id = old\naws_secret_access_key = s1\n"),
            None,
        );
        let profile = dir.load(None).unwrap().unwrap();
        let provider = Arc::clone(profile.credentials.as_ref().unwrap());
        let runtime = runtime();
        fs::write(
            dir.credentials(),
            "[default]\naws_access_key_id = new\naws_secret_access_key = s2\n",
        )
        .unwrap();
        let got = runtime.block_on(provider.get_credential()).unwrap();
        assert_eq!(got.key_id, "old");
    }

    #[test]
    fn credential_process_success_is_cached() {
        let dir = Dir::new(None, None);
        let count = dir.path("count");
        let command = counting_process(&count, "proc-id", Some("2999-01-01T00:00:00Z"));
        fs::write(
            dir.config(),
            format!("[profile p]\ncredential_process = {command}\n"),
        )
        .unwrap();
        let profile = dir.load(Some("p")).unwrap().unwrap();
        let provider = Arc::clone(profile.credentials.as_ref().unwrap());
        let results = runtime().block_on(async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let provider = Arc::clone(&provider);
                    tokio::spawn(async move { provider.get_credential().await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap().unwrap());
            }
            results
        });
        for credential in results {
            assert_eq!(credential.key_id, "proc-id");
            assert_eq!(credential.secret_key, "secret");
            assert_eq!(credential.token.as_deref(), Some("token"));
        }
        assert_eq!(runs(&count), 1);
    }

    #[test]
    fn credential_process_without_expiration_runs_once() {
        let dir = Dir::new(None, None);
        let count = dir.path("count");
        let command = counting_process(&count, "id", None);
        fs::write(
            dir.credentials(),
            format!("[default]\ncredential_process = {command}\n"),
        )
        .unwrap();
        let profile = dir.load(None).unwrap().unwrap();
        let provider = Arc::clone(profile.credentials.as_ref().unwrap());
        let runtime = runtime();
        for _ in 0..3 {
            runtime.block_on(provider.get_credential()).unwrap();
        }
        assert_eq!(runs(&count), 1);
    }

    #[test]
    fn credential_process_expiry_causes_a_new_run() {
        for expiration in ["2000-01-01T00:00:00Z".to_owned(), rfc3339_in(60)] {
            let dir = Dir::new(None, None);
            let count = dir.path("count");
            let command = counting_process(&count, "id", Some(&expiration));
            fs::write(
                dir.config(),
                format!("[default]\ncredential_process = {command}\n"),
            )
            .unwrap();
            let profile = dir.load(None).unwrap().unwrap();
            let provider = Arc::clone(profile.credentials.as_ref().unwrap());
            let runtime = runtime();
            runtime.block_on(provider.get_credential()).unwrap();
            runtime.block_on(provider.get_credential()).unwrap();
            assert_eq!(runs(&count), 2, "{expiration}");
        }
    }

    #[test]
    fn credential_process_failure_names_profile_and_stderr() {
        let dir = Dir::new(
            None,
            Some(
                "[profile bad]\ncredential_process = echo SECRETOUT; echo 'token expired' >&2; exit 3\n",
            ),
        );
        let profile = dir.load(Some("bad")).unwrap().unwrap();
        let message = credential(&profile).unwrap_err().to_string();
        assert!(message.contains("'bad'"), "{message}");
        assert!(message.contains("token expired"), "{message}");
        assert!(!message.contains("SECRETOUT"), "{message}");
    }

    #[test]
    fn credential_process_bad_output() {
        let cases = [
            ("printf 'not json AKIDSECRET'", "not JSON"),
            ("printf '%s' '{\"AccessKeyId\": \"AKIDSECRET\"}'", "Version"),
            (
                "printf '%s' '{\"Version\": 1, \"AccessKeyId\": \"AKIDSECRET\"}'",
                "SecretAccessKey",
            ),
            (
                "printf '%s' '{\"Version\": 1, \"AccessKeyId\": \"AKIDSECRET\", \
                 \"SecretAccessKey\": \"s\", \"Expiration\": \"tomorrow\"}'",
                "Expiration",
            ),
        ];
        for (command, expected) in cases {
            let dir = Dir::new(
                Some(&format!("[p]\ncredential_process = {command}\n")),
                None,
            );
            let profile = dir.load(Some("p")).unwrap().unwrap();
            let message = credential(&profile).unwrap_err().to_string();
            assert!(message.contains("'p'"), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("AKIDSECRET"), "{message}");
        }
    }

    #[test]
    fn credential_process_timeout() {
        let dir = Dir::new(None, Some("[default]\ncredential_process = sleep 5\n"));
        let settings = Settings {
            process_timeout: Duration::from_millis(200),
            ..Settings::default()
        };
        let profile = dir.load_with(None, &settings).unwrap().unwrap();
        let started = Instant::now();
        let message = credential(&profile).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(4), "{message}");
        assert!(message.contains("did not finish"), "{message}");
    }

    #[test]
    fn precedence_between_kinds() {
        let dir = Dir::new(
            Some("[both]\naws_access_key_id = cred-id\naws_secret_access_key = s\n"),
            Some(
                "[profile both]\ncredential_process = exit 1\n\
                 [profile proc]\ncredential_process = printf '%s' '{\"Version\":1,\
                 \"AccessKeyId\":\"proc-id\",\"SecretAccessKey\":\"s\"}'\n\
                 aws_access_key_id = conf-id\naws_secret_access_key = s\n",
            ),
        );
        let both = credential(&dir.load(Some("both")).unwrap().unwrap()).unwrap();
        assert_eq!(both.key_id, "cred-id");
        let proc = credential(&dir.load(Some("proc")).unwrap().unwrap()).unwrap();
        assert_eq!(proc.key_id, "proc-id");
    }

    #[test]
    fn indirect_kinds() {
        let dir = Dir::new(
            Some("[keyed]\naws_access_key_id = k\naws_secret_access_key = s\n"),
            Some(
                "[profile sso]\nsso_session = corp\nsso_account_id = 1\n\
                 [profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = keyed\n\
                 [profile keyed]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = keyed\n\
                 [profile web]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = /t\n\
                 [profile sso-process]\nsso_session = corp\ncredential_process = printf '%s' \
                 '{\"Version\":1,\"AccessKeyId\":\"sso-id\",\"SecretAccessKey\":\"s\"}'\n",
            ),
        );
        for (name, kind) in [
            ("sso", "SSO"),
            ("role", "assumes a role"),
            ("keyed", "assumes a role"),
            ("web", "web identity"),
        ] {
            let message = dir.load(Some(name)).unwrap_err().to_string();
            assert!(message.contains(kind), "{message}");
            let line = format!(
                "credential_process = aws configure export-credentials --profile {name} \
                 --format process"
            );
            assert!(message.contains(&line), "{message}");
        }
        let settings = Settings {
            web_identity_env: true,
            ..Settings::default()
        };
        let web = dir.load_with(Some("web"), &settings).unwrap().unwrap();
        assert!(web.credentials.is_none());
        let sso = credential(&dir.load(Some("sso-process")).unwrap().unwrap()).unwrap();
        assert_eq!(sso.key_id, "sso-id");
    }

    #[test]
    fn rfc3339_and_home() {
        assert_eq!(
            parse_rfc3339("1970-01-01T00:01:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(60))
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T01:00:00.5+01:00"),
            Some(UNIX_EPOCH + Duration::from_millis(500))
        );
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(
            expand_home("~/x/credentials", Some("/home/u")),
            PathBuf::from("/home/u/x/credentials")
        );
        assert_eq!(expand_home("~u/x", Some("/home/u")), PathBuf::from("~u/x"));
        assert_eq!(expand_home("/a/b", Some("/home/u")), PathBuf::from("/a/b"));
    }
}
