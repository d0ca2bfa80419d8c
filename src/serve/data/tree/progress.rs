//! File mode's progress, for `GET /v1/job`: what the sessions of the
//! current round received (entries, files, content bytes) and the rate
//! since the round's first tree was opened.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct FilesProgress {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    view: FilesView,
    started: Option<Instant>,
}

/// As `/v1/job` shows it under `files`.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct FilesView {
    /// Trees opened in this round.
    pub trees: u64,
    /// Entries received (files, directories, links, nodes) and removals.
    pub entries: u64,
    pub files: u64,
    pub removed: u64,
    /// Bytes of content received, as sent (compressed pieces at their
    /// compressed size; holes are not sent).
    pub bytes: u64,
    /// Those bytes per second since the round's first tree was opened.
    pub rate_bps: f64,
}

impl FilesProgress {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A tree was opened.
    pub(crate) fn tree_opened(&self) {
        self.with(|i| {
            i.started.get_or_insert_with(Instant::now);
            i.view.trees += 1;
        });
    }

    pub fn entry(&self, file: bool) {
        self.with(|i| {
            i.view.entries += 1;
            i.view.files += u64::from(file);
        });
    }

    pub fn removed(&self) {
        self.with(|i| i.view.removed += 1);
    }

    pub fn bytes(&self, n: u64) {
        self.with(|i| i.view.bytes += n);
    }

    /// A new round starts counting from zero.
    pub fn reset(&self) {
        self.with(|i| *i = Inner::default());
    }

    /// None before any tree was opened (a block-mode job).
    pub fn view(&self) -> Option<FilesView> {
        self.with(|i| {
            let started = i.started?;
            let secs = started.elapsed().as_secs_f64().max(0.001);
            Some(FilesView {
                rate_bps: i.view.bytes as f64 / secs,
                ..i.view
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_arrives() {
        let p = FilesProgress::default();
        assert_eq!(p.view(), None);
        p.tree_opened();
        p.entry(true);
        p.entry(false);
        p.removed();
        p.bytes(100);
        let v = p.view().unwrap();
        assert_eq!(
            (v.trees, v.entries, v.files, v.removed, v.bytes),
            (1, 2, 1, 1, 100)
        );
        assert!(v.rate_bps > 0.0);
        p.reset();
        assert_eq!(p.view(), None);
    }
}
