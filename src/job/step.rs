//! The steps of a round's pipeline after the data: one type for the job
//! record, `/v1/job`, the status page and the wire.

use serde::{Deserialize, Deserializer, Serialize};

/// A step of the pipeline that runs once every disk of a round is
/// committed, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// The received disks are inspected: what the repair would fail on
    /// stops the round before anything is changed.
    Check,
    /// Each disk whose target is larger than its source is grown.
    Grow,
    /// The received system's own file systems are mounted.
    Mount,
    /// The migrated OS is repaired to boot on the cloud's hardware.
    Repair,
    /// The ledger learns the chunks that grow and repair changed.
    Resync,
    /// File systems checked read-only, every disk re-read against the ledger.
    Verify,
    /// The repaired disks booted under QEMU through copy-on-write overlays,
    /// as the cloud's machine would boot them.
    Boot,
    /// Targets flushed, the manifest written, the control plane told.
    Handoff,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Check,
        Step::Grow,
        Step::Mount,
        Step::Repair,
        Step::Resync,
        Step::Verify,
        Step::Boot,
        Step::Handoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Grow => "grow",
            Step::Mount => "mount",
            Step::Repair => "repair",
            Step::Resync => "resync",
            Step::Verify => "verify",
            Step::Boot => "boot",
            Step::Handoff => "handoff",
        }
    }

    /// The step's number on the wire (stable: never renumbered).
    pub(crate) fn wire_code(self) -> u8 {
        match self {
            Step::Grow => 1,
            Step::Mount => 2,
            Step::Repair => 3,
            Step::Resync => 4,
            Step::Verify => 5,
            Step::Handoff => 6,
            Step::Boot => 7,
            Step::Check => 8,
        }
    }

    pub(crate) fn from_wire_code(code: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.wire_code() == code)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a stored step leniently: a record written by another version may
/// name a step this one does not know, which must not make the job
/// unreadable (the step is display only and cleared on the next change).
pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Step>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(d)?;
    Ok(raw.and_then(|v| serde_json::from_value(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip_and_unknown_ones_are_none() {
        for s in Step::ALL {
            assert_eq!(Step::from_wire_code(s.wire_code()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Step::from_wire_code(0), None);
        assert_eq!(Step::from_wire_code(99), None);
    }

    #[test]
    fn a_stored_unknown_step_reads_as_none() {
        #[derive(Deserialize)]
        struct R {
            #[serde(default, deserialize_with = "lenient")]
            step: Option<Step>,
        }
        let r: R = serde_json::from_str(r#"{"step": "ledger"}"#).unwrap();
        assert_eq!(r.step, None);
        let r: R = serde_json::from_str(r#"{"step": "verify"}"#).unwrap();
        assert_eq!(r.step, Some(Step::Verify));
    }
}
