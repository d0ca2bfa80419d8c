//! The appliance's own boot test, end to end: a migration through a real
//! `ferry serve` whose pipeline boots the repaired disks under QEMU through
//! overlays (the disks unchanged), the verdict in the manifest, the
//! console and capture behind the control token; the operator's hooks
//! given by the control plane, the first-boot one judged in the test and
//! then run for real on the cloud; and a migration that does not boot,
//! InError and handed off anyway on request.
//!
//! Needs root and qemu-system-x86_64: `cargo test --release --test qemu -- boot_test::`.

use std::path::{Path, PathBuf};

use crate::common::boot::SourceImage;
use crate::e2e::{
    appliance_with, assert_processing_failed, check_handoff, job, keep_logs, targets_for,
    with_mounted, CONTROL_TOKEN,
};
use ferry::job::errors::ErrorCode;

/// The targets' hashes while the boot test runs and after it: the test
/// boots overlays, never the disks.
fn hashes_at_boot_and_after(
    server: &crate::common::serve::Server,
    targets: &[PathBuf],
    sender: std::thread::JoinHandle<crate::common::serve::Sent>,
) -> (Vec<String>, Vec<String>, crate::common::serve::Sent) {
    crate::common::serve::wait_for(1200, "the boot step", || job(server)["step"] == "boot");
    let at_boot: Vec<String> = targets
        .iter()
        .map(|t| crate::common::serve::file_hash(t))
        .collect();
    let sent = sender.join().expect("the sender thread");
    let after: Vec<String> = targets
        .iter()
        .map(|t| crate::common::serve::file_hash(t))
        .collect();
    (at_boot, after, sent)
}

fn send_in_background(
    server: &crate::common::serve::Server,
    disks: &[PathBuf],
) -> std::thread::JoinHandle<crate::common::serve::Sent> {
    let (to, token, fp) = (
        server.data.clone(),
        server.token.clone(),
        server.fingerprint.clone(),
    );
    let owned = disks.to_vec();
    std::thread::spawn(move || {
        let d: Vec<&Path> = owned.iter().map(PathBuf::as_path).collect();
        crate::common::serve::send_to(&to, &token, &fp, &d, &[])
    })
}

/// A control request with a JSON body, answered with status and body bytes.
fn control_bytes(
    server: &crate::common::serve::Server,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{}{path}", server.control);
    let mut req = match method {
        "POST" => client.post(&url),
        _ => client.get(&url),
    }
    .bearer_auth(CONTROL_TOKEN);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().expect("a control request");
    let status = resp.status().as_u16();
    (status, resp.bytes().expect("a body").to_vec())
}

fn stage_seconds(verdict: &serde_json::Value, stage: &str) -> f64 {
    verdict["stage_seconds"][stage]
        .as_f64()
        .unwrap_or_else(|| panic!("no time for stage {stage}: {verdict}"))
}

