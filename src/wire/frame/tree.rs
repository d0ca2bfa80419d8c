//! File mode's frames: the source's layout and the targets made ready for
//! it, then per file system tree its manifest of committed entries, the
//! entries with their content in pieces, removals, and its end.

use bytes::{BufMut, BytesMut};

use super::body::{put_bytes16, put_text, Reader};
use super::{ty, Frame, WireError, MAX_SOURCE_LAYOUT};
use crate::entry::{self, Entry, Kind, Stamp, Time};

pub(super) fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::OpenTree { tree } | Frame::CloseTree { tree } => dst.put_u32(*tree),
        Frame::TreeManifest {
            tree,
            last,
            entries,
        } => {
            dst.put_u32(*tree);
            dst.put_u8(u8::from(*last));
            dst.put_u32(entries.len() as u32);
            for (path, stamp) in entries {
                put_bytes16(dst, path);
                dst.put_slice(&stamp.to_bytes());
            }
        }
        Frame::Entry { tree, entry } => {
            dst.put_u32(*tree);
            put_entry(dst, entry);
        }
        Frame::FileData {
            tree,
            offset,
            compressed,
            payload,
        } => {
            dst.put_u32(*tree);
            dst.put_u64(*offset);
            dst.put_u8(u8::from(*compressed));
            dst.put_slice(payload);
        }
        Frame::FileEnd { tree, hash } => {
            dst.put_u32(*tree);
            dst.put_slice(hash);
        }
        Frame::Remove { tree, path } => {
            dst.put_u32(*tree);
            put_bytes16(dst, path);
        }
        Frame::TreeClosed {
            tree,
            entries,
            removed,
            bytes,
        } => {
            dst.put_u32(*tree);
            dst.put_u64(*entries);
            dst.put_u64(*removed);
            dst.put_u64(*bytes);
        }
        Frame::SourceLayout { json } => dst.put_slice(json),
        Frame::TargetsReady { built, detail } => {
            dst.put_u8(u8::from(*built));
            put_text(dst, detail);
        }
        // Invariant: the frame's type byte chose this family.
        other => unreachable!("{} is not a tree frame", other.name()),
    }
}

pub(super) fn parse(ty: u8, r: &mut Reader) -> Result<Frame, WireError> {
    Ok(match ty {
        ty::OPEN_TREE => Frame::OpenTree { tree: r.u32()? },
        ty::TREE_MANIFEST => parse_manifest(r)?,
        ty::ENTRY => Frame::Entry {
            tree: r.u32()?,
            entry: Box::new(parse_entry(r)?),
        },
        ty::FILE_DATA => {
            let tree = r.u32()?;
            let offset = r.u64()?;
            let compressed = r.flag("unknown encoding")?;
            if r.remaining() > entry::FILE_CHUNK {
                return Err(r.malformed("piece larger than the file chunk"));
            }
            Frame::FileData {
                tree,
                offset,
                compressed,
                payload: r.rest(),
            }
        }
        ty::FILE_END => Frame::FileEnd {
            tree: r.u32()?,
            hash: r.bytes32()?,
        },
        ty::REMOVE => Frame::Remove {
            tree: r.u32()?,
            path: r.bytes16(entry::MAX_PATH)?,
        },
        ty::CLOSE_TREE => Frame::CloseTree { tree: r.u32()? },
        ty::TREE_CLOSED => Frame::TreeClosed {
            tree: r.u32()?,
            entries: r.u64()?,
            removed: r.u64()?,
            bytes: r.u64()?,
        },
        ty::SOURCE_LAYOUT => {
            if r.remaining() > MAX_SOURCE_LAYOUT {
                return Err(r.malformed("a layout longer than allowed"));
            }
            Frame::SourceLayout { json: r.rest() }
        }
        ty::TARGETS_READY => Frame::TargetsReady {
            built: r.flag("unknown flag")?,
            detail: r.text()?,
        },
        other => return Err(WireError::UnknownType(other)),
    })
}

/// A page of a tree's manifest; each entry takes at least its length
/// prefix and stamp, which bounds the count before anything is reserved.
fn parse_manifest(r: &mut Reader) -> Result<Frame, WireError> {
    let tree = r.u32()?;
    let last = r.flag("unknown flag")?;
    let count = r.u32()? as usize;
    if count > entry::MANIFEST_PAGE_ENTRIES
        || count.saturating_mul(2 + entry::STAMP_LEN) > r.remaining()
    {
        return Err(r.malformed("entry count exceeds the page"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let path = r.bytes16(entry::MAX_PATH)?;
        let raw = r.take(entry::STAMP_LEN)?;
        let stamp = Stamp::from_bytes(&raw).ok_or_else(|| r.malformed("unknown entry kind"))?;
        entries.push((path, stamp));
    }
    Ok(Frame::TreeManifest {
        tree,
        last,
        entries,
    })
}

fn put_entry(dst: &mut BytesMut, e: &Entry) {
    put_bytes16(dst, &e.path);
    dst.put_u8(e.kind.wire_code());
    dst.put_u32(e.mode);
    dst.put_u32(e.uid);
    dst.put_u32(e.gid);
    dst.put_u64(e.size);
    for t in [e.mtime, e.ctime] {
        dst.put_i64(t.sec);
        dst.put_u32(t.nsec);
    }
    dst.put_u64(e.rdev);
    put_bytes16(dst, &e.target);
    dst.put_u16(e.xattrs.len() as u16);
    for (name, value) in &e.xattrs {
        put_bytes16(dst, name);
        dst.put_u32(value.len() as u32);
        dst.put_slice(value);
    }
}

/// An entry, every length bounded before it is read: a path, a target, a
/// count of xattrs and their bytes.
fn parse_entry(r: &mut Reader) -> Result<Entry, WireError> {
    let path = r.bytes16(entry::MAX_PATH)?;
    let kind = Kind::from_wire_code(r.u8()?).ok_or_else(|| r.malformed("unknown entry kind"))?;
    let mode = r.u32()?;
    if mode & !0o7777 != 0 {
        return Err(r.malformed("mode bits beyond 07777"));
    }
    let uid = r.u32()?;
    let gid = r.u32()?;
    let size = r.u64()?;
    let mtime = parse_time(r)?;
    let ctime = parse_time(r)?;
    let rdev = r.u64()?;
    let target = r.bytes16(entry::MAX_TARGET)?;
    let xattrs = parse_xattrs(r)?;
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        size,
        mtime,
        ctime,
        rdev,
        target,
        xattrs,
    })
}

/// A time of an entry: seconds, and nanoseconds below a second.
fn parse_time(r: &mut Reader) -> Result<Time, WireError> {
    let sec = r.i64()?;
    let nsec = r.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(r.malformed("nanoseconds of a time beyond a second"));
    }
    Ok(Time { sec, nsec })
}

/// An extended attribute: its name and value.
type Xattr = (Vec<u8>, Vec<u8>);

/// An entry's extended attributes, bounded in count and in total bytes.
fn parse_xattrs(r: &mut Reader) -> Result<Vec<Xattr>, WireError> {
    let count = r.u16()? as usize;
    if count > entry::MAX_XATTRS || count.saturating_mul(6) > r.remaining() {
        return Err(r.malformed("too many extended attributes"));
    }
    let mut xattrs = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let name = r.bytes16(entry::MAX_NAME)?;
        let len = r.u32()? as usize;
        total = total.saturating_add(name.len() + len);
        if total > entry::MAX_XATTR_BYTES {
            return Err(r.malformed("extended attributes larger than allowed"));
        }
        xattrs.push((name, r.take(len)?.to_vec()));
    }
    Ok(xattrs)
}
