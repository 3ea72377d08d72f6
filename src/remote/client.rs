//! The client of one store and the source of one object: [`Client`], [`RemoteSource`].

use super::{config, errors, runtime, StorageOptions};

use std::ops::Range;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::source::{Source, SourceHints};

/// Default bytes per ranged GET.
pub const REMOTE_REQUEST_BYTES: u64 = 8 << 20;
/// Default gap between wanted ranges that is read through rather than asked for apart.
pub const REMOTE_MERGE_GAP: u64 = 1 << 20;
/// Default ranged GETs in flight.
pub const REMOTE_IN_FLIGHT: u32 = 32;

pub(crate) use crate::url::Scheme;

/// A parsed URL: the store it lives in and the object's path there.
#[derive(Clone)]
pub(crate) struct Location {
    /// The URL as given, for messages, with a password in it replaced by `***`.
    pub(crate) url: String,
    pub(crate) scheme: Scheme,
    /// `scheme://authority` (the bucket, the container or the host, without a user or
    /// password): objects with the same root share a client.
    pub(crate) root: String,
    /// The object's path in its store.
    pub(crate) path: ObjectPath,
    /// The URL as given, password included: to resolve siblings, and for the basic
    /// authentication of an HTTP URL's user and password ([`Location::basic_auth`]).
    given: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("root", &self.root)
            .field("path", &self.path)
            .finish()
    }
}

impl Location {
    /// Parse `url` (one of [`is_url`]'s schemes).
    pub(crate) fn parse(url: &str) -> Result<Location> {
        let given = url;
        let parsed = url::Url::parse(given).map_err(|e| {
            // The parser's message never quotes the URL, which may hold a password.
            Error::invalid(format!(
                "{}: not a valid URL ({e})",
                given.split('@').next_back().unwrap_or("")
            ))
        })?;
        let has_credentials = !parsed.username().is_empty() || parsed.password().is_some();
        let shown = if parsed.password().is_some() {
            let mut redacted = parsed.clone();
            let _ = redacted.set_password(Some("***"));
            redacted.to_string()
        } else {
            given.to_owned()
        };
        let url = shown.as_str();
        let Some(scheme) = crate::url::scheme(parsed.scheme()) else {
            return Err(Error::invalid(format!(
                "{url}: the scheme '{}' is not one plaid reads (http, https, s3, gs, az)",
                parsed.scheme()
            )));
        };
        if has_credentials && scheme != Scheme::Http {
            return Err(Error::invalid(format!(
                "{url}: a user or password in a {}:// URL is not supported: give credentials \
                 through the storage options or the environment",
                parsed.scheme()
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::Unsupported(format!(
                "{url}: URLs with a query or fragment (presigned URLs among them) are not supported; \
                 give the object's plain URL and credentials through the storage options"
            )));
        }
        let host = parsed.host_str().unwrap_or("");
        if host.is_empty() {
            return Err(Error::invalid(format!(
                "{url}: no {} in the URL",
                if scheme == Scheme::Http {
                    "host"
                } else {
                    "bucket"
                }
            )));
        }
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let root = format!("{}://{authority}", parsed.scheme());
        let path = ObjectPath::from_url_path(parsed.path())
            .map_err(|e| Error::invalid(format!("{url}: not a valid object path ({e})")))?;
        if path.as_ref().is_empty() {
            return Err(Error::invalid(format!("{url}: names no object")));
        }
        Ok(Location {
            url: url.to_owned(),
            scheme,
            root,
            path,
            given: zeroize::Zeroizing::new(given.to_owned()),
        })
    }

    /// The location of `name` resolved against this one's folder (a shard beside its
    /// index).
    pub(crate) fn sibling(&self, name: &str) -> Result<Location> {
        let base = match self.given.rfind('/') {
            Some(at) => &self.given[..=at],
            None => &self.given,
        };
        Location::parse(&format!("{base}{name}"))
    }

    /// `Authorization: Basic ...` for the user and password of an HTTP URL (percent-decoded),
    /// if it has them; redirects are then not followed.
    pub(crate) fn basic_auth(&self) -> Result<Option<reqwest::header::HeaderValue>> {
        use base64::Engine as _;
        let Ok(parsed) = url::Url::parse(&self.given) else {
            return Ok(None); // parsed when the location was made
        };
        if parsed.username().is_empty() && parsed.password().is_none() {
            return Ok(None);
        }
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: the user or password is not UTF-8 once decoded",
                    self.url
                ))
            })
        };
        let user = decode(parsed.username())?;
        let password = zeroize::Zeroizing::new(decode(parsed.password().unwrap_or(""))?);
        let pair = zeroize::Zeroizing::new(format!("{user}:{}", password.as_str()));
        let encoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
        );
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Basic {}", encoded.as_str()))
                .map_err(|_| {
                    Error::invalid(format!("{}: the user or password cannot be sent", self.url))
                })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// `text` with its `%XX` escapes decoded, or `None` where the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// A connection to one store (one bucket, container or host), with its own runtime.
