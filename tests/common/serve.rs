//! Test harness: a real `ferry serve` process on loopback, and `ferry send`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub struct Server {
    pub child: Child,
    pub state: PathBuf,
    pub data: String,
    pub control: String,
    pub token: String,
    pub fingerprint: String,
    /// The control token: embedded mode's generated one, or set by the test.
    pub control_token: String,
}

impl Server {
    /// Start `ferry serve` on ephemeral loopback ports (or the given data address).
    pub fn start(state: &Path, extra: &[&str]) -> Server {
        Self::start_on(state, "127.0.0.1:0", extra)
    }

    /// The job is incremental: these tests send to the same appliance again
    /// and again, which a one-shot job refuses once it is Finished.
    pub fn start_on(state: &Path, data: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--incremental"];
        args.extend_from_slice(extra);
        Self::start_job(state, data, &args)
    }

    /// `ferry serve` of a job that only replicates disks (`--no-build`: these
    /// tests send synthetic images, not servers), with these extra arguments
    /// (a one-shot job unless they say `--incremental`).
    pub fn start_job(state: &Path, data: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--no-build"];
        args.extend_from_slice(extra);
        Self::spawn_serve(state, data, &args)
    }

    /// `ferry serve` with its Processing stage (grow, repair, verify), as
    /// in production, with exactly these extra arguments.
    /// An appliance that processes onto `targets` (disk i onto
    /// `targets[i]`) with these tokens and the further config `keys`; its
    /// own boot test is off unless `keys` sets it (the tests boot the
    /// targets on the host afterwards, with the fixture's marker).
    pub fn processing_onto(
        dir: &Path,
        targets: &[PathBuf],
        token: &str,
        control_token: &str,
        keys: &str,
    ) -> Server {
        let mut cfg = format!("token = \"{token}\"\ncontrol_token = \"{control_token}\"\n{keys}");
        if !keys.contains("boot_test") {
            cfg.push_str("boot_test = false\n");
        }
        for (i, t) in targets.iter().enumerate() {
            cfg.push_str(&format!(
                "[[disk]]\nindex = {i}\ntarget = \"{}\"\n",
                t.display()
            ));
        }
        let path = dir.join("ferry.toml");
        std::fs::write(&path, cfg).expect("writing the config");
        let mut server = Server::start_processing(
            &dir.join("state"),
            &["--config", path.to_str().expect("utf-8 path")],
        );
        server.token = token.to_owned();
        server.control_token = control_token.to_owned();
        server
    }

