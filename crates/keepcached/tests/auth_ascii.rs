//! ASCII authentication (`-Y authfile`): the same conversations with Debian's memcached and with
//! keepcached, each reply compared with the documented one and between the two servers.
//!
//! Before a client has authenticated, memcached answers requests sent together in one write
//! with the last reply only (it reuses one reply buffer), so every request before
//! authentication is sent alone and its one-line reply awaited; the `version` sentinel of the
//! wire tables would be such a second request. keepcached answers each request; that difference
//! is asserted at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keepcached_testkit::client::{End, REPLY_TIMEOUT};
use keepcached_testkit::mask::mask_stats;
use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, escape, ServerProcess};

/// One request of a conversation, how its reply ends, and memcached's documented reply.
struct Step {
    request: Vec<u8>,
    end: End,
    expect: &'static str,
}

/// A conversation on a new, unauthenticated connection.
struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn line() -> End {
    End::Suffix(b"\r\n".to_vec())
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            steps: Vec::new(),
        }
    }

    /// A request answered with one line.
    fn line(mut self, request: impl AsRef<[u8]>, expect: &'static str) -> Case {
        self.steps.push(Step {
            request: request.as_ref().to_vec(),
            end: line(),
            expect,
        });
        self
    }

    /// A request after authentication, its reply read up to the `version` sentinel.
    fn after_auth(mut self, request: impl AsRef<[u8]>, expect: &'static str) -> Case {
        self.steps.push(Step {
            request: request.as_ref().to_vec(),
            end: End::Sentinel,
            expect,
        });
        self
    }

    /// A request that gets no reply yet (part of a request).
    fn part(mut self, request: impl AsRef<[u8]>) -> Case {
        self.steps.push(Step {
            request: request.as_ref().to_vec(),
            end: End::Quiet(Duration::from_millis(200)),
            expect: "",
        });
        self
    }

    fn closes(mut self, request: impl AsRef<[u8]>) -> Case {
        self.steps.push(Step {
            request: request.as_ref().to_vec(),
            end: End::Closed,
            expect: "",
        });
        self
    }
}

const AUTH: &[u8] = b"set auth 0 0 12\r\nalice wonder\r\n";
const STORED: &str = "STORED\\r\\n";
const UNAUTHENTICATED: &str = "CLIENT_ERROR unauthenticated\\r\\n";
const FAILURE: &str = "CLIENT_ERROR authentication failure\\r\\n";
const BAD_FORMAT: &str = "CLIENT_ERROR bad authentication token format\\r\\n";

