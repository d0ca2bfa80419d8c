//! Disk layout engine: partition tables, file systems, loop devices, mounts,
//! growing a copied disk onto a larger target.
//!
//! A library first: block mode calls [`read`], [`grow`] and
//! [`tree::MountTree::mount`] on a received disk before repairs; file mode
//! calls [`apply`] with the layout the sender sent. `ferry layout ...`
//! ([`cli`]) is a thin layer over the same functions.

pub mod apply;
pub mod chroot;
pub mod cli;
pub mod desc;
pub mod devices;
pub mod fat;
pub mod mkfs;
pub mod mount;
pub mod read;
pub mod safety;
pub mod table;
pub mod tree;

pub use apply::{apply, apply_all, resolve};
pub use chroot::{ChrootSession, DevNode};
pub use desc::{DiskLayout, FsType, Layout, PartType, PartitionLayout, Size, TableType};
pub use fat::FatPartition;
pub use read::{read, read_all};
pub use safety::Safety;
pub use tree::{MountOptions, MountTree};
