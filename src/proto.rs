//! The etcd v3 wire API, generated at build time from `proto/` (see `build.rs`).
//!
//! Five packages, one module each, named as etcd names them so that the
//! generated cross-package paths (`super::mvccpb::KeyValue`) resolve:
//!
//! - [`mvccpb`]: the stored `KeyValue` and the watch `Event`.
//! - [`authpb`]: users, roles and permissions.
//! - [`etcdserverpb`]: the request and response messages and the six gRPC
//!   services, each with a server (`kv_server::KvServer`, `watch_server::...`)
//!   and a client (`kv_client::KvClient`, ...).
//! - [`v3lockpb`] and [`v3electionpb`]: the Lock and Election services etcd
//!   serves beside those six (named locks and leader elections over leases).
//!
//! Every message implements `prost::Message` for the gRPC wire and
//! `serde::{Serialize, Deserialize}` for the HTTP/JSON gateway. The JSON
//! follows the proto3 mapping the way etcd's gateway does: `.proto` field
//! names (`range_end`, not `rangeEnd`; camelCase is accepted on input too),
//! 64-bit integers as strings, bytes as base64, enums by name, default values
//! left out, unknown fields ignored.
//!
//! The field numbers are etcd's and are the compatibility contract: the tests
//! below pin a few encodings byte by byte.

/// Stored key-values and watch events (etcd's `mvccpb` package).
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and key permissions (etcd's `authpb` package).
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The client-facing services and their messages (etcd's `etcdserverpb`).
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The Lock service (etcd's `v3lockpb`).
#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The Election service (etcd's `v3electionpb`).
#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// What members send each other on the peer port (ours; see `proto/peer/peer.proto`).
#[allow(clippy::all, missing_docs)]
pub mod peerpb {
    include!(concat!(env!("OUT_DIR"), "/peerpb.rs"));
}

/// The gRPC codec of every service: prost's, except that a message is encoded into a buffer
/// reserved at its encoded size. tonic's own starts from 8 KiB and doubles, so a 10 MB range
/// response was copied about ten times as it grew (`RawVec::finish_grow` under `memmove`: 7 % of
/// the server's CPU for ranges of 10,000 keys of 1 KiB).
pub mod codec {
    use std::marker::PhantomData;

    use prost::Message;
    use tonic::codec::{Codec, EncodeBuf, Encoder};
    use tonic::Status;
    use tonic_prost::ProstDecoder;

    /// Encodes `T`, decodes `U`; used by the generated servers and clients (`build.rs`).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct SizedCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Codec for SizedCodec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = SizedEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            SizedEncoder(PhantomData)
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::default()
        }
    }

    /// Reserves a message's encoded size, then encodes it.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct SizedEncoder<T>(PhantomData<T>);

    impl<T: Message> Encoder for SizedEncoder<T> {
        type Item = T;
        type Error = Status;

        fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.reserve(item.encoded_len());
            // `encode` would compute the length again only to check the room reserved here.
            item.encode_raw(buf);
            Ok(())
        }
    }
}

