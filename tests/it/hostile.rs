//! Nobody without a token locks anyone out: connections held open or
//! trickled into on both ports, and wrong logins from the sender's own
//! address, while a real `ferry send` completes and `/livez` answers.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::serve::*;

/// Hold `idle` silent connections and `trickling` ones that send `bytes`
/// one at a time, each second, to `addr` until `stop`.
fn hold(
    addr: &str,
    idle: usize,
    trickling: usize,
    bytes: &'static [u8],
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut held = Vec::new();
    for _ in 0..idle {
        if let Ok(s) = TcpStream::connect(addr) {
            held.push(s);
        }
    }
    let mut threads = Vec::new();
    let stop2 = stop.clone();
    threads.push(std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(held);
    }));
    for _ in 0..trickling {
        let (addr, stop) = (addr.to_owned(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                return;
            };
            for b in bytes.iter().cycle().take(600) {
                if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }));
    }
    threads
}

#[test]
fn held_and_trickled_connections_on_both_ports_do_not_stop_a_send_or_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 16, 3);
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // A TLS record header, then garbage, a byte a second; HTTP header bytes.
    let mut threads = hold(
        &s.data,
        200,
        50,
        b"\x16\x03\x01\x02\x00xxxxxxxx",
        stop.clone(),
    );
    threads.extend(hold(
        &s.control,
        200,
        50,
        b"GET /livez HTTP/1.1\r\nX-Slow: aaaaaaaa",
        stop.clone(),
    ));
    std::thread::sleep(Duration::from_secs(2));

    let probe = Instant::now();
    let (status, body) = s.http("GET", "/livez");
    let probe = probe.elapsed();
    assert_eq!((status, body.trim()), (200, "ok"));
    let sent = s.send_only(&[&src], &["--retries", "0"]);
    assert!(
        sent.ok(),
        "the real sender was locked out: {}",
        sent.stderr()
    );
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));
    let (status, _) = s.http("GET", "/readyz");
    assert_eq!(status, 200);
    eprintln!(
        "under 250 held connections per port: /livez answered in {probe:?}; {} data connections were cut for newer ones",
        s.metric("ferry_data_connections_evicted_total"),
    );
    assert!(s.metric("ferry_data_connections_evicted_total") > 0.0);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn wrong_logins_from_the_senders_address_do_not_stop_the_real_sender() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 4);
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);
    // An attacker on the same address tries 16 wrong tokens at once.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let codes: Vec<String> = rt.block_on(async {
        let tries = (0..16).map(|i| {
            let (to, fp) = (s.data.clone(), s.fingerprint.clone());
            tokio::spawn(async move {
                let err =
                    ferry::send::client::connect(&to, &format!("wrong-token-{i:02}-xxxxxxxx"), &fp)
                        .await
                        .expect_err("a wrong token is refused");
                ferry::job::errors::find_coded(&err)
                    .map(|c| c.code.to_string())
                    .unwrap_or_default()
            })
        });
        let mut out = Vec::new();
        for t in tries {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(
        codes
            .iter()
            .all(|c| c == "AUTH_FAILED" || c == "AUTH_RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|c| c == "AUTH_RATE_LIMITED"),
        "the address is over its limit: {codes:?}"
    );
    // The address is over its limit, but a correct proof is never refused.
    let sent = s.send_only(&[&src], &["--retries", "0"]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));
    assert_eq!(s.metric("ferry_auth_failures_total"), 16.0);
}
