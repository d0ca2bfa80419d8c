//! The EFI system partition: FAT, which the appliance's kernel may not
//! mount, so the layout engine reads and writes it in-process.

use anyhow::Result;

pub use crate::layout::fat::FatPartition;

/// Files of an ESP, by path relative to its root (`EFI/BOOT/BOOTX64.EFI`).
pub(crate) trait Esp {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
    fn write(&self, path: &str, data: &[u8]) -> Result<()>;
    /// The entries of a directory as (name, is_dir); empty when it does not
    /// exist.
    fn list(&self, dir: &str) -> Result<Vec<(String, bool)>>;
}

impl Esp for FatPartition {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        // Walk down from the root so that only "not there" reads as None;
        // a FAT that cannot be read is an error.
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = String::new();
        for (i, name) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let entries = FatPartition::list(self, &dir)?;
            if !entries
                .iter()
                .any(|e| e.is_dir != last && e.name.eq_ignore_ascii_case(name))
            {
                return Ok(None);
            }
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(name);
        }
        FatPartition::read(self, path).map(Some)
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        FatPartition::write(self, path, data)
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, bool)>> {
        let mut cur = String::new();
        for name in dir.split('/').filter(|p| !p.is_empty()) {
            let entries = FatPartition::list(self, &cur)?;
            let Some(e) = entries
                .iter()
                .find(|e| e.is_dir && e.name.eq_ignore_ascii_case(name))
            else {
                return Ok(Vec::new());
            };
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(&e.name);
        }
        Ok(FatPartition::list(self, &cur)?
            .into_iter()
            .map(|e| (e.name, e.is_dir))
            .collect())
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
        let esp = FatPartition::new(&img);
        assert_eq!(Esp::read(&esp, "EFI/BOOT/BOOTX64.EFI").unwrap(), None);
        Esp::write(&esp, "EFI/BOOT/BOOTX64.EFI", b"first, longer content").unwrap();
        Esp::write(&esp, "EFI/BOOT/BOOTX64.EFI", b"second").unwrap();
        assert_eq!(
            Esp::read(&esp, "EFI/BOOT/BOOTX64.EFI").unwrap().as_deref(),
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
