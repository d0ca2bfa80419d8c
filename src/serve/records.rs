//! The disk records of the ledger, checked before anything trusts them.
//!
//! A record is written once by a sender's OpenDisk and read at every start
//! and every later OpenDisk. One that no sender could have had accepted (a
//! chunk size outside the protocol's, a disk larger than its target can
//! hold, more chunks than a disk may have) is refused with
//! the reason, so that it never crashes the appliance later, and never at
//! every restart under systemd.

use std::path::Path;

use crate::config::Config;
use crate::job::ledger::DiskRecord;
use crate::wire;

/// Most chunks of one disk: 64 TiB in the smallest chunks. Memory does not
/// grow with the count (the ledger and the disks are walked in windows);
/// this bounds the time a re-read of a disk takes, and what a record may
/// claim.
pub(crate) const MAX_CHUNKS: u64 = (64 << 40) / wire::MIN_CHUNK_SIZE as u64;

/// Why the record of disk `index` cannot be used, if it cannot.
pub fn check(config: &Config, index: u32, rec: &DiskRecord) -> Result<(), String> {
    if !wire::valid_chunk_size(rec.chunk_size) {
        return Err(format!(
            "its chunk size of {} bytes is not a power of two from {} KiB to {} MiB",
            rec.chunk_size,
            wire::MIN_CHUNK_SIZE >> 10,
            wire::MAX_CHUNK_SIZE >> 20
        ));
    }
    let chunks = rec.chunks();
    if chunks > MAX_CHUNKS {
        return Err(format!(
            "its {} bytes in chunks of {} bytes make {chunks} chunks, more than the {MAX_CHUNKS} \
             a disk may have",
            rec.size, rec.chunk_size
        ));
    }
    if config.embedded() {
        if index >= config.max_embedded_disks {
            return Err(format!(
                "embedded mode takes disks 0 to {}",
                config.max_embedded_disks.saturating_sub(1)
            ));
        }
        if rec.size > config.max_embedded_disk_bytes {
            return Err(format!(
                "its {} bytes exceed the embedded limit of {} bytes (max_embedded_disk_bytes)",
                rec.size, config.max_embedded_disk_bytes
            ));
        }
        let image = config.embedded_disk_path(index);
        return holds(&image, rec.size, "image");
    }
    match config.target_for(index) {
        // A missing target is reported as such (not ready), not as a bad record.
        Some(target) if target.exists() => holds(target, rec.size, "target"),
        _ => Ok(()),
    }
}

/// The target (or image) at `path`, if it can be opened, holds `size` bytes.
fn holds(path: &Path, size: u64, what: &str) -> Result<(), String> {
    let Ok(disk) = crate::disk::Disk::open_source(path) else {
        return Ok(());
    };
    if disk.size() < size {
        return Err(format!(
            "its {size} bytes do not fit its {what} {}, which has {} bytes",
            path.display(),
            disk.size()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: u64, chunk_size: u32) -> DiskRecord {
        DiskRecord {
            size,
            chunk_size,
            fresh: true,
            target: "t".into(),
        }
    }

    #[test]
    fn records_no_sender_could_have_made_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = Config {
            state_dir: dir.path().to_owned(),
            ..Config::default()
        };
        std::fs::create_dir_all(dir.path().join("disks")).unwrap();
        std::fs::File::create(embedded.embedded_disk_path(1))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let target = dir.path().join("target.img");
        std::fs::File::create(&target)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let production = Config::parse(&format!(
            "[[disk]]\nindex = 0\ntarget = \"{}\"\n[[disk]]\nindex = 1\ntarget = \"{}\"\n",
            target.display(),
            dir.path().join("missing.img").display()
        ))
        .unwrap();
        type Case<'a> = (&'a str, &'a Config, u32, DiskRecord, Result<(), String>);
        let cases: &[Case] = &[
            ("fine", &embedded, 0, rec(10 << 20, 4 << 20), Ok(())),
            (
                "chunk size not a power of two",
                &embedded,
                0,
                rec(10 << 20, 3),
                Err("its chunk size of 3 bytes is not a power of two from 64 KiB to 16 MiB".into()),
            ),
            (
                "chunk size zero",
                &embedded,
                0,
                rec(10 << 20, 0),
                Err("its chunk size of 0 bytes is not a power of two from 64 KiB to 16 MiB".into()),
            ),
            (
                "chunks beyond memory",
                &production,
                1,
                rec(u64::MAX, 64 << 10),
                Err(format!(
                    "its {} bytes in chunks of 65536 bytes make 281474976710656 chunks, more than \
                     the 1073741824 a disk may have",
                    u64::MAX
                )),
            ),
            (
                "beyond the embedded limit",
                &embedded,
                0,
                rec(65 << 40, 16 << 20),
                Err(format!(
                    "its {} bytes exceed the embedded limit of {} bytes (max_embedded_disk_bytes)",
                    65u64 << 40,
                    64u64 << 40
                )),
            ),
            (
                "disk index beyond embedded mode's",
                &embedded,
                16,
                rec(1 << 20, 4 << 20),
                Err("embedded mode takes disks 0 to 15".into()),
            ),
            (
                "larger than its image",
                &embedded,
                1,
                rec(2 << 20, 4 << 20),
                Err(format!(
                    "its 2097152 bytes do not fit its image {}, which has 1048576 bytes",
                    embedded.embedded_disk_path(1).display()
                )),
            ),
            (
                "larger than its target",
                &production,
                0,
                rec(9 << 20, 4 << 20),
                Err(format!(
                    "its 9437184 bytes do not fit its target {}, which has 8388608 bytes",
                    target.display()
                )),
            ),
            (
                "target missing: not the record's fault",
                &production,
                1,
                rec(9 << 20, 4 << 20),
                Ok(()),
            ),
        ];
        for (name, config, index, r, want) in cases {
            assert_eq!(&check(config, *index, r), want, "{name}");
        }
    }
}
