//! Target disks.
