//! Flotilla's wire API and the checked conversions between it and the domain types.
//!
//! This crate owns:
//!
//! - the code generated from `proto/flotilla/v1/flotilla.proto` ([`v1`]: the client and
//!   admin services) and `proto/flotilla/raft/v1/raft.proto` ([`raft::v1`]: node-to-node
//!   Raft traffic), with both the tonic clients and servers. It is generated at build time
//!   into `OUT_DIR` by `tonic-prost-build` with a vendored `protoc`; nothing generated is
//!   checked in and no system `protoc` is needed. `bytes` fields are [`bytes::Bytes`].
//! - [`FILE_DESCRIPTOR_SET`], the encoded descriptors of both packages, for gRPC server
//!   reflection.
//! - the conversions that both sides of the wire need ([`convert`]): domain error codes to
//!   and from the in-band [`v1::Error`], and checked requests ([`request`]) that reject junk
//!   (bad topic names, out-of-range counts, corrupt batches) with a clear [`v1::Error`]
//!   before any of it reaches the node. Protobuf types stop at the `rpc` and `client`
//!   crates; everything past them sees `flotilla-types` values only.
//!
//! Every message bigger than [`flotilla_types::limits::REQUEST_BYTES_MAX`] must be refused
//! by both ends: servers and clients set tonic's `max_decoding_message_size` and
//! `max_encoding_message_size` to that limit (tonic's default of 4 MiB is too small for a
//! full 4 MiB batch plus its envelope).

pub mod convert;
pub mod request;

pub use convert::{LeaderHint, batch_error_code, check};

/// Opens the channel for an endpoint. By default, [`dial`] connects over the host's TCP
/// stack; the simulator supplies one that dials over its simulated network, so the same
/// tonic, hyper and h2 code runs in both.
pub type Dialer = std::sync::Arc<dyn Fn(tonic::transport::Endpoint) -> tonic::transport::Channel + Send + Sync>;

/// A lazily connected channel for `endpoint`, through `dialer` when there is one.
pub fn dial(endpoint: tonic::transport::Endpoint, dialer: Option<&Dialer>) -> tonic::transport::Channel {
    match dialer {
        Some(d) => d(endpoint),
        None => endpoint.connect_lazy(),
    }
}

/// The errors under a gRPC status, outermost first (tonic keeps a transport error, such
/// as the connector's, as the status's source).
pub fn status_causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// The encoded `FileDescriptorSet` of `flotilla.v1` and `flotilla.raft.v1`, for
/// `tonic-reflection`'s `register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));

/// The client and admin services (`flotilla.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// Node-to-node traffic.
pub mod raft {
    /// The Raft transport service (`flotilla.raft.v1`): one message, tagged with its group.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("flotilla.raft.v1");
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_both_packages() {
        let fds = prost_types_lite::decode(super::FILE_DESCRIPTOR_SET);
        assert!(fds.iter().any(|p| p == "flotilla.v1"), "{fds:?}");
        assert!(fds.iter().any(|p| p == "flotilla.raft.v1"), "{fds:?}");
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to read the package names.
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            #[prost(string, optional, tag = "2")]
            pub package: Option<String>,
        }
        pub fn decode(bytes: &[u8]) -> Vec<String> {
            use prost::Message;
            FileDescriptorSet::decode(bytes).unwrap().file.into_iter().filter_map(|f| f.package).collect()
        }
    }

    #[test]
    fn messages_round_trip() {
        let req = super::v1::ProduceRequest {
            topic: "t".into(),
            partition: 3,
            batch: bytes::Bytes::from_static(b"x"),
            acks: 0,
            client_id: "app".into(),
        };
        let back = super::v1::ProduceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(req, back);
    }
}
