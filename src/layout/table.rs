//! Partition tables, written and read in-process: GPT (with its protective
//! MBR) through the `gpt` crate, MBR through `mbrman`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use gpt::disk::LogicalBlockSize;

use super::desc::{mbr_type_byte, DiskLayout, Extent, PartType, TableType, SECTOR};

/// GPT attribute bit 2: legacy BIOS bootable.
const GPT_LEGACY_BOOTABLE: u64 = 1 << 2;

/// One entry of a table as found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// Partition number (1-based, as the kernel names it).
    pub number: usize,
    pub extent: Extent,
    pub kind: PartType,
    pub partuuid: String,
    pub name: Option<String>,
    pub bootable: bool,
}

/// A partition table as found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: TableType,
    pub id: String,
    pub entries: Vec<TableEntry>,
    /// GPT only: where the backup header is and where it should be.
    pub gpt_backup_lba: Option<u64>,
    pub gpt_last_usable_lba: Option<u64>,
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))
}

fn zero(f: &mut File, offset: u64, len: u64) -> Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&vec![0u8; len as usize])?;
    Ok(())
}

/// Write `disk`'s table (ids already resolved) with partitions at `extents`.
pub fn write(target: &Path, disk: &DiskLayout, extents: &[Extent]) -> Result<()> {
    let size = super::devices::disk_size(target)?;
    let mut f = open_rw(target)?;
    let sectors = size / SECTOR;
    let id = disk
        .id
        .as_deref()
        .ok_or_else(|| anyhow!("the disk id must be resolved before writing the table"))?;
    match disk.table {
        TableType::Gpt => {
            let guid = uuid::Uuid::parse_str(id).with_context(|| format!("disk GUID {id}"))?;
            let mut map = BTreeMap::new();
            for (i, (p, e)) in disk.partitions.iter().zip(extents).enumerate() {
                let part_guid = p
                    .partuuid
                    .as_deref()
                    .ok_or_else(|| anyhow!("partition {} has no resolved partuuid", i + 1))?;
                let ty = uuid::Uuid::parse_str(&p.kind.gpt_guid()?)?;
                map.insert(
                    (i + 1) as u32,
                    gpt::partition::Partition {
                        part_type_guid: gpt::partition_types::Type {
                            guid: ty,
                            os: gpt::partition_types::OperatingSystem::None,
                        },
                        part_guid: uuid::Uuid::parse_str(part_guid)
                            .with_context(|| format!("partuuid {part_guid}"))?,
                        first_lba: e.start / SECTOR,
                        last_lba: e.end() / SECTOR - 1,
                        flags: if p.bootable { GPT_LEGACY_BOOTABLE } else { 0 },
                        name: p.name.clone().unwrap_or_default(),
                    },
                );
            }
            // A stale MBR with boot code must not survive under a GPT.
            zero(&mut f, 0, SECTOR)
                .with_context(|| format!("clearing the MBR of {}", target.display()))?;
            let mut g = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(LogicalBlockSize::Lb512)
                .create_from_device(f, Some(guid))
                .with_context(|| format!("preparing a GPT for {}", target.display()))?;
            g.update_partitions(map)
                .with_context(|| format!("placing the GPT partitions of {}", target.display()))?;
            let mut f = g
                .write()
                .with_context(|| format!("writing the GPT of {}", target.display()))?;
            let pmbr_len = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
            gpt::mbr::ProtectiveMBR::with_lb_size(pmbr_len)
                .overwrite_lba0(&mut f)
                .with_context(|| format!("writing the protective MBR of {}", target.display()))?;
            f.sync_all()
                .with_context(|| format!("flushing {}", target.display()))?;
        }
        TableType::Mbr => {
            let sig = u32::from_str_radix(id, 16).with_context(|| format!("disk id {id}"))?;
            // A GPT left from earlier would win over the new MBR in every tool.
            zero(&mut f, 0, 34 * SECTOR)
                .and_then(|()| zero(&mut f, (sectors - 33) * SECTOR, 33 * SECTOR))
                .with_context(|| format!("clearing old tables of {}", target.display()))?;
            let mut mbr = mbrman::MBR::new_from(&mut f, SECTOR as u32, sig.to_le_bytes())
                .with_context(|| format!("preparing an MBR for {}", target.display()))?;
            for (i, (p, e)) in disk.partitions.iter().zip(extents).enumerate() {
                let start = u32::try_from(e.start / SECTOR)
                    .map_err(|_| anyhow!("partition {} starts beyond MBR's 2 TiB", i + 1))?;
                let len = u32::try_from(e.len / SECTOR)
                    .map_err(|_| anyhow!("partition {} is larger than MBR's 2 TiB", i + 1))?;
                mbr[i + 1] = mbrman::MBRPartitionEntry {
                    boot: if p.bootable {
                        mbrman::BOOT_ACTIVE
                    } else {
                        mbrman::BOOT_INACTIVE
                    },
                    first_chs: mbrman::CHS::empty(),
                    sys: mbr_type_byte(&p.kind)?,
                    last_chs: mbrman::CHS::empty(),
                    starting_lba: start,
                    sectors: len,
                };
            }
            mbr.write_into(&mut f)
                .with_context(|| format!("writing the MBR of {}", target.display()))?;
            f.sync_all()
                .with_context(|| format!("flushing {}", target.display()))?;
        }
    }
    Ok(())
}

