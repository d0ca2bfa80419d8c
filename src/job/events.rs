//! The job's events, in order, each with a sequence number of its own:
//! status changes, the pipeline's steps, the round's check. The webhook
//! POSTs each one; `GET /v1/job/events?after=N` returns them again, so a
//! control plane that missed a webhook (or was restarted) catches up.
//!
//! Kept as JSON lines in `<state-dir>/events.jsonl`, bounded: past twice
//! [`KEEP`] lines the file is rewritten with the last [`KEEP`] (atomically),
//! and a reader asking for older events is told they are gone (`gap`).
//! A torn last line (a crash in the middle of an append) is dropped when
//! the log is opened.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How many events are kept.
pub const KEEP: usize = 1000;

/// One event: its sequence number, its kind (`job.status_changed`,
/// `job.step_changed`, `job.checked`) and its body's fields, kept as the
/// JSON text the webhook POSTs (`{"event_seq":N,"event":KIND,...}`, the
/// body's fields in their own order).
#[derive(Debug, Clone)]
pub struct Event {
    pub event_seq: u64,
    pub event: String,
    json: Box<serde_json::value::RawValue>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// The two fields every event line starts with.
#[derive(Deserialize)]
struct Head {
    event_seq: u64,
    event: String,
}

impl Event {
    fn new(event_seq: u64, kind: &str, body: &impl Serialize) -> Result<Event> {
        let body = serde_json::to_string(body).context("encoding an event")?;
        let fields = body
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .context("an event's body is a JSON object")?;
        let kind_json = serde_json::to_string(kind).context("encoding an event")?;
        let sep = if fields.is_empty() { "" } else { "," };
        let json = serde_json::value::RawValue::from_string(format!(
            "{{\"event_seq\":{event_seq},\"event\":{kind_json}{sep}{fields}}}"
        ))
        .context("encoding an event")?;
        Ok(Event {
            event_seq,
            event: kind.to_owned(),
            json,
        })
    }

    fn parse(line: &str) -> Option<Event> {
        let head: Head = serde_json::from_str(line).ok()?;
        let json = serde_json::value::RawValue::from_string(line.to_owned()).ok()?;
        Some(Event {
            event_seq: head.event_seq,
            event: head.event,
            json,
        })
    }

    /// The event as the webhook POSTs it.
    pub fn json(&self) -> &str {
        self.json.get()
    }
}

struct Inner {
    /// The kept events, oldest first.
    events: VecDeque<Event>,
    next_seq: u64,
    /// Lines in the file (kept and not yet compacted away).
    lines: usize,
}

/// The log: in memory, and on disk when it has a path.
pub struct EventLog {
    path: Option<PathBuf>,
    keep: usize,
    inner: Mutex<Inner>,
}

/// What a reader gets.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub events: Vec<Event>,
    /// The last event's number (0: none yet).
    pub last_event_seq: u64,
    /// The oldest event still kept (None: none yet).
    pub oldest_kept: Option<u64>,
    /// Events after `after` that are no longer kept: read GET /v1/job for
    /// the job as it is now.
    pub gap: bool,
    /// More events follow than the page's limit took.
    pub more: bool,
}