pub struct Client {
    root: String,
    owned: runtime::Owned<Arc<dyn ObjectStore>>,
    pub(super) settings: config::Settings,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("root", &self.root).finish()
    }
}

impl Client {
    /// A client for the store of `location`, configured from the environment and
    /// `storage` (which takes precedence).
    pub(crate) fn new(location: &Location, storage: &StorageOptions) -> Result<Arc<Client>> {
        let (settings, build) = config::builder(location, storage)?;
        let owned = runtime::Owned::new(build)?;
        Ok(Arc::new(Client {
            root: location.root.clone(),
            owned,
            settings,
        }))
    }

    /// Open the object at `location` for reading: its length and ETag are read now (a HEAD
    /// request) and the ETag pinned for every later read. Opening is an operation of its
    /// own: the HEAD and the header's reads share one retry budget.
    pub(crate) fn open(self: &Arc<Client>, location: &Location) -> Result<RemoteSource> {
        let path = location.path.clone();
        let budget = Arc::new(Budget::new(&self.settings));
        let url = location.url.clone();
        let meta = {
            let budget = budget.clone();
            self.owned.run(|store| async move {
                let head = async {
                    store
                        .head(&path)
                        .await
                        .map_err(|e| errors::describe(e, &url, None, "opening"))
                };
                budget.within(&url, None, head).await
            })?
        };
        // A weak ETag never matches `If-Match` (which compares strongly): compare it
        // with the answers instead.
        let (if_match, etag) = match meta.e_tag {
            Some(tag) if tag.starts_with("W/") => (None, Some(tag)),
            Some(tag) => (Some(tag.clone()), Some(tag)),
            None => (None, None),
        };
        Ok(RemoteSource {
            client: self.clone(),
            budget,
            object: Arc::new(Object {
                location: location.clone(),
                len: meta.size,
                if_match,
                etag,
                last_modified: meta.last_modified,
            }),
        })
    }

    /// Run a future on this client's runtime with its store (any thread).
    pub(crate) fn run<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: Send,
        F: FnOnce(Arc<dyn ObjectStore>) -> Fut + Send,
        Fut: std::future::Future<Output = Result<R>> + Send,
    {
        self.owned.run(|store| f((*store).clone()))
    }
}

/// One remote object, read with ranged GETs pinned to the ETag it had when opened.
pub struct RemoteSource {
    client: Arc<Client>,
    object: Arc<Object>,
    /// The retry budget of the operation reading it now.
    budget: Arc<Budget>,
}

/// The retry budget of one operation (an open, a load, a verification): the time its
/// requests may spend without progress. `object_store` retries each request within
/// `retry_timeout` of the request's start; this bounds them all together, so that neither
/// a new request nor a range read again to name the tensor it failed in restarts the
/// clock. The clock starts when the operation starts, restarts whenever one of its
/// requests completes, and (while nothing fails) when a request starts after the source
/// sat idle; once it has run `retry_timeout` plus one request's `timeout`, every request
/// of the operation still going fails, and so does every later one.
struct Budget {
    retry_timeout: std::time::Duration,
    request_timeout: std::time::Duration,
    state: parking_lot::Mutex<BudgetState>,
}

