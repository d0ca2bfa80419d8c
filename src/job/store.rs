//! Where the job record lives: the ledger's meta table in the appliance,
//! memory (through JSON all the same) in tests.

use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::record::JobRecord;

/// Where the job record lives: the ledger in the appliance, memory in tests.
pub trait JobStore: Send + Sync {
    fn load(&self) -> Result<Option<JobRecord>>;
    fn save(&self, record: &JobRecord) -> Result<()>;
}

/// A store in memory that still goes through JSON, so what a test saves is
/// exactly what a durable store would read back.
#[derive(Debug, Default)]
pub struct MemoryStore {
    bytes: Mutex<Option<Vec<u8>>>,
    /// Make the next saves fail, to test that a failed save changes nothing.
    pub fail_saves: std::sync::atomic::AtomicBool,
}

impl JobStore for MemoryStore {
    fn load(&self) -> Result<Option<JobRecord>> {
        let bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        bytes
            .as_deref()
            .map(|b| serde_json::from_slice(b).context("decoding the job record"))
            .transpose()
    }

    fn save(&self, record: &JobRecord) -> Result<()> {
        if self.fail_saves.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(coded(
                ErrorCode::LedgerFailed,
                "saving the job record (test)",
            ));
        }
        let json = serde_json::to_vec(record).context("encoding the job record")?;
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        Ok(())
    }
}

/// The key of the job record in a key-value store such as the ledger's meta table.
pub const JOB_RECORD_KEY: &str = "job";

/// The appliance keeps the job record in the ledger's meta table: one
/// durable redb transaction per save, beside the committed chunks.
impl JobStore for crate::job::ledger::Ledger {
    fn load(&self) -> Result<Option<JobRecord>> {
        self.get_meta(JOB_RECORD_KEY)
            .code(ErrorCode::LedgerFailed)?
            .map(|b| serde_json::from_slice(&b).context("decoding the job record from the ledger"))
            .transpose()
    }

    fn save(&self, record: &JobRecord) -> Result<()> {
        let json = serde_json::to_vec(record).context("encoding the job record")?;
        self.put_meta(JOB_RECORD_KEY, &json)
            .code(ErrorCode::LedgerFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::record::testing::record;
    use crate::job::status::JobStatus as S;

    #[test]
    fn ledger_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let r = record(S::SYNCING, true);
        {
            let ledger = crate::job::ledger::Ledger::open(&path).unwrap();
            assert_eq!(JobStore::load(&ledger).unwrap(), None);
            JobStore::save(&ledger, &r).unwrap();
        }
        let ledger = crate::job::ledger::Ledger::open(&path).unwrap();
        assert_eq!(JobStore::load(&ledger).unwrap(), Some(r));
    }

    #[test]
    fn memory_store_round_trip() {
        let store = MemoryStore::default();
        assert_eq!(store.load().unwrap(), None);
        let r = record(S::SYNCING, true);
        store.save(&r).unwrap();
        assert_eq!(store.load().unwrap(), Some(r));
    }
}
