//! What a guest process may still do once it is in its namespaces: the
//! few capabilities package scripts need on files, `no_new_privs`, and a
//! seccomp filter over the calls that would undo the sandbox.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The capabilities a guest keeps: owning, reading and writing the
/// migrated system's files whatever their owners and modes (package
/// scripts, `cp -a` into the initramfs, set-uid binaries copied with their
/// bits and file capabilities), and switching users or signalling its own
/// processes inside its PID namespace. Everything else is dropped from the
/// bounding set, so no program it runs can get it back.
pub(crate) const KEPT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The calls refused with EPERM: mounting and leaving the mount namespace,
/// new namespaces, kexec, kernel modules, bpf, perf events, tracing and
/// reading other processes' memory, opening files by handle (the classic
/// way out of a chroot-like view), the kernel's keyrings, swap, the clock
/// and reboot (the dropped capabilities refuse these too; the filter holds
/// if a capability is ever kept by mistake).
const REFUSED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_userfaultfd,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

/// The namespace flags of clone(2): a guest makes no namespace.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The filters, compiled before anything is dropped: the refused calls
/// (EPERM), and clone3, whose flags a filter cannot read, answered with
/// ENOSYS so that the C library falls back to clone, whose flags it can.
pub(crate) struct Filters(Vec<BpfProgram>);

pub(crate) fn prepare() -> Result<Filters> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|&nr| (nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("building the clone rule")?;
    rules.insert(libc::SYS_clone, clone_rules);
    let refused = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )
    .context("building the seccomp filter")?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .context("building the clone3 filter")?;
    Ok(Filters(vec![
        refused.try_into().context("compiling the seccomp filter")?,
        clone3.try_into().context("compiling the clone3 filter")?,
    ]))
}

/// Drop every capability but [`KEPT`], from the bounding set too, and
/// clear the ambient and inheritable sets: after exec the program has
/// exactly [`KEPT`].
pub(crate) fn drop_capabilities() -> Result<()> {
    // What the service itself may not have, the guest does not get either.
    let have = caps::read(None, CapSet::Permitted).context("reading the capabilities")?;
    let kept: CapsHashSet = KEPT.iter().copied().filter(|c| have.contains(c)).collect();
    // The bounding set too, where this process may change it (CAP_SETPCAP;
    // ferry.service does not grant it). Without it, no_new_privs (set
    // before the program starts) holds every program the guest runs within
    // the permitted set cut below: an exec that would gain a capability
    // gets the intersection with what it had.
    if have.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
        for cap in bounding {
            if !kept.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .with_context(|| format!("dropping {cap} from the bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    // Permitted last: setting the others needs CAP_SETPCAP, dropped here.
    caps::set(None, CapSet::Effective, &kept).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted capabilities")?;
    Ok(())
}

/// `no_new_privs`, then the filters: from here on, for this process and
/// everything it starts.
pub(crate) fn apply(filters: &Filters) -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    for f in &filters.0 {
        seccompiler::apply_filter(f).context("installing the seccomp filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_refuse_what_they_list() {
        let f = prepare().unwrap();
        assert_eq!(f.0.len(), 2);
        // A jump per refused call at least, and the clone rule's checks.
        assert!(f.0[0].len() > REFUSED.len(), "{}", f.0[0].len());
        assert!(!KEPT.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!KEPT.contains(&Capability::CAP_MKNOD));
        assert!(!KEPT.contains(&Capability::CAP_SYS_CHROOT));
    }
}