fn cases() -> Vec<Case> {
    vec![
        Case::new("get before authentication").line("get foo\r\n", UNAUTHENTICATED),
        Case::new("stats before authentication").line("stats\r\n", UNAUTHENTICATED),
        Case::new("quit before authentication keeps the connection")
            .line("quit\r\n", UNAUTHENTICATED)
            .line(AUTH, STORED),
        Case::new("meta command before authentication").line("mn\r\n", UNAUTHENTICATED),
        Case::new("authenticate, then work normally")
            .line(AUTH, STORED)
            .after_auth("get auth\r\n", "END\\r\\n")
            .after_auth(
                "set k 5 0 2\r\nhi\r\nget k\r\n",
                "STORED\\r\\nVALUE k 5 2\\r\\nhi\\r\\nEND\\r\\n",
            )
            .after_auth(
                "set k2 0 0 12\r\nalice wonder\r\nget k2\r\n",
                "STORED\\r\\nVALUE k2 0 12\\r\\nalice wonder\\r\\nEND\\r\\n",
            ),
        Case::new("wrong password, then the right one")
            .line("set k 0 0 12\r\nalice wondex\r\n", FAILURE)
            .line("get k\r\n", UNAUTHENTICATED)
            .line(AUTH, STORED),
        Case::new("unknown user").line("set k 0 0 10\r\nmallory pw\r\n", FAILURE),
        Case::new("second user of the file").line("set k 0 0 6\r\nbob pw\r\n", STORED),
        Case::new("password holding a colon").line("set k 0 0 9\r\ncarol p:w\r\n", STORED),
        Case::new("noreply is ignored").line("set k 0 0 12 noreply\r\nalice wonder\r\n", STORED),
        Case::new("line ending in a bare newline").line("set k 0 0 12\nalice wonder\r\n", STORED),
        Case::new("key, flags and exptime are ignored")
            .line("set a b c 12\r\nalice wonder\r\n", STORED),
        Case::new("words after the password are ignored")
            .line("set k 0 0 18\r\nalice wonder extra\r\n", STORED),
        Case::new("spaces around the words").line("  set  k 0 0 15\r\n alice  wonder \r\n", STORED),
        Case::new("upper-case SET").line("SET k 0 0 12\r\n", UNAUTHENTICATED),
        Case::new("add is not accepted").line("add k 0 0 12\r\n", UNAUTHENTICATED),
        Case::new("no byte count").line("set k 0 0\r\n", UNAUTHENTICATED),
        Case::new("byte count not a number").line("set k 0 0 x\r\n", UNAUTHENTICATED),
        Case::new("negative byte count").line("set k 0 0 -1\r\n", UNAUTHENTICATED),
        Case::new("byte count with a plus sign").line("set k 0 0 +12\r\nalice wonder\r\n", STORED),
        Case::new("one word").line("set k 0 0 5\r\nalice\r\n", BAD_FORMAT),
        Case::new("empty data").line("set k 0 0 0\r\n\r\n", BAD_FORMAT),
        Case::new("one word between spaces").line("set k 0 0 3\r\n a \r\n", BAD_FORMAT),
        Case::new("data not ending in CRLF").line(
            "set k 0 0 12\r\nalice wonderXX",
            "CLIENT_ERROR bad command line termination\\r\\n",
        ),
        Case::new("request arriving in pieces")
            .part("set k 0 0 12\r\n")
            .part("alice ")
            .part("wond")
            .line("er\r\n", STORED),
        Case::new("after a bad format, authentication still works")
            .line("set k 0 0 5\r\nalice\r\n", BAD_FORMAT)
            .line(AUTH, STORED),
        Case::new("a long line without newline closes").closes([b'x'; 3000]),
        Case::new("stats settings show the file")
            .line(AUTH, STORED)
            .after_auth("stats settings\r\n", "<settings>"),
    ]
}

/// Plays every case on a new connection; one rendered (and stats-masked) reply per step.
fn play(server: &ServerProcess, cases: &[Case]) -> Vec<Vec<String>> {
    cases
        .iter()
        .map(|case| {
            let mut client = server.connect().expect("connect");
            client.set_timeout(REPLY_TIMEOUT);
            case.steps
                .iter()
                .map(|step| {
                    let reply = client
                        .exchange(&step.request, &step.end)
                        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
                    let bytes = if step.request.starts_with(b"stats") {
                        mask_stats(
                            &reply.bytes,
                            Some(&[
                                "binding_protocol",
                                "auth_enabled_sasl",
                                "auth_enabled_ascii",
                            ]),
                        )
                    } else {
                        reply.bytes.clone()
                    };
                    keepcached_testkit::client::Reply { bytes, ..reply }.render(&step.end)
                })
                .collect()
        })
        .collect()
}

fn authfile(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("temp dir");
    let path = dir.join("authfile");
    std::fs::write(&path, "alice:wonder\nbob:pw\ncarol:p:w\n").expect("authfile");
    path
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("keepcached-{name}-{}", std::process::id()))
}

