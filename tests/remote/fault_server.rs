#![allow(dead_code)] // each test binary uses a part of it
//! A small HTTP/1.1 server on 127.0.0.1 for the remote tests: it serves objects held in
//! memory with HEAD and ranged GET (206, `Content-Range`, a strong ETag, `If-Match` ->
//! 412) and injects one fault at a time into ranged GETs, deterministically. It can also
//! answer every request with a redirect to another origin (with S3's region header), and
//! it keeps the headers of every request it received (to check which credentials reached
//! it).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What goes wrong with ranged GETs.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Nothing.
    None,
    /// The next `n` ranged GETs answer this status (then they succeed).
    Status { code: u16, remaining: usize },
    /// The next `n` ranged GETs send their headers and half their body, then reset.
    ResetMidBody { remaining: usize },
    /// The next `n` ranged GETs send half their body, then stall for `secs` seconds.
    Stall { remaining: usize, secs: u64 },
    /// Every ranged GET says (and sends) half the bytes asked for, with a truthful
    /// `Content-Range` for the half: a short body.
    ShortBody,
    /// Every ranged GET answers with a `Content-Range` one byte off.
    WrongContentRange,
    /// Every ranged GET answers 200 with the whole object.
    IgnoreRange,
    /// After `after` ranged GETs, the object's bytes and ETag change.
    ReplaceAfter { after: usize },
    /// Every ranged GET sends its headers, then its body one byte per `interval_ms`.
    Drip { interval_ms: u64 },
}

/// A redirect answered to every request.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: u16,
    /// The origin redirected to (`http://127.0.0.1:PORT`); the request's path is kept.
    pub to: String,
    /// An `x-amz-bucket-region` header, as S3 sends with a 301.
    pub region: Option<String>,
}

struct Object {
    bytes: Arc<Vec<u8>>,
    etag: String,
}

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<String, Object>>,
    fault: Mutex<Option<Fault>>,
    ranged_gets: AtomicUsize,
    requests: AtomicUsize,
    /// Body bytes of ranged GETs answered in full.
    ranged_bytes: AtomicUsize,
    stop: AtomicBool,
    versions: AtomicUsize,
    redirect: Mutex<Option<Redirect>>,
    /// Every request received.
    seen: Mutex<Vec<Seen>>,
}

/// A request's method, target and headers (names lowercased).
type Seen = (String, String, HashMap<String, String>);

/// The server; stops when dropped.
pub struct FaultServer {
    pub url: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
    port: u16,
}

impl FaultServer {
    /// Start a server on a free port.
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        *state.fault.lock().unwrap() = Some(Fault::None);
        let accept_state = state.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = accept_state.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        FaultServer {
            url: format!("http://127.0.0.1:{port}"),
            state,
            accept: Some(accept),
            port,
        }
    }

    /// Serve `bytes` at `/name`.
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        let version = self.state.versions.fetch_add(1, Ordering::SeqCst);
        self.state.objects.lock().unwrap().insert(
            name.to_owned(),
            Object {
                bytes: Arc::new(bytes),
                etag: format!("\"v{version}-{name}\""),
            },
        );
    }

    /// The URL of `/name`.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    /// Set the fault for the ranged GETs from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = Some(fault);
        self.state.ranged_gets.store(0, Ordering::SeqCst);
    }

    /// Ranged GETs answered since the fault was set.
    pub fn ranged_gets(&self) -> usize {
        self.state.ranged_gets.load(Ordering::SeqCst)
    }

    /// Body bytes sent in answer to ranged GETs (answered normally) so far.
    #[allow(dead_code)]
    pub fn ranged_bytes(&self) -> usize {
        self.state.ranged_bytes.load(Ordering::SeqCst)
    }

    /// Requests of any kind answered.
    #[allow(dead_code)]
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Answer every request with `redirect` from now on (`None`: serve again).
    pub fn set_redirect(&self, redirect: Option<Redirect>) {
        *self.state.redirect.lock().unwrap() = redirect;
    }

    /// The values of header `name` (lowercase) in the requests received so far.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, headers)| headers.get(name).cloned())
            .collect()
    }

    /// Requests received so far (method and target).
    pub fn received(&self) -> Vec<(String, String)> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(method, target, _)| (method.clone(), target.clone()))
            .collect()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// What one ranged GET does, decided under the lock.
enum Plan {
    Normal,
    Status(u16),
    Reset,
    Stall(u64),
    Drip(u64),
    Short,
    WrongRange,
    Whole,
}

