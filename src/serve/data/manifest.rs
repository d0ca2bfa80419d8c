//! The manifest a sender gets when it opens a disk or a tree: what the
//! ledger holds of it, page by page, so that memory and the wire cost what
//! one page holds whatever the disk's or tree's size. One loop sends both
//! ([`send`]); each mode says how it reads a page ([`Pages`]).

use std::sync::Arc;

use anyhow::{Context, Result};

use super::conn::{send_within, Conn};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::Ledger;
use crate::wire::frame::ManifestEntry;
use crate::wire::{self, Frame};

/// A manifest read from the ledger one page at a time.
pub(crate) trait Pages: Send + 'static {
    /// What a page that cannot be sent was: the error's context.
    const SENDING: &'static str;

    /// Read the next page from the ledger (a blocking read): the frame
    /// that carries it, and whether it is the last.
    fn next_page(&mut self, ledger: &Ledger) -> Result<(Frame, bool)>;
}

/// Send every page of `pages`, each read off the async threads, until the
/// last; `pages` comes back with what it counted.
pub(crate) async fn send<P: Pages>(
    conn: &mut Conn,
    ledger: &Arc<Ledger>,
    mut pages: P,
) -> Result<P> {
    loop {
        let ledger = Arc::clone(ledger);
        let (back, page) = tokio::task::spawn_blocking(move || {
            let page = pages.next_page(&ledger);
            (pages, page)
        })
        .await
        .context("reading the ledger")?;
        pages = back;
        let (frame, last) = page?;
        send_within(conn, frame).await.context(P::SENDING)?;
        if last {
            return Ok(pages);
        }
    }
}

/// A disk's committed chunks, by index range: each page says which range
/// it covers, so that the sender knows every chunk in it that is not
/// listed is missing.
pub(crate) struct DiskManifest {
    disk: u32,
    /// Chunks of the disk.
    count: u64,
    fresh: bool,
    /// Where the next page starts.
    first: u64,
    page: usize,
}

impl DiskManifest {
    pub(crate) fn new(disk: u32, count: u64, fresh: bool) -> Self {
        DiskManifest {
            disk,
            count,
            fresh,
            first: 0,
            page: wire::MANIFEST_PAGE,
        }
    }
}

impl Pages for DiskManifest {
    const SENDING: &'static str = "sending the manifest";

    fn next_page(&mut self, ledger: &Ledger) -> Result<(Frame, bool)> {
        let entries = ledger
            .committed(self.disk, self.first..self.count, self.page)
            .code(ErrorCode::LedgerFailed)?;
        let end = page_end(&entries, self.count, self.page);
        let frame = Frame::Manifest {
            disk: self.disk,
            first: self.first,
            end,
            fresh: self.fresh,
            last: end == self.count,
            entries,
        };
        self.first = end;
        Ok((frame, end == self.count))
    }
}

/// Where a page of a disk's manifest ends: a full page just after its last
/// entry (more may follow), any other at the disk's end.
fn page_end(entries: &[ManifestEntry], count: u64, page: usize) -> u64 {
    match entries.last() {
        Some(&(last, _)) if entries.len() == page => last + 1,
        _ => count,
    }
}

/// A tree's committed entries, by path, with their stamps.
pub(crate) struct TreeManifest {
    tree: u32,
    /// The path the next page starts after.
    after: Option<Vec<u8>>,
    /// Entries sent so far.
    pub(crate) sent: usize,
    page_entries: usize,
    page_bytes: usize,
}

impl TreeManifest {
    pub(crate) fn new(tree: u32) -> Self {
        TreeManifest {
            tree,
            after: None,
            sent: 0,
            page_entries: crate::entry::MANIFEST_PAGE_ENTRIES,
            page_bytes: crate::entry::MANIFEST_PAGE_BYTES,
        }
    }
}

impl Pages for TreeManifest {
    const SENDING: &'static str = "sending the tree's manifest";

    fn next_page(&mut self, ledger: &Ledger) -> Result<(Frame, bool)> {
        let rows = ledger
            .entries(
                self.tree,
                self.after.as_deref(),
                self.page_entries,
                self.page_bytes,
            )
            .code(ErrorCode::LedgerFailed)?;
        let last = tree_page_is_last(&rows, self.page_entries, self.page_bytes);
        self.after = rows.last().map(|(p, _)| p.clone());
        let mut entries = Vec::with_capacity(rows.len());
        for (path, raw) in rows {
            let stamp = crate::entry::Stamp::from_bytes(&raw).ok_or_else(|| {
                coded(
                    ErrorCode::LedgerFailed,
                    format!(
                        "the ledger's entry of `{}` is damaged",
                        crate::entry::display(&path)
                    ),
                )
            })?;
            entries.push((path, stamp));
        }
        self.sent += entries.len();
        let frame = Frame::TreeManifest {
            tree: self.tree,
            last,
            entries,
        };
        Ok((frame, last))
    }
}