struct BudgetState {
    /// When the time without progress started.
    since: std::time::Instant,
    /// Requests going on now.
    outstanding: usize,
    /// Whether a request failed since the last that completed.
    failing: bool,
}

impl Budget {
    fn new(settings: &config::Settings) -> Budget {
        Budget {
            retry_timeout: settings.retry_timeout,
            request_timeout: settings.request_timeout,
            state: parking_lot::Mutex::new(BudgetState {
                since: std::time::Instant::now(),
                outstanding: 0,
                failing: false,
            }),
        }
    }

    /// A new operation starts: a full budget.
    fn begin(&self) {
        let mut state = self.state.lock();
        state.since = std::time::Instant::now();
        state.failing = false;
    }

    /// When the operation's requests stop.
    fn deadline(&self) -> std::time::Instant {
        self.state.lock().since + self.retry_timeout + self.request_timeout
    }

    /// Run one request of the operation (reading `range` of `url`, or opening it), within the
    /// budget.
    async fn within<R>(
        &self,
        url: &str,
        range: Option<&Range<u64>>,
        request: impl std::future::Future<Output = Result<R>>,
    ) -> Result<R> {
        {
            let mut state = self.state.lock();
            if state.outstanding == 0 && !state.failing {
                state.since = std::time::Instant::now();
            }
            state.outstanding += 1;
        }
        let mut request = std::pin::pin!(request);
        let result = loop {
            let deadline = self.deadline();
            match tokio::time::timeout_at(deadline.into(), request.as_mut()).await {
                Ok(result) => break result,
                // Another request's progress moved the deadline: go on waiting.
                Err(_) if self.deadline() > std::time::Instant::now() => continue,
                Err(_) => break Err(self.spent(url, range)),
            }
        };
        let mut state = self.state.lock();
        state.outstanding -= 1;
        match result.is_ok() {
            true => {
                state.since = std::time::Instant::now();
                state.failing = false;
            }
            false => state.failing = true,
        }
        result
    }

    /// The error of a request cut short because the budget is spent.
    fn spent(&self, url: &str, range: Option<&Range<u64>>) -> Error {
        let doing = if range.is_some() {
            "reading"
        } else {
            "opening"
        };
        Error::io(
            errors::context(url, range, doing),
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no request of this operation completed in {:?} (retry_timeout {:?} plus \
                     timeout {:?}): its retry budget is spent",
                    self.retry_timeout + self.request_timeout,
                    self.retry_timeout,
                    self.request_timeout
                ),
            ),
        )
    }
}

/// What every read of one object needs (shared with the tasks that read it).
struct Object {
    location: Location,
    len: u64,
    /// The ETag sent as `If-Match` (strong ETags only).
    if_match: Option<String>,
    /// The ETag every answer must carry, where the server gave one.
    etag: Option<String>,
    last_modified: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for RemoteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSource")
            .field("url", &self.object.location.url)
            .field("len", &self.object.len)
            .field("etag", &self.object.etag)
            .finish()
    }
}

impl RemoteSource {
    /// Open the object at `url`, with a client of its own.
    pub fn open(url: &str, storage: &StorageOptions) -> Result<RemoteSource> {
        let location = Location::parse(url)?;
        Client::new(&location, storage)?.open(&location)
    }

    /// The client this source reads through (shared with sources of the same store).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The ETag pinned when the object was opened.
    pub fn etag(&self) -> Option<&str> {
        self.object.etag.as_deref()
    }
}

