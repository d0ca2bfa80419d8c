//! The EFI system partition. It is FAT, which the appliance's kernel may
//! not mount, so its files are read and written in-process.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Files of an ESP, by path relative to its root (`EFI/BOOT/BOOTX64.EFI`).
pub trait Esp {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
    fn write(&self, path: &str, data: &[u8]) -> Result<()>;
}

/// A FAT file system on a block device or image, opened per operation so no
/// handle outlives the repair.
pub struct FatEsp {
    node: PathBuf,
}

impl FatEsp {
    pub fn new(node: &Path) -> FatEsp {
        FatEsp {
            node: node.to_owned(),
        }
    }

    fn open(&self) -> Result<fatfs::FileSystem<std::fs::File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.node)
            .with_context(|| format!("opening the ESP {}", self.node.display()))?;
        fatfs::FileSystem::new(f, fatfs::FsOptions::new())
            .with_context(|| format!("reading the FAT file system on {}", self.node.display()))
    }
}

impl Esp for FatEsp {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let fs = self.open()?;
        let mut f = match fs.root_dir().open_file(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("opening {path} on {}", self.node.display()))
            }
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .with_context(|| format!("reading {path} on {}", self.node.display()))?;
        Ok(Some(buf))
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let fs = self.open()?;
        {
            let mut dir = fs.root_dir();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let (name, dirs) = parts
                .split_last()
                .with_context(|| format!("{path}: no file name"))?;
            for d in dirs {
                dir = dir
                    .create_dir(d)
                    .with_context(|| format!("creating {d} on {}", self.node.display()))?;
            }
            let mut f = dir
                .create_file(name)
                .with_context(|| format!("creating {path} on {}", self.node.display()))?;
            f.truncate()
                .with_context(|| format!("truncating {path} on {}", self.node.display()))?;
            f.write_all(data)
                .with_context(|| format!("writing {path} on {}", self.node.display()))?;
            f.flush()
                .with_context(|| format!("flushing {path} on {}", self.node.display()))?;
        }
        fs.unmount()
            .with_context(|| format!("closing the FAT file system on {}", self.node.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_on_a_fresh_fat() {
        if !crate::cmd::have("mkfs.vfat") {
            eprintln!("skipping: mkfs.vfat is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("esp.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        crate::cmd::Cmd::new("mkfs.vfat")
            .args(["-F", "32"])
            .arg(&img)
            .run()
            .unwrap();
        let esp = FatEsp::new(&img);
        assert_eq!(esp.read("EFI/BOOT/BOOTX64.EFI").unwrap(), None);
        esp.write("EFI/BOOT/BOOTX64.EFI", b"first, longer content")
            .unwrap();
        esp.write("EFI/BOOT/BOOTX64.EFI", b"second").unwrap();
        assert_eq!(
            esp.read("EFI/BOOT/BOOTX64.EFI").unwrap().as_deref(),
            Some(&b"second"[..])
        );
        let listing = crate::cmd::Cmd::new("mdir")
            .args(["-b", "-i"])
            .arg(&img)
            .arg("::/EFI/BOOT")
            .run();
        if let Ok(out) = listing {
            assert!(
                out.stdout_text().contains("BOOTX64.EFI"),
                "{}",
                out.stdout_text()
            );
        }
    }
}
