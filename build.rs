//! Compiles the etcd v3 wire API in `proto/` into Rust, with no system `protoc`.
//!
//! protox (a protobuf compiler written in Rust) parses the `.proto` files into a
//! `FileDescriptorSet`; from that one set tonic-prost-build emits the prost
//! messages plus the tonic servers and clients, and pbjson-build emits serde
//! impls following the proto3 JSON mapping, for the HTTP/JSON gateway.

use std::error::Error;
use std::path::PathBuf;

use prost::Message;

/// The files to compile, relative to `proto/`; imports resolve from there too.
const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3lockpb/v3lock.proto",
    "etcd/v3electionpb/v3election.proto",
    "peer/peer.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(PROTOS, ["proto"])?;
    let descriptors = fds.encode_to_vec();
    // Kept beside the generated code for gRPC reflection, should we add it.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("etcd_descriptor.bin"), &descriptors)?;

    tonic_prost_build::configure()
        // prost's codec, with the encode buffer reserved at the message's size (see `proto::codec`).
        .codec_path("crate::proto::codec::SizedCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        // etcd's grpc-gateway (v1, default marshaler `JSONPb{OrigName: true}`)
        // emits the .proto field names (`range_end`, `cluster_id`), not camelCase.
        .preserve_proto_field_names()
        // The gateway accepts and drops fields it does not know.
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;

    Ok(())
}