/// The ledger cuts a page of entries at `page_entries` rows or once it
/// holds `page_bytes` (the row that crosses included): a page cut by
/// neither is the last.
fn tree_page_is_last(rows: &[(Vec<u8>, Vec<u8>)], page_entries: usize, page_bytes: usize) -> bool {
    rows.len() < page_entries
        && rows.iter().map(|(p, v)| p.len() + v.len()).sum::<usize>() < page_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Kind, Stamp, Time};

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.redb")).unwrap();
        (dir, ledger)
    }

    /// Every page of `pages`, as the sender would get them.
    fn pages<P: Pages>(ledger: &Ledger, mut pages: P) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let (frame, last) = pages.next_page(ledger).unwrap();
            out.push(frame);
            if last || out.len() > 10 {
                return out;
            }
        }
    }

    fn manifest(first: u64, end: u64, last: bool, entries: &[u64]) -> Frame {
        Frame::Manifest {
            disk: 1,
            first,
            end,
            fresh: true,
            last,
            entries: entries.iter().map(|&i| (i, [i as u8; 32])).collect(),
        }
    }

    #[test]
    fn a_full_page_of_a_disk_ends_after_its_last_entry() {
        let h = [0u8; 32];
        let cases: [(&str, &[ManifestEntry], u64); 4] = [
            ("empty", &[], 10),
            ("short page", &[(2, h)], 10),
            ("full page", &[(2, h), (5, h)], 6),
            ("full page at the end", &[(8, h), (9, h)], 10),
        ];
        for (name, entries, want) in cases {
            assert_eq!(page_end(entries, 10, 2), want, "{name}");
        }
    }

    #[test]
    fn a_disk_manifest_covers_the_disk_in_pages() {
        let (_dir, ledger) = ledger();
        let committed: Vec<ManifestEntry> =
            [1, 2, 4, 7].iter().map(|&i| (i, [i as u8; 32])).collect();
        ledger.commit_chunks(1, &committed).unwrap();
        let mut m = DiskManifest::new(1, 9, true);
        m.page = 2;
        assert_eq!(
            pages(&ledger, m),
            vec![
                manifest(0, 3, false, &[1, 2]),
                manifest(3, 8, false, &[4, 7]),
                manifest(8, 9, true, &[]),
            ]
        );
    }

    #[test]
    fn a_disk_with_nothing_committed_has_one_empty_page() {
        let (_dir, ledger) = ledger();
        assert_eq!(
            pages(&ledger, DiskManifest::new(1, 9, true)),
            vec![manifest(0, 9, true, &[])]
        );
    }

    #[test]
    fn a_tree_page_is_the_last_unless_the_ledger_cut_it() {
        let row = |n: usize| (vec![b'p'; n], vec![0u8; 4]);
        let cases = [
            ("empty", vec![], true),
            ("short", vec![row(1)], true),
            (
                "cut at the entry limit",
                vec![row(1), row(1), row(1)],
                false,
            ),
            ("cut at the byte limit", vec![row(96)], false),
            ("just under the bytes", vec![row(95)], true),
        ];
        for (name, rows, want) in cases {
            assert_eq!(tree_page_is_last(&rows, 3, 100), want, "{name}");
        }
    }

    fn stamp(size: u64) -> Stamp {
        Stamp {
            kind: Kind::File,
            size,
            mtime: Time::default(),
            ctime: Time::default(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            hash: [0; 32],
        }
    }

    #[test]
    fn a_tree_manifest_pages_by_path_and_counts_what_it_sent() {
        let (_dir, ledger) = ledger();
        let put: Vec<(Vec<u8>, Vec<u8>)> = [b"a".as_slice(), b"b", b"c"]
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_vec(), stamp(i as u64).to_bytes().to_vec()))
            .collect();
        ledger.commit_entries(3, &put, &[]).unwrap();
        let mut m = TreeManifest::new(3);
        m.page_entries = 2;
        let mut frames = Vec::new();
        loop {
            let (frame, last) = m.next_page(&ledger).unwrap();
            frames.push(frame);
            if last {
                break;
            }
        }
        let page = |last: bool, paths: &[(&[u8], u64)]| Frame::TreeManifest {
            tree: 3,
            last,
            entries: paths.iter().map(|(p, s)| (p.to_vec(), stamp(*s))).collect(),
        };
        assert_eq!(
            frames,
            vec![
                page(false, &[(b"a", 0), (b"b", 1)]),
                page(true, &[(b"c", 2)]),
            ]
        );
        assert_eq!(m.sent, 3);
    }

    #[test]
    fn a_damaged_entry_fails_the_manifest_with_ledger_failed() {
        let (_dir, ledger) = ledger();
        ledger
            .commit_entries(0, &[(b"etc/x".to_vec(), vec![1, 2, 3])], &[])
            .unwrap();
        let err = TreeManifest::new(0).next_page(&ledger).unwrap_err();
        assert_eq!(
            crate::job::errors::describe(&err),
            (
                ErrorCode::LedgerFailed,
                "the ledger's entry of `etc/x` is damaged".to_owned()
            )
        );
    }
}
