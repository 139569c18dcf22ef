//! openraft glue: the type configuration, the log-store and state-machine adapters over
//! the node's one storage engine, the transport seam, and the registry of the many Raft
//! groups one node hosts.
//!
//! Every openraft type stays inside this crate (its 0.10 alpha API moves between
//! releases); the rest of the node sees `Groups`, `Group`, `Command`, `Response` and
//! `WriteError`. Raft messages cross the network as opaque bytes through the
//! `RaftTransport` trait, so this crate knows nothing of gRPC, and storage is any
//! `flotilla_storage::Engine`, so it knows nothing of RocksDB.
//!
//! Architecture invariant: no tonic, prost or rocksdb here; time comes from tokio (which
//! the simulator drives), randomness from openraft's seeded RNG.

pub mod command;
pub mod config;
pub mod group;
pub mod index;
pub mod keys;
#[cfg(not(madsim))]
pub mod lazy_mpsc;
pub mod log_store;
pub mod network;
pub mod registry;
// Under `--cfg madsim` (the madsim simulation tier) openraft runs on madsim instead of tokio.
#[cfg_attr(madsim, path = "rt_madsim.rs")]
pub mod rt;
pub mod state_machine;
pub mod tail;
pub mod typed;
pub mod wire;

pub use command::{Command, Response};
pub use config::GroupTimings;
pub use group::{
    Group, GroupError, GroupKind, GroupStatus, MEMBERSHIP_TIMEOUT, MembershipError, MembershipView, WriteError,
};
pub use network::{MoveThrottle, RaftTransport, Registration, TransportError, registered_at};
pub use registry::Groups;
pub use typed::{MetadataGroup, PartitionGroup};

openraft::declare_raft_types!(
    /// The one type configuration shared by the metadata group and every partition group.
    pub TypeConfig:
        D = Command,
        R = Response,
        Node = openraft::EmptyNode,
        AsyncRuntime = rt::Runtime,
);

/// What a Raft entry carries, in openraft's terms.
pub(crate) type Payload = openraft::EntryPayload<Command, flotilla_types::NodeId, openraft::EmptyNode>;

/// A Raft group running on this node.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachineStore>;