#[test]
fn the_appliance_boots_the_migrated_disks_itself_and_writes_nothing_to_them() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-mbr-data").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    let targets = targets_for(&src.disks, dir.path(), 0);
    // The accelerator as in production: KVM where it works, else TCG.
    let server = appliance_with(dir.path(), &targets, "boot_test = true\n");
    // The operator's hooks, given by the control plane: one after the
    // repair, one at the first boot (which the boot test runs too, and
    // must see succeed).
    let hooks = serde_json::json!({"hook": [
        {"name": "proof", "phase": "after-repair", "must_succeed": true,
         "script": "#!/bin/sh\necho \"after-repair on $(cat /etc/hostname)\" >/etc/ferry-after-repair\n"},
        {"name": "greet", "phase": "first-boot", "must_succeed": true,
         "script": "echo \"first boot of $(cat /etc/ferry-after-repair)\" >/var/lib/ferry-greeted"},
    ]});
    let (status, body) = control_bytes(&server, "POST", "/v1/job/hooks", Some(&hooks.to_string()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let sender = send_in_background(&server, &src.disks);
    let (at_boot, after, sent) = hashes_at_boot_and_after(&server, &targets, sender);
    keep_logs(dir.path(), "e2e-boot-test");
    assert!(sent.ok(), "ferry send failed: {}", sent.stderr());
    assert!(
        sent.stderr().contains("runs the round's pipeline: boot"),
        "{}",
        sent.stderr()
    );
    assert_eq!(at_boot, after, "the boot test changed a target");
    let j = job(&server);
    assert_eq!(j["state"], "Finished", "{j}");
    let state = dir.path().join("state");
    // The manifest's digests were taken by verify, before the boot test;
    // `ferry verify` re-reads the disks after it and finds them equal.
    check_handoff(&server, &j, &targets, &state);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("handoff.json")).expect("handoff.json"))
            .expect("manifest JSON");
    let v = &m["boot_test"];
    assert_eq!(v["verdict"], "passed", "{v}");
    assert!(v["failure"].is_null(), "{v}");
    assert!(
        v["stage"] == "target" || v["stage"] == "login",
        "the boot reached the default target: {v}"
    );
    let (kernel, root, target) = (
        stage_seconds(v, "kernel"),
        stage_seconds(v, "root"),
        stage_seconds(v, "target"),
    );
    assert!(kernel <= root && root <= target, "stages in order: {v}");
    let dhcp = v["dhcp_seconds"].as_f64().expect("a DHCP request was seen");
    assert!(dhcp > kernel, "{v}");
    assert_eq!(v["firmware"], "bios");
    assert_eq!(v["handed_off_anyway"], false);
    // The first-boot hook ran in the boot test and said it succeeded; the
    // manifest lists both hooks' outcomes.
    assert_eq!(v["first_boot_hooks"]["greet"], 0, "{v}");
    let hooks = &m["hooks"];
    assert_eq!(
        (&hooks[0]["name"], &hooks[0]["status"]),
        (&"greet".into(), &"installed".into()),
        "{hooks}"
    );
    assert_eq!(
        (&hooks[1]["name"], &hooks[1]["status"]),
        (&"proof".into(), &"succeeded".into()),
        "{hooks}"
    );
    assert!(m["seconds"]["boot"].as_f64().is_some(), "{m}");
    let accel = v["accelerator"].as_str().expect("an accelerator");
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match (kvm_opens, accel) {
        (true, "kvm") => assert!(v["accelerator_note"].is_null(), "{v}"),
        // As on machines whose KVM runs no guest (nested virtualisation).
        (true, "tcg") => assert!(
            v["accelerator_note"]
                .as_str()
                .is_some_and(|n| n.contains("kvm showed nothing")),
            "{v}"
        ),
        (false, "tcg") => assert!(v["accelerator_note"].as_str().is_some(), "{v}"),
        other => panic!("accelerator {other:?}: {v}"),
    }
    // The console and the capture are kept, for the control token only.
    let (status, console) = control_bytes(&server, "GET", "/v1/job/boot-test/console", None);
    assert_eq!(status, 200);
    let console = String::from_utf8_lossy(&console);
    assert!(console.contains("Reached target"), "{console}");
    let (status, capture) = control_bytes(&server, "GET", "/v1/job/boot-test/capture", None);
    assert_eq!(status, 200);
    assert_eq!(
        &capture[..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "a pcap capture"
    );
    let (status, _) =
        crate::common::serve::http(&server.control, "GET", "/v1/job/boot-test/console", &[]);
    assert_eq!(status, 401);
    // No overlay is left behind.
    let left: Vec<_> = std::fs::read_dir(state.join("processing/boot"))
        .expect("the boot test's directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(server);

    // On the cloud: the first-boot hook runs for real, once, and goes.
    let report = crate::common::boot::boots_on_the_cloud(&src, targets.clone(), "e2e-hooks-virtio");
    assert!(
        report
            .log_tail(1 << 20)
            .contains("ferry-first-boot greet exit=0"),
        "the hook's status on the console: {}",
        report.log_tail(3000)
    );
    with_mounted(&targets, true, |root| {
        let read =
            |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        let after_repair = format!("after-repair on {}\n", src.hostname);
        assert_eq!(read("etc/ferry-after-repair"), after_repair);
        assert_eq!(
            read("var/lib/ferry-greeted"),
            format!("first boot of {after_repair}")
        );
        for gone in [
            "etc/systemd/system/ferry-first-boot-greet.service",
            "etc/systemd/system/multi-user.target.wants/ferry-first-boot-greet.service",
            "var/lib/ferry/first-boot/greet",
            "var/lib/ferry/first-boot/greet.run",
            "var/lib/ferry/hooks/proof",
        ] {
            assert!(
                std::fs::symlink_metadata(root.join(gone)).is_err(),
                "{gone} is left"
            );
        }
    });
}

#[test]
fn a_migration_that_does_not_boot_ends_in_error_and_can_be_handed_off_anyway() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-mbr").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    // The Debian recipe without its initramfs step: the repair ends well,
    // but the initramfs keeps only the old hardware's drivers, and the
    // system cannot find its root disk on virtio.
    let recipes = dir.path().join("recipes");
    std::fs::create_dir(&recipes).expect("a recipes directory");
    for e in std::fs::read_dir(crate::common::boot::repo_root().join("image-recipes"))
        .expect("image-recipes")
    {
        let p = e.expect("an entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let mut text = std::fs::read_to_string(&p).expect("a recipe");
            if p.file_name().is_some_and(|n| n == "debian.toml") {
                assert!(text.contains("\"initramfs\", "), "{text}");
                text = text.replacen("\"initramfs\", ", "", 1);
            }
            std::fs::write(recipes.join(p.file_name().expect("a name")), text).expect("writing");
        }
    }
    let targets = targets_for(&src.disks, dir.path(), 0);
    let keys = format!(
        "boot_test = true\nboot_test_accel = \"tcg\"\nrecipes_dir = \"{}\"\n",
        recipes.display()
    );
    let server = appliance_with(dir.path(), &targets, &keys);
    let sender = send_in_background(&server, &src.disks);
    let (at_boot, after, sent) = hashes_at_boot_and_after(&server, &targets, sender);
    keep_logs(dir.path(), "e2e-boot-test-fails");
    assert_eq!(at_boot, after, "the boot test changed a target");
    assert_processing_failed(&server, &sent, ErrorCode::BootTestFailed);
    let j = job(&server);
    let detail = j["last_error"]["detail"].as_str().expect("a detail");
    assert!(
        detail.starts_with("the boot reached stage initramfs and the initramfs did not find the root file system: ALERT!"),
        "{detail}"
    );
    assert!(detail.contains("last console lines:\n"), "{detail}");
    let (status, body) = control_bytes(&server, "GET", "/v1/job/boot-test", None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("verdict JSON");
    assert_eq!(v["verdict"], "failed", "{v}");
    assert_eq!(v["failure"], "root_not_found", "{v}");
    assert_eq!(v["stage"], "initramfs", "{v}");
    assert_eq!(v["accelerator"], "tcg", "{v}");
    assert!(v["dhcp_seconds"].is_null(), "{v}");
    let (_, console) = control_bytes(&server, "GET", "/v1/job/boot-test/console", None);
    assert!(String::from_utf8_lossy(&console).contains("ALERT!"));
    assert!(!std::path::Path::new(&dir.path().join("state/handoff.json")).exists());

    // Handing off needs the flag that says so.
    let (status, body) = control_bytes(&server, "POST", "/v1/job/handoff", None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let e: serde_json::Value = serde_json::from_slice(&body).expect("error JSON");
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");
    assert_eq!(job(&server)["state"], "InError");
    let (status, body) = control_bytes(
        &server,
        "POST",
        "/v1/job/handoff",
        Some(r#"{"despite_failed_boot_test": true}"#),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    crate::common::serve::wait_for(120, "the handoff", || job(&server)["state"] == "Finished");
    let j = job(&server);
    let state = dir.path().join("state");
    check_handoff(&server, &j, &targets, &state);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("handoff.json")).expect("handoff.json"))
            .expect("manifest JSON");
    assert_eq!(m["boot_test"]["verdict"], "failed", "{m}");
    assert_eq!(m["boot_test"]["handed_off_anyway"], true, "{m}");
    assert_eq!(m["boot_test"]["failure"], "root_not_found", "{m}");
    // Once handed off, there is nothing left to force.
    let (status, _) = control_bytes(
        &server,
        "POST",
        "/v1/job/handoff",
        Some(r#"{"despite_failed_boot_test": true}"#),
    );
    assert_eq!(status, 409);
}