impl Object {
    /// Ask for `range` and copy the body into `buf` as it arrives.
    async fn fetch(
        &self,
        store: Arc<dyn ObjectStore>,
        range: Range<u64>,
        buf: &mut [u8],
    ) -> Result<usize> {
        let url = &self.location.url;
        let options = GetOptions {
            range: Some(range.clone().into()),
            if_match: self.if_match.clone(),
            if_unmodified_since: self.etag.is_none().then_some(self.last_modified),
            ..Default::default()
        };
        let answer = store
            .get_opts(&self.location.path, options)
            .await
            .map_err(|e| errors::describe(e, url, Some(&range), "reading"))?;
        let what = || format!("reading bytes {} of {url}", errors::span(&range));
        if let (Some(pinned), Some(got)) = (&self.etag, &answer.meta.e_tag) {
            if pinned != got {
                return Err(Error::io(
                    what(),
                    std::io::Error::other(format!(
                        "the object changed since it was opened (ETag {pinned}, now {got})"
                    )),
                ));
            }
        }
        if answer.range != range {
            return Err(Error::io(
                what(),
                std::io::Error::other(format!(
                    "the server answered bytes {} instead",
                    errors::span(&answer.range)
                )),
            ));
        }
        let want = buf.len();
        let mut filled = 0usize;
        let mut body = answer.into_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| errors::describe(e, url, Some(&range), "reading"))?;
            let end = filled + piece.len();
            if end > want {
                return Err(Error::io(
                    what(),
                    std::io::Error::other(format!(
                        "the body held more than the {want} bytes asked for"
                    )),
                ));
            }
            buf[filled..end].copy_from_slice(&piece);
            filled = end;
        }
        if filled < want {
            return Err(Error::io(
                what(),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {filled} of {want} bytes"),
                ),
            ));
        }
        Ok(filled)
    }
}

/// A destination buffer handed to a task of the runtime.
struct Lent {
    at: *mut u8,
    len: usize,
}

// SAFETY: the buffer is written by one task while the thread that lent it blocks until that
// task has ended (`Owned::run_task`), so no one else touches it meanwhile.
unsafe impl Send for Lent {}

impl Source for RemoteSource {
    fn name(&self) -> &str {
        &self.object.location.url
    }

    fn len(&self) -> u64 {
        self.object.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = self.object.len;
        if buf.is_empty() || offset >= len {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(len - offset);
        let lent = Lent {
            at: buf.as_mut_ptr(),
            len: want as usize,
        };
        let range = offset..offset + want;
        let object = self.object.clone();
        let budget = self.budget.clone();
        self.client.owned.run_task(move |store| async move {
            let lent = lent;
            // SAFETY: `buf` outlives the task: `run_task` returns only once the task has
            // ended (completed, failed or panicked), and this thread blocks in it until then;
            // the task is the only user of these bytes meanwhile.
            let buf = unsafe { std::slice::from_raw_parts_mut(lent.at, lent.len) };
            let url = object.location.url.clone();
            budget
                .within(
                    &url,
                    Some(&range),
                    object.fetch((*store).clone(), range.clone(), buf),
                )
                .await
        })
    }

    fn hints(&self) -> SourceHints {
        self.client.settings.hints
    }

    fn begin(&self) {
        self.budget.begin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::is_url;

    #[test]
    fn urls_are_told_from_paths() {
        for url in [
            "http://h/x",
            "HTTPS://h/x",
            "s3://b/k",
            "gs://b/k",
            "az://c/k",
            "azure://c/k",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in ["model.plaid", "/tmp/s3://x", "./http://x", "s3:/b/k", ""] {
            assert!(!is_url(path), "{path}");
        }
    }

    #[test]
    fn locations_parse_and_resolve_siblings() {
        let l = Location::parse("s3://bucket/dir/model.safetensors.index.json").unwrap();
        assert_eq!(l.scheme, Scheme::S3);
        assert_eq!(l.root, "s3://bucket");
        assert_eq!(l.path.as_ref(), "dir/model.safetensors.index.json");
        let shard = l.sibling("model-00001-of-00002.safetensors").unwrap();
        assert_eq!(shard.path.as_ref(), "dir/model-00001-of-00002.safetensors");
        assert_eq!(shard.root, l.root);

        let h = Location::parse("http://127.0.0.1:8080/a%20b/m.plaid").unwrap();
        assert_eq!(h.scheme, Scheme::Http);
        assert_eq!(h.root, "http://127.0.0.1:8080");
        assert_eq!(h.path.as_ref(), "a b/m.plaid");

        for bad in ["s3://bucket/", "s3:///key", "ftp://h/x", "http://h/x?sig=1"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Location::parse("https://h/x?X-Amz-Signature=1"),
            Err(Error::Unsupported(_))
        ));
    }
}
