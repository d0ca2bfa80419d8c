//! Disk layout engine: partition tables, file systems, loop devices, mounts,
//! growing a copied disk onto a larger target.
//!
//! A library first: block mode calls [`read`], [`grow`] and
//! [`tree::MountTree::mount`] on a received disk before repairs; file mode
//! calls [`apply`] with the layout the sender sent. `ferry layout ...`
//! ([`cli`]) is a thin layer over the same functions.
//!
//! Block mode, on received disks:
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ferry::layout::{grow, MountTree, Safety};
//! use ferry::sandbox::Sandbox;
//! let disks = vec![std::path::PathBuf::from("/dev/vdb")];
//! for d in &disks {
//!     grow(d, Safety::default())?;
//! }
//! let tree = MountTree::mount_existing(&disks, "/run/ferry/root".as_ref(), Default::default())?;
//! let session = Sandbox::enter(tree.root(), &tree.dev_nodes())?;
//! session.command("update-grub").run()?;
//! session.close()?;
//! tree.close()?;
//! # Ok(())
//! # }
//! ```

pub mod apply;
pub mod desc;
pub mod dev_nodes;
pub mod devices;
pub mod fat;
pub mod fit;
pub mod flatten;
pub mod grow;
pub mod journal;
pub mod lvm;
pub mod mkfs;
pub mod mount;
pub mod ntfs;
pub mod read;
pub mod safety;
pub mod table;
pub mod tree;

pub use apply::{apply, apply_all, resolve};
pub use desc::LogicalVolume;
pub use desc::{
    DiskLayout, FsType, Layout, PartType, PartitionLayout, Size, SubvolumeMount, TableType,
};
pub use dev_nodes::DevNode;
pub use fat::FatPartition;
pub use grow::{grow, GrowReport};
pub use read::{read, read_all};
pub use safety::Safety;
pub use tree::{MountOptions, MountTree};