    /// `GET /v1/job` with the control token, parsed.
    pub fn job(&self) -> serde_json::Value {
        let auth = format!("Bearer {}", self.control_token);
        let (status, body) = http(&self.control, "GET", "/v1/job", &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("job JSON")
    }

    pub fn start_processing(state: &Path, extra: &[&str]) -> Server {
        Self::spawn_serve(state, "127.0.0.1:0", extra)
    }

    fn spawn_serve(state: &Path, data: &str, extra: &[&str]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("serve.log"))
            .unwrap();
        let mut child = Command::new(FERRY)
            .args([
                "serve",
                "--data-listen",
                data,
                "--control-listen",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning ferry serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut data, mut control, mut fingerprint) =
            (String::new(), String::new(), String::new());
        let mut line = String::new();
        while control.is_empty() {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().ok();
                panic!(
                    "ferry serve exited before it was ready ({status:?}); its log:\n{}",
                    keep_log(state)
                );
            }
            if let Some(v) = line.trim().strip_prefix("data-listen: ") {
                data = v.to_owned();
            } else if let Some(v) = line.trim().strip_prefix("control-listen: ") {
                control = v.to_owned();
            } else if let Some(v) = line.trim().strip_prefix("fingerprint: ") {
                fingerprint = v.to_owned();
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let token = std::fs::read_to_string(state.join("token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let control_token = std::fs::read_to_string(state.join("control-token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        Server {
            child,
            state: state.to_owned(),
            data,
            control,
            token,
            fingerprint,
            control_token,
        }
    }

    /// The process id of `ferry serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `ferry serve` is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(&self.control, method, path, &[])
    }

    /// A metric's value (the sum over label sets matching `selector`),
    /// scraped with the control token as Prometheus does.
    pub fn metric(&self, selector: &str) -> f64 {
        let (status, body) = self.control("GET", "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| *name == selector)
            .map(|(_, v)| v.parse::<f64>().unwrap())
            .sum()
    }

    pub fn disk_path(&self, index: u32) -> PathBuf {
        self.state.join("disks").join(format!("disk-{index}.img"))
    }

    /// `ferry send` of these disks with the server's token and fingerprint,
    /// as the next round when the last one is handed off: first it starts
    /// that round, as the control plane does once it has its snapshot.
    pub fn send(&self, disks: &[&Path], extra: &[&str]) -> Sent {
        self.start_next_round_if_held();
        self.send_only(disks, extra)
    }

    /// `ferry send`, and nothing else.
    pub fn send_only(&self, disks: &[&Path], extra: &[&str]) -> Sent {
        send_to(&self.data, &self.token, &self.fingerprint, disks, extra)
    }

    /// An authorized control request.
    pub fn control(&self, method: &str, path: &str) -> (u16, String) {
        let auth = format!("Bearer {}", self.control_token);
        http(&self.control, method, path, &[("Authorization", &auth)])
    }

    /// An authorized control request with a JSON body.
    pub fn control_json(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let auth = format!("Bearer {}", self.control_token);
        http_body(
            &self.control,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// POST /v1/job/start when the job is Waiting with its round handed off.
    pub fn start_next_round_if_held(&self) {
        let (status, body) = self.control("GET", "/v1/job");
        if status != 200 {
            return;
        }
        let job: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if job["state"] == "Waiting" && job["held"] == true {
            let (status, body) = self.control("POST", "/v1/job/start");
            assert_eq!(status, 200, "starting the next round: {body}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Sent {
    pub output: Output,
    pub report: serde_json::Value,
}

impl Sent {
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn disk(&self, i: usize, field: &str) -> u64 {
        self.report["disks"][i][field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in report: {}", self.report))
    }
}

pub fn send_to(to: &str, token: &str, fp: &str, disks: &[&Path], extra: &[&str]) -> Sent {
    send_to_within(to, token, fp, disks, extra, Duration::from_secs(1800))
}

/// `ferry send`, killed if it has not ended within `limit` (a sender that
/// hangs fails the test instead of hanging it).
pub fn send_to_within(
    to: &str,
    token: &str,
    fp: &str,
    disks: &[&Path],
    extra: &[&str],
    limit: Duration,
) -> Sent {
    send_by(Path::new(FERRY), to, token, fp, disks, extra, limit, |_| {})
}

/// `ferry send` by the binary `bin` (the released one, say), with the
/// command shaped further by `shape` (a seccomp filter set before exec),
/// killed if it has not ended within `limit`.
#[allow(clippy::too_many_arguments)]
pub fn send_by(
    bin: &Path,
    to: &str,
    token: &str,
    fp: &str,
    disks: &[&Path],
    extra: &[&str],
    limit: Duration,
    shape: impl FnOnce(&mut Command),
) -> Sent {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "send",
        "--to",
        to,
        "--token",
        token,
        "--fingerprint",
        fp,
        "--report",
    ])
    .arg(report.path())
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null());
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    shape(&mut cmd);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ferry send");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            eprintln!("ferry send did not end within {limit:?}: killing it");
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let output = child.wait_with_output().expect("waiting for ferry send");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let report = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Sent { output, report }
}

/// A secret in the file `dir/name`, for `ferry serve --token-file` and its
/// kin (a secret as a plain argument is refused); its path.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("writing a secret file");
    path.to_str().expect("utf-8 path").to_owned()
}

/// A minimal HTTP/1.1 client for the control port.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_body(addr, method, path, headers, "")
}

/// The same, with a request body.
pub fn http_body(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// BLAKE3 of a whole file.
pub fn file_hash(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// A sparse source image of `mib` MiB mixing zeros, text and random data in
/// 1 MiB stripes (pattern repeats every 3 MiB: random, text, zeros), seeded.
pub fn mixed_image(path: &Path, mib: u64, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut text = Vec::with_capacity(1 << 20);
    while text.len() < (1 << 20) {
        text.extend_from_slice(
            format!("line {} of a log file that compresses well\n", text.len()).as_bytes(),
        );
    }
    text.truncate(1 << 20);
    use std::os::unix::fs::FileExt;
    // The last quarter stays zero, as free space on a real disk.
    for i in 0..mib * 3 / 4 {
        match i % 3 {
            0 => {
                rng.fill_bytes(&mut buf);
                f.write_all_at(&buf, i << 20).unwrap();
            }
            1 => f.write_all_at(&text, i << 20).unwrap(),
            _ => {}
        }
    }
    f.sync_all().unwrap();
}

/// Wait until `cond` holds or panic after `secs`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tail of an appliance's log, also copied to the artifacts directory
/// (when there is one) so that it outlives the test's scratch directory.
pub fn keep_log(state: &Path) -> String {
    let path = state.with_extension("serve.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    if let Ok(dir) = std::env::var("FERRY_ARTIFACTS") {
        let name = format!(
            "serve-{}-{}.log",
            std::process::id(),
            state
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("state")
        );
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(name), &text);
    }
    let tail = text.len().saturating_sub(8192);
    let start = (tail..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_owned()
}

/// `dir/ferry.toml` for a job that writes configured targets: the job token
/// and disk N → `targets[N]`.
pub fn target_config(dir: &Path, token: &str, targets: &[&Path]) -> PathBuf {
    let mut text = format!("token = \"{token}\"\n");
    for (i, t) in targets.iter().enumerate() {
        text += &format!("[[disk]]\nindex = {i}\ntarget = \"{}\"\n", t.display());
    }
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP relay on loopback in front of an address, whose live connections
/// can be cut (as a network failure would) or frozen (as a half-open link
/// is: nothing passes, nothing is closed) while it keeps accepting new ones.
pub struct CutProxy {
    pub addr: String,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Freeze the next connection that has relayed this many bytes upstream.
    freeze_at: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections frozen so far.
    pub frozen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CutProxy {
    pub fn start(upstream: &str) -> CutProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let freeze_at = Arc::new(AtomicU64::new(u64::MAX));
        let frozen = Arc::new(AtomicU64::new(0));
        let (up, l, at, fz) = (
            upstream.to_owned(),
            live.clone(),
            freeze_at.clone(),
            frozen.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                {
                    let mut l = l.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(server.try_clone().unwrap());
                }
                let stop = Arc::new(AtomicBool::new(false));
                for (upstream, mut from, mut to) in [
                    (
                        true,
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                    ),
                    (false, server, client),
                ] {
                    let (at, fz, stop) = (at.clone(), fz.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut relayed = 0u64;
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if upstream && relayed + n as u64 >= at.load(Ordering::SeqCst) {
                                // Once: the next connections pass.
                                at.store(u64::MAX, Ordering::SeqCst);
                                fz.fetch_add(1, Ordering::SeqCst);
                                stop.store(true, Ordering::SeqCst);
                            }
                            if stop.load(Ordering::SeqCst) {
                                // A black hole: hold both sockets open, pass nothing.
                                loop {
                                    std::thread::sleep(Duration::from_secs(3600));
                                }
                            }
                            relayed += n as u64;
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy {
            addr,
            live,
            freeze_at,
            frozen,
        }
    }

    /// Cut every connection relayed now.
    pub fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Freeze the next connection once it has relayed `bytes` upstream:
    /// from then on it passes nothing either way and stays open.
    pub fn freeze_after(&self, bytes: u64) {
        self.freeze_at
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The sender's output shows every step of the round's pipeline and its
/// end: processed, handed off, Finished.
pub fn assert_followed_the_round(stderr: &str) {
    for step in [
        "check", "grow", "mount", "repair", "resync", "verify", "handoff",
    ] {
        assert!(
            stderr.contains(&format!("runs the round's pipeline: {step}")),
            "no step {step} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(
            "the round is processed (check, grow, mount, repair, resync, verify) and handed off; the job is Finished"
        ),
        "{stderr}"
    );
}
