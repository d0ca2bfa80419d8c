//! A volume group as its metadata text describes it, and where each of its
//! logical volumes lies: a linear LV is one run of extents on one PV, which
//! a loop device at that offset reaches; any other layout is refused.

use crate::layout::desc::valid_lvm_name;
use anyhow::{bail, Context, Result};

use super::text::{Section, Value};

/// Sectors of LVM's metadata are 512 bytes.
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeGroup {
    pub name: String,
    pub id: String,
    pub seqno: i64,
    /// Bytes of one extent.
    pub extent_size: u64,
    pub pvs: Vec<PhysicalVolume>,
    pub lvs: Vec<LvMeta>,
    /// The whole text, to edit and write back.
    pub text: Section,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhysicalVolume {
    /// Its key in the metadata (`pv0`).
    pub key: String,
    /// Its UUID without dashes, as in the label.
    pub uuid: String,
    /// Byte offset of extent 0 from the PV's start.
    pub pe_start: u64,
    pub pe_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LvMeta {
    pub name: String,
    pub visible: bool,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: String,
    /// (PV key, first extent on it) per stripe.
    pub stripes: Vec<(String, u64)>,
}

/// Where a linear LV lies: which PV, its first extent and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Linear {
    pub pv: String,
    pub first: u64,
    pub count: u64,
}

fn need<T>(v: Option<T>, what: &str, of: &str) -> Result<T> {
    v.with_context(|| format!("{of} has no {what}"))
}

fn non_negative(v: i64, what: &str, of: &str) -> Result<u64> {
    u64::try_from(v).with_context(|| format!("{of} has a negative {what} ({v})"))
}

impl VolumeGroup {
    pub(crate) fn from_text(text: Section) -> Result<VolumeGroup> {
        let (name, vg) = text
            .sections()
            .next()
            .context("the metadata holds no volume group section")?;
        if !valid_lvm_name(name) {
            bail!("the volume group's name {name:?} is not one LVM allows");
        }
        let of = format!("volume group {name}");
        let extent_sectors = non_negative(
            need(vg.int("extent_size"), "extent_size", &of)?,
            "extent_size",
            &of,
        )?;
        if extent_sectors == 0 {
            bail!("{of} has extents of 0 sectors");
        }
        let mut pvs = Vec::new();
        for (key, pv) in need(vg.section("physical_volumes"), "physical_volumes", &of)?.sections() {
            let pof = format!("physical volume {key} of {of}");
            pvs.push(PhysicalVolume {
                key: key.to_owned(),
                uuid: need(pv.str("id"), "id", &pof)?.replace('-', ""),
                pe_start: non_negative(
                    need(pv.int("pe_start"), "pe_start", &pof)?,
                    "pe_start",
                    &pof,
                )?
                .checked_mul(SECTOR)
                .with_context(|| format!("{pof}: pe_start overflows"))?,
                pe_count: non_negative(
                    need(pv.int("pe_count"), "pe_count", &pof)?,
                    "pe_count",
                    &pof,
                )?,
            });
        }
        let mut lvs = Vec::new();
        if let Some(section) = vg.section("logical_volumes") {
            for (lname, lv) in section.sections() {
                if !valid_lvm_name(lname) {
                    bail!("{of} has a logical volume named {lname:?}, which LVM does not allow");
                }
                let lof = format!("logical volume {name}/{lname}");
                let mut segments = Vec::new();
                for (_, seg) in lv.sections() {
                    let stripes = match seg.get("stripes") {
                        Some(Value::Array(a)) => a
                            .chunks(2)
                            .map(|p| match p {
                                [Value::Str(pv), Value::Int(e)] => {
                                    Ok((pv.clone(), non_negative(*e, "stripe extent", &lof)?))
                                }
                                _ => bail!("{lof}: a stripe is not a PV name and an extent"),
                            })
                            .collect::<Result<Vec<_>>>()?,
                        _ => Vec::new(),
                    };
                    segments.push(Segment {
                        start_extent: non_negative(
                            need(seg.int("start_extent"), "start_extent", &lof)?,
                            "start_extent",
                            &lof,
                        )?,
                        extent_count: non_negative(
                            need(seg.int("extent_count"), "extent_count", &lof)?,
                            "extent_count",
                            &lof,
                        )?,
                        kind: need(seg.str("type"), "segment type", &lof)?.to_owned(),
                        stripes,
                    });
                }
                lvs.push(LvMeta {
                    name: lname.to_owned(),
                    visible: lv.strings("status").contains(&"VISIBLE"),
                    segments,
                });
            }
        }
        Ok(VolumeGroup {
            name: name.to_owned(),
            id: need(vg.str("id"), "id", &of)?.to_owned(),
            seqno: need(vg.int("seqno"), "seqno", &of)?,
            extent_size: extent_sectors * SECTOR,
            pvs,
            lvs,
            text: text.clone(),
        })
    }

    pub fn pv(&self, key: &str) -> Option<&PhysicalVolume> {
        self.pvs.iter().find(|p| p.key == key)
    }
}

impl LvMeta {
    /// The one run of extents of a linear LV, or why it is not one.
    pub fn linear(&self) -> std::result::Result<Linear, String> {
        let [seg] = self.segments.as_slice() else {
            return Err(if self.segments.is_empty() {
                "it has no segments".to_owned()
            } else {
                format!(
                    "it is made of {} segments (the appliance reaches a volume that is one run of extents)",
                    self.segments.len()
                )
            });
        };
        match seg.kind.as_str() {
            "striped" => {}
            "thin" | "thin-pool" => {
                return Err(format!(
                    "it is a {} volume (its blocks are mapped by a pool)",
                    seg.kind
                ))
            }
            k if k == "mirror" || k.starts_with("raid") => {
                return Err(format!("it is a {k} volume"))
            }
            k => return Err(format!("its segment is of type {k}")),
        }
        let [(pv, first)] = seg.stripes.as_slice() else {
            return Err(format!("it is striped over {} stripes", seg.stripes.len()));
        };
        Ok(Linear {
            pv: pv.clone(),
            first: *first,
            count: seg.extent_count,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Metadata as `vgcreate` and `lvcreate` write it, with `lvs` in place of
    /// the logical volumes.
    pub fn metadata(vg: &str, seqno: u32, lvs: &str) -> String {
        format!(
            "{vg} {{\nid = \"Vg1234-aaaa-bbbb-cccc-dddd-eeee-ffffff\"\nseqno = {seqno}\nformat = \"lvm2\"\n\
             status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nflags = []\nextent_size = 8192\nmax_lv = 0\nmax_pv = 0\nmetadata_copies = 0\n\n\
             physical_volumes {{\n\npv0 {{\nid = \"AbCdEf-0123-4567-89Ab-CdEf-0123-456789\"\ndevice = \"/dev/loop0p2\"\n\
             status = [\"ALLOCATABLE\"]\nflags = []\ndev_size = 3667968\npe_start = 2048\npe_count = 447\n}}\n}}\n\n\
             logical_volumes {{\n{lvs}\n}}\n\n}}\n# Generated by LVM2 version 2.03.16(2) (2022-05-18): Thu Dec  3 05:00:00 2026\n\n\
             contents = \"Text Format Volume Group\"\nversion = 1\n\ndescription = \"\"\n\ncreation_host = \"src\"\ncreation_time = 1764738000\n"
        )
    }

    pub fn lv(name: &str, segments: &[(&str, u32, &str)]) -> String {
        let mut s = format!(
            "\n{name} {{\nid = \"Lv{name}-aaaa\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = {}\n",
            segments.len()
        );
        let mut start = 0;
        for (i, (kind, count, stripes)) in segments.iter().enumerate() {
            s.push_str(&format!(
                "\nsegment{} {{\nstart_extent = {start}\nextent_count = {count}\n\ntype = \"{kind}\"\n{stripes}\n}}\n",
                i + 1
            ));
            start += count;
        }
        s.push_str("}\n");
        s
    }

    #[test]
    fn linear_volumes_are_found_and_the_others_refused() {
        let linear = "stripe_count = 1\n\nstripes = [\n\"pv0\", 0\n]";
        let cases: Vec<(&str, String, std::result::Result<Linear, &str>)> = vec![
            (
                "linear",
                lv("root", &[("striped", 320, "stripe_count = 1\n\nstripes = [\n\"pv0\", 32\n]")]),
                Ok(Linear { pv: "pv0".into(), first: 32, count: 320 }),
            ),
            (
                "striped",
                lv("s", &[("striped", 64, "stripe_count = 2\nstripe_size = 128\n\nstripes = [\n\"pv0\", 0,\n\"pv1\", 0\n]")]),
                Err("it is striped over 2 stripes"),
            ),
            (
                "two segments",
                lv("m", &[("striped", 10, linear), ("striped", 10, "stripe_count = 1\nstripes = [\"pv0\", 100]")]),
                Err("it is made of 2 segments (the appliance reaches a volume that is one run of extents)"),
            ),
            ("mirror", lv("mi", &[("mirror", 10, "mirror_count = 2\nmirrors = [\"mi_mimage_0\", \"mi_mimage_1\"]")]), Err("it is a mirror volume")),
            ("raid1", lv("r", &[("raid1", 10, "device_count = 2\nraids = [\"r_rmeta_0\", \"r_rimage_0\"]")]), Err("it is a raid1 volume")),
            ("thin", lv("t", &[("thin", 10, "thin_pool = \"pool\"\ntransaction_id = 1\ndevice_id = 1")]), Err("it is a thin volume (its blocks are mapped by a pool)")),
            ("cache", lv("c", &[("cache", 10, "cache_pool = \"cp\"\norigin = \"c_corig\"")]), Err("its segment is of type cache")),
        ];
        for (name, lvtext, want) in cases {
            let text = metadata("ferry-vg", 3, &lvtext);
            let vg = VolumeGroup::from_text(super::super::text::parse(&text).unwrap()).expect(name);
            assert_eq!(vg.name, "ferry-vg");
            assert_eq!(vg.seqno, 3);
            assert_eq!(vg.extent_size, 4 << 20);
            assert_eq!(vg.pvs[0].uuid, "AbCdEf0123456789AbCdEf0123456789");
            assert_eq!(vg.pvs[0].pe_start, 1 << 20);
            assert_eq!(vg.pvs[0].pe_count, 447);
            assert!(vg.lvs[0].visible);
            assert_eq!(vg.lvs[0].linear(), want.map_err(str::to_owned), "{name}");
        }
    }

    #[test]
    fn incomplete_metadata_is_refused() {
        for (name, text, want) in [
            ("no vg", "contents = \"x\"\n", "the metadata holds no volume group section"),
            ("no extent size", "vg {\nid = \"x\"\nseqno = 1\nphysical_volumes {\n}\n}\n", "volume group vg has no extent_size"),
            ("no pv id", "vg {\nid = \"x\"\nseqno = 1\nextent_size = 8\nphysical_volumes {\npv0 {\npe_start = 1\npe_count = 1\n}\n}\n}\n", "physical volume pv0 of volume group vg has no id"),
            ("negative", "vg {\nid = \"x\"\nseqno = 1\nextent_size = -8\n}\n", "volume group vg has a negative extent_size (-8)"),
        ] {
            let err = VolumeGroup::from_text(super::super::text::parse(text).unwrap()).expect_err(name);
            assert_eq!(err.to_string(), want, "{name}");
        }
    }

    #[test]
    fn names_that_would_become_paths_outside_dev_are_refused() {
        for (vg, lvname, want) in [
            (
                "..",
                "root",
                "the volume group's name \"..\" is not one LVM allows",
            ),
            (
                ".",
                "root",
                "the volume group's name \".\" is not one LVM allows",
            ),
            (
                "-vg",
                "root",
                "the volume group's name \"-vg\" is not one LVM allows",
            ),
            (
                "ferry-vg",
                "..",
                "volume group ferry-vg has a logical volume named \"..\", which LVM does not allow",
            ),
            (
                "ferry-vg",
                "-x",
                "volume group ferry-vg has a logical volume named \"-x\", which LVM does not allow",
            ),
        ] {
            let text = metadata(
                vg,
                3,
                &lv(
                    lvname,
                    &[("striped", 10, "stripe_count = 1\nstripes = [\"pv0\", 0]")],
                ),
            );
            let err = VolumeGroup::from_text(super::super::text::parse(&text).unwrap())
                .expect_err(&format!("{vg}/{lvname}"));
            assert_eq!(err.to_string(), want);
        }
        for ok in ["ferry-vg", "vg_sys", "a.b+c", "VG0", "x..y"] {
            assert!(valid_lvm_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(128)] {
            assert!(!valid_lvm_name(bad), "{bad}");
        }
    }
}
