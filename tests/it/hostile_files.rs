//! File mode against a hostile sender, over a real socket: each path rule
//! refuses with its code, nothing outside the target root changes (the
//! surrounding directory hashed before and after), and the appliance keeps
//! serving.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::serve::*;
use bytes::Bytes;
use ferry::entry::{ContentHash, Entry, Kind, Time};
use ferry::job::errors::find_coded;
use ferry::send::client::{self, Conn};
use ferry::wire::Frame;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A hash of everything beneath `dir` but `skip`: names, kinds, modes,
/// owners, contents and link targets.
fn tree_hash(dir: &Path, skip: &Path) -> String {
    fn walk(d: &Path, skip: &Path, h: &mut blake3::Hasher) {
        let mut names: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if p == skip || p.extension().is_some_and(|x| x == "log") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            h.update(p.as_os_str().as_bytes());
            h.update(&m.mode().to_be_bytes());
            h.update(&m.uid().to_be_bytes());
            h.update(&m.rdev().to_be_bytes());
            if m.file_type().is_symlink() {
                h.update(std::fs::read_link(&p).unwrap().as_os_str().as_bytes());
            } else if m.is_file() {
                h.update(&std::fs::read(&p).unwrap());
            } else if m.is_dir() {
                walk(&p, skip, h);
            }
        }
    }
    let mut h = blake3::Hasher::new();
    walk(dir, skip, &mut h);
    h.finalize().to_hex().to_string()
}

