//! The job's ledger: what is committed, in an embedded transactional store.
//!
//! A chunk is recorded here only after its bytes are durable on the target;
//! after a crash, everything in the ledger is on disk and the sender re-sends
//! the rest. Every write is a durable (fsynced) redb transaction.

use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition,
    TableHandle, Value, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, Code, ErrorCode};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DISKS: TableDefinition<u32, &[u8]> = TableDefinition::new("disks");
const CHUNKS: TableDefinition<(u32, u64), [u8; 32]> = TableDefinition::new("chunks");
/// File mode's committed entries: the tree's index (4 bytes, big-endian)
/// and the entry's path → the entry's stamp, opaque here.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");

fn entry_key(tree: u32, path: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + path.len());
    k.extend_from_slice(&tree.to_be_bytes());
    k.extend_from_slice(path);
    k
}

/// What the job knows about one target disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Size of the source disk, as announced by the first sender.
    pub size: u64,
    pub chunk_size: u32,
    /// The target read as zeros when the job began (a new sparse file), so a
    /// chunk without a ledger entry is known to be zero.
    pub fresh: bool,
    /// Where the disk is written.
    pub target: String,
}

impl DiskRecord {
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Bytes of chunk `index` (the last one may be short).
    pub(crate) fn chunk_len(&self, index: u64) -> u64 {
        let cs = u64::from(self.chunk_size);
        self.size.saturating_sub(index.saturating_mul(cs)).min(cs)
    }
}

/// The meta key of the names the source knew disk `index` by (`/dev/sda`,
/// its by-id links), as the sender announced them.
pub(crate) fn names_key(index: u32) -> String {
    format!("names/{index}")
}

pub struct Ledger {
    db: Database,
}

