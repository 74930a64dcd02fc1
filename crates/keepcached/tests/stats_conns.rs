//! `stats conns` and `stats detail on|off|dump` (with `-D`), compared with Debian's memcached.
//!
//! `stats conns` numbers connections by file descriptor in memcached and by order of opening in
//! keepcached, and shows ports the OS chose, so numbers and ports are masked; the line sets,
//! their fields, order and states must match.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use keepcached_testkit::wire::{self, Case, Group, Mask, Target};
use keepcached_testkit::{env, ServerProcess};

/// Replaces connection numbers and port numbers, and the seconds (0 or 1 depending on timing).
fn normalize_conns(reply: &str) -> String {
    reply
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("STAT ") else {
                return line.to_string();
            };
            let (_, field) = rest.split_once(':').unwrap_or(("", rest));
            let (name, value) = field.split_once(' ').unwrap_or((field, ""));
            let value = match name {
                "secs_since_last_cmd" => "<secs>".to_string(),
                _ => match value.rsplit_once(':') {
                    Some((host, _port)) => format!("{host}:<port>"),
                    None => value.to_string(),
                },
            };
            format!("STAT <n>:{name} {value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens connections in each state memcached names, then asks `stats conns` on a new one.
fn conns_in_every_state(server: &ServerProcess) -> String {
    let open = || TcpStream::connect(server.addr()).expect("connect");
    let idle = open();
    let mut nread = open();
    nread.write_all(b"set k 0 0 10\r\nabc").expect("write");
    let mut partial = open();
    partial.write_all(b"get k").expect("write");
    let mut swallow = open();
    swallow
        .write_all(b"set k 0 0 2000000\r\nabc")
        .expect("write");
    // Let the server read what each connection sent before asking.
    thread::sleep(Duration::from_millis(300));
    let mut client = server.connect().expect("connect");
    let reply = client.call("stats conns\r\n").expect("stats conns");
    drop((idle, nread, partial, swallow));
    normalize_conns(&reply)
}

#[test]
fn stats_conns_matches_memcached() {
    if !env::require("stats_conns_matches_memcached", false, &["memcached"]) {
        return;
    }
    let reference = Target::memcached().start(&[]).expect("memcached");
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(&[])
        .expect("keepcached");
    let mut expected = vec![
        "STAT <n>:addr tcp:127.0.0.1:<port>".to_string(),
        "STAT <n>:state conn_listening".to_string(),
        "STAT <n>:secs_since_last_cmd <secs>".to_string(),
    ];
    for state in [
        "conn_new_cmd",
        "conn_nread",
        "conn_read",
        "conn_swallow",
        "conn_parse_cmd",
    ] {
        expected.extend([
            "STAT <n>:addr tcp:127.0.0.1:<port>".to_string(),
            "STAT <n>:listen_addr tcp:127.0.0.1:<port>".to_string(),
            format!("STAT <n>:state {state}"),
            "STAT <n>:secs_since_last_cmd <secs>".to_string(),
        ]);
    }
    expected.push("END".to_string());
    let expected = expected.join("\n");
    assert_eq!(conns_in_every_state(&reference), expected, "memcached");
    assert_eq!(conns_in_every_state(&subject), expected, "keepcached");
}

fn detail_cases() -> Vec<Case> {
    vec![
        Case::new("nothing counted yet", "stats detail dump\r\n", "END\r\n"),
        Case::new(
            "usage",
            "stats detail\r\nstats detail bogus\r\n",
            "CLIENT_ERROR usage: stats detail on|off|dump\r\nCLIENT_ERROR usage: stats detail on|off|dump\r\n",
        ),
        Case::new("on", "stats detail on\r\n", "OK\r\n"),
        Case::new(
            "every store counts as a set, whatever its outcome",
            "add p/1 0 0 1\r\nx\r\nadd p/1 0 0 1\r\nx\r\ncas p/1 0 0 1 999\r\nx\r\nappend p/2 0 0 1\r\nx\r\nreplace p/3 0 0 1\r\nx\r\nprepend p/1 0 0 1\r\nx\r\n",
            "STORED\r\nNOT_STORED\r\nEXISTS\r\nNOT_STORED\r\nNOT_STORED\r\nSTORED\r\n",
        ),
        Case::new(
            "gets and gats count per key; touch, incr and meta do not",
            "delete p/nope\r\ngat 0 p/1 p/9\r\ngats 0 p/1\r\ntouch p/1 0\r\ndecr p/1 1\r\nmg p/1 v\r\nset /x 0 0 1\r\nx\r\nget /x\r\nset q/ 0 0 1\r\nx\r\nget q/\r\nset a/b:c 0 0 1\r\nx\r\nget nodelimiter\r\n",
            "NOT_FOUND\r\nVALUE p/1 0 2\r\nxx\r\nEND\r\nVALUE p/1 0 2 <cas1>\r\nxx\r\nEND\r\nTOUCHED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\nVA 2\r\nxx\r\nSTORED\r\nVALUE /x 0 1\r\nx\r\nEND\r\nSTORED\r\nVALUE q/ 0 1\r\nx\r\nEND\r\nSTORED\r\nEND\r\n",
        ),
        Case::new(
            "dump in memcached's order",
            "stats detail dump\r\n",
            "PREFIX  get 1 hit 1 set 1 del 0\r\nPREFIX p get 3 hit 2 set 6 del 1\r\nPREFIX a get 0 hit 0 set 1 del 0\r\nPREFIX q get 1 hit 1 set 1 del 0\r\nEND\r\n",
        ),
        Case::new(
            "off stops counting and keeps the counts",
            "stats detail off\r\nget p/1\r\nstats detail dump\r\n",
            "OK\r\nVALUE p/1 0 2\r\nxx\r\nEND\r\nPREFIX  get 1 hit 1 set 1 del 0\r\nPREFIX p get 3 hit 2 set 6 del 1\r\nPREFIX a get 0 hit 0 set 1 del 0\r\nPREFIX q get 1 hit 1 set 1 del 0\r\nEND\r\n",
        ),
        Case::new(
            "stats reset forgets the prefixes",
            "stats reset\r\nstats detail dump\r\n",
            "RESET\r\nEND\r\n",
        ),
        Case::new(
            "settings show the delimiter",
            "stats settings\r\n",
            "STAT stat_key_prefix /\r\nSTAT detail_enabled no\r\nEND\r\n",
        )
        .masked(Mask::Stats(Some(&["stat_key_prefix", "detail_enabled"]))),
    ]
}

#[test]
fn stats_detail_matches_memcached() {
    if !env::require("stats_detail_matches_memcached", false, &["memcached"]) {
        return;
    }
    let groups = vec![
        // -D turns counting on; the cases switch it off and on themselves.
        Group::new("-D /", &["-D", "/"], detail_cases()).shared(),
        Group::new(
            "default delimiter, off until asked",
            &[],
            vec![
                Case::new(
                    "off by default",
                    "get a:b\r\nstats detail dump\r\n",
                    "END\r\nEND\r\n",
                ),
                Case::new(
                    "on, with ':'",
                    "stats detail on\r\nget a:b a/c\r\nstats detail dump\r\n",
                    "OK\r\nEND\r\nPREFIX a get 1 hit 0 set 0 del 0\r\nEND\r\n",
                ),
                Case::new(
                    "settings",
                    "stats settings\r\n",
                    "STAT stat_key_prefix :\r\nSTAT detail_enabled yes\r\nEND\r\n",
                )
                .masked(Mask::Stats(Some(&["stat_key_prefix", "detail_enabled"]))),
            ],
        )
        .shared(),
    ];
    let outcome = wire::run(
        &groups,
        &Target::memcached(),
        &Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    );
    outcome.assert_clean("stats detail");
}
