//! Tests whose proof is a boot under QEMU: migrated disks, repaired
//! systems and the baked appliance. They need root to build their source
//! images; run as another user, each says so in one line and skips.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod appliance;
mod boot;
mod boot_test;
mod e2e;
mod filemode;
mod hostile;
mod network;
mod repair;
mod stacks;
