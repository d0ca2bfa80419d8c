//! A described disk set mounted as a tree under a staging directory.
//!
//! [`MountTree`] attaches and mounts the disks (`mount_tree`); the staging
//! directory is locked, and what a killed run left there is cleaned first
//! (`leftovers`); a layout read from disks gets its mount points from the
//! root's fstab (`mount_points`); paths inside a migrated root resolve as
//! after a chroot (`inside`).

mod inside;
mod leftovers;
mod mount_points;
mod mount_tree;

pub use inside::resolve_inside;
pub(crate) use leftovers::clean_leftovers;
pub use leftovers::Leftovers;
pub(crate) use mount_points::fill_mount_points_renamed;
pub use mount_points::{fill_mount_points, fill_mount_points_named, parse_fstab};
pub use mount_tree::{MountOptions, MountTree};
