//! Protobuf messages exchanged between Tern services.
//!
//! Every message on a JetStream subject or in a KV bucket is one of these types;
//! they are generated at build time from `proto/tern/v1/*.proto`.

/// Version 1 of Tern's wire messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/tern.v1.rs"));
}

pub use prost::Message;
