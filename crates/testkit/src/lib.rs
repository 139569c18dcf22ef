//! Shared test support for Flotilla's end-to-end tests, simulation and chaos suites.
//!
//! `process`: a cluster of real `flotilla node` processes on loopback, each with its own
//! RocksDB directory, that a test can kill -9, stop gracefully and restart.
//!
//! `history`, `recorder`, `checker`: every suite records what its clients did as a
//! [`History`] of invoke/completion events (saved and replayed as JSON lines); a
//! [`Recorder`] wraps the smart client and records each send, poll, list-offsets and topic
//! operation (an error is `Fail` when definite, `Info` when the write may have happened)
//! plus the nemesis's faults and heals; and [`check`] judges a history for the anomalies a
//! replicated log must not show (inconsistent offsets, duplicates, lost writes, real-time
//! order, poll skips, ...) with a [`Verdict`] that names each anomaly's partition, offsets, values
//! and events, while [`check_replicas`] compares replicas' committed logs. The checker
//! knows nothing of the client or the cluster: a simulator may write histories directly.

pub mod checker;
pub mod group;
pub mod history;
pub mod process;
pub mod recorder;
pub mod replica;

pub use checker::{Anomaly, AnomalyKind, ReplicaLog, Verdict, check, check_replicas};
pub use history::{Event, History, Kind, Op};
pub use process::{ClusterOptions, ProcessCluster};
pub use recorder::{Actor, Recorder};
