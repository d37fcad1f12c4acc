//! The etcdctl 3.4 authentication scenario, shared by `tests/auth.rs` (plain HTTP) and
//! `tests/tls.rs` (the same scenario over TLS): users, roles, permissions on keys and prefixes in
//! get / put / del / txn / watch, read-only roles, wrong and changed passwords, revoke, disable.
//! Expected texts are what etcd 3.4.23 answers to the same commands.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Safety bound on one etcdctl invocation.
pub const CTL_BOUND: Duration = Duration::from_secs(30);

pub fn etcdctl_path() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// One etcdctl run: exit code, stdout, stderr.
pub struct Ctl {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Ctl {
    pub fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: stdout {:?} stderr {:?}",
            self.out,
            self.err
        );
        self.out
    }

    /// Requires a failure whose last line is `want`.
    pub fn fails_with(self, what: &str, want: &str) {
        assert_ne!(self.code, Some(0), "{what} should fail: {:?}", self.out);
        let last = self.err.lines().last().unwrap_or_default();
        assert_eq!(last, want, "{what}: stderr {:?}", self.err);
    }
}

/// Runs etcdctl against `endpoint`: an endpoint, optionally followed by more etcdctl flags (TLS
/// ones: `--cacert=...`), separated by spaces.
pub async fn ctl(endpoint: &str, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Ctl {
    let mut words = endpoint.split_whitespace();
    let endpoint = words.next().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(words)
        .arg("--dial-timeout=10s")
        .arg("--command-timeout=20s");
    if let Some(u) = user {
        cmd.arg(format!("--user={u}"));
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "spawn {}: {e} (etcdctl 3.4 is required: apt-get install etcd-client)",
            etcdctl_path().display()
        )
    });
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(CTL_BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not exit within {CTL_BOUND:?}"))
        .expect("etcdctl output");
    Ctl {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Creates root (with the root role), alice with role r1 (read `a`, read-write prefix `b`), and
/// enables auth. `--bcrypt-cost 4` keeps the test fast; the cost is etcd's flag.
pub async fn set_up(ep: &str) {
    for args in [
        &["role", "add", "root"][..],
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["role", "add", "r1"],
        &["role", "grant-permission", "r1", "read", "a"],
        &[
            "role",
            "grant-permission",
            "r1",
            "readwrite",
            "b",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "r1"],
    ] {
        ctl(ep, None, args, None).await.ok(&args.join(" "));
    }
    assert_eq!(
        ctl(ep, None, &["auth", "enable"], None)
            .await
            .ok("auth enable"),
        "Authentication Enabled\n"
    );
}

/// The whole scenario against a fresh member at `ep` (see [`ctl`]) started with
/// `--bcrypt-cost 4`, auth not yet enabled.
pub async fn users_roles_and_permissions(ep: &str) {
    // AuthEnable's preconditions, in etcd's order.
    ctl(ep, None, &["auth", "enable"], None).await.fails_with(
        "enable without root",
        "Error: etcdserver: root user does not exist",
    );
    set_up(ep).await;

    let root = Some("root:rootpw");
    let alice = Some("alice:apw");
    ctl(ep, None, &["put", "a", "1"], None)
        .await
        .fails_with("no user", "Error: etcdserver: user name is empty");
    ctl(ep, Some("root:bad"), &["get", "a"], None)
        .await
        .fails_with(
            "wrong password",
            "Error: etcdserver: authentication failed, invalid user ID or password",
        );
    ctl(ep, root, &["put", "a", "1"], None).await.ok("root put");
    assert_eq!(
        ctl(ep, alice, &["get", "a"], None).await.ok("alice get a"),
        "a\n1\n"
    );
    ctl(ep, alice, &["put", "a", "2"], None)
        .await
        .fails_with("alice put a", "Error: etcdserver: permission denied");
    ctl(ep, alice, &["put", "b/x", "2"], None)
        .await
        .ok("alice put b/x");
    assert_eq!(
        ctl(ep, alice, &["get", "b", "--prefix"], None)
            .await
            .ok("alice get b*"),
        "b/x\n2\n"
    );
    ctl(ep, alice, &["get", "", "--prefix"], None)
        .await
        .fails_with("alice get all", "Error: etcdserver: permission denied");
    ctl(ep, alice, &["del", "a"], None)
        .await
        .fails_with("alice del a", "Error: etcdserver: permission denied");
    // A txn is checked in its compares and in both branches.
    ctl(
        ep,
        alice,
        &["txn"],
        Some("value(\"a\") = \"1\"\n\nput b/1 x\n\nput zz y\n\n"),
    )
    .await
    .fails_with("txn touching zz", "Error: etcdserver: permission denied");
    assert_eq!(
        ctl(
            ep,
            alice,
            &["txn"],
            Some("value(\"b/x\") = \"2\"\n\nput b/1 x\n\nput b/2 y\n\n"),
        )
        .await
        .ok("txn inside b"),
        "SUCCESS\n\nOK\n"
    );
    // A watch outside the role is canceled at creation.
    let w = ctl(ep, alice, &["watch", "zz"], None).await;
    assert!(
        w.err.contains(
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)"
        ),
        "watch zz: {:?} {:?}",
        w.out,
        w.err
    );
    // Administration is root's: alice may read herself and her role, nothing else.
    ctl(ep, alice, &["user", "list"], None)
        .await
        .fails_with("alice user list", "Error: etcdserver: permission denied");
    assert_eq!(
        ctl(ep, alice, &["user", "get", "alice"], None)
            .await
            .ok("alice user get alice"),
        "User: alice\nRoles: r1\n"
    );
    ctl(ep, alice, &["user", "get", "root"], None)
        .await
        .fails_with(
            "alice user get root",
            "Error: etcdserver: permission denied",
        );
    assert_eq!(
        ctl(ep, alice, &["role", "get", "r1"], None)
            .await
            .ok("alice role get r1"),
        "Role r1\nKV Read:\n\ta\n\t[b, c) (prefix b)\nKV Write:\n\t[b, c) (prefix b)\n"
    );
    ctl(ep, alice, &["auth", "disable"], None)
        .await
        .fails_with("alice auth disable", "Error: etcdserver: permission denied");
    ctl(
        ep,
        alice,
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        None,
    )
    .await
    .fails_with("alice member add", "Error: etcdserver: permission denied");
    let d = ctl(ep, alice, &["defrag"], None).await;
    assert!(
        d.out
            .contains("rpc error: code = Unknown desc = auth: permission denied")
            || d.err
                .contains("rpc error: code = Unknown desc = auth: permission denied"),
        "alice defrag: {:?} {:?}",
        d.out,
        d.err
    );
    // Locking the administrator out is refused.
    for args in [
        &["user", "delete", "root"][..],
        &["user", "revoke-role", "root", "root"],
        &["role", "delete", "root"],
    ] {
        ctl(ep, root, args, None).await.fails_with(
            &args.join(" "),
            "Error: etcdserver: invalid auth management",
        );
    }
    ctl(ep, root, &["user", "add", "alice:x"], None)
        .await
        .fails_with(
            "user add twice",
            "Error: etcdserver: user name already exists",
        );
    ctl(ep, root, &["role", "revoke-permission", "r1", "zzz"], None)
        .await
        .fails_with(
            "revoke missing permission",
            "Error: etcdserver: permission is not granted to the role",
        );
    ctl(ep, root, &["user", "revoke-role", "alice", "r9"], None)
        .await
        .fails_with(
            "revoke missing role",
            "Error: etcdserver: role is not granted to the user",
        );
    ctl(ep, root, &["user", "grant-role", "alice", "r9"], None)
        .await
        .fails_with(
            "grant unknown role",
            "Error: etcdserver: role name not found",
        );
    ctl(ep, root, &["user", "add", "--no-password", "nop"], None)
        .await
        .ok("no-password user");
    ctl(ep, Some("nop:x"), &["get", "a"], None).await.fails_with(
        "password for a no-password user",
        "Error: rpc error: code = Unknown desc = auth: authentication failed, password was given for no password user",
    );
    // A changed password: the old one fails, the new one works.
    ctl(
        ep,
        root,
        &["user", "passwd", "alice", "--interactive=false"],
        Some("apw2\n"),
    )
    .await
    .ok("passwd");
    ctl(ep, alice, &["get", "a"], None).await.fails_with(
        "old password",
        "Error: etcdserver: authentication failed, invalid user ID or password",
    );
    ctl(ep, Some("alice:apw2"), &["get", "a"], None)
        .await
        .ok("new password");
    // Revoking the role takes the permission away at once.
    ctl(ep, root, &["user", "revoke-role", "alice", "r1"], None)
        .await
        .ok("revoke r1");
    ctl(ep, Some("alice:apw2"), &["get", "a"], None)
        .await
        .fails_with("after revoke", "Error: etcdserver: permission denied");
    // Disabling needs root, then everything is open again.
    ctl(ep, root, &["auth", "disable"], None)
        .await
        .ok("auth disable");
    assert_eq!(
        ctl(ep, None, &["get", "a"], None).await.ok("open"),
        "a\n1\n"
    );
}