impl Ledger {
    /// Open the ledger at `path`, creating it (mode 0600: it names the
    /// migrated disks and holds their hashes) if it does not exist. A file
    /// that is not a ledger, or a damaged one, is LEDGER_FAILED naming the
    /// file and what to do, never a panic.
    pub fn open(path: &Path) -> Result<Ledger> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening the job ledger {}", path.display()))
            .code(ErrorCode::LedgerFailed)?;
        let mode = file
            .metadata()
            .with_context(|| format!("inspecting the job ledger {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making the job ledger {} private", path.display()))?;
        }
        let damaged = |e: &dyn std::fmt::Display| {
            coded(
                ErrorCode::LedgerFailed,
                format!(
                    "the ledger {} is damaged ({e}): move it aside to start the job over; \
                     the token and certificate are kept",
                    path.display()
                ),
            )
        };
        let db = match quiet_catch_unwind(|| redb::Builder::new().create_file(file)) {
            Err(panic) => return Err(damaged(&panic)),
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(coded(
                    ErrorCode::LedgerFailed,
                    format!("the ledger {} is open in another process", path.display()),
                ))
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData
                    && e.kind() != std::io::ErrorKind::UnexpectedEof =>
            {
                return Err(e)
                    .with_context(|| format!("reading the job ledger {}", path.display()))
                    .code(ErrorCode::LedgerFailed)
            }
            Ok(Err(e)) => return Err(damaged(&e)),
        };
        let ledger = Ledger { db };
        // Damage inside the file's pages (bytes changed in the trees the
        // store keeps, its own list of freed pages among them) is not
        // always an error from redb: walking a damaged tree may panic
        // ("entered unreachable code"). Here, at the start, the first
        // commit walks the store's own trees and every table is read
        // through once, with a panic taken as damage: it is named with what
        // to do, instead of taking down the appliance now or a later
        // transaction of a running job.
        match quiet_catch_unwind(|| ledger.create_tables_and_read_through()) {
            Err(panic) => {
                // The store panicked half-way: its locks are poisoned, and
                // closing it would panic again (and write its allocator's
                // state into the damaged file). It is left open until the
                // process ends.
                std::mem::forget(ledger);
                Err(damaged(&panic))
            }
            Ok(Err(e)) => {
                let _ = quiet_catch_unwind(|| drop(ledger));
                Err(damaged(&format_args!("{e:#}")))
            }
            Ok(Ok(())) => Ok(ledger),
        }
    }

    /// Create the tables so that readers never meet a missing one (a table
    /// of the wrong type is damage too), then read every entry of each.
    fn create_tables_and_read_through(&self) -> Result<()> {
        let tx = self.db.begin_write().context("starting a transaction")?;
        tx.open_table(META).context("opening the meta table")?;
        tx.open_table(DISKS).context("opening the disks table")?;
        tx.open_table(CHUNKS).context("opening the chunks table")?;
        tx.open_table(ENTRIES)
            .context("opening the entries table")?;
        tx.commit().context("committing the ledger's tables")?;
        self.read(|tx| {
            read_through(tx, META)?;
            read_through(tx, DISKS)?;
            read_through(tx, CHUNKS)?;
            read_through(tx, ENTRIES)
        })
    }

    /// Run `f` in one durable write transaction and commit it; `what`
    /// completes "committing ..." in the error of a failed commit. Nothing
    /// of `f`'s changes is kept when it fails.
    fn write<T>(
        &self,
        what: impl std::fmt::Display,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let tx = self
            .db
            .begin_write()
            .context("starting a ledger transaction")?;
        let out = f(&tx)?;
        tx.commit().with_context(|| format!("committing {what}"))?;
        Ok(out)
    }

    /// Run `f` on a snapshot of the ledger.
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read().context("reading the ledger")?;
        f(&tx)
    }

    pub(crate) fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|tx| {
            let t = read_table(tx, META)?;
            Ok(t.get(key)
                .with_context(|| format!("reading ledger key {key}"))?
                .map(|v| v.value().to_vec()))
        })
    }

    pub(crate) fn remove_meta(&self, key: &str) -> Result<()> {
        self.write(format_args!("the removal of ledger key {key}"), |tx| {
            write_table(tx, META)?
                .remove(key)
                .with_context(|| format!("removing ledger key {key}"))?;
            Ok(())
        })
    }

    pub(crate) fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write(format_args!("ledger key {key}"), |tx| {
            write_table(tx, META)?
                .insert(key, value)
                .with_context(|| format!("writing ledger key {key}"))?;
            Ok(())
        })
    }

    pub fn disk(&self, disk: u32) -> Result<Option<DiskRecord>> {
        self.read(|tx| {
            let t = read_table(tx, DISKS)?;
            match t
                .get(disk)
                .with_context(|| format!("reading disk {disk}"))?
            {
                None => Ok(None),
                Some(v) => Ok(Some(
                    serde_json::from_slice(v.value())
                        .with_context(|| format!("decoding the record of disk {disk}"))?,
                )),
            }
        })
    }

    /// Every disk the job has seen, by index.
    pub fn disks(&self) -> Result<Vec<(u32, DiskRecord)>> {
        self.read(|tx| {
            let t = read_table(tx, DISKS)?;
            let mut out = Vec::new();
            for row in t.iter().context("listing disks")? {
                let (k, v) = row.context("reading a disk record")?;
                let rec = serde_json::from_slice(v.value())
                    .with_context(|| format!("decoding the record of disk {}", k.value()))?;
                out.push((k.value(), rec));
            }
            Ok(out)
        })
    }

    /// Record a disk; its chunks from any earlier record are forgotten
    /// (a re-created target holds none of them).
    pub fn put_disk(&self, disk: u32, rec: &DiskRecord) -> Result<()> {
        self.write(format_args!("the record of disk {disk}"), |tx| {
            let v = serde_json::to_vec(rec).context("encoding a disk record")?;
            write_table(tx, DISKS)?
                .insert(disk, v.as_slice())
                .with_context(|| format!("writing the record of disk {disk}"))?;
            forget_disk_chunks(tx, disk)
        })
    }

    /// Forget a disk: its record, its chunks and the names the source knew
    /// it by. The next sender to open it starts it over.
    pub(crate) fn forget_disk(&self, disk: u32) -> Result<()> {
        self.write(format_args!("the reset of disk {disk}"), |tx| {
            write_table(tx, DISKS)?
                .remove(disk)
                .with_context(|| format!("forgetting the record of disk {disk}"))?;
            forget_disk_chunks(tx, disk)?;
            write_table(tx, META)?
                .remove(names_key(disk).as_str())
                .with_context(|| format!("forgetting the names of disk {disk}"))?;
            Ok(())
        })
    }

    /// Record chunks whose bytes are already durable on the target; returns
    /// the indices among them that were not committed before (for the
    /// job's progress).
    pub fn commit_chunks(&self, disk: u32, entries: &[(u64, [u8; 32])]) -> Result<Vec<u64>> {
        let count = entries.len();
        self.write(format_args!("{count} chunks of disk {disk}"), |tx| {
            let mut t = write_table(tx, CHUNKS)?;
            let mut new = Vec::new();
            for (index, hash) in entries {
                let old = t
                    .insert((disk, *index), hash)
                    .with_context(|| format!("recording chunk {index} of disk {disk}"))?;
                if old.is_none() {
                    new.push(*index);
                }
            }
            Ok(new)
        })
    }

    /// Forget chunks (found not to match the target when re-read), so the
    /// next round sends them again.
    pub(crate) fn forget_chunks(&self, disk: u32, indices: &[u64]) -> Result<()> {
        self.write("forgotten chunks", |tx| {
            let mut t = write_table(tx, CHUNKS)?;
            for index in indices {
                t.remove((disk, *index))
                    .with_context(|| format!("forgetting chunk {index} of disk {disk}"))?;
            }
            Ok(())
        })
    }

    /// Committed hashes of the chunks in `range` of a disk, one slot per
    /// chunk. The range is at most [`WINDOW`] chunks: memory for a disk is
    /// bounded whatever its size, so callers walk a disk window by window.
    pub(crate) fn chunk_window(
        &self,
        disk: u32,
        range: Range<u64>,
    ) -> Result<Vec<Option<[u8; 32]>>> {
        let len = range.end.saturating_sub(range.start);
        anyhow::ensure!(
            len <= WINDOW,
            "a ledger window of {len} chunks is larger than {WINDOW}"
        );
        let mut out = vec![None; len as usize];
        self.for_each_chunk(disk, range.clone(), |index, hash| {
            out[(index - range.start) as usize] = Some(hash);
            true
        })?;
        Ok(out)
    }

    /// The committed chunks among `range` of a disk, in order, at most `limit`.
    pub fn committed(
        &self,
        disk: u32,
        range: Range<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, [u8; 32])>> {
        let mut out = Vec::new();
        self.for_each_chunk(disk, range, |index, hash| {
            out.push((index, hash));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Bytes of a disk that are committed.
    pub fn committed_bytes(&self, disk: u32, rec: &DiskRecord) -> Result<u64> {
        let mut bytes = 0u64;
        self.for_each_chunk(disk, 0..rec.chunks(), |index, _| {
            bytes += rec.chunk_len(index);
            true
        })?;
        Ok(bytes)
    }

    /// Record file-mode entries whose bytes are durable beneath the
    /// target root, and forget paths removed there (a removed directory's
    /// entries beneath it too), in one transaction.
    pub(crate) fn commit_entries(
        &self,
        tree: u32,
        put: &[(Vec<u8>, Vec<u8>)],
        removed: &[Vec<u8>],
    ) -> Result<()> {
        let (puts, removals) = (put.len(), removed.len());
        let what = format_args!("{puts} entries and {removals} removals of tree {tree}");
        self.write(what, |tx| {
            let mut t = write_table(tx, ENTRIES)?;
            for path in removed {
                let key = entry_key(tree, path);
                t.remove(key.as_slice())
                    .context("forgetting a removed entry")?;
                // Everything beneath it: keys from `path/` to `path0`
                // ('0' follows '/').
                let mut from = key.clone();
                from.push(b'/');
                let mut to = key;
                to.push(b'0');
                t.retain_in(from.as_slice()..to.as_slice(), |_, _| false)
                    .context("forgetting the entries beneath a removed directory")?;
            }
            for (path, stamp) in put {
                t.insert(entry_key(tree, path).as_slice(), stamp.as_slice())
                    .context("recording an entry")?;
            }
            Ok(())
        })
    }

    /// The trees that have committed entries.
    pub fn trees(&self) -> Result<Vec<u32>> {
        self.read(|tx| trees_of(&read_table(tx, ENTRIES)?))
    }

    /// Forget every entry of a tree: the next sender sends it whole.
    pub(crate) fn forget_tree(&self, tree: u32) -> Result<()> {
        self.write(format_args!("the reset of tree {tree}"), |tx| {
            let (from, to) = tree_bounds(tree);
            write_table(tx, ENTRIES)?
                .retain_in(from.as_slice()..to.as_slice(), |_, _| false)
                .with_context(|| format!("forgetting the entries of tree {tree}"))?;
            Ok(())
        })
    }

    /// Committed entries of a tree after `after` (from the start for
    /// None), in path order: at most `limit` of them and about `bytes`.
    pub fn entries(
        &self,
        tree: u32,
        after: Option<&[u8]>,
        limit: usize,
        bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, to) = tree_bounds(tree);
        let from = match after {
            Some(p) => {
                let mut k = entry_key(tree, p);
                k.push(0);
                k
            }
            None => start,
        };
        self.read(|tx| {
            let t = read_table(tx, ENTRIES)?;
            let mut out = Vec::new();
            let mut size = 0usize;
            for row in t
                .range(from.as_slice()..to.as_slice())
                .with_context(|| format!("reading the entries of tree {tree}"))?
            {
                let (k, v) = row.context("reading an entry")?;
                let path = k.value()[4..].to_vec();
                size += path.len() + v.value().len();
                out.push((path, v.value().to_vec()));
                if out.len() >= limit || size >= bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Call `f` with every committed chunk in `range`, in order, until it
    /// returns false.
    fn for_each_chunk(
        &self,
        disk: u32,
        range: Range<u64>,
        mut f: impl FnMut(u64, [u8; 32]) -> bool,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        self.read(|tx| {
            let t = read_table(tx, CHUNKS)?;
            for row in t
                .range((disk, range.start)..(disk, range.end))
                .with_context(|| format!("reading the chunks of disk {disk}"))?
            {
                let (k, v) = row.context("reading a chunk entry")?;
                if !f(k.value().1, v.value()) {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// A table of a write transaction; every table exists since [`Ledger::open`].
fn write_table<'tx, K: Key + 'static, V: Value + 'static>(
    tx: &'tx WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<Table<'tx, K, V>> {
    tx.open_table(def)
        .with_context(|| format!("opening the {} table", def.name()))
}

/// A table of a read transaction.
fn read_table<K: Key + 'static, V: Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<ReadOnlyTable<K, V>> {
    tx.open_table(def)
        .with_context(|| format!("opening the {} table", def.name()))
}

/// Read every entry of a table, keys and values: a damaged page shows as
/// an error (or a panic of the store, which the caller catches).
fn read_through<K: Key + 'static, V: Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let t = read_table(tx, def)?;
    for row in t
        .iter()
        .with_context(|| format!("reading the {} table", def.name()))?
    {
        let (k, v) = row.with_context(|| format!("reading the {} table", def.name()))?;
        let _ = (k.value(), v.value());
    }
    Ok(())
}

/// Forget every chunk of a disk, within the caller's transaction.
fn forget_disk_chunks(tx: &WriteTransaction, disk: u32) -> Result<()> {
    write_table(tx, CHUNKS)?
        .retain_in((disk, 0)..=(disk, u64::MAX), |_, _| false)
        .with_context(|| format!("forgetting the chunks of disk {disk}"))?;
    Ok(())
}

/// The keys of tree `tree`'s entries lie in `from..to`.
fn tree_bounds(tree: u32) -> (Vec<u8>, Vec<u8>) {
    let from = tree.to_be_bytes().to_vec();
    let to = match tree.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    };
    (from, to)
}

/// The trees that have entries in `t`: one range lookup per tree, from
/// the start of the next tree's keys.
fn trees_of(t: &ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut from = vec![0u8; 4];
    loop {
        let next = t
            .range(from.as_slice()..)
            .context("reading the entries")?
            .next();
        let Some(row) = next else { break };
        let (k, _) = row.context("reading an entry")?;
        let tree = u32::from_be_bytes(k.value()[..4].try_into().context("an entry's key")?);
        out.push(tree);
        match tree.checked_add(1) {
            Some(n) => from = n.to_be_bytes().to_vec(),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entries_are_paged_in_order_and_removed_with_what_they_held() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.redb")).unwrap();
        let put = |p: &str| (p.as_bytes().to_vec(), vec![1u8]);
        l.commit_entries(
            0,
            &[
                put("etc"),
                put("etc/a"),
                put("etc/b"),
                put("etc0"),
                put("usr"),
            ],
            &[],
        )
        .unwrap();
        l.commit_entries(1, &[put("data")], &[]).unwrap();
        let names = |v: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
            v.into_iter()
                .map(|(p, _)| String::from_utf8(p).unwrap())
                .collect()
        };
        assert_eq!(
            names(l.entries(0, None, 2, 1 << 20).unwrap()),
            ["etc", "etc/a"]
        );
        assert_eq!(
            names(l.entries(0, Some(b"etc/a"), 10, 1 << 20).unwrap()),
            ["etc/b", "etc0", "usr"]
        );
        l.commit_entries(0, &[], &[b"etc".to_vec()]).unwrap();
        assert_eq!(
            names(l.entries(0, None, 10, 1 << 20).unwrap()),
            ["etc0", "usr"]
        );
        assert_eq!(names(l.entries(1, None, 10, 1 << 20).unwrap()), ["data"]);
        assert_eq!(l.trees().unwrap(), [0, 1]);
        l.forget_tree(0).unwrap();
        assert_eq!(l.trees().unwrap(), [1]);
        assert!(l.entries(0, None, 10, 1 << 20).unwrap().is_empty());
    }
}

/// Most chunks a caller holds at once when it walks a disk: with 32-byte
/// hashes, a window costs about 2 MiB however large the disk is.
pub const WINDOW: u64 = 65536;

/// The windows of at most [`WINDOW`] chunks that cover `0..count`.
pub fn windows(count: u64) -> impl Iterator<Item = Range<u64>> {
    (0..count.div_ceil(WINDOW)).map(move |w| w * WINDOW..((w + 1) * WINDOW).min(count))
}

/// Run `f`, turning a panic into its message, without the panic hook's
/// report on stderr. redb checks some invariants of a file it opens with
/// assertions (a file shorter than its header says panics): for a damaged
/// ledger that is an error to report, not a crash of the appliance.
fn quiet_catch_unwind<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::cell::Cell;
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the store panicked while opening it".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_survive_reopen_and_re_recording_a_disk_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let rec = DiskRecord {
            size: 10 << 20,
            chunk_size: 4 << 20,
            fresh: true,
            target: "x".into(),
        };
        {
            let l = Ledger::open(&path).unwrap();
            l.put_disk(0, &rec).unwrap();
            l.put_disk(1, &rec).unwrap();
            l.commit_chunks(0, &[(0, [1; 32]), (2, [2; 32])]).unwrap();
            l.commit_chunks(1, &[(1, [3; 32])]).unwrap();
            l.put_meta("job", b"{}").unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(rec.chunks(), 3);
        assert_eq!(
            l.chunk_window(0, 0..3).unwrap(),
            vec![Some([1; 32]), None, Some([2; 32])]
        );
        assert_eq!(
            l.chunk_window(1, 0..3).unwrap(),
            vec![None, Some([3; 32]), None]
        );
        assert_eq!(l.chunk_window(0, 1..3).unwrap(), vec![None, Some([2; 32])]);
        assert_eq!(l.committed(0, 0..3, 1).unwrap(), vec![(0, [1; 32])]);
        assert_eq!(l.committed(0, 1..3, 8).unwrap(), vec![(2, [2; 32])]);
        // The last chunk of a 10 MiB disk in 4 MiB chunks holds 2 MiB.
        assert_eq!(l.committed_bytes(0, &rec).unwrap(), 6 << 20);
        assert_eq!(
            l.commit_chunks(0, &[(1, [4; 32]), (2, [5; 32])]).unwrap(),
            vec![1],
            "chunk 2 was committed before"
        );
        l.forget_chunks(0, &[1]).unwrap();
        l.commit_chunks(0, &[(2, [2; 32])]).unwrap();
        assert_eq!(l.get_meta("job").unwrap().as_deref(), Some(&b"{}"[..]));
        l.forget_chunks(0, &[2]).unwrap();
        assert_eq!(
            l.chunk_window(0, 0..3).unwrap(),
            vec![Some([1; 32]), None, None]
        );
        l.put_disk(0, &rec).unwrap();
        assert_eq!(l.chunk_window(0, 0..3).unwrap(), vec![None, None, None]);
        assert_eq!(
            l.chunk_window(1, 0..3).unwrap(),
            vec![None, Some([3; 32]), None]
        );
        assert!(l.chunk_window(0, 0..WINDOW + 1).is_err());
        assert_eq!(l.disks().unwrap().len(), 2);
        assert_eq!(l.committed_bytes(1, &rec).unwrap(), 4 << 20);
        l.commit_chunks(1, &[(2, [4; 32])]).unwrap();
        assert_eq!(l.committed_bytes(1, &rec).unwrap(), 6 << 20);
        assert_eq!(l.committed_bytes(0, &rec).unwrap(), 0);
    }

    #[test]
    fn the_ledger_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(Ledger::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Ledger::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_damaged_ledger_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let l = Ledger::open(&path).unwrap();
            l.put_meta("job", b"{}").unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let cases: [(&str, Vec<u8>); 3] = [
            ("garbage", b"this is not a ledger at all\n".repeat(200)),
            (
                "truncated",
                std::fs::read(&path).unwrap()[..(len / 3) as usize].to_vec(),
            ),
            ("header only", std::fs::read(&path).unwrap()[..512].to_vec()),
        ];
        for (name, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = match Ledger::open(&path) {
                Ok(_) => panic!("{name}: a damaged ledger opened"),
                Err(e) => e,
            };
            let text = format!("{err:#}");
            assert_eq!(
                crate::job::errors::find_coded(&err).map(|c| c.code),
                Some(ErrorCode::LedgerFailed),
                "{name}: {text}"
            );
            assert!(
                text.contains(&format!("the ledger {} is damaged (", path.display()))
                    && text.ends_with(
                        "): move it aside to start the job over; the token and certificate are kept)"
                    ),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn windows_cover_a_disk_exactly() {
        assert_eq!(windows(0).count(), 0);
        assert_eq!(windows(3).collect::<Vec<_>>(), vec![0..3]);
        let w: Vec<_> = windows(2 * WINDOW + 1).collect();
        assert_eq!(
            w,
            vec![0..WINDOW, WINDOW..2 * WINDOW, 2 * WINDOW..2 * WINDOW + 1]
        );
    }
}
