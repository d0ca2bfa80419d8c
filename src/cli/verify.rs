//! `ferry verify`: disks checked against a round's handoff manifest.

/// Arguments of `ferry verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, on the appliance or wherever the snapshot's disks are readable:\n  \
curl -s -H \"Authorization: Bearer $CONTROL_TOKEN\" http://appliance:8080/v1/job/handoff > handoff.json\n  \
ferry verify --manifest handoff.json --disk 0=/dev/vdb --disk 1=/dev/vdc\n\n\
Exit status 0 when every disk named matches the manifest's digest; VERIFY_FAILED otherwise."
)]
pub struct VerifyArgs {
    /// The handoff manifest (`<state-dir>/handoff.json`, or GET /v1/job/handoff).
    #[arg(long, value_name = "FILE")]
    pub manifest: std::path::PathBuf,
    /// A disk to check: the manifest's disk index and the device or image
    /// that holds it now (repeat for each disk; default: every disk of the
    /// manifest at its target path).
    #[arg(long, value_name = "INDEX=PATH", value_parser = parse_disk)]
    pub disk: Vec<(u32, std::path::PathBuf)>,
}

fn parse_disk(s: &str) -> Result<(u32, std::path::PathBuf), String> {
    let (i, p) = s
        .split_once('=')
        .ok_or_else(|| format!("expected INDEX=PATH, e.g. 0=/dev/vdb; got {s:?}"))?;
    let i = i
        .parse()
        .map_err(|_| format!("the disk index {i:?} is not a number"))?;
    Ok((i, p.into()))
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let manifest: crate::pipeline::handoff::Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("parsing the manifest {}", args.manifest.display()))?;
    let disks = if args.disk.is_empty() {
        manifest
            .disks
            .iter()
            .map(|d| (d.index, d.target.clone()))
            .collect()
    } else {
        args.disk
    };
    for line in crate::pipeline::handoff::check(&manifest, &disks)? {
        println!("{line}");
    }
    Ok(())
}