fn entry(path: &[u8], kind: Kind) -> Entry {
    Entry {
        path: path.to_vec(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size: 0,
        mtime: Time {
            sec: 1_600_000_000,
            nsec: 0,
        },
        ctime: Time::default(),
        rdev: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
    }
}

fn symlink(path: &[u8], target: &[u8]) -> Entry {
    Entry {
        target: target.to_vec(),
        ..entry(path, Kind::Symlink)
    }
}

fn hardlink(path: &[u8], target: &[u8]) -> Entry {
    Entry {
        target: target.to_vec(),
        ..entry(path, Kind::HardLink)
    }
}

/// A file entry and its frames: the entry, one piece, the end.
fn file(path: &[u8], content: &[u8]) -> Vec<Frame> {
    let e = Entry {
        size: content.len() as u64,
        ..entry(path, Kind::File)
    };
    let mut h = ContentHash::default();
    h.piece(0, content);
    vec![
        Frame::Entry {
            tree: 0,
            entry: Box::new(e),
        },
        Frame::FileData {
            tree: 0,
            offset: 0,
            compressed: false,
            payload: Bytes::copy_from_slice(content),
        },
        Frame::FileEnd {
            tree: 0,
            hash: h.finish(content.len() as u64),
        },
    ]
}

fn put(e: Entry) -> Frame {
    Frame::Entry {
        tree: 0,
        entry: Box::new(e),
    }
}

async fn open_tree(s: &Server) -> Conn {
    let mut conn = client::connect(&s.data, &s.token, &s.fingerprint)
        .await
        .unwrap();
    client::send(&mut conn, Frame::OpenTree { tree: 0 })
        .await
        .unwrap();
    loop {
        match client::recv(&mut conn).await.unwrap() {
            Frame::TreeManifest { last: true, .. } => return conn,
            Frame::TreeManifest { .. } => continue,
            other => panic!("expected the tree's manifest, got {other:?}"),
        }
    }
}

/// Send the frames and the tree's end; the appliance's answer: Ok with
/// the committed entries, or the refusal's code and detail.
async fn session(s: &Server, frames: Vec<Frame>) -> Result<u64, (String, String)> {
    let mut conn = open_tree(s).await;
    for f in frames {
        if client::send(&mut conn, f).await.is_err() {
            break;
        }
    }
    let _ = client::send(&mut conn, Frame::CloseTree { tree: 0 }).await;
    loop {
        match client::recv(&mut conn).await {
            Ok(Frame::TreeClosed { entries, .. }) => return Ok(entries),
            Ok(Frame::Bandwidth { .. }) => continue,
            Ok(other) => panic!("expected the tree's end, got {other:?}"),
            Err(e) => {
                let c = find_coded(&e).unwrap_or_else(|| panic!("{e:#}"));
                return Err((c.code.as_str().to_owned(), c.message.clone()));
            }
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    server: Server,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(victim.join("etc")).unwrap();
        std::fs::write(victim.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(victim.join("etc/shadow"), b"root:*:1::::::\n").unwrap();
        let server = Server::start(&dir.path().join("state"), &[]);
        Fixture { dir, server }
    }

    fn root(&self) -> PathBuf {
        self.server.state.join("trees/tree-0")
    }

    fn victim(&self) -> PathBuf {
        self.dir.path().join("victim")
    }

    /// The victim, and the appliance's other trees (the ledger and the
    /// job's files change with every session, by design).
    fn outside(&self) -> String {
        let trees = self.server.state.join("trees");
        format!(
            "{} {}",
            tree_hash(&self.victim(), Path::new("")),
            tree_hash(&trees, &self.root())
        )
    }

    /// The base every case starts from: a root with `etc/` in it.
    fn base(&self) {
        let frames = vec![put(entry(b".", Kind::Dir)), put(entry(b"etc", Kind::Dir))];
        rt().block_on(session(&self.server, frames)).unwrap();
    }

    /// A refusal with this code and detail, nothing outside the root
    /// changed, and a correct session still gets through.
    fn refused(&self, name: &str, frames: Vec<Frame>, code: &str, detail: &str) {
        self.base();
        let before = self.outside();
        let got = rt().block_on(session(&self.server, frames));
        match got {
            Err((c, message)) => {
                assert_eq!(c, code, "{name}: {message}");
                assert!(message.contains(detail), "{name}: {message}");
            }
            Ok(n) => panic!("{name}: accepted ({n} entries)"),
        }
        assert_eq!(
            before,
            self.outside(),
            "{name}: something outside the root changed"
        );
        let mut ok = file(b"etc/hostname", b"still serving\n");
        ok.insert(0, put(entry(b".", Kind::Dir)));
        ok.insert(1, put(entry(b"etc", Kind::Dir)));
        let again = rt().block_on(session(&self.server, ok));
        assert!(
            again.is_ok(),
            "{name}: the appliance stopped serving: {again:?}"
        );
        assert_eq!(
            std::fs::read(self.root().join("etc/hostname")).unwrap(),
            b"still serving\n"
        );
    }
}

#[test]
fn paths_that_leave_the_root_are_refused_and_nothing_outside_changes() {
    let f = Fixture::new();
    let victim = f.victim();
    let v = victim.as_os_str().as_bytes();
    // A symlink to a directory outside, then a file, a directory, a
    // symlink, a node and a removal through it.
    let through_symlink: Vec<(&str, Vec<Frame>)> = vec![
        ("a file through a symlinked directory", {
            let mut fr = vec![put(symlink(b"etc/x", v))];
            fr.extend(file(b"etc/x/etc/passwd", b"owned\n"));
            fr
        }),
        ("a file through a symlink to /", {
            let mut fr = vec![put(symlink(b"etc/y", b"/"))];
            fr.extend(file(b"etc/y/passwd", b"owned\n"));
            fr
        }),
        (
            "a directory through a symlink",
            vec![
                put(symlink(b"etc/x", v)),
                put(entry(b"etc/x/new", Kind::Dir)),
            ],
        ),
        (
            "a symlink through a symlink",
            vec![
                put(symlink(b"etc/x", v)),
                put(symlink(b"etc/x/etc/passwd", b"/dev/null")),
            ],
        ),
        (
            "a fifo through a symlink",
            vec![
                put(symlink(b"etc/x", v)),
                put(entry(b"etc/x/fifo", Kind::Fifo)),
            ],
        ),
        (
            "a removal through a symlink",
            vec![
                put(symlink(b"etc/x", v)),
                Frame::Remove {
                    tree: 0,
                    path: b"etc/x/etc/shadow".to_vec(),
                },
            ],
        ),
        (
            "a hard link through a symlink",
            vec![
                put(symlink(b"etc/x", v)),
                put(hardlink(b"etc/shadow", b"etc/x/etc/shadow")),
            ],
        ),
    ];
    for (name, frames) in through_symlink {
        f.refused(name, frames, "UNSAFE_PATH", "a component is a symlink");
    }
    let rules: Vec<(&str, Vec<Frame>, &str)> = vec![
        (
            "a hard link to an absolute path",
            vec![put(hardlink(b"etc/shadow", b"/etc/shadow"))],
            "the path is absolute",
        ),
        (
            "a hard link up and out",
            vec![put(hardlink(b"etc/shadow", b"../../../victim/etc/shadow"))],
            "the path has a `..` component",
        ),
        (
            "a file up and out",
            file(b"etc/../../../victim/etc/passwd", b"owned\n"),
            "the path has a `..` component",
        ),
        (
            "an absolute file",
            file(
                format!("{}/etc/passwd", victim.display()).as_bytes(),
                b"owned\n",
            ),
            "the path is absolute",
        ),
        (
            "an empty component",
            file(b"etc//passwd", b"owned\n"),
            "the path has an empty component",
        ),
        (
            "a NUL",
            file(b"etc/pass\0wd", b"owned\n"),
            "the path holds a NUL byte",
        ),
        (
            "a removal up and out",
            vec![Frame::Remove {
                tree: 0,
                path: b"../victim".to_vec(),
            }],
            "the path has a `..` component",
        ),
        (
            "the staging directory",
            file(b".ferry-partial/x", b"owned\n"),
            "the appliance's staging directory",
        ),
        ("the root as a file", file(b".", b"owned\n"), "the root"),
    ];
    for (name, frames, detail) in rules {
        f.refused(name, frames, "UNSAFE_PATH", detail);
    }
    // The victim is as it was.
    assert_eq!(
        std::fs::read(victim.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn a_device_node_where_a_file_was_is_replaced_not_written_through() {
    let f = Fixture::new();
    // A block device outside the root: a loop device over a file of the
    // victim's.
    let backing = f.victim().join("disk.img");
    std::fs::write(&backing, vec![0x5a; 1 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());
    let rdev = std::fs::metadata(&loopdev).unwrap().rdev();
    f.base();
    let before = f.outside();
    let backing_before = file_hash(&backing);
    let mut frames = file(b"etc/passwd", b"first\n");
    frames.push(put(Entry {
        rdev,
        ..entry(b"etc/passwd", Kind::BlockDev)
    }));
    frames.extend(file(b"etc/passwd", b"second: not into the device\n"));
    frames.push(put(Entry {
        rdev: libc::makedev(1, 3),
        ..entry(b"etc/null", Kind::CharDev)
    }));
    let done = rt().block_on(session(&f.server, frames));
    assert_eq!(done, Ok(4));
    assert_eq!(
        file_hash(&backing),
        backing_before,
        "the device was written through"
    );
    assert_eq!(before, f.outside());
    let m = std::fs::symlink_metadata(f.root().join("etc/passwd")).unwrap();
    assert!(m.is_file());
    assert_eq!(
        std::fs::read(f.root().join("etc/passwd")).unwrap(),
        b"second: not into the device\n"
    );
    let null = std::fs::symlink_metadata(f.root().join("etc/null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
}

#[test]
fn compressed_pieces_and_holes_arrive_as_sent() {
    let f = Fixture::new();
    f.base();
    let text: Vec<u8> = b"a line that compresses well\n".repeat(4096);
    let size = 3 << 20;
    let mut h = ContentHash::default();
    h.piece(0, &text);
    h.piece(2 << 20, b"tail");
    let frames = vec![
        put(Entry {
            size,
            ..entry(b"etc/sparse-log", Kind::File)
        }),
        Frame::FileData {
            tree: 0,
            offset: 0,
            compressed: true,
            payload: Bytes::from(zstd::bulk::compress(&text, 1).unwrap()),
        },
        Frame::FileData {
            tree: 0,
            offset: 2 << 20,
            compressed: false,
            payload: Bytes::from_static(b"tail"),
        },
        Frame::FileEnd {
            tree: 0,
            hash: h.finish(size),
        },
    ];
    assert_eq!(rt().block_on(session(&f.server, frames)), Ok(1));
    let got = std::fs::read(f.root().join("etc/sparse-log")).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(&got[..text.len()], &text[..]);
    assert!(got[text.len()..2 << 20].iter().all(|&b| b == 0));
    assert_eq!(&got[2 << 20..(2 << 20) + 4], b"tail");
    let m = std::fs::metadata(f.root().join("etc/sparse-log")).unwrap();
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks: the hole was written",
        m.blocks()
    );
}

#[test]
fn content_beyond_the_announced_size_and_a_wrong_hash_are_refused() {
    let f = Fixture::new();
    let mut long = file(b"etc/a", b"12345");
    if let Frame::Entry { entry, .. } = &mut long[0] {
        entry.size = 2;
    }
    f.refused(
        "content past the size",
        long,
        "CHUNK_OUT_OF_RANGE",
        "past the file's 2 bytes",
    );
    let mut bad = file(b"etc/b", b"12345");
    bad[2] = Frame::FileEnd {
        tree: 0,
        hash: [0; 32],
    };
    f.refused(
        "a wrong hash",
        bad,
        "CHUNK_HASH_MISMATCH",
        "does not match its hash",
    );
    // Neither is on the target.
    assert!(!f.root().join("etc/a").exists());
    assert!(!f.root().join("etc/b").exists());
}

/// A sender's layout: `/` on an LVM volume of a GPT disk, `/boot` beside it.
fn source_plan() -> serde_json::Value {
    let layout = ferry::layout::Layout::from_toml(
        r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "300MiB"
type = "linux"
fs = "ext4"
mount = "/boot"
[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"
[[volume]]
vg = "vg-sys"
vg_uuid = "Vg1234-aaaa"
name = "root"
fs = "ext4"
mount = "/"
[volume.place]
disk = 0
partition = 1
offset = 1048576
size = 1073741824
"#,
    )
    .unwrap();
    serde_json::json!({
        "layout": serde_json::to_value(&layout).unwrap(),
        "trees": [{"mount": "/", "used": 1 << 20}, {"mount": "/boot", "used": 1 << 20}],
    })
}

/// The appliance's answer to a session that opens with this layout.
async fn layout_session(s: &Server, plan: &serde_json::Value) -> Result<Frame, (String, String)> {
    let mut conn = client::connect(&s.data, &s.token, &s.fingerprint)
        .await
        .unwrap();
    let json = Bytes::from(serde_json::to_vec(plan).unwrap());
    client::send(&mut conn, Frame::SourceLayout { json })
        .await
        .unwrap();
    client::recv(&mut conn).await.map_err(|e| {
        let c = find_coded(&e).unwrap_or_else(|| panic!("{e:#}"));
        (c.code.as_str().to_owned(), c.message.clone())
    })
}

#[test]
fn layouts_whose_names_become_paths_or_mount_options_are_refused() {
    let f = Fixture::new();
    f.base();
    let good = source_plan();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a volume group named ..",
            Box::new(|p| p["layout"]["volume"][0]["vg"] = "..".into()),
            "logical volume \"..\"/\"root\": not a name LVM allows",
        ),
        (
            "a logical volume named -x",
            Box::new(|p| p["layout"]["volume"][0]["name"] = "-x".into()),
            "logical volume \"vg-sys\"/\"-x\": not a name LVM allows",
        ),
        (
            "a volume on a partition the disk lacks",
            Box::new(|p| p["layout"]["volume"][0]["place"]["partition"] = 7.into()),
            "logical volume vg-sys/root lies on partition 7 of disk 0, which the layout does not have",
        ),
        (
            "a volume's extents overflowing",
            Box::new(|p| {
                p["layout"]["volume"][0]["place"]["offset"] = u64::MAX.into();
            }),
            "logical volume vg-sys/root: its place overflows",
        ),
        (
            "a subvolume mounted above the root",
            Box::new(|p| {
                p["layout"]["disk"][0]["partition"][0]["subvolumes"] =
                    serde_json::json!([{"subvol": "@x", "mount": "/../../etc"}]);
            }),
            "mount point \"/../../etc\" contains . or ..",
        ),
        (
            "a subvolume carrying mount options",
            Box::new(|p| {
                p["layout"]["volume"][0]["subvol"] = "@,device=/dev/vda1".into();
            }),
            "btrfs subvolume \"@,device=/dev/vda1\" is not a path a mount option can carry",
        ),
        (
            "a volume mounted above the root",
            Box::new(|p| p["layout"]["volume"][0]["mount"] = "/var/../..".into()),
            "mount point \"/var/../..\" contains . or ..",
        ),
    ];
    for (name, edit, detail) in cases {
        let before = f.outside();
        let mut plan = good.clone();
        edit(&mut plan);
        match rt().block_on(layout_session(&f.server, &plan)) {
            Err((code, message)) => {
                assert_eq!(code, "LAYOUT_INVALID", "{name}: {message}");
                assert!(message.contains(detail), "{name}: {message}");
            }
            Ok(frame) => panic!("{name}: accepted: {frame:?}"),
        }
        assert_eq!(before, f.outside(), "{name}: something outside changed");
    }
    // The appliance still takes a sound layout.
    match rt().block_on(layout_session(&f.server, &good)) {
        Ok(Frame::TargetsReady { .. }) => {}
        other => panic!("a sound layout after the refusals: {other:?}"),
    }
}
