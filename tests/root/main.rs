//! Tests that need root: loop devices, mounts, chroot, FIFREEZE and
//! FUSE, on sparse images and debootstrapped source systems. Run as
//! another user, each test says in one line that it needs root and skips.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod check;
mod consistency;
mod filemode;
mod filemode_live;
mod layout;
mod lvm;
mod memory;
mod old_kernel;
mod old_userland;
mod pipeline;
mod readyz;
mod repair;
mod sandbox;
mod track;
