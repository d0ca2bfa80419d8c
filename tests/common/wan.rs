//! A long link on loopback: a TCP relay that delays every byte by a fixed
//! time each way and holds at most a window of bytes in flight per
//! connection and direction, counted from when it reads them until the
//! acknowledgement of a real link would come back (one delay after it
//! delivered them). One TCP stream through it moves at most a window per
//! round trip, as over a real link of that round trip.
//!
//! The bytes wait in kernel pipes, moved in and out with `splice`: the
//! relay shares the machine's cores with both ends, and a relay that
//! copied every byte twice through its own buffers would cost more CPU per
//! GiB than the sender and the appliance together, and measure itself.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, splice, FcntlArg, SpliceFFlags};

/// What one pipe of the relay holds at most.
const PIPE_BYTES: usize = 1 << 20;

pub struct WanProxy {
    pub addr: String,
    /// Connections relayed so far.
    pub connections: Arc<AtomicU64>,
}

/// A kernel pipe holding bytes on their way.
struct Segment {
    read: OwnedFd,
    write: OwnedFd,
}

impl Segment {
    fn new() -> Segment {
        let (read, write) = nix::unistd::pipe().expect("a pipe for the relay");
        // As much as the kernel allows; a smaller pipe only means more of them.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32));
        Segment { read, write }
    }
}

struct Pipe {
    /// Bytes read and not yet delivered, with when they are due.
    queue: VecDeque<(Instant, Segment, usize)>,
    /// Pipes emptied, to fill again.
    free: Vec<Segment>,
    /// Bytes delivered whose acknowledgement has not come back yet.
    unacked: VecDeque<(Instant, usize)>,
    in_flight: usize,
    closed: bool,
}

struct Shared {
    pipe: Mutex<Pipe>,
    cond: Condvar,
}

impl WanProxy {
    /// Relay to `upstream` with `delay` each way and `window` bytes in
    /// flight per connection and direction.
    pub fn start(upstream: &str, delay: Duration, window: usize) -> WanProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let connections = Arc::new(AtomicU64::new(0));
        let (up, count) = (upstream.to_owned(), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    direction(from, to, delay, window);
                }
            }
        });
        WanProxy { addr, connections }
    }
}

fn direction(from: TcpStream, to: TcpStream, delay: Duration, window: usize) {
    let shared = Arc::new(Shared {
        pipe: Mutex::new(Pipe {
            queue: VecDeque::new(),
            free: Vec::new(),
            unacked: VecDeque::new(),
            in_flight: 0,
            closed: false,
        }),
        cond: Condvar::new(),
    });
    let reader = Arc::clone(&shared);
    std::thread::spawn(move || {
        loop {
            // Read no more than the window leaves room for.
            let (room, seg) = {
                let mut p = reader.pipe.lock().unwrap();
                loop {
                    let now = Instant::now();
                    while p.unacked.front().is_some_and(|&(at, _)| at <= now) {
                        let (_, n) = p.unacked.pop_front().unwrap();
                        p.in_flight -= n;
                    }
                    if p.in_flight < window {
                        let seg = p.free.pop().unwrap_or_else(Segment::new);
                        break (window - p.in_flight, seg);
                    }
                    let wait = p
                        .unacked
                        .front()
                        .map_or(delay, |&(at, _)| at.saturating_duration_since(now));
                    p = reader.cond.wait_timeout(p, wait).unwrap().0;
                }
            };
            let n = match splice(
                &from,
                None,
                &seg.write,
                None,
                room.min(PIPE_BYTES),
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut p = reader.pipe.lock().unwrap();
            p.in_flight += n;
            p.queue.push_back((Instant::now() + delay, seg, n));
            reader.cond.notify_all();
        }
        reader.pipe.lock().unwrap().closed = true;
        reader.cond.notify_all();
    });
    std::thread::spawn(move || loop {
        let (due, seg, n) = {
            let mut p = shared.pipe.lock().unwrap();
            loop {
                if let Some(front) = p.queue.pop_front() {
                    break front;
                }
                if p.closed {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                p = shared.cond.wait(p).unwrap();
            }
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let mut left = n;
        while left > 0 {
            match splice(
                &seg.read,
                None,
                &to,
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) | Err(_) => {
                    from_shutdown(&shared);
                    return;
                }
                Ok(k) => left -= k,
            }
        }
        let mut p = shared.pipe.lock().unwrap();
        p.unacked.push_back((Instant::now() + delay, n));
        p.free.push(seg);
        shared.cond.notify_all();
    });
}

/// The far end is gone: stop taking bytes for it.
fn from_shutdown(shared: &Shared) {
    let mut p = shared.pipe.lock().unwrap();
    p.closed = true;
    p.queue.clear();
    shared.cond.notify_all();
}
