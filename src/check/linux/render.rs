//! The text form of a [`LinuxReport`], as the check report prints it.

use super::{LinuxReport, MIB};
use crate::repair::detect::{Bootloader, Firmware};

impl LinuxReport {
    pub(crate) fn render(&self) -> String {
        let mut out = format!(
            "system: {} ({} {}), init {}, {} firmware, recipe {}\n",
            self.os.pretty_name,
            self.os.id,
            self.os.version_id,
            format!("{:?}", self.os.init).to_lowercase(),
            match self.firmware.mode {
                Firmware::Bios => "BIOS",
                Firmware::Uefi => "UEFI",
            },
            self.recipe
        );
        self.render_boot(&mut out);
        self.render_storage(&mut out);
        self.render_platform(&mut out);
        out
    }

    /// Kernels and their drivers, the initramfs generator, the boot loader
    /// and, under UEFI, the EFI loaders.
    fn render_boot(&self, out: &mut String) {
        for k in &self.kernels {
            let have: Vec<String> = k
                .drivers
                .iter()
                .map(|(d, ok)| format!("{d} {}", if *ok { "yes" } else { "NO" }))
                .collect();
            out.push_str(&format!(
                "  kernel {}: {}; initramfs {}\n",
                k.version,
                have.join(", "),
                k.initramfs.as_deref().unwrap_or("none")
            ));
        }
        out.push_str(&format!(
            "  initramfs generator: {}\n",
            match (&self.initramfs.tool, self.initramfs.runnable) {
                (Some(t), true) => format!("{t} (runs)"),
                (Some(t), false) => format!("{t} (cannot run)"),
                (None, _) => "none".to_owned(),
            }
        ));
        out.push_str(&format!(
            "  boot loader: {}{}\n",
            match self.bootloader.kind {
                Bootloader::Grub2 => "GRUB 2",
                Bootloader::GrubLegacy => "GRUB legacy",
                Bootloader::None => "none",
            },
            self.bootloader
                .version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default()
        ));
        if self.firmware.mode == Firmware::Uefi {
            out.push_str(&format!(
                "  EFI loaders: {}\n",
                if self.firmware.efi_loaders.is_empty() {
                    "none found".to_owned()
                } else {
                    self.firmware.efi_loaders.join(", ")
                }
            ));
        }
    }

    /// LVM and the free space on the system's file systems.
    fn render_storage(&self, out: &mut String) {
        out.push_str(&format!("  LVM: {}\n", self.lvm.why));
        for s in &self.space {
            out.push_str(&format!(
                "  space on {}: {} MiB and {} inodes free, {} MiB and {} inodes needed\n",
                s.mount,
                s.free_bytes / MIB,
                s.free_inodes,
                s.need_bytes.div_ceil(MIB),
                s.need_inodes
            ));
        }
    }

    /// The network, SELinux, cloud-init and the old platform's agents.
    fn render_platform(&self, out: &mut String) {
        let stacks: Vec<String> = self
            .network
            .stacks
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        out.push_str(&format!(
            "  network: {}{}\n",
            if stacks.is_empty() {
                "no known stack".to_owned()
            } else {
                stacks.join(", ")
            },
            if self.network.static_config.is_empty() {
                String::new()
            } else {
                format!("; static: {}", self.network.static_config.join("; "))
            }
        ));
        if !self.network.nics.is_empty() {
            let nics: Vec<String> = self
                .network
                .nics
                .iter()
                .map(|n| {
                    let mut s = n.name.clone();
                    if let Some(m) = &n.mac {
                        s.push_str(&format!(" ({m})"));
                    }
                    s.push_str(&if n.addresses.is_empty() {
                        " (no static address)".to_owned()
                    } else {
                        format!(" {}", n.addresses.join(" "))
                    });
                    s
                })
                .collect();
            out.push_str(&format!(
                "  NICs (a network map names these): {}\n",
                nics.join(", ")
            ));
        }
        out.push_str(&format!(
            "  SELinux: {}; cloud-init: {}; old platform's agents: {}\n",
            format!("{:?}", self.os.selinux).to_lowercase(),
            if self.os.cloud_init {
                "installed"
            } else {
                "not installed"
            },
            if self.agents.is_empty() {
                "none".to_owned()
            } else {
                self.agents.join(", ")
            }
        ));
    }
}
