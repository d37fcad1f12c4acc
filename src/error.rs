//! One error type for the whole server.
//!
//! Variants follow etcd's meanings, and where etcd has a fixed text for an error the `Display` text is
//! etcd's, word for word: clients (etcdctl, the Go client, Kubernetes) match on these strings. Each
//! transport maps an [`Error`] to its own status in exactly one place: [`Error::http_status`] for the REST
//! API (and later the JSON gateway); the gRPC mapping joins it when the v3 API lands.
//!
//! [`Error::is_deterministic`] separates the errors that are a property of the request (every replica
//! would answer the same, so the client gets them) from errors of the local machine (disk, corruption)
//! that on the apply path must stop the node instead of letting replicas diverge.

/// The crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, named the way etcd names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read or watch asked for a revision that compaction has removed.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read asked for a revision the store has not reached yet.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A request carried no key (etcd's `ErrEmptyKey`).
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The key does not exist (REST API only; etcd's Range answers an empty list instead).
    #[error("key not found")]
    KeyNotFound,
    /// The request body or message exceeds `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A proposal was not applied in time; its outcome is unknown to the client.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Raft dropped the proposal because there is no leader to take it.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The server is shutting down (or its Raft loop has stopped).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The lease named in a request does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A transaction carries more operations than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyTxnOps,
    /// A transaction writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A lease with this id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A lease TTL above etcd's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// `ignore_value`/`ignore_lease` on a key that does not exist (etcd's `ErrKeyNotFound`).
    #[error("etcdserver: key not found")]
    PutKeyNotFound,
    /// A put with `ignore_value` also carried a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` also carried a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A member-management call a single-node server cannot serve yet.
    #[error("{0}")]
    Unimplemented(String),
    /// A client holds as many of a bounded resource as it may (REST watches per address).
    #[error("{0}")]
    ClientLimit(String),

    #[error("etcdserver: member ID already exist")]
    MemberExists,

    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,

    #[error("etcdserver: member not found")]
    MemberNotFound,

    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,

    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,

    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,

    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,

    #[error("etcdserver: not leader")]
    NotLeader,

    #[error("etcdserver: leader changed")]
    LeaderChanged,

    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,

    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,

    /// Another membership change is not applied yet (the server retries; a client sees it only
    /// if that takes longer than its request may).
    #[error("etcdserver: request timed out, a membership change is still in progress")]
    ConfChangePending,

    #[error("etcdserver: rpc not supported for learner")]
    LearnerNotSupported,

    #[error("etcdserver: the member has been permanently removed from the cluster")]
    MemberRemoved,
    /// A Proclaim or Campaign by a candidate whose key is gone or was created again
    /// (etcd's `concurrency.ErrElectionNotLeader`).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// No key under an election's prefix (etcd's `concurrency.ErrElectionNoLeader`).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// A Proclaim or Resign without its `leader` (etcd's `v3election.ErrMissingLeaderKey`).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// A Lock whose own key was deleted while it waited: its lease expired or was revoked
    /// (etcd 3.5's `concurrency.ErrSessionExpired`).
    #[error("mutex: session is expired")]
    SessionExpired,
    /// Authentication is requested but not available.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// `AuthEnable` without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// `AuthEnable` while the `root` user lacks the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// A request needs a user and carries none (no token, or an empty name).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// A wrong user name or password (the same text for both, as etcd's).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user's roles do not allow the request.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// A token that is unknown, expired, forged or signed by another key.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock the administrator out (the `root` user or role while auth is on).
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed between the token's check and the request's apply: the client
    /// authenticates again and retries.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// An error of etcd's auth package that etcd's gRPC layer passes through unmapped (code Unknown):
    /// the maintenance calls' refusals and a password given for a user without one.
    #[error("{0}")]
    AuthUnmapped(&'static str),
    /// A bounded resource is in use to its limit (etcd's `ErrTooManyRequests`): at most
    /// `--max-snapshot-copies` Snapshot calls at a time.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The backend is over `--quota-backend-bytes`.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The request is malformed in a way etcd has no fixed text for.
    #[error("{0}")]
    InvalidArgument(String),
    /// Nothing is served at this path or with this method.
    #[error("{0}")]
    NotFound(String),
    /// On-disk data failed a checksum or could not be decoded. Never answered to a client as if it were
    /// the client's fault; on the apply path it stops the node.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The data directory is locked by another running server.
    #[error("data directory {0} is in use by another process (lock file held)")]
    DataDirLocked(String),
    /// An I/O error from the operating system.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// An error from the disk backend (redb).
    #[error("backend error: {0}")]
    Backend(String),
    /// An error from the consensus library.
    #[error("raft error: {0}")]
    Raft(String),
    /// A broken invariant; a bug, reported rather than panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error answers with on the REST API. The one place that mapping lives.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::EmptyKey
            | Error::LeaseExists
            | Error::LeaseTtlTooLarge
            | Error::PutKeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::AuthNotEnabled
            | Error::RoleEmpty
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision
            | Error::MissingLeaderKey
            | Error::InvalidArgument(_)
            | Error::TooManyTxnOps
            | Error::DuplicateKey
            | Error::FutureRevision => 400,
            Error::KeyNotFound
            | Error::NotFound(_)
            | Error::LeaseNotFound
            | Error::ElectionNoLeader => 404,
            Error::ElectionNotLeader | Error::SessionExpired => 412,
            Error::UserEmpty | Error::AuthFailed | Error::InvalidAuthToken => 401,
            Error::PermissionDenied | Error::AuthUnmapped(_) => 403,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted => 412,
            // etcd's gateway answers a compacted revision with 400 (OutOfRange); a gone revision reads
            // best as 410 to a REST user, and no client parses the status for it.
            Error::Compacted => 410,
            Error::RequestTooLarge => 413,
            Error::Unimplemented(_) => 501,
            Error::ClientLimit(_) => 429,
            Error::MemberNotFound => 404,
            Error::MemberExists
            | Error::PeerUrlExists
            | Error::NotEnoughStartedMembers
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::NotLeader
            | Error::BadLeaderTransferee => 412,
            Error::LeaderChanged
            | Error::LearnerNotSupported
            | Error::MemberRemoved
            | Error::LeaderTransferTimeout
            | Error::ConfChangePending => 503,
            Error::Timeout | Error::NoLeader | Error::Stopped | Error::NoSpace => 503,
            Error::TooManyRequests => 429,
            Error::Corrupt(_)
            | Error::DataDirLocked(_)
            | Error::Io(_)
            | Error::Backend(_)
            | Error::Raft(_)
            | Error::Internal(_) => 500,
        }
    }

    /// The gRPC status etcd answers this error with (codes from etcd's `rpctypes`). The one place that
    /// mapping lives; clients match on the message text, so it is the `Display` text unchanged.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::EmptyKey
            | Error::TooManyTxnOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::PutKeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::MissingLeaderKey
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Compacted | Error::FutureRevision | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound
            | Error::KeyNotFound
            | Error::NotFound(_)
            | Error::ElectionNoLeader => Code::NotFound,
            Error::ElectionNotLeader | Error::SessionExpired => Code::FailedPrecondition,
            Error::LeaseExists => Code::FailedPrecondition,
            Error::AuthNotEnabled
            | Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted => Code::FailedPrecondition,
            Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::AuthUnmapped(_) => Code::Unknown,
            Error::NoSpace | Error::TooManyRequests => Code::ResourceExhausted,
            Error::Timeout | Error::NoLeader | Error::Stopped => Code::Unavailable,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::ClientLimit(_) => Code::ResourceExhausted,
            Error::MemberNotFound => Code::NotFound,
            Error::MemberExists
            | Error::PeerUrlExists
            | Error::NotEnoughStartedMembers
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::NotLeader
            | Error::BadLeaderTransferee => Code::FailedPrecondition,
            Error::LeaderChanged
            | Error::LearnerNotSupported
            | Error::MemberRemoved
            | Error::ConfChangePending => Code::Unavailable,
            // Not in etcd's gRPC error map: it goes out as Unknown.
            Error::LeaderTransferTimeout => Code::Unknown,
            Error::Corrupt(_)
            | Error::DataDirLocked(_)
            | Error::Io(_)
            | Error::Backend(_)
            | Error::Raft(_)
            | Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, self.to_string())
    }

    /// The gRPC status etcd's Lock and Election services answer this error with: code `Unknown`
    /// whatever the error, with the same text. Those services call etcd's own Go client, whose
    /// errors have lost their gRPC code by the time the handler returns them, so gRPC sends them
    /// as Unknown (`etcdserver: requested lease not found` included, which the Lease service
    /// sends as NotFound).
    pub fn to_client_side_status(&self) -> tonic::Status {
        tonic::Status::new(tonic::Code::Unknown, self.to_string())
    }

    /// True when every replica applying the same request would fail the same way, so the error belongs to
    /// the client. False for local failures (disk, corruption, bugs): on the apply path those must stop the
    /// node rather than let its state diverge from its peers.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Error::Corrupt(_)
                | Error::DataDirLocked(_)
                | Error::Io(_)
                | Error::Backend(_)
                | Error::Raft(_)
                | Error::Internal(_)
        )
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Backend(e.to_string())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::from(&e)
    }
}

