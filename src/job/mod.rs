//! The job: its ledger (what is committed), its status and the changes of
//! it, the record that is persisted, its disks' progress and its error codes.

pub mod change;
pub mod errors;
pub mod events;
pub mod handle;
pub mod ledger;
pub mod progress;
pub mod record;
pub mod status;
pub mod step;
pub mod store;
pub mod time;

/// The job's state under the path the rest of the appliance (and the
/// integration tests) name it by: one place to import the record, its
/// status and what goes with them.
pub mod state {
    pub use super::change::{ChangeCause, StateChange};
    pub use super::progress::DiskProgress;
    pub use super::record::{HandoffMark, JobError, JobRecord, JobSettings, Validity};
    pub use super::status::{
        allowed, check_transition, BusinessStatus, JobState, JobStatus, TRANSITIONS,
    };
    pub use super::store::{JobStore, MemoryStore, JOB_RECORD_KEY};
    pub use super::time::{Clock, ManualClock, SystemClock, Timestamp};
}