/// Read the partition table of an image file or block device.
pub fn read(target: &Path) -> Result<Table> {
    let mut f = File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let mut head = vec![0u8; 2 * SECTOR as usize];
    f.read_exact(&mut head)
        .with_context(|| format!("reading the first sectors of {}", target.display()))?;
    let has_mbr_sig = head[510] == 0x55 && head[511] == 0xaa;
    let protective = has_mbr_sig && (0..4).any(|i| head[446 + i * 16 + 4] == 0xee);
    if &head[512..520] == b"EFI PART" {
        let esize = u32::from_le_bytes([head[596], head[597], head[598], head[599]]);
        if esize != 128 {
            // The gpt crate handles only the standard entry size.
            bail!(
                "{} has GPT entries of {esize} bytes; only 128-byte entries are supported",
                target.display()
            );
        }
    }
    if &head[512..520] == b"EFI PART" || protective {
        read_gpt(f, target)
    } else if has_mbr_sig {
        read_mbr(f, target)
    } else {
        bail!(
            "{} has no partition table (neither GPT nor MBR)",
            target.display()
        )
    }
}

fn read_gpt(f: File, target: &Path) -> Result<Table> {
    let g = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(f)
        .with_context(|| format!("reading the GPT of {}", target.display()))?;
    let header = g.header().clone();
    let mut entries = Vec::new();
    for (n, p) in g.partitions().iter().filter(|(_, p)| p.is_used()) {
        entries.push(TableEntry {
            number: *n as usize,
            extent: Extent {
                start: p.first_lba * SECTOR,
                len: (p.last_lba + 1 - p.first_lba) * SECTOR,
            },
            kind: PartType::from_gpt_guid(&p.part_type_guid.guid.to_string()),
            partuuid: p.part_guid.to_string(),
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            bootable: p.flags & GPT_LEGACY_BOOTABLE != 0,
        });
    }
    // Description order is disk order; the numbers stay with the entries
    // (cloud images put partition 14 and 15 before partition 1).
    entries.sort_by_key(|e| e.extent.start);
    Ok(Table {
        kind: TableType::Gpt,
        id: g.guid().to_string(),
        entries,
        gpt_backup_lba: Some(header.backup_lba),
        gpt_last_usable_lba: Some(header.last_usable),
    })
}

fn read_mbr(mut f: File, target: &Path) -> Result<Table> {
    let mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
        .with_context(|| format!("reading the MBR of {}", target.display()))?;
    let id = format!("{:08x}", u32::from_le_bytes(mbr.header.disk_signature));
    let mut entries = Vec::new();
    for (n, p) in mbr.header.iter() {
        if p.is_unused() {
            continue;
        }
        if p.is_extended() {
            // A container: its logical partitions are listed below.
            continue;
        }
        entries.push(mbr_entry(n, p, &id));
    }
    for (i, l) in mbr.logical_partitions.iter().enumerate() {
        let p = &l.partition;
        let n = 5 + i;
        entries.push(mbr_entry(n, p, &id));
    }
    entries.sort_by_key(|e| e.extent.start);
    Ok(Table {
        kind: TableType::Mbr,
        id,
        entries,
        gpt_backup_lba: None,
        gpt_last_usable_lba: None,
    })
}

/// The table entry of MBR partition number `n` (primary or logical) of the
/// disk with identifier `id`.
fn mbr_entry(n: usize, p: &mbrman::MBRPartitionEntry, id: &str) -> TableEntry {
    TableEntry {
        number: n,
        extent: Extent {
            start: u64::from(p.starting_lba) * SECTOR,
            len: u64::from(p.sectors) * SECTOR,
        },
        kind: PartType::from_mbr_byte(p.sys),
        partuuid: format!("{id}-{n:02x}"),
        name: None,
        bootable: p.boot == mbrman::BOOT_ACTIVE,
    }
}
