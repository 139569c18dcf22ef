//! Shared test support for Flotilla's end-to-end tests, simulation and chaos suites.
//!
//! `process`: a cluster of real `flotilla node` processes on loopback, each with its own
//! RocksDB directory, that a test can kill -9, stop gracefully and restart.

pub mod process;

pub use process::ProcessCluster;
