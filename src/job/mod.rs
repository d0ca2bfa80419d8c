//! The job: its ledger (what is committed), its states and its error codes.

pub mod errors;
pub mod handle;
pub mod ledger;
pub mod state;
pub mod step;
