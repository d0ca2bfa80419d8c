//! The one helper that runs external tools.
//!
//! Every external command goes through [`Cmd`]: stdin is null, argv never
//! passes through a shell, the full command line is in every error, and the
//! tail of stderr is shown when the tool fails.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// How many bytes of a failing tool's stderr are quoted in the error.
const STDERR_TAIL: usize = 2000;

/// An external command, built up and then run once.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
    stdin: Option<Vec<u8>>,
}

/// What a successful command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as UTF-8 text (lossy: tools print file names we did not choose).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Feed these bytes on stdin instead of /dev/null.
    pub fn stdin_bytes(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// The command line as a user would type it, for messages.
    pub fn display(&self) -> String {
        let mut s = shell_quote(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(&a.to_string_lossy()));
        }
        s
    }

    /// Run to completion; a non-zero exit is an error naming the command and
    /// quoting the end of its stderr.
    pub fn run(&self) -> Result<Output> {
        let out = self.output()?;
        if !out.0.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.display(),
                out.0,
                tail(&out.1.stderr, &out.1.stdout)
            );
        }
        Ok(out.1)
    }

    /// Run and return the exit status with the output, without judging it.
    pub fn output(&self) -> Result<(std::process::ExitStatus, Output)> {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        tracing::debug!(command = %self.display(), "running");
        let mut child = match c.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let program = self.program.to_string_lossy();
                return Err(crate::job::errors::coded(
                    crate::job::errors::ErrorCode::ToolMissing,
                    format!(
                        "`{program}` is not installed (Debian package: {}; needed for `{}`)",
                        package_of(&program),
                        self.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("starting `{}`", self.display()))
            }
        };
        let writer = match (self.stdin.clone(), child.stdin.take()) {
            (Some(input), Some(mut pipe)) => Some(std::thread::spawn(move || {
                use std::io::Write;
                // A tool may exit without reading all of its input; that is
                // its business and shows in its exit status.
                let _ = pipe.write_all(&input);
            })),
            _ => None,
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", self.display()))?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok((
            out.status,
            Output {
                stdout: out.stdout,
                stderr: out.stderr,
            },
        ))
    }

    /// Start it and leave it running, in a process group of its own, so
    /// that a signal to the caller's group (a Ctrl-C) does not reach it and
    /// it outlives the caller: stdin and stdout are pipes to the caller,
    /// stderr is the caller's.
    pub(crate) fn spawn_detached(&self) -> Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        tracing::debug!(command = %self.display(), "starting");
        c.spawn()
            .with_context(|| format!("starting `{}`", self.display()))
    }

    /// Run and parse stdout as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let out = self.run()?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing the JSON printed by `{}`", self.display()))
    }
}

/// Is `program` on PATH?
/// The Debian package that ships `program`, for the hint of a missing tool.
pub(crate) fn package_of(program: &str) -> &'static str {
    let name = program.rsplit('/').next().unwrap_or(program);
    match name {
        "e2fsck" | "mkfs.ext4" | "mkfs.ext3" | "resize2fs" | "tune2fs" | "dumpe2fs" => "e2fsprogs",
        n if n.starts_with("xfs_") || n == "mkfs.xfs" => "xfsprogs",
        "fsck.vfat" | "mkfs.vfat" | "fsck.fat" | "mkfs.fat" => "dosfstools",
        "sgdisk" => "gdisk",
        "mount" | "umount" => "mount",
        "losetup" | "partx" | "sfdisk" | "blkid" | "mkswap" | "wipefs" | "blockdev" | "lsblk" => {
            "util-linux"
        }
        "chroot" | "cp" | "sync" => "coreutils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" => "qemu-utils",
        "zstd" => "zstd",
        "ntfs-3g" | "ntfsresize" | "ntfsfix" | "mkntfs" => "ntfs-3g",
        "hivexsh" | "hivexget" => "libhivex-bin",
        "lvm" | "lvs" | "vgs" | "pvs" | "lvcreate" | "lvremove" | "vgchange" => "lvm2",
        _ => "the package that provides it",
    }
}

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

pub(crate) fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let src = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    let text = String::from_utf8_lossy(src);
    let text = text.trim();
    if text.is_empty() {
        return "no output".to_owned();
    }
    match last_bytes(text, STDERR_TAIL) {
        (end, false) => end.to_owned(),
        (end, true) => format!("...{end}"),
    }
}

/// The end of `text` within `max` bytes, on a character boundary, and
/// whether anything was cut.
pub(crate) fn last_bytes(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    (&text[start..], true)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        let out = Cmd::new("printf").arg("a b").run().unwrap();
        assert_eq!(out.stdout, b"a b");
    }

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("`sh -c 'echo boom >&2; exit 3'` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("boom"), "{msg}");
    }

    #[test]
    fn missing_program_says_so() {
        let err = Cmd::new("ferry-no-such-tool").run().unwrap_err();
        let coded = crate::job::errors::find_coded(&err).expect("a coded error");
        assert_eq!(coded.code, crate::job::errors::ErrorCode::ToolMissing);
        assert!(
            format!("{err:#}").contains("`ferry-no-such-tool` is not installed"),
            "{err:#}"
        );
        let err = Cmd::new("/nonexistent/sbin/xfs_growfs")
            .arg("/")
            .run()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "(Debian package: xfsprogs; needed for `/nonexistent/sbin/xfs_growfs /`)"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn stdin_is_fed() {
        let out = Cmd::new("cat").stdin_bytes("hello").run().unwrap();
        assert_eq!(out.stdout, b"hello");
    }
}
