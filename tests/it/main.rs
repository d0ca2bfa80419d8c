//! Tests that need neither root nor QEMU: the real `ferry serve` and
//! `ferry send` on loopback, the control API, bad and hostile input, the
//! docs that are generated, and the import rules. A test here that needs
//! root for one case says so in one line and skips it.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bandwidth;
mod control_api;
mod control_choices;
mod errors_doc;
mod hostile;
mod hostile_files;
mod import_order;
mod job_events;
mod job_lifecycle;
mod metrics_auth;
mod metrics_lint;
mod release;
mod sd_notify;
mod sender_download;
mod sender_exit;
mod sender_usage;
mod serve_start;
mod silent_link;
mod stalled_transfer;
mod status_page;
mod transfer;
mod wan;
mod webhook;
