//! Disk layout engine: partition tables, file systems, loop devices, mounts,
//! growing a copied disk onto a larger target.

pub mod cli;
