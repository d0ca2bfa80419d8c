//! What answered when the TLS handshake met something other than TLS: an
//! operator who typed `--to host:8080` learns that this is ferry's control
//! port and which port is the data port; any other service is named as not
//! speaking ferry's protocol. Either is a mistake in `--to`, not a passing
//! network failure, so the sender does not retry it.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::job::errors::{coded, ErrorCode};

/// Each step of the probe: the handshake has failed already, so this only
/// decides how the error reads.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// More than `/v1/identity` answers; a longer reply is some other service.
const MAX_REPLY: usize = 16 << 10;

/// The handshake with `to` failed with `err` before any certificate came:
/// when the peer sent bytes that are not TLS, the error that names what it
/// is (WRONG_SERVICE). None when nothing says so (a cut connection), which
/// stays a network error.
pub(crate) async fn wrong_service(to: &str, err: &std::io::Error) -> Option<anyhow::Error> {
    let not_tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_)));
    if !not_tls {
        return None;
    }
    let detail = match ask_http(to).await {
        // An appliance bound to an ephemeral port may not know its number.
        Some(Http::Ferry { data_port: 0 }) => format!(
            "{to}: this is ferry's control port (HTTP); the data port is another (8703 unless the appliance's data_listen says otherwise)"
        ),
        Some(Http::Ferry { data_port }) => {
            format!("{to}: this is ferry's control port (HTTP); the data port is {data_port}")
        }
        Some(Http::Other) => {
            format!("the service at {to} does not speak ferry's protocol (it answers HTTP)")
        }
        None => format!("the service at {to} does not speak ferry's protocol"),
    };
    Some(coded(ErrorCode::WrongService, detail))
}

/// What an HTTP request to the peer told.
#[derive(Debug, PartialEq, Eq)]
enum Http {
    /// An appliance's control port: its `/v1/identity` names the data port.
    Ferry { data_port: u16 },
    /// Some other HTTP service.
    Other,
}

/// The part of `/v1/identity` that tells an appliance.
#[derive(Deserialize)]
struct Identity {
    #[allow(dead_code)] // required, so that another service's JSON does not pass
    version: String,
    data_port: u16,
}

/// Ask the peer for `/v1/identity`; None when it does not answer HTTP.
async fn ask_http(to: &str) -> Option<Http> {
    let mut s = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(to))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET /v1/identity HTTP/1.0\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(PROBE_TIMEOUT, s.write_all(request.as_bytes()))
        .await
        .ok()?
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Stop at once when the first bytes are not HTTP's.
    while reply.len() < MAX_REPLY
        && !complete(&reply)
        && b"HTTP/".starts_with(&reply[..reply.len().min(5)])
    {
        match tokio::time::timeout(PROBE_TIMEOUT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    parse_reply(&reply)
}

/// Whether a reply holds its head and as much body as its Content-Length says.
fn complete(reply: &[u8]) -> bool {
    let Some((head, body)) = split_head(reply) else {
        return false;
    };
    content_length(head).is_some_and(|n| body.len() >= n)
}

fn split_head(reply: &[u8]) -> Option<(&str, &[u8])> {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&reply[..end]).ok()?;
    Some((head, &reply[end + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn parse_reply(reply: &[u8]) -> Option<Http> {
    if !reply.starts_with(b"HTTP/") {
        return None;
    }
    let ferry = split_head(reply).and_then(|(head, body)| {
        let ok = head.split(' ').nth(1) == Some("200");
        let id: Identity = serde_json::from_slice(body).ok()?;
        ok.then_some(id.data_port)
    });
    Some(match ferry {
        Some(data_port) => Http::Ferry { data_port },
        None => Http::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_tell_ferrys_control_port_from_other_services() {
        let cases: [(&str, &[u8], Option<Http>); 5] = [
            (
                "an appliance's control port",
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 63\r\n\r\n{\"version\":\"0.1.0\",\"tls_fingerprint\":\"ab\",\"data_port\":8703}",
                Some(Http::Ferry { data_port: 8703 }),
            ),
            (
                "another web server",
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found",
                Some(Http::Other),
            ),
            (
                "JSON that is not an identity",
                b"HTTP/1.0 200 OK\r\n\r\n{\"data_port\":1}",
                Some(Http::Other),
            ),
            ("an SSH server", b"SSH-2.0-OpenSSH_9.2\r\n", None),
            ("nothing", b"", None),
        ];
        for (name, reply, want) in cases {
            assert_eq!(parse_reply(reply), want, "{name}");
        }
    }

    #[test]
    fn a_reply_is_complete_with_its_whole_body() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"
        ));
        // Without a length the body ends when the peer closes.
        assert!(!complete(b"HTTP/1.0 200 OK\r\n\r\nabcd"));
    }
}
