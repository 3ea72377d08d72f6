//! `plaid bench --remote`: loads from an HTTP server (nginx) and an S3-compatible server on
//! loopback, against `curl` fetching the same object to `/dev/null` from the same server
//! and, for S3, boto3's `download_fileobj` into memory, at 1 and N requests in flight, with
//! each row's peak RSS. Every row runs in a process of its own (so that its peak RSS is its
//! own); plaid's rows load into pre-faulted host buffers, verified, and report how far
//! their peak RSS rises above those buffers.
//!
//! The servers are the test servers: `scripts/servers start DIR`, then `. DIR/env`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plaid::{Deserializer, ReadOptions, TensorInfo};

use crate::{human, synthetic_model};

/// The servers' addresses and keys, from the environment `scripts/servers` writes.
struct Servers {
    http_url: String,
    http_root: PathBuf,
    s3_endpoint: String,
    s3_key: String,
    s3_secret: String,
    s3_region: String,
    s3_bucket: String,
}

fn servers() -> plaid::Result<Servers> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            plaid::Error::InvalidArgument(format!(
                "{name} is not set: start the servers with `scripts/servers start DIR` and \
                 `. DIR/env` first"
            ))
        })
    };
    Ok(Servers {
        http_url: var("PLAID_TEST_HTTP_URL")?,
        http_root: PathBuf::from(var("PLAID_TEST_HTTP_ROOT")?),
        s3_endpoint: var("PLAID_TEST_S3_ENDPOINT")?,
        s3_key: var("PLAID_TEST_S3_ACCESS_KEY")?,
        s3_secret: var("PLAID_TEST_S3_SECRET_KEY")?,
        s3_region: var("PLAID_TEST_S3_REGION")?,
        s3_bucket: var("PLAID_TEST_S3_BUCKET")?,
    })
}

impl Servers {
    fn s3_storage(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.s3_endpoint.clone()),
            ("aws_access_key_id".into(), self.s3_key.clone()),
            ("aws_secret_access_key".into(), self.s3_secret.clone()),
            ("aws_region".into(), self.s3_region.clone()),
        ]
    }
}

/// Run `command` to its end; its wall time and peak RSS (bytes), and its stdout.
fn measured(command: &mut Command) -> plaid::Result<(Duration, u64, String)> {
    let shown = format!("{command:?}");
    let io = |e| plaid::Error::Io {
        context: format!("running {shown}"),
        source: e,
    };
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_string(&mut s, &mut out).map_err(io)?;
    }
    if let Some(mut s) = child.stderr.take() {
        std::io::Read::read_to_string(&mut s, &mut err).map_err(io)?;
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, which std has not reaped (we never wait on it).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if pid < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(plaid::Error::InvalidArgument(format!(
            "{shown} failed ({status:#x}): {}",
            err.trim()
        )));
    }
    Ok((elapsed, usage.ru_maxrss as u64 * 1024, out))
}

/// One row: its times and peak RSS over the rounds.
struct Row {
    name: String,
    times: Vec<Duration>,
    rss: u64,
    /// Bytes of destination buffers the row's process holds (plaid's rows).
    destinations: Option<u64>,
    /// The bound on memory above the destinations: in flight x request + 64 MiB.
    bound: Option<u64>,
}

/// `plaid bench-load`'s own measurement, printed on stdout: the load's seconds.
fn timed(out: &str) -> Option<Duration> {
    out.lines()
        .find_map(|l| l.strip_prefix("load-seconds "))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}