/// The encoded `FileDescriptorSet` of every package above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{
        compare, range_request, Compare, LeaseGrantResponse, PutRequest, PutResponse, RangeRequest,
        RangeResponse, ResponseHeader, WatchResponse,
    };
    use super::mvccpb::{event, Event, KeyValue};
    use prost::Message;

    // The expected bytes below are written by hand from etcd's field numbers:
    // a tag byte is (field_number << 3) | wire_type, wire type 0 for varints
    // and 2 for length-delimited. If a number were wrong, these would differ.

    #[test]
    fn range_request_encoding() {
        let req = RangeRequest {
            key: b"foo".to_vec(),
            range_end: b"fop".to_vec(),
            limit: 5,
            revision: 3,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 10,
            max_mod_revision: 11,
            min_create_revision: 12,
            max_create_revision: 13,
        };
        let expected: &[u8] = &[
            0x0a, 3, b'f', b'o', b'o', // 1 key
            0x12, 3, b'f', b'o', b'p', // 2 range_end
            0x18, 5, // 3 limit
            0x20, 3, // 4 revision
            0x28, 2, // 5 sort_order = DESCEND
            0x30, 3, // 6 sort_target = MOD
            0x38, 1, // 7 serializable
            0x40, 1, // 8 keys_only
            0x48, 1, // 9 count_only
            0x50, 10, // 10 min_mod_revision
            0x58, 11, // 11 max_mod_revision
            0x60, 12, // 12 min_create_revision
            0x68, 13, // 13 max_create_revision
        ];
        assert_eq!(req.encode_to_vec(), expected);
        assert_eq!(RangeRequest::decode(expected).unwrap(), req);
    }

    #[test]
    fn range_request_defaults_are_not_encoded() {
        let req = RangeRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 3, b'f', b'o', b'o']);
    }

    #[test]
    fn put_request_encoding() {
        let req = PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            lease: 300,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        };
        let expected: &[u8] = &[
            0x0a, 3, b'f', b'o', b'o', // 1 key
            0x12, 3, b'b', b'a', b'r', // 2 value
            0x18, 0xac, 0x02, // 3 lease = 300 as a two-byte varint
            0x20, 1, // 4 prev_kv
            0x28, 1, // 5 ignore_value
            0x30, 1, // 6 ignore_lease
        ];
        assert_eq!(req.encode_to_vec(), expected);
        assert_eq!(PutRequest::decode(expected).unwrap(), req);
    }

    #[test]
    fn compare_encoding_with_oneof_and_field_64() {
        let cmp = Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(5)),
        };
        // Decoding does not depend on field order; build the bytes in etcd's
        // field-number order and check both directions through a round trip.
        let etcd_order: &[u8] = &[
            0x08, 1, // 1 result = GREATER
            0x10, 2, // 2 target = MOD
            0x1a, 1, b'k', // 3 key
            0x30, 5, // 6 mod_revision (in target_union)
            0x82, 0x04, 1, b'l', // 64 range_end: tag 514 is a two-byte varint
        ];
        assert_eq!(Compare::decode(etcd_order).unwrap(), cmp);
        let mut ours = cmp.encode_to_vec();
        let mut theirs = etcd_order.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs, "same fields, possibly in another order");
    }

    #[test]
    fn watch_response_events_are_field_11() {
        let resp = WatchResponse {
            watch_id: 1,
            events: vec![Event {
                r#type: event::EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: b"a".to_vec(),
                    mod_revision: 2,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        let expected: &[u8] = &[
            0x10, 1, // 2 watch_id
            0x5a, 9, // 11 events, 9 bytes
            0x08, 1, // Event.1 type = DELETE
            0x12, 5, // Event.2 kv, 5 bytes
            0x0a, 1, b'a', // KeyValue.1 key
            0x18, 2, // KeyValue.3 mod_revision
        ];
        assert_eq!(resp.encode_to_vec(), expected);
    }

    // JSON: the proto3 mapping as etcd's gateway produces it.

    #[test]
    fn range_response_json() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 0,
                revision: 5,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"header":{"cluster_id":"14841639068965178418","revision":"5","raft_term":"2"},"#,
                r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"5","version":"1","value":"YmFy"}],"#,
                r#""count":"1"}"#
            )
        );
        let back: RangeResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn put_response_json_omits_defaults() {
        let resp = PutResponse {
            header: Some(ResponseHeader {
                revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"header":{"revision":"5"}}"#
        );
        assert_eq!(
            serde_json::to_string(&PutResponse::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn upper_case_proto_names_are_kept() {
        // etcd declares `int64 ID` and `int64 TTL`; the gateway shows them as-is.
        let resp = LeaseGrantResponse {
            header: None,
            id: 7587821338341002662,
            ttl: 5,
            error: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"ID":"7587821338341002662","TTL":"5"}"#
        );
    }

    #[test]
    fn range_request_from_json() {
        let req: RangeRequest =
            serde_json::from_str(r#"{"key":"Zm9v","range_end":"Zm9w"}"#).unwrap();
        assert_eq!(req.key, b"foo");
        assert_eq!(req.range_end, b"fop");
        assert_eq!(req.limit, 0);

        // camelCase names, numbers as JSON numbers or strings, enums by name or
        // number, and unknown fields are all accepted, as by the gateway.
        let req: RangeRequest = serde_json::from_str(
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":5,"revision":"3","sort_order":"DESCEND","sortTarget":3,"no_such_field":1}"#,
        )
        .unwrap();
        assert_eq!(req.range_end, b"fop");
        assert_eq!(req.limit, 5);
        assert_eq!(req.revision, 3);
        assert_eq!(req.sort_order(), range_request::SortOrder::Descend);
        assert_eq!(req.sort_target(), range_request::SortTarget::Mod);

        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"key":"Zm9v","range_end":"Zm9w","limit":"5","revision":"3","sort_order":"DESCEND","sort_target":"MOD"}"#
        );
    }

    // The generated server and client talk over plain HTTP/2 on loopback, and
    // the method path is etcd's `/etcdserverpb.KV/Range`.
    #[tokio::test]
    async fn kv_server_and_client_round_trip() {
        use super::etcdserverpb::kv_client::KvClient;
        use super::etcdserverpb::kv_server::{Kv, KvServer};
        use super::etcdserverpb::{
            CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
            TxnRequest, TxnResponse,
        };
        use tonic::{Request, Response, Status};

        struct Stub;

        #[tonic::async_trait]
        impl Kv for Stub {
            async fn range(
                &self,
                request: Request<RangeRequest>,
            ) -> Result<Response<RangeResponse>, Status> {
                let req = request.into_inner();
                Ok(Response::new(RangeResponse {
                    header: Some(ResponseHeader {
                        revision: 5,
                        ..Default::default()
                    }),
                    kvs: vec![KeyValue {
                        key: req.key,
                        value: b"bar".to_vec(),
                        ..Default::default()
                    }],
                    more: false,
                    count: 1,
                }))
            }
            async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
                Err(Status::unimplemented("put"))
            }
            async fn delete_range(
                &self,
                _: Request<DeleteRangeRequest>,
            ) -> Result<Response<DeleteRangeResponse>, Status> {
                Err(Status::unimplemented("delete_range"))
            }
            async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
                Err(Status::unimplemented("txn"))
            }
            async fn compact(
                &self,
                _: Request<CompactionRequest>,
            ) -> Result<Response<CompactionResponse>, Status> {
                Err(Status::unimplemented("compact"))
            }
        }

        use tonic::server::NamedService;
        assert_eq!(<KvServer<Stub> as NamedService>::NAME, "etcdserverpb.KV");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(Stub))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );

        let mut client = KvClient::connect(format!("http://{addr}")).await.unwrap();
        let resp = client
            .range(RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.header.unwrap().revision, 5);
        assert_eq!(resp.kvs[0].key, b"foo");

        let err = client.put(PutRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
