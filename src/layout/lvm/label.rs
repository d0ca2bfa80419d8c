//! LVM2's on-disk physical volume format: the label (`LABELONE`, in one of
//! the first four sectors), the pv_header after it (the PV's UUID, size,
//! data and metadata areas), and each metadata area's header
//! (`mda_header`), whose first `raw_locn` says where in the area's
//! circular buffer the newest metadata text is.

use anyhow::{bail, Context, Result};

const SECTOR: usize = 512;
/// The label is in one of the first four sectors.
const LABEL_SCAN_SECTORS: usize = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// `FMTT_MAGIC`: the metadata area header's magic.
pub(crate) const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
/// LVM's CRC: the IEEE polynomial, reflected, this seed, no final xor.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// A raw_locn flag: this area's copy is to be ignored.
const RAW_LOCN_IGNORED: u32 = 1;
/// Areas larger than this are not a metadata area of LVM's making.
const MAX_MDA: u64 = 1 << 30;

/// LVM's checksum of `data`.
pub fn crc(data: &[u8]) -> u32 {
    let mut c = INITIAL_CRC;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    c
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// An area of the PV: byte offset from the PV's start, and length (0 for
/// "to the end").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Area {
    pub offset: u64,
    pub size: u64,
}

/// What a PV's label says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PvLabel {
    /// The PV's UUID, 32 characters without dashes.
    pub uuid: String,
    pub device_size: u64,
    pub data: Vec<Area>,
    pub metadata: Vec<Area>,
}

/// Something that reads bytes at offsets: the PV (a partition of a disk).
pub(crate) trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// A byte range of a file: a partition of a disk image or block device.
pub(crate) struct FileRange<'a> {
    pub file: &'a std::fs::File,
    pub start: u64,
    pub len: u64,
}

impl ReadAt for FileRange<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(buf, self.start + offset)
    }
}

/// The label of the PV, or None when the first four sectors hold none.
pub(crate) fn read_label(pv: &(impl ReadAt + ?Sized)) -> Result<Option<PvLabel>> {
    let mut head = vec![0u8; SECTOR * LABEL_SCAN_SECTORS];
    pv.read_at(&mut head, 0)
        .context("reading the first sectors of the physical volume")?;
    for s in 0..LABEL_SCAN_SECTORS {
        let l = &head[s * SECTOR..(s + 1) * SECTOR];
        if &l[..8] != LABEL_ID {
            continue;
        }
        if u64_at(l, 8) != s as u64 {
            bail!(
                "the LVM label in sector {s} says it is in sector {}",
                u64_at(l, 8)
            );
        }
        let want = u32_at(l, 16);
        let got = crc(&l[20..]);
        if want != got {
            bail!("the LVM label in sector {s} has checksum {want:#010x}, its bytes {got:#010x}");
        }
        if &l[24..32] != LABEL_TYPE {
            bail!(
                "the LVM label in sector {s} is of type {:?}, not LVM2 001",
                String::from_utf8_lossy(&l[24..32])
            );
        }
        let off = u32_at(l, 20) as usize;
        if !(32..SECTOR - 40).contains(&off) {
            bail!("the LVM label in sector {s} puts its pv_header at byte {off}");
        }
        return parse_pv_header(&l[off..]).map(Some);
    }
    Ok(None)
}

fn parse_pv_header(h: &[u8]) -> Result<PvLabel> {
    let uuid = String::from_utf8_lossy(&h[..32]).into_owned();
    if !uuid.bytes().all(|c| c.is_ascii_alphanumeric()) {
        bail!("the pv_header's UUID {uuid:?} is not 32 letters and digits");
    }
    let device_size = u64_at(h, 32);
    let mut at = 40;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            if at + 16 > h.len() {
                bail!("the pv_header's area lists run past its sector");
            }
            let a = Area {
                offset: u64_at(h, at),
                size: u64_at(h, at + 8),
            };
            at += 16;
            if a.offset == 0 && a.size == 0 {
                break;
            }
            list.push(a);
        }
    }
    let [data, metadata] = lists;
    Ok(PvLabel {
        uuid,
        device_size,
        data,
        metadata,
    })
}