impl From<&raft::Error> for Error {
    fn from(e: &raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::NoLeader,
            other => Error::Raft(other.to_string()),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for Error {
    fn from(e: protobuf::ProtobufError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_texts_are_exact() {
        assert_eq!(
            Error::Compacted.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            Error::FutureRevision.to_string(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(
            Error::EmptyKey.to_string(),
            "etcdserver: key is not provided"
        );
        assert_eq!(
            Error::RequestTooLarge.to_string(),
            "etcdserver: request is too large"
        );
        assert_eq!(Error::Timeout.to_string(), "etcdserver: request timed out");
        assert_eq!(Error::ElectionNotLeader.to_string(), "election: not leader");
        assert_eq!(Error::ElectionNoLeader.to_string(), "election: no leader");
        assert_eq!(
            Error::MissingLeaderKey.to_string(),
            r#""leader" field must be provided"#
        );
        assert_eq!(
            Error::SessionExpired.to_string(),
            "mutex: session is expired"
        );
    }

    #[test]
    fn lock_and_election_errors_are_unknown() {
        let st = Error::LeaseNotFound.to_client_side_status();
        assert_eq!(st.code(), tonic::Code::Unknown);
        assert_eq!(st.message(), "etcdserver: requested lease not found");
        assert_eq!(
            Error::ElectionNoLeader.to_client_side_status().code(),
            tonic::Code::Unknown
        );
    }

    #[test]
    fn http_mapping() {
        assert_eq!(Error::EmptyKey.http_status(), 400);
        assert_eq!(Error::KeyNotFound.http_status(), 404);
        assert_eq!(Error::Compacted.http_status(), 410);
        assert_eq!(Error::RequestTooLarge.http_status(), 413);
        assert_eq!(Error::Timeout.http_status(), 503);
        assert_eq!(Error::Corrupt("x".into()).http_status(), 500);
        assert!(Error::Compacted.is_deterministic());
        let st = Error::Compacted.to_status();
        assert_eq!(st.code(), tonic::Code::OutOfRange);
        assert_eq!(
            st.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            Error::EmptyKey.to_status().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Error::LeaseNotFound.to_status().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            Error::NoSpace.to_status().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(Error::Timeout.to_status().code(), tonic::Code::Unavailable);
        assert!(!Error::Io(std::io::Error::other("disk")).is_deterministic());
    }
}
