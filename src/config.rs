//! Appliance configuration.
