//! ferry: the server-migration appliance.
//!
//! One library, one binary. The modules follow the data's way through the
//! appliance: `wire` (frames shared by sender and receiver), `serve` (the
//! appliance's listeners), `job` (ledger, states, error codes), `disk`
//! (target disks), `layout` (partitions, file systems, loops, mounts),
//! `repair` (making a migrated OS boot on cloud hardware), `check` (what
//! will fail, before the move), `send` (the
//! source-side sender).

pub mod check;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod devname;
pub mod disk;
pub mod entry;
pub mod job;
pub mod layout;
pub mod logging;
pub mod pipeline;
pub mod repair;
pub mod sandbox;
pub mod send;
pub mod serve;
pub mod wire;