/// The newest metadata text of the metadata area `mda`, or None when the
/// area holds none (a PV not yet in a VG) or is ignored.
pub(crate) fn read_metadata(pv: &(impl ReadAt + ?Sized), mda: Area) -> Result<Option<String>> {
    if mda.size < MDA_HEADER_SIZE || mda.size > MAX_MDA {
        bail!(
            "the metadata area at byte {} is {} bytes long",
            mda.offset,
            mda.size
        );
    }
    let mut h = vec![0u8; MDA_HEADER_SIZE as usize];
    pv.read_at(&mut h, mda.offset)
        .with_context(|| format!("reading the metadata area header at byte {}", mda.offset))?;
    if &h[4..20] != MDA_MAGIC {
        bail!("the metadata area at byte {} has no LVM2 magic", mda.offset);
    }
    let want = u32_at(&h, 0);
    let got = crc(&h[4..]);
    if want != got {
        bail!(
            "the metadata area header at byte {} has checksum {want:#010x}, its bytes {got:#010x}",
            mda.offset
        );
    }
    let version = u32_at(&h, 20);
    if version != 1 {
        bail!("the metadata area header is of version {version}, not 1");
    }
    let start = u64_at(&h, 24);
    let size = u64_at(&h, 32);
    if start != mda.offset || size != mda.size {
        bail!(
            "the metadata area header says it lies at {start}+{size}, the label at {}+{}",
            mda.offset,
            mda.size
        );
    }
    // raw_locns[0]: the committed metadata.
    let offset = u64_at(&h, 40);
    let len = u64_at(&h, 48);
    let checksum = u32_at(&h, 56);
    let flags = u32_at(&h, 60);
    if flags & RAW_LOCN_IGNORED != 0 || (offset == 0 && len == 0) {
        return Ok(None);
    }
    let ring = size - MDA_HEADER_SIZE;
    if offset < MDA_HEADER_SIZE || offset >= size || len == 0 || len > ring {
        bail!("the metadata area's text at {offset}+{len} does not fit its {size} bytes");
    }
    if len as usize > super::text::MAX_TEXT {
        bail!(
            "the metadata text is {len} bytes, more than the {} this reader accepts",
            super::text::MAX_TEXT
        );
    }
    // A circular buffer after the header: text that reaches the area's
    // end goes on right after the header.
    let mut text = vec![0u8; len as usize];
    let first = (size - offset).min(len) as usize;
    pv.read_at(&mut text[..first], start + offset)
        .context("reading the metadata text")?;
    if first < text.len() {
        pv.read_at(&mut text[first..], start + MDA_HEADER_SIZE)
            .context("reading the wrapped part of the metadata text")?;
    }
    let got = crc(&text);
    if got != checksum {
        bail!("the metadata text has checksum {got:#010x}, its header says {checksum:#010x}");
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    String::from_utf8(text)
        .map(Some)
        .context("the metadata text is not UTF-8")
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A PV as `pvcreate` lays it out (label in sector 1, one metadata
    /// area at 4 KiB), with `text` committed at `text_at` of the area
    /// (wrapping if it reaches the end of an area of `mda_size`).
    pub fn pv_bytes(text: &str, mda_size: u64, text_at: u64) -> Vec<u8> {
        let mda = Area {
            offset: 4096,
            size: mda_size,
        };
        let mut b = vec![0u8; (mda.offset + mda.size) as usize + 4096];
        let l = 512;
        b[l..l + 8].copy_from_slice(LABEL_ID);
        b[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes());
        b[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
        b[l + 24..l + 32].copy_from_slice(LABEL_TYPE);
        let h = l + 32;
        b[h..h + 32].copy_from_slice(b"AbCdEf0123456789AbCdEf0123456789");
        b[h + 32..h + 40].copy_from_slice(&(64u64 << 20).to_le_bytes());
        // data area at 1 MiB to the end; then the metadata area.
        b[h + 40..h + 48].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[h + 72..h + 80].copy_from_slice(&mda.offset.to_le_bytes());
        b[h + 80..h + 88].copy_from_slice(&mda.size.to_le_bytes());
        let c = crc(&b[l + 20..l + 512]);
        b[l + 16..l + 20].copy_from_slice(&c.to_le_bytes());
        let m = mda.offset as usize;
        b[m + 4..m + 20].copy_from_slice(MDA_MAGIC);
        b[m + 20..m + 24].copy_from_slice(&1u32.to_le_bytes());
        b[m + 24..m + 32].copy_from_slice(&mda.offset.to_le_bytes());
        b[m + 32..m + 40].copy_from_slice(&mda.size.to_le_bytes());
        let t = text.as_bytes();
        b[m + 40..m + 48].copy_from_slice(&text_at.to_le_bytes());
        b[m + 48..m + 56].copy_from_slice(&(t.len() as u64).to_le_bytes());
        b[m + 56..m + 60].copy_from_slice(&crc(t).to_le_bytes());
        let first = ((mda_size - text_at) as usize).min(t.len());
        let at = m + text_at as usize;
        b[at..at + first].copy_from_slice(&t[..first]);
        let wrap = m + MDA_HEADER_SIZE as usize;
        b[wrap..wrap + t.len() - first].copy_from_slice(&t[first..]);
        let c = crc(&b[m + 4..m + 512]);
        b[m..m + 4].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn the_checksum_is_lvms() {
        // calc_crc(INITIAL_CRC, "", 0) is the seed; one known value.
        assert_eq!(crc(b""), INITIAL_CRC);
        assert_ne!(crc(b"a"), crc(b"b"));
    }

    #[test]
    fn label_and_metadata_are_read_and_a_wrapped_text_is_joined() {
        let text = "vg { seqno = 1 }\n";
        for (name, at) in [("plain", 512u64), ("wrapped", 8192 - 6)] {
            let b = pv_bytes(text, 8192, at);
            let l = read_label(b.as_slice()).unwrap().expect(name);
            assert_eq!(l.uuid, "AbCdEf0123456789AbCdEf0123456789");
            assert_eq!(l.device_size, 64 << 20);
            assert_eq!(
                l.data,
                [Area {
                    offset: 1 << 20,
                    size: 0
                }]
            );
            assert_eq!(
                l.metadata,
                [Area {
                    offset: 4096,
                    size: 8192
                }]
            );
            let got = read_metadata(b.as_slice(), l.metadata[0]).unwrap();
            assert_eq!(got.as_deref(), Some(text), "{name}");
        }
    }

    #[test]
    fn damaged_labels_and_areas_are_refused() {
        let text = "vg { seqno = 1 }\n";
        let good = pv_bytes(text, 8192, 512);
        let mda = Area {
            offset: 4096,
            size: 8192,
        };
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage, &str); 5] = [
            (
                "label checksum",
                |b| b[512 + 100] ^= 1,
                "the LVM label in sector 1 has checksum",
            ),
            (
                "label type",
                |b| {
                    b[512 + 24..512 + 32].copy_from_slice(b"LVM1 001");
                    let c = crc(&b[512 + 20..1024]);
                    b[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
                },
                "is of type \"LVM1 001\"",
            ),
            ("mda magic", |b| b[4096 + 5] = b'X', "has no LVM2 magic"),
            (
                "mda checksum",
                |b| b[4096 + 300] ^= 1,
                "the metadata area header at byte 4096 has checksum",
            ),
            (
                "text checksum",
                |b| b[4096 + 512] ^= 1,
                "the metadata text has checksum",
            ),
        ];
        for (name, damage, want) in cases {
            let mut b = good.clone();
            damage(&mut b);
            let err = read_label(b.as_slice())
                .and_then(|_| read_metadata(b.as_slice(), mda))
                .expect_err(name);
            assert!(err.to_string().contains(want), "{name}: {err:#}");
        }
        assert_eq!(read_label(vec![0u8; 4096].as_slice()).unwrap(), None);
    }
}
