//! The fuzz targets. Each is a `fn(&[u8])` that panics when a check fails.

pub mod http;
pub mod proto;
pub mod wal;

use crate::harness::Target;

const WAL_DICT: &[&[u8]] = &[
    &[0; 16],
    &[0; 8],
    &[1, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x08, 0x01],
    &[0x10, 0x01],
    &[0x18, 0x01],
];

const HTTP_DICT: &[&[u8]] = &[
    b"{\"key\":\"a\"}",
    b"\"key\":",
    b"\"value\":",
    b"\"range_end\":",
    b"\"lease\":",
    b"\"revision\":",
    b"\"limit\":",
    b"\"prefix\":true",
    b"\"prev_kv\":true",
    b"\"create_request\":{",
    b"\"request_put\":{",
    b"\"compare\":[{",
    b"\"success\":[{",
    b"-1",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"\"AA==\"",
    b"\"\"",
    b"null",
    b"[]",
    b"{}",
    b"?key=",
    b"&timeout=",
    b"&revision=",
    b"&limit=",
    b"&prefix=true",
    b"&stream=true",
    b"%00",
    b"%FF",
    b"Content-Type: application/json\n",
    b"Authorization: x\n",
    b"Grpc-Metadata-token: x\n",
];

const PROTO_DICT: &[&[u8]] = &[
    &[0x0a, 0x01, b'a'],
    &[0x12, 0x01, 0x00],
    &[0x12, 0x00],
    &[
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ],
    &[0x10, 0x01],
    &[0x18, 0x01],
    &[0x20, 0x01],
    &[0x28, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x10],
];

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "wal_record",
        run: wal::wal_record,
        dict: WAL_DICT,
        max_len: 4096,
    },
    Target {
        name: "wal_segment",
        run: wal::wal_segment,
        dict: WAL_DICT,
        max_len: 16 * 1024,
    },
    Target {
        name: "rest",
        run: http::rest,
        dict: HTTP_DICT,
        max_len: 4096,
    },
    Target {
        name: "gateway",
        run: http::gateway,
        dict: HTTP_DICT,
        max_len: 4096,
    },
    Target {
        name: "proto",
        run: proto::proto,
        dict: PROTO_DICT,
        max_len: 4096,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"))
}