#[test]
fn ascii_authentication_matches_memcached() {
    if !env::require(
        "ascii_authentication_matches_memcached",
        false,
        &["memcached"],
    ) {
        return;
    }
    let dir = temp_dir("auth-ascii");
    let file = authfile(&dir);
    let flags = ["-Y", file.to_str().expect("utf-8 path")];
    let reference = Target::memcached().start(&flags).expect("memcached -Y");
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(&flags)
        .expect("keepcached -Y");
    let cases = cases();
    let ref_replies = play(&reference, &cases);
    let sub_replies = play(&subject, &cases);
    let settings = format!(
        "STAT binding_protocol ascii\\r\\nSTAT auth_enabled_sasl no\\r\\nSTAT auth_enabled_ascii {}\\r\\nEND\\r\\n",
        file.display()
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (j, step) in case.steps.iter().enumerate() {
            let expect = if step.expect == "<settings>" {
                settings.as_str()
            } else {
                step.expect
            };
            let (got_ref, got_sub) = (&ref_replies[i][j], &sub_replies[i][j]);
            if got_ref != expect {
                failures.push(format!(
                    "{} step {j}: {}\n  documented: {expect}\n  memcached:  {got_ref}\n",
                    case.name,
                    escape(&step.request)
                ));
            }
            if got_sub != got_ref {
                failures.push(format!(
                    "{} step {j}: {}\n  memcached:  {got_ref}\n  keepcached: {got_sub}\n",
                    case.name,
                    escape(&step.request)
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.concat());
}

#[test]
fn auth_stats_count_attempts_as_memcached() {
    if !env::require(
        "auth_stats_count_attempts_as_memcached",
        false,
        &["memcached"],
    ) {
        return;
    }
    let dir = temp_dir("auth-ascii-stats");
    let file = authfile(&dir);
    let flags = ["-Y", file.to_str().expect("utf-8 path")];
    let conversation = |server: &ServerProcess| {
        let mut client = server.connect().expect("connect");
        for request in [
            "set k 0 0 12\r\nalice wondex\r\n",
            "set k 0 0 5\r\nalice\r\n",
            "get k\r\n",
        ] {
            client.exchange(request.as_bytes(), &line()).expect("reply");
        }
        client.exchange(AUTH, &line()).expect("auth");
        let stats = client.call("stats\r\n").expect("stats");
        String::from_utf8(mask_stats(
            stats.as_bytes(),
            Some(&[
                "cmd_get",
                "cmd_set",
                "auth_cmds",
                "auth_errors",
                "curr_items",
            ]),
        ))
        .expect("utf-8")
    };
    let reference = Target::memcached().start(&flags).expect("memcached -Y");
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(&flags)
        .expect("keepcached -Y");
    let expected = "STAT cmd_get 0\r\nSTAT cmd_set 0\r\nSTAT auth_cmds 2\r\nSTAT auth_errors 1\r\nSTAT curr_items 0\r\nEND\r\n";
    assert_eq!(conversation(&reference), expected, "memcached");
    assert_eq!(conversation(&subject), expected, "keepcached");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where keepcached deliberately differs: requests pipelined before authentication each get
/// their reply (memcached answers only the last), and authentication data too large for any
/// users file is discarded as it arrives instead of being buffered.
#[test]
fn keepcached_answers_every_request_before_authentication() {
    let dir = temp_dir("auth-ascii-pipeline");
    let file = authfile(&dir);
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-Y", file.to_str().expect("utf-8 path")])
        .expect("keepcached -Y");
    let mut client = server.connect().expect("connect");
    let reply = client
        .exchange(
            b"get a\r\nset k 0 0 12\r\nalice wondex\r\nset k 0 0 12\r\nalice wonder\r\nget k\r\n",
            &End::Sentinel,
        )
        .expect("reply");
    assert_eq!(
        escape(&reply.bytes),
        format!("{UNAUTHENTICATED}{FAILURE}{STORED}END\\r\\n")
    );
    let mut client = server.connect().expect("connect");
    let huge = 200_000;
    let mut request = format!("set k 0 0 {huge}\r\n").into_bytes();
    request.extend(vec![b'x'; huge]);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(AUTH);
    let reply = client
        .exchange(&request, &End::Suffix(b"STORED\r\n".to_vec()))
        .expect("reply");
    assert_eq!(escape(&reply.bytes), format!("{FAILURE}{STORED}"));
    let _ = std::fs::remove_dir_all(&dir);
}