impl EventLog {
    /// A log that lives in memory only (tests, tools).
    pub fn in_memory() -> EventLog {
        EventLog {
            path: None,
            keep: KEEP,
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
                lines: 0,
            }),
        }
    }

    /// Open (or start) the log at `path`.
    pub fn open(path: &Path) -> Result<EventLog> {
        Self::open_keeping(path, KEEP)
    }

    pub(crate) fn open_keeping(path: &Path, keep: usize) -> Result<EventLog> {
        let mut events = VecDeque::new();
        let mut lines = 0;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if !text.is_empty() && !text.ends_with('\n') {
                    // Cut the torn line off, or the next append would
                    // continue it.
                    let whole = text.rfind('\n').map_or(0, |i| i + 1);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_len(whole as u64))
                        .with_context(|| format!("cutting a torn line off {}", path.display()))?;
                }
                for line in text.lines() {
                    lines += 1;
                    // A torn last line (a crash mid-append) is dropped.
                    if let Some(e) = Event::parse(line) {
                        events.push_back(e);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        while events.len() > keep {
            events.pop_front();
        }
        let next_seq = events.back().map_or(1, |e| e.event_seq + 1);
        let log = EventLog {
            path: Some(path.to_owned()),
            keep: keep.max(1),
            inner: Mutex::new(Inner {
                events,
                next_seq,
                lines,
            }),
        };
        Ok(log)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event of `kind` with `body`'s fields (an object); returns
    /// it with its number. Durable before it returns.
    pub fn append(&self, kind: &str, body: &impl Serialize) -> Result<Event> {
        let mut inner = self.lock();
        let event = Event::new(inner.next_seq, kind, body)?;
        if let Some(path) = &self.path {
            let mut line = event.json().as_bytes().to_vec();
            line.push(b'\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.write_all(&line)
                .and_then(|()| f.sync_data())
                .with_context(|| format!("appending to {}", path.display()))?;
            inner.lines += 1;
        }
        inner.next_seq += 1;
        inner.events.push_back(event.clone());
        while inner.events.len() > self.keep {
            inner.events.pop_front();
        }
        if inner.lines > 2 * self.keep {
            self.compact(&mut inner)?;
        }
        Ok(event)
    }

    /// Rewrite the file with the kept events only.
    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = Vec::new();
        for e in &inner.events {
            text.extend_from_slice(e.json().as_bytes());
            text.push(b'\n');
        }
        // A new file beside it, made durable, renamed over it: a crash
        // leaves the old log or the new one.
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Some(dir) = path.parent() {
            // The rename is durable once the directory is.
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        inner.lines = inner.events.len();
        Ok(())
    }

    /// The events after `after`, at most `limit` of them.
    pub fn since(&self, after: u64, limit: usize) -> Page {
        let inner = self.lock();
        let oldest = inner.events.front().map(|e| e.event_seq);
        let last = inner.next_seq - 1;
        let mut events: Vec<Event> = inner
            .events
            .iter()
            .filter(|e| e.event_seq > after)
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        let more = events.len() > limit;
        events.truncate(limit);
        Page {
            gap: oldest.is_some_and(|o| after + 1 < o),
            events,
            last_event_seq: last,
            oldest_kept: oldest,
            more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_across_a_reopen_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let log = EventLog::open_keeping(&path, 3).unwrap();
        for i in 0..3 {
            let e = log
                .append(
                    "job.step_changed",
                    &serde_json::json!({"step": format!("s{i}")}),
                )
                .unwrap();
            assert_eq!(e.event_seq, i + 1);
        }
        let p = log.since(1, 10);
        assert_eq!(
            p.events.iter().map(|e| e.event_seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(
            (p.last_event_seq, p.oldest_kept, p.gap, p.more),
            (3, Some(1), false, false)
        );
        assert_eq!(
            serde_json::to_string(&p.events[0]).unwrap(),
            r#"{"event_seq":2,"event":"job.step_changed","step":"s1"}"#
        );

        // A torn last line is cut off; numbering goes on after the last
        // whole one, and the next line starts a line of its own.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"event_seq\":4,\"ev")
            .unwrap();
        let log = EventLog::open_keeping(&path, 3).unwrap();
        assert_eq!(
            log.append("job.checked", &serde_json::json!({}))
                .unwrap()
                .event_seq,
            4
        );
        // Past the bound: the oldest are gone, and a reader behind them is told.
        for _ in 0..4 {
            log.append("job.checked", &serde_json::json!({})).unwrap();
        }
        let p = log.since(0, 2);
        assert_eq!(p.oldest_kept, Some(6));
        assert!(p.gap);
        assert!(p.more);
        assert_eq!(
            p.events.iter().map(|e| e.event_seq).collect::<Vec<_>>(),
            [6, 7]
        );
        // The file was compacted to what is kept (and stays readable).
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 6, "{lines} lines");
        let again = EventLog::open_keeping(&path, 3).unwrap();
        assert_eq!(
            again
                .since(0, 10)
                .events
                .iter()
                .map(|e| e.event_seq)
                .collect::<Vec<_>>(),
            [6, 7, 8]
        );
        assert_eq!(again.since(0, 10).last_event_seq, 8);
        assert!(!again.since(5, 10).gap, "after 5 the next kept is 6");
    }

    #[test]
    fn an_events_text_keeps_its_bodys_field_order() {
        #[derive(Serialize)]
        struct Body {
            job_id: &'static str,
            b: u32,
            a: u32,
        }
        let log = EventLog::in_memory();
        let e = log
            .append(
                "job.x",
                &Body {
                    job_id: "j",
                    b: 2,
                    a: 1,
                },
            )
            .unwrap();
        assert_eq!(
            e.json(),
            r#"{"event_seq":1,"event":"job.x","job_id":"j","b":2,"a":1}"#
        );
        let e = log.append("job.y", &serde_json::json!({})).unwrap();
        assert_eq!(e.json(), r#"{"event_seq":2,"event":"job.y"}"#);
        assert!(log.append("job.z", &3).is_err(), "a body is an object");
    }
}