/// Measure plaid, curl and boto3 against the servers.
pub fn bench_remote(size_mib: u64, rounds: usize, in_flight: u32) -> plaid::Result<()> {
    let servers = servers()?;
    let rounds = rounds.max(1);
    let name = format!("bench-remote-{}.plaid", std::process::id());
    // The model, written beside the others and served by nginx; uploaded to S3 by plaid.
    // Both in a process of their own: a child's peak RSS starts from its parent's (Linux
    // carries the high-water mark of the memory it was forked from across exec), so this
    // process must never hold much.
    let local = servers.http_root.join(&name);
    let http = format!("{}/{name}", servers.http_url);
    let s3 = format!("s3://{}/{name}", servers.s3_bucket);
    let s3_http = format!("{}/{}/{name}", servers.s3_endpoint, servers.s3_bucket);
    let exe = std::env::current_exe().map_err(|e| plaid::Error::Io {
        context: "finding the plaid executable".into(),
        source: e,
    })?;
    let storage: Vec<String> = servers
        .s3_storage()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut prepare = Command::new(&exe);
    prepare.args([
        "bench-prepare",
        &local.display().to_string(),
        &s3,
        "--size-mib",
    ]);
    prepare.arg(size_mib.to_string());
    for kv in &storage {
        prepare.args(["--storage", kv]);
    }
    measured(&mut prepare)?;
    let total: u64 = Deserializer::open(&local, ReadOptions::default())?
        .tensors()
        .iter()
        .map(|t| t.nbytes)
        .sum();
    let file_len = std::fs::metadata(&local)
        .map_err(|e| plaid::Error::Io {
            context: format!("reading {}", local.display()),
            source: e,
        })?
        .len();
    println!(
        "plaid bench --remote: {} of tensors ({} file) on loopback, {rounds} rounds per row \
         (median), each row in its own process; plaid loads into pre-faulted host buffers, \
         verified; requests of {}",
        human(total),
        human(file_len),
        human(plaid::remote::REMOTE_REQUEST_BYTES)
    );
    let request = plaid::remote::REMOTE_REQUEST_BYTES;
    // Every row's command; the rounds interleave the rows (round k runs every row once), so
    // that a slow moment of the machine falls on all of them alike.
    type Make<'a> = Box<dyn Fn() -> Command + 'a>;
    let mut planned: Vec<(String, Make<'_>, Option<u32>)> = Vec::new();
    planned.push((
        "curl, HTTP (nginx) -> /dev/null".into(),
        Box::new(|| {
            let mut c = Command::new("curl");
            c.args(["-sSf", "-o", "/dev/null", &http]);
            c
        }),
        None,
    ));
    let plaid_load = |url: &str, n: u32, storage: &[String]| -> Make<'_> {
        let (exe, url, storage) = (exe.clone(), url.to_owned(), storage.to_vec());
        Box::new(move || {
            let mut c = Command::new(&exe);
            c.args(["bench-load", &url, "--in-flight", &n.to_string()]);
            for kv in &storage {
                c.args(["--storage", kv]);
            }
            c
        })
    };
    for n in [1, in_flight] {
        planned.push((
            format!("plaid, HTTP (nginx), {n} in flight"),
            plaid_load(&http, n, &[]),
            Some(n),
        ));
    }
    planned.push((
        "curl, S3 (s3s-fs, SigV4) -> /dev/null".into(),
        Box::new(|| {
            let mut c = Command::new("curl");
            c.args([
                "-sSf",
                "-o",
                "/dev/null",
                "--aws-sigv4",
                &format!("aws:amz:{}:s3", servers.s3_region),
                "--user",
                &format!("{}:{}", servers.s3_key, servers.s3_secret),
                // S3 wants the payload's hash (here of the empty body) as a header.
                "-H",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                &s3_http,
            ]);
            c
        }),
        None,
    ));
    let boto3 = Command::new("python3")
        .args(["-c", "import boto3"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    for n in [1, in_flight] {
        if boto3 {
            let script = format!(
                "import io, time, boto3\n\
                 from boto3.s3.transfer import TransferConfig\n\
                 c = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id={key:?}, \
                 aws_secret_access_key={secret:?}, region_name={region:?})\n\
                 b = io.BytesIO()\n\
                 t = time.perf_counter()\n\
                 c.download_fileobj({bucket:?}, {name:?}, b, Config=TransferConfig(max_concurrency={n}, \
                 multipart_chunksize={request}, use_threads={threads}))\n\
                 print('load-seconds', time.perf_counter() - t)\n\
                 assert b.getbuffer().nbytes == {file_len}\n",
                endpoint = servers.s3_endpoint,
                key = servers.s3_key,
                secret = servers.s3_secret,
                region = servers.s3_region,
                bucket = servers.s3_bucket,
                threads = if n > 1 { "True" } else { "False" },
            );
            planned.push((
                format!("boto3 download_fileobj -> memory, S3, {n} in flight"),
                Box::new(move || {
                    let mut c = Command::new("python3");
                    c.args(["-c", &script]);
                    c
                }),
                None,
            ));
        }
        planned.push((
            format!("plaid, S3 (s3s-fs, SigV4), {n} in flight"),
            plaid_load(&s3, n, &storage),
            Some(n),
        ));
    }
    let mut rows: Vec<Row> = planned
        .iter()
        .map(|(name, _, plaid_row)| Row {
            name: name.clone(),
            times: Vec::new(),
            rss: 0,
            destinations: plaid_row.map(|_| total),
            bound: plaid_row.map(|n| n as u64 * request + (64 << 20)),
        })
        .collect();
    // One warm-up round (the page cache, connections), then the timed ones.
    for round in 0..=rounds {
        for ((_, make, _), row) in planned.iter().zip(rows.iter_mut()) {
            let (wall, peak, out) = measured(&mut make())?;
            if round > 0 {
                row.times.push(timed(&out).unwrap_or(wall));
                row.rss = row.rss.max(peak);
            }
        }
        eprintln!("  round {round} of {rounds} done");
    }
    if !boto3 {
        println!("(boto3 rows left out: `python3 -m pip install boto3` to add them)");
    }
    println!();
    println!(
        "| {:<50} | {:>7} | {:>7} | {:>9} | {:>16} | {:>9} |",
        "row", "GB/s", "s", "peak RSS", "RSS above dest.", "bound"
    );
    println!(
        "|{:-<52}|{:->9}|{:->9}|{:->11}|{:->18}|{:->11}|",
        "", "", "", "", "", ""
    );
    for row in &rows {
        let mut t = row.times.clone();
        t.sort();
        let median = t[t.len() / 2];
        let bytes = if row.destinations.is_some() {
            total
        } else {
            file_len
        };
        let above = row
            .destinations
            .map(|d| human(row.rss.saturating_sub(d)))
            .unwrap_or_else(|| "-".into());
        let bound = row.bound.map(human).unwrap_or_else(|| "-".into());
        println!(
            "| {:<50} | {:>7.2} | {:>7.3} | {:>9} | {:>16} | {:>9} |",
            row.name,
            bytes as f64 / median.as_secs_f64().max(1e-9) / 1e9,
            median.as_secs_f64(),
            human(row.rss),
            above,
            bound
        );
    }
    let _ = std::fs::remove_file(&local);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// `plaid bench-load URL`: open `url`, allocate and pre-fault one host buffer per tensor,
/// load into them (verified) and print `load-seconds S`. The child process of the remote
/// benchmark's plaid rows.
pub fn bench_load(
    url: &str,
    in_flight: u32,
    chunk: u64,
    verify: bool,
    storage: &[String],
) -> plaid::Result<()> {
    let mut options = ReadOptions::default()
        .requests_in_flight(in_flight)?
        .verify(verify);
    if chunk > 0 {
        options = options.request_bytes(chunk)?;
    }
    for kv in storage {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            plaid::Error::InvalidArgument(format!("--storage {kv}: expected KEY=VALUE"))
        })?;
        options = options.storage(k, v)?;
    }
    let d = Deserializer::open(url, options)?;
    let mut buffers: Vec<Vec<u8>> = d
        .tensors()
        .iter()
        .map(|t| vec![1u8; t.nbytes as usize])
        .collect();
    let started = Instant::now();
    let mut slots: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
    d.load(&mut |t: &TensorInfo| {
        Ok(match slots[t.index].take() {
            Some(b) => plaid::Destination::Host(b),
            None => plaid::Destination::Skip,
        })
    })?;
    println!("load-seconds {}", started.elapsed().as_secs_f64());
    Ok(())
}

/// `plaid bench-prepare FILE URL`: write the synthetic model of `size_mib` at `file` and
/// upload it to `url`, streaming it from the file (the remote benchmark's setup, in a
/// process of its own).
pub fn bench_prepare(
    file: &std::path::Path,
    url: &str,
    size_mib: u64,
    storage: &[String],
) -> plaid::Result<()> {
    let tensors = synthetic_model(size_mib << 20);
    crate::bench::write_synthetic(file, &tensors)?;
    let mut options = plaid::options::StorageOptions::default();
    for kv in storage {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            plaid::Error::InvalidArgument(format!("--storage {kv}: expected KEY=VALUE"))
        })?;
        options.set(k, v)?;
    }
    let mut upload = plaid::remote::Upload::create(url, &options)?;
    let io = |e| plaid::Error::Io {
        context: format!("reading {}", file.display()),
        source: e,
    };
    let mut f = std::fs::File::open(file).map_err(io)?;
    let mut piece = vec![0u8; 16 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut piece).map_err(io)?;
        if n == 0 {
            break;
        }
        upload.write(&piece[..n])?;
    }
    upload.finish()
}
