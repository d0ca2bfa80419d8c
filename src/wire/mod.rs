//! The wire protocol shared by sender and receiver.
