//! Mistakes on the sender's command line are reported at once, as usage
//! errors (exit status 2), before anything connects or is retried.

use std::process::Command;

const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn send(args: &[&str]) -> (i32, String) {
    let out = Command::new(crate::common::serve::FERRY)
        .arg("send")
        .args(["--token", "a-token-of-sixteen-chars"])
        .args(args)
        .output()
        .expect("running ferry send");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_at_once_and_name_the_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![1u8; 8192]).unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let (d, i, e) = (
        dir.path().to_str().unwrap().to_owned(),
        img.to_str().unwrap().to_owned(),
        empty.to_str().unwrap().to_owned(),
    );
    // Nothing listens on 127.0.0.1:9: a check that let a case through
    // would show as CONNECT_FAILED instead.
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "a directory",
            vec!["--to", "127.0.0.1:9", "--fingerprint", FP, "--disk", &d],
            format!("--disk {d} (disk 0) is a directory"),
        ),
        (
            "an empty file",
            vec!["--to", "127.0.0.1:9", "--fingerprint", FP, "--disk", &e],
            format!("--disk {e} (disk 0) is empty"),
        ),
        (
            "a character device",
            vec![
                "--to",
                "127.0.0.1:9",
                "--fingerprint",
                FP,
                "--disk",
                "/dev/null",
            ],
            "--disk /dev/null (disk 0) is not a disk".to_owned(),
        ),
        (
            "the same disk twice",
            vec![
                "--to",
                "127.0.0.1:9",
                "--fingerprint",
                FP,
                "--disk",
                &i,
                "--disk",
                &i,
            ],
            format!("--disk {i} (disk 1) is disk 0 again"),
        ),
        (
            "a port that is not a number",
            vec![
                "--to",
                "127.0.0.1:notaport",
                "--fingerprint",
                FP,
                "--disk",
                &i,
            ],
            "--to 127.0.0.1:notaport: the port `notaport` is not a number".to_owned(),
        ),
        (
            "no disk and no tree",
            vec!["--to", "127.0.0.1:9", "--fingerprint", FP],
            "give the source disks with --disk SRC (block mode), or --mode file for the file systems of this server (or of a tree: --root DIR --layout FILE)".to_owned(),
        ),
        (
            "file mode asked for a freeze it does not make",
            vec![
                "--to",
                "127.0.0.1:9",
                "--fingerprint",
                FP,
                "--mode",
                "file",
                "--consistency",
                "freeze",
            ],
            "--consistency freeze is for block mode: file mode copies each file as it is when read; for a consistent copy stop the services that write, then run the same ferry send --mode file again (it sends only what changed)".to_owned(),
        ),
        (
            "file mode with a root that is not a directory",
            vec![
                "--to",
                "127.0.0.1:9",
                "--fingerprint",
                FP,
                "--mode",
                "file",
                "--root",
                &i,
                "--layout",
                &i,
            ],
            format!("--root {i}: not a directory"),
        ),
        (
            "a fingerprint that is not 64 hex digits",
            vec!["--to", "127.0.0.1:9", "--fingerprint", "abc", "--disk", &i],
            "--fingerprint `abc` is not a SHA-256 fingerprint".to_owned(),
        ),
    ];
    for (name, args, want) in cases {
        let (status, err) = send(&args);
        assert_eq!(status, 2, "{name}: {err}");
        assert!(
            err.contains("USAGE") && err.contains(&want),
            "{name}: {err}"
        );
        assert!(!err.contains("retrying"), "{name}: retried: {err}");
    }
    // The control: a well-formed command reaches the network.
    let (status, err) = send(&[
        "--to",
        "127.0.0.1:9",
        "--fingerprint",
        FP,
        "--disk",
        &i,
        "--retries",
        "0",
    ]);
    assert_eq!(status, 4, "{err}");
    assert!(err.contains("CONNECT_FAILED"), "{err}");
}
