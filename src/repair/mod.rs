//! OS repair engine: detect the migrated OS and apply its recipe so it boots
//! on cloud hardware.

pub mod cli;
