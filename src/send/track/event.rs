//! One line of the kernel's trace pipe, as the block layer's tracepoints
//! print it: `<task>-<pid> [cpu] <flags> <time>: block_bio_queue: 7,0 WS
//! 12800 + 128 [comm]`. The formats differ between kernels after the
//! device and the operation (3.10's `block_rq_complete` has no priority,
//! 6.x's has), so only what every one of them prints is read: the device,
//! the operation letters, and `SECTOR + COUNT`.

/// A range of sectors a tracepoint saw written (or being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    /// In 512-byte sectors of the device named.
    pub(crate) sector: u64,
    pub(crate) sectors: u64,
}

/// The tracepoints read: a bio submitted, and a request or bio completed.
pub(crate) const EVENTS: [&str; 3] = ["block_bio_queue", "block_rq_complete", "block_bio_complete"];

/// What a line says: a write's range, or nothing (a read, a bare flush,
/// another event, a line cut short).
pub(crate) fn parse(line: &str) -> Option<Written> {
    let (_, rest) = EVENTS.iter().find_map(|e| {
        let tag = format!(" {e}: ");
        line.find(&tag).map(|at| (e, &line[at + tag.len()..]))
    })?;
    let mut words = rest.split_ascii_whitespace();
    let (major, minor) = words.next()?.split_once(',')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    if !writes(words.next()?) {
        return None;
    }
    // `SECTOR + COUNT`, wherever the kernel put it after the operation.
    let plus = rest.find(" + ")?;
    let sector = rest[..plus].rsplit(' ').next()?.parse().ok()?;
    let sectors: u64 = rest[plus + 3..].split(' ').next()?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    Some(Written {
        major,
        minor,
        sector,
        sectors,
    })
}

/// Whether the operation letters (`rwbs`) change the disk's content. A
/// leading `F` is a flush before the operation; after it `R` is a read and
/// nothing is a bare flush. Everything else counts as a write: `W`, a
/// discard `D`, a secure erase `DE`, and `N`, which recent kernels print
/// for write-zeroes.
fn writes(rwbs: &str) -> bool {
    let op = rwbs.strip_prefix('F').unwrap_or(rwbs);
    !(op.is_empty() || op.starts_with('R'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(major: u32, minor: u32, sector: u64, sectors: u64) -> Option<Written> {
        Some(Written {
            major,
            minor,
            sector,
            sectors,
        })
    }

    #[test]
    fn the_lines_of_every_kernel_read_the_same() {
        let cases = [
            // 6.x, as this machine prints them.
            (
                "              dd-30623   [001] ..... 22023.039932: block_bio_queue: 7,0 WS 640 + 128 [dd]",
                w(7, 0, 640, 128),
            ),
            (
                "     ksoftirqd/1-24      [001] ..s.. 22023.040207: block_rq_complete: 7,0 WS () 640 + 128 be,0,4 [0]",
                w(7, 0, 640, 128),
            ),
            // 3.10: no priority; a task name with spaces.
            (
                "  kworker/u8:2 x-110   [000] ....  81.5: block_rq_complete: 8,16 W () 2048 + 8 [0]",
                w(8, 16, 2048, 8),
            ),
            (
                " jbd2/sda1-8-301 [001] .... 9.1: block_bio_complete: 253,1 FWFS 1953792 + 16 [0]",
                w(253, 1, 1953792, 16),
            ),
            // A discard, a secure erase, a write-zeroes.
            ("x-1 [0] .... 1.0: block_bio_queue: 7,3 D 0 + 2048 [blkdiscard]", w(7, 3, 0, 2048)),
            ("x-1 [0] .... 1.0: block_bio_queue: 7,3 DE 8 + 8 [x]", w(7, 3, 8, 8)),
            ("x-1 [0] .... 1.0: block_bio_queue: 259,0 N 8 + 8 [x]", w(259, 0, 8, 8)),
            // Reads, read-ahead, a bare flush, a flush with no sectors.
            ("x-1 [0] .... 1.0: block_bio_queue: 254,0 RA 12581400 + 24 [bash]", None),
            ("x-1 [0] .... 1.0: block_rq_complete: 254,0 RM () 8 + 8 be,0,4 [0]", None),
            ("x-1 [0] .... 1.0: block_bio_queue: 8,0 F 0 + 0 [kworker]", None),
            ("x-1 [0] .... 1.0: block_bio_queue: 8,0 FWS 0 + 0 [kworker]", None),
            // Other events, the pipe's notes, cut lines.
            ("x-1 [0] .... 1.0: block_rq_insert: 8,0 WS 4096 () 0 + 8 [x]", None),
            ("CPU:1 [LOST 12 EVENTS]", None),
            ("x-1 [0] .... 1.0: block_bio_queue: 7,0 WS 640 +", None),
            ("x-1 [0] .... 1.0: block_bio_queue: 7,0 WS", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), want, "{line}");
        }
    }
}
