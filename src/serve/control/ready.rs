//! Readiness on the control port: `/readyz` answers 503 with its reasons
//! until the job store answers, the targets can be written and have room,
//! the ledger's records were accepted and the data port is bound; the same
//! checks of the targets tell systemd at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use crate::serve::Appliance;

/// 503 with the reasons until the job store answers, the targets are
/// writable, their file systems have space left, the ledger's disk records
/// were accepted at start ([`crate::serve::records`]) and the data port is bound. (The config is loaded before this
/// port is served at all.) Checked on every request: a target that goes
/// away makes the appliance unready again.
pub(crate) async fn readyz(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    let checker = Arc::clone(&app);
    let (store, targets, space) = tokio::task::spawn_blocking(move || {
        let store = checker
            .ledger
            .get_meta(crate::job::state::JOB_RECORD_KEY)
            .map(|_| ())
            .map_err(|e| format!("the job store does not answer: {e:#}"));
        let space = space_left(&checker.config);
        (store, targets_writable(&checker.config), space)
    })
    .await
    .unwrap_or_else(|e| {
        (
            Err(format!("readiness check failed: {e}")),
            Vec::new(),
            Vec::new(),
        )
    });
    let mut reasons: Vec<String> = Vec::new();
    if let Err(r) = &store {
        reasons.push(r.clone());
    }
    reasons.extend(targets.iter().cloned());
    reasons.extend(space.iter().cloned());
    reasons.extend(app.refused_records.iter().cloned());
    let data_bound = app.data_bound.load(Ordering::SeqCst);
    if !data_bound {
        reasons.push("the data port is not bound yet".into());
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": reasons.is_empty(),
            "checks": {
                "config_loaded": true,
                "job_store_open": store.is_ok(),
                "targets_writable": targets.is_empty(),
                "space_left": space.is_empty(),
                "ledger_records_valid": app.refused_records.is_empty(),
                "data_port_bound": data_bound,
            },
            "reasons": reasons,
        })),
    )
}

/// Why targets cannot be written, one reason per target (empty: all fine).
/// Opening for writing without writing proves the device or file exists
/// and that this process may write it.
pub(crate) fn targets_writable(config: &crate::config::Config) -> Vec<String> {
    if config.embedded() {
        let dir = config.state_dir.join("disks");
        let probe = crate::disk::private_dir(&dir)
            .and_then(|()| tempfile::tempfile_in(&dir).map_err(anyhow::Error::from));
        return match probe {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!(
                "the embedded disks' directory {} is not writable: {e:#}",
                dir.display()
            )],
        };
    }
    config
        .disks
        .iter()
        .filter_map(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&d.target)
                .err()
                .map(|e| {
                    format!(
                        "the target of disk {} ({}) is not writable: {e}",
                        d.index,
                        d.target.display()
                    )
                })
        })
        .collect()
}

/// Below this much free space a file system counts as full: the largest
/// chunk a sender may send would not fit.
const MIN_FREE_BYTES: u64 = crate::wire::MAX_CHUNK_SIZE as u64;

/// Why data cannot be received for lack of space, one reason per full file
/// system (empty: all have room). The state directory always counts (the
/// ledger and, in embedded mode, the disk images are there); a target that
/// is a file counts by its own file system. A block device has no file
/// system to fill: its size is checked when a disk is opened.
fn space_left(config: &crate::config::Config) -> Vec<String> {
    let mut places: Vec<(String, std::path::PathBuf)> = vec![(
        if config.embedded() {
            "the state directory (the ledger and the embedded disks)".to_owned()
        } else {
            "the state directory (the ledger)".to_owned()
        },
        config.state_dir.clone(),
    )];
    for d in &config.disks {
        let is_file = std::fs::metadata(&d.target).is_ok_and(|m| m.is_file());
        if is_file {
            places.push((format!("the target of disk {}", d.index), d.target.clone()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut reasons = Vec::new();
    for (what, path) in places {
        let stat = match nix::sys::statvfs::statvfs(&path) {
            Ok(s) => s,
            Err(e) => {
                reasons.push(format!(
                    "the free space of {what} ({}) cannot be read: {e}",
                    path.display()
                ));
                continue;
            }
        };
        // One reason per file system, however many places share it.
        if !seen.insert(stat.filesystem_id()) {
            continue;
        }
        let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
        if free < MIN_FREE_BYTES {
            reasons.push(format!(
                "the file system of {what} ({}) is full: {free} bytes free, {MIN_FREE_BYTES} needed to receive data",
                path.display()
            ));
        }
    }
    reasons
}