fn next_plan(state: &State, name: &str) -> Plan {
    let n = state.ranged_gets.fetch_add(1, Ordering::SeqCst);
    let mut fault = state.fault.lock().unwrap();
    match fault.as_mut() {
        None | Some(Fault::None) => Plan::Normal,
        Some(Fault::Status { code, remaining }) => {
            if *remaining == 0 {
                Plan::Normal
            } else {
                *remaining -= 1;
                Plan::Status(*code)
            }
        }
        Some(Fault::ResetMidBody { remaining }) => {
            if *remaining == 0 {
                Plan::Normal
            } else {
                *remaining -= 1;
                Plan::Reset
            }
        }
        Some(Fault::Stall { remaining, secs }) => {
            if *remaining == 0 {
                Plan::Normal
            } else {
                *remaining -= 1;
                Plan::Stall(*secs)
            }
        }
        Some(Fault::Drip { interval_ms }) => Plan::Drip(*interval_ms),
        Some(Fault::ShortBody) => Plan::Short,
        Some(Fault::WrongContentRange) => Plan::WrongRange,
        Some(Fault::IgnoreRange) => Plan::Whole,
        Some(Fault::ReplaceAfter { after }) => {
            if n == *after {
                let mut objects = state.objects.lock().unwrap();
                if let Some(object) = objects.get_mut(name) {
                    let mut bytes = (*object.bytes).clone();
                    for b in bytes.iter_mut() {
                        *b = b.wrapping_add(1);
                    }
                    object.bytes = Arc::new(bytes);
                    object.etag = format!("\"replaced-{n}\"");
                }
            }
            Plan::Normal
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut sink = vec![0u8; len];
            reader.read_exact(&mut sink)?;
        }
        state.requests.fetch_add(1, Ordering::SeqCst);
        state
            .seen
            .lock()
            .unwrap()
            .push((method.clone(), target.clone(), headers.clone()));
        let redirect = state.redirect.lock().unwrap().clone();
        if let Some(r) = redirect {
            let mut h = vec![
                ("Location".to_owned(), format!("{}{target}", r.to)),
                ("Content-Length".to_owned(), "0".to_owned()),
            ];
            if let Some(region) = r.region {
                h.push(("x-amz-bucket-region".to_owned(), region));
            }
            respond(&mut stream, &format!("{} Redirect", r.status), &h, &[])?;
            continue;
        }
        let name = target.trim_start_matches('/').to_owned();
        let found = state
            .objects
            .lock()
            .unwrap()
            .get(&name)
            .map(|o| (o.bytes.clone(), o.etag.clone()));
        let Some((bytes, etag)) = found else {
            let body = b"no such object";
            respond(
                &mut stream,
                "404 Not Found",
                &[("Content-Length".into(), body.len().to_string())],
                body,
            )?;
            continue;
        };
        let len = bytes.len() as u64;
        let common = vec![
            ("ETag".to_owned(), etag.clone()),
            ("Accept-Ranges".to_owned(), "bytes".to_owned()),
            (
                "Last-Modified".to_owned(),
                "Wed, 02 Dec 2026 10:00:00 GMT".to_owned(),
            ),
        ];
        if method == "HEAD" {
            let mut h = common.clone();
            h.push(("Content-Length".into(), len.to_string()));
            respond(&mut stream, "200 OK", &h, &[])?;
            continue;
        }
        let range = headers.get("range").and_then(|r| {
            let r = r.strip_prefix("bytes=")?;
            let (a, b) = r.split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            Some((a, b.min(len.saturating_sub(1))))
        });
        let Some((first, last)) = range else {
            let mut h = common.clone();
            h.push(("Content-Length".into(), len.to_string()));
            respond(&mut stream, "200 OK", &h, &bytes)?;
            continue;
        };
        let plan = next_plan(state, &name);
        // The object may have been replaced by the plan.
        let (bytes, etag) = state
            .objects
            .lock()
            .unwrap()
            .get(&name)
            .map(|o| (o.bytes.clone(), o.etag.clone()))
            .unwrap();
        if let Some(wanted) = headers.get("if-match") {
            if wanted != &etag && wanted != "*" {
                let body = b"<Error><Code>PreconditionFailed</Code></Error>";
                respond(
                    &mut stream,
                    "412 Precondition Failed",
                    &[("Content-Length".into(), body.len().to_string())],
                    body,
                )?;
                continue;
            }
        }
        let mut h = vec![
            ("ETag".to_owned(), etag.clone()),
            ("Accept-Ranges".to_owned(), "bytes".to_owned()),
        ];
        let body = &bytes[first as usize..=last as usize];
        let half = body.len() / 2;
        match plan {
            Plan::Normal => {
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}"),
                ));
                h.push(("Content-Length".into(), body.len().to_string()));
                respond(&mut stream, "206 Partial Content", &h, body)?;
                state.ranged_bytes.fetch_add(body.len(), Ordering::SeqCst);
            }
            Plan::Status(code) => {
                let text = format!(
                    "<Error><Code>InternalError</Code><Message>injected {code}</Message></Error>"
                );
                respond(
                    &mut stream,
                    &format!("{code} Injected"),
                    &[("Content-Length".into(), text.len().to_string())],
                    text.as_bytes(),
                )?;
            }
            Plan::Reset => {
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}"),
                ));
                h.push(("Content-Length".into(), body.len().to_string()));
                respond(&mut stream, "206 Partial Content", &h, &body[..half])?;
                stream.flush()?;
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Plan::Stall(secs) => {
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}"),
                ));
                h.push(("Content-Length".into(), body.len().to_string()));
                respond(&mut stream, "206 Partial Content", &h, &body[..half])?;
                stream.flush()?;
                std::thread::sleep(Duration::from_secs(secs));
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Plan::Drip(interval_ms) => {
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}"),
                ));
                h.push(("Content-Length".into(), body.len().to_string()));
                respond(&mut stream, "206 Partial Content", &h, &[])?;
                for byte in body {
                    stream.write_all(std::slice::from_ref(byte))?;
                    stream.flush()?;
                    if state.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(interval_ms));
                }
            }
            Plan::Short => {
                let end = first + half as u64;
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{}/{len}", end.max(first + 1) - 1),
                ));
                h.push(("Content-Length".into(), half.to_string()));
                respond(&mut stream, "206 Partial Content", &h, &body[..half])?;
            }
            Plan::WrongRange => {
                let (a, b) = if last + 1 < len {
                    (first + 1, last + 1)
                } else {
                    (first.saturating_sub(1), last.saturating_sub(1))
                };
                h.push(("Content-Range".into(), format!("bytes {a}-{b}/{len}")));
                h.push(("Content-Length".into(), body.len().to_string()));
                respond(
                    &mut stream,
                    "206 Partial Content",
                    &h,
                    &bytes[a as usize..=b as usize],
                )?;
            }
            Plan::Whole => {
                h.push(("Content-Length".into(), len.to_string()));
                respond(&mut stream, "200 OK", &h, &bytes)?;
            }
        }
    }
}
