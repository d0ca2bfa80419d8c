//! The harness the three suites share: a real `ferry serve` and `ferry
//! send` (`serve`), source images and QEMU boots (`boot`), file trees
//! (`files`), layouts on sparse images (`layout`), repair fixtures
//! (`repair`), a delaying proxy (`wan`) and a headless browser (`cdp`).
//! Each suite uses part of it.
#![allow(dead_code)]

pub mod boot;
pub mod cdp;
pub mod files;
pub mod layout;
pub mod old_kernel;
pub mod release;
pub mod repair;
pub mod serve;
pub mod wan;

/// Whether this process may do what needs root (loop devices, mounts,
/// chroot). CI runs as root.
pub fn is_root() -> bool {
    // The library's repair runs guest tools through `ferry sandbox`; this
    // process is a test harness, so it names the built ferry.
    ferry::sandbox::use_executable(std::path::Path::new(env!("CARGO_BIN_EXE_ferry")));
    nix::unistd::geteuid().is_root()
}

/// The one policy for tests that need root: run as root, or say in one
/// line why the test is skipped and return.
macro_rules! need_root {
    ($why:expr) => {
        if !$crate::common::is_root() {
            eprintln!("skipped: needs root ({})", $why);
            return;
        }
    };
}
