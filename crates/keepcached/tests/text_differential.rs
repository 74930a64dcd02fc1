//! Differential test of the text protocol: every case is sent to Debian's memcached 1.6.18 and
//! to `keepcached server`, and the (masked) replies must be identical byte for byte. Each case
//! also documents memcached's reply; the runner checks memcached still gives it.
//!
//! Families of cases are generated where the rule is regular (every storage command in every
//! state, incr/decr arithmetic, flag and exptime values, model-checked pipelines); the error
//! paths are written out one by one. Run against memcached on both sides with
//! `KEEPCACHED_DIFF_SUBJECT=memcached` to check a new case is deterministic.

use std::collections::BTreeMap;
use std::time::Duration;

use keepcached_testkit::env;
use keepcached_testkit::wire::{self, Case, Group, Mask, Target};
use keepcached_testkit::End;

/// `VALUE key flags bytes\r\ndata\r\n`, as get answers.
fn value(key: &str, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut out = format!("VALUE {key} {flags} {}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// `VALUE key flags bytes <casN>\r\ndata\r\n`, as gets answers after masking.
fn value_cas(key: &str, flags: u32, data: &[u8], cas: usize) -> Vec<u8> {
    let mut out = format!("VALUE {key} {flags} {} <cas{cas}>\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// A retrieval reply: the values then END.
fn found(values: &[Vec<u8>]) -> Vec<u8> {
    let mut out = values.concat();
    out.extend_from_slice(b"END\r\n");
    out
}

fn set(key: &str, flags: u32, exptime: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("set {key} {flags} {exptime} {}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format\r\n";
const NON_NUMERIC: &str = "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
const INVALID_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument\r\n";
const INVALID_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument\r\n";
const TOO_LARGE: &str = "SERVER_ERROR object too large for cache\r\n";

/// set/add/replace/append/prepend, on a present and an absent key, with and without noreply.
fn storage_commands() -> Vec<Case> {
    let mut cases = Vec::new();
    for cmd in ["set", "add", "replace", "append", "prepend"] {
        for present in [false, true] {
            for noreply in [false, true] {
                let name = format!(
                    "{cmd} on {} key{}",
                    if present { "a present" } else { "an absent" },
                    if noreply { " noreply" } else { "" }
                );
                let stored = match cmd {
                    "set" => true,
                    "add" => !present,
                    _ => present,
                };
                let after: Option<(u32, &[u8])> = match (cmd, present, stored) {
                    ("set" | "add" | "replace", _, true) => Some((5, b"new")),
                    ("append", true, _) => Some((9, b"oldnew")),
                    ("prepend", true, _) => Some((9, b"newold")),
                    (_, true, false) => Some((9, b"old")),
                    _ => None,
                };
                let request = format!(
                    "{cmd} k 5 0 3{}\r\nnew\r\n",
                    if noreply { " noreply" } else { "" }
                );
                let reply = match (noreply, stored) {
                    (true, _) => "",
                    (false, true) => "STORED\r\n",
                    (false, false) => "NOT_STORED\r\n",
                };
                let get = match after {
                    Some((flags, data)) => found(&[value("k", flags, data)]),
                    None => found(&[]),
                };
                let case = if present {
                    Case::new(&name, set("k", 9, "0", b"old"), "STORED\r\n").then(request, reply)
                } else {
                    Case::new(&name, request, reply)
                };
                cases.push(case.then("get k\r\n", get));
            }
        }
    }
    cases
}

/// Values of many sizes and contents round-trip unchanged.
fn value_sizes() -> Vec<Case> {
    let mut cases = Vec::new();
    for len in [
        0usize, 1, 2, 3, 100, 1000, 1023, 1024, 1025, 4096, 16383, 16384, 65536, 500_000, 1_000_000,
    ] {
        let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        cases.push(
            Case::new(
                format!("value of {len} bytes"),
                set("k", 0, "0", &data),
                "STORED\r\n",
            )
            .then("get k\r\n", found(&[value("k", 0, &data)])),
        );
    }
    let binary: Vec<u8> = (0..=255u8).collect();
    cases.push(
        Case::new(
            "value with every byte value",
            set("k", 3, "0", &binary),
            "STORED\r\n",
        )
        .then("get k\r\n", found(&[value("k", 3, &binary)])),
    );
    let crlf = b"line1\r\nEND\r\nVALUE x 0 1\r\n".to_vec();
    cases.push(
        Case::new(
            "value holding CRLF and protocol words",
            set("k", 0, "0", &crlf),
            "STORED\r\n",
        )
        .then("get k\r\n", found(&[value("k", 0, &crlf)])),
    );
    cases.push(
        Case::new(
            "value just under the 1m item size limit",
            set("k", 0, "0", &vec![b'x'; 1024 * 1024 - 1024]),
            "STORED\r\n",
        )
        .then(
            "get k\r\n",
            found(&[value("k", 0, &vec![b'x'; 1024 * 1024 - 1024])]),
        ),
    );
    for len in [1024 * 1024 + 1, 2 * 1024 * 1024] {
        cases.push(
            Case::new(
                format!("value of {len} bytes is too large; data swallowed"),
                set("k", 0, "0", &vec![b'y'; len]),
                TOO_LARGE,
            )
            .then("get k\r\n", "END\r\n"),
        );
    }
    cases.push(
        Case::new(
            "too large set removes the old value",
            set("k", 0, "0", b"old"),
            "STORED\r\n",
        )
        .then(set("k", 0, "0", &vec![b'y'; 1024 * 1024 + 10]), TOO_LARGE)
        .then("get k\r\n", "END\r\n"),
    );
    cases.push(
        Case::new(
            "too large append keeps the old value",
            set("k", 0, "0", b"old"),
            "STORED\r\n",
        )
        .then(
            format!(
                "append k 0 0 {}\r\n{}\r\n",
                1024 * 1024 + 10,
                "z".repeat(1024 * 1024 + 10)
            ),
            TOO_LARGE,
        )
        .then("get k\r\n", found(&[value("k", 0, b"old")])),
    );
    cases
}

/// Flags are a 32-bit unsigned integer, parsed strictly.
fn flags() -> Vec<Case> {
    let mut cases = Vec::new();
    for (flags, ok) in [
        ("0", Some(0u32)),
        ("1", Some(1)),
        ("65535", Some(65535)),
        ("65536", Some(65536)),
        ("2147483648", Some(2147483648)),
        ("4294967295", Some(u32::MAX)), // memcached 1.6.18 parses flags as an unsigned long and keeps the low 32 bits.
        ("4294967296", Some(0)),
        ("4294967297", Some(1)),
        ("18446744073709551616", None),
        ("-1", None),
        ("abc", None),
        ("12abc", None),
        ("1.5", None),
        ("00012", Some(12)),
    ] {
        let request = format!("set k {flags} 0 1\r\nx\r\n");
        match ok {
            Some(f) => cases.push(
                Case::new(format!("flags {flags}"), request, "STORED\r\n")
                    .then("get k\r\n", found(&[value("k", f, b"x")])),
            ),
            // The rejected command line does not announce data, so the data line is read as
            // a command of its own.
            None => cases.push(
                Case::new(
                    format!("flags {flags} rejected"),
                    request,
                    format!("{BAD_FORMAT}ERROR\r\n"),
                )
                .then("get k\r\n", "END\r\n"),
            ),
        }
    }
    cases
}

/// Expiry: 0 never, up to 30 days relative, above that an absolute unix time, negative is
/// already expired.
fn exptimes() -> Vec<Case> {
    let mut cases = Vec::new();
    for (exptime, alive) in [
        ("0", true),
        ("1000", true),
        ("2592000", true),
        ("2592001", false),
        ("-1", false),
        ("-2592000", false),
        ("{unix+1000}", true),
        ("{unix+100000000}", true),
        ("{unix-1000}", false),
        ("{unix-100000000}", false),
    ] {
        let get = if alive {
            found(&[value("k", 0, b"x")])
        } else {
            found(&[])
        };
        cases.push(
            Case::new(
                format!("set with exptime {exptime}"),
                set("k", 0, exptime, b"x"),
                "STORED\r\n",
            )
            .then("get k\r\n", get),
        );
    } // memcached keeps the low 32 bits of a 64-bit exptime: 2147483648 becomes negative (already
      // expired) and 99999999999 an absolute time in 2008.
    for exptime in ["2147483648", "99999999999"] {
        cases.push(
            Case::new(
                format!("set with exptime {exptime} wraps"),
                set("k", 0, exptime, b"x"),
                "STORED\r\n",
            )
            .then("get k\r\n", "END\r\n"),
        );
    }
    for exptime in ["abc", "1x", "99999999999999999999"] {
        cases.push(
            Case::new(
                format!("set with exptime {exptime} rejected"),
                set("k", 0, exptime, b"x"),
                format!("{BAD_FORMAT}ERROR\r\n"),
            )
            .then("get k\r\n", "END\r\n"),
        );
    }
    cases.push(
        Case::new(
            "add over an expired item stores",
            set("k", 0, "-1", b"x"),
            "STORED\r\n",
        )
        .then("add k 0 0 1\r\ny\r\n", "STORED\r\n")
        .then("get k\r\n", found(&[value("k", 0, b"y")])),
    );
    cases.push(
        Case::new(
            "replace of an expired item fails",
            set("k", 0, "-1", b"x"),
            "STORED\r\n",
        )
        .then("replace k 0 0 1\r\ny\r\n", "NOT_STORED\r\n")
        .then("get k\r\n", "END\r\n"),
    );
    cases.push(
        Case::new(
            "incr of an expired item is NOT_FOUND",
            set("k", 0, "-1", b"1"),
            "STORED\r\n",
        )
        .then("incr k 1\r\n", "NOT_FOUND\r\n"),
    );
    cases.push(
        Case::new(
            "delete of an expired item is NOT_FOUND",
            set("k", 0, "-1", b"1"),
            "STORED\r\n",
        )
        .then("delete k\r\n", "NOT_FOUND\r\n"),
    );
    cases
}

fn key(len: usize, fill: u8) -> String {
    String::from_utf8(vec![fill; len]).expect("ascii")
}

/// Keys: length limit 250, any byte except space and newline.
fn keys() -> Vec<Case> {
    let mut cases = Vec::new();
    for len in [1usize, 200, 249, 250] {
        let k = key(len, b'k');
        cases.push(
            Case::new(
                format!("key of {len} bytes"),
                set(&k, 0, "0", b"v"),
                "STORED\r\n",
            )
            .then(format!("get {k}\r\n"), found(&[value(&k, 0, b"v")]))
            .then(format!("delete {k}\r\n"), "DELETED\r\n"),
        );
    }
    for len in [251usize, 300, 1000] {
        let k = key(len, b'k');
        cases.push(Case::new(
            format!("set with a key of {len} bytes"),
            set(&k, 0, "0", b"v"),
            format!("{BAD_FORMAT}ERROR\r\n"),
        ));
        for cmd in ["get", "gets", "delete", "incr", "decr", "touch"] {
            let request = match cmd {
                "incr" | "decr" => format!("{cmd} {k} 1\r\n"),
                "touch" => format!("{cmd} {k} 10\r\n"),
                _ => format!("{cmd} {k}\r\n"),
            };
            cases.push(Case::new(
                format!("{cmd} with a key of {len} bytes"),
                request,
                BAD_FORMAT,
            ));
        }
    }
    // A multi-get that meets a bad key fails as a whole: the values found before it are not sent.
    let long = key(251, b'z');
    cases.push(
        Case::new(
            "get with a long key after good keys",
            [set("a", 0, "0", b"1"), set("b", 0, "0", b"2")].concat(),
            "STORED\r\nSTORED\r\n",
        )
        .then(format!("get a b {long} c\r\n"), BAD_FORMAT)
        .then(
            format!("get a\r\nget {long}\r\nget b\r\n"),
            format!("VALUE a 0 1\r\n1\r\nEND\r\n{BAD_FORMAT}VALUE b 0 1\r\n2\r\nEND\r\n"),
        ),
    );
    for (label, k) in [
        ("\\x01", "a\x01b"),
        ("\\x7f", "a\x7fb"),
        ("tab", "a\tb"),
        ("\\xff", "a\u{ff}b"),
        ("\\x1b", "\x1b[0m"),
    ] {
        cases.push(
            Case::new(
                format!("key with {label}"),
                set(k, 0, "0", b"v"),
                "STORED\r\n",
            )
            .then(format!("get {k}\r\n"), found(&[value(k, 0, b"v")])),
        );
    } // The tokenizer stops a line at a NUL byte.
    cases.push(
        Case::new(
            "key with \\x00",
            set("a\0b", 0, "0", b"v"),
            "ERROR\r\nERROR\r\n",
        )
        .then("get a\0b\r\n", "END\r\n"),
    );
    cases
}

/// get/gets with many keys, misses, duplicates and odd spacing.
fn retrieval() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut prelude = Vec::new();
    for i in 0..10 {
        prelude.extend(set(&format!("k{i}"), i, "0", format!("v{i}").as_bytes()));
    }
    let stored = "STORED\r\n".repeat(10);
    for n in [1usize, 2, 5, 10, 23, 24, 25, 100, 300] {
        let keys: Vec<String> = (0..n).map(|i| format!("k{}", i % 13)).collect();
        let values: Vec<Vec<u8>> = (0..n)
            .filter(|i| i % 13 < 10)
            .map(|i| {
                let j = (i % 13) as u32;
                value(&format!("k{j}"), j, format!("v{j}").as_bytes())
            })
            .collect();
        cases.push(
            Case::new(format!("get of {n} keys"), &prelude, &stored)
                .then(format!("get {}\r\n", keys.join(" ")), found(&values)),
        );
    }
    let long_keys: Vec<String> = (0..400).map(|i| format!("key-number-{i:08}")).collect();
    cases.push(Case::new(
        "get of 400 missing keys in a 8 KB line",
        format!("get {}\r\n", long_keys.join(" ")),
        "END\r\n",
    ));
    cases.push(Case::new("gets of several keys", &prelude, &stored).then(
        "gets k1 k2 k1 nope k3\r\n",
        found(&[
            value_cas("k1", 1, b"v1", 1),
            value_cas("k2", 2, b"v2", 2),
            value_cas("k1", 1, b"v1", 1),
            value_cas("k3", 3, b"v3", 3),
        ]),
    ));
    for (name, request) in [
        ("get with two spaces", "get  k1\r\n"),
        ("get with trailing space", "get k1 \r\n"),
        ("get with leading space", " get k1\r\n"),
        ("get with LF only", "get k1\n"),
        ("get with many spaces between keys", "get k1     k1\r\n"),
    ] {
        let n = if name.contains("between") { 2 } else { 1 };
        cases.push(
            Case::new(name, &prelude, &stored)
                .then(request, found(&vec![value("k1", 1, b"v1"); n])),
        );
    }
    for (name, request, reply) in [
        ("get without a key", "get\r\n", "ERROR\r\n"),
        ("gets without a key", "gets\r\n", "ERROR\r\n"),
        ("get of a missing key", "get nope\r\n", "END\r\n"),
        ("gets of a missing key", "gets nope\r\n", "END\r\n"),
        ("GET in capitals", "GET k1\r\n", "ERROR\r\n"),
        ("get with a tab separator", "get\tk1\r\n", "ERROR\r\n"),
        ("get with a space then nothing", "get \r\n", "ERROR\r\n"),
    ] {
        cases.push(Case::new(name, &prelude, &stored).then(request, reply));
    }
    cases
}

/// gat/gats and touch.
fn touch_and_gat() -> Vec<Case> {
    let mut cases = Vec::new();
    let prelude = set("k", 7, "0", b"val");
    for (name, request, reply, after) in [
        (
            "touch a present key",
            "touch k 100\r\n",
            "TOUCHED\r\n",
            true,
        ),
        ("touch noreply", "touch k 100 noreply\r\n", "", true),
        ("touch to expire", "touch k -1\r\n", "TOUCHED\r\n", false),
        (
            "touch with absolute past time",
            "touch k {unix-100}\r\n",
            "TOUCHED\r\n",
            false,
        ),
        (
            "touch with absolute future time",
            "touch k {unix+100}\r\n",
            "TOUCHED\r\n",
            true,
        ),
        (
            "touch a missing key",
            "touch nope 10\r\n",
            "NOT_FOUND\r\n",
            true,
        ),
        (
            "touch with a bad exptime",
            "touch k abc\r\n",
            INVALID_EXPTIME,
            true,
        ),
        ("touch without exptime", "touch k\r\n", "ERROR\r\n", true),
        (
            "touch with extra token",
            "touch k 1 noreply x\r\n",
            "ERROR\r\n",
            true,
        ),
        (
            "gat a present key",
            "gat 100 k\r\n",
            "VALUE k 7 3\r\nval\r\nEND\r\n",
            true,
        ),
        (
            "gat to expire",
            "gat -1 k\r\n",
            "VALUE k 7 3\r\nval\r\nEND\r\n",
            false,
        ),
        ("gat a missing key", "gat 100 nope\r\n", "END\r\n", true),
        (
            "gat several keys",
            "gat 0 k nope k\r\n",
            "VALUE k 7 3\r\nval\r\nVALUE k 7 3\r\nval\r\nEND\r\n",
            true,
        ),
        (
            "gats a present key",
            "gats 100 k\r\n",
            "VALUE k 7 3 <cas1>\r\nval\r\nEND\r\n",
            true,
        ),
        (
            "gat with a bad exptime",
            "gat abc k\r\n",
            INVALID_EXPTIME,
            true,
        ),
        ("gat without keys", "gat 100\r\n", "END\r\n", true),
        ("gats without keys", "gats 100\r\n", "END\r\n", true),
        ("gat alone", "gat\r\n", "ERROR\r\n", true),
        (
            "gat with a long key",
            &format!("gat 10 {}\r\n", key(251, b'q')),
            BAD_FORMAT,
            true,
        ),
    ] {
        let after_reply = if after {
            found(&[value("k", 7, b"val")])
        } else {
            found(&[])
        };
        cases.push(
            Case::new(name, &prelude, "STORED\r\n")
                .then(request, reply)
                .then("get k\r\n", after_reply),
        );
    }
    cases.push(
        Case::new(
            "gats keeps the CAS of an unchanged item",
            &prelude,
            "STORED\r\n",
        )
        .then("gets k\r\n", found(&[value_cas("k", 7, b"val", 1)]))
        .then("gats 100 k\r\n", found(&[value_cas("k", 7, b"val", 1)]))
        .then("touch k 10\r\n", "TOUCHED\r\n")
        .then("gets k\r\n", found(&[value_cas("k", 7, b"val", 1)])),
    );
    cases
}

/// delete and its legacy time argument.
fn deletes() -> Vec<Case> {
    let prelude = set("k", 0, "0", b"v");
    let mut cases = Vec::new();
    for (name, request, reply, gone) in [
        ("delete a present key", "delete k\r\n", "DELETED\r\n", true),
        (
            "delete a missing key",
            "delete nope\r\n",
            "NOT_FOUND\r\n",
            false,
        ),
        ("delete noreply", "delete k noreply\r\n", "", true),
        ("delete with time 0", "delete k 0\r\n", "DELETED\r\n", true),
        (
            "delete with time 0 noreply",
            "delete k 0 noreply\r\n",
            "",
            true,
        ),
        (
            "delete with a nonzero time",
            "delete k 10\r\n",
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
            false,
        ),
        (
            "delete with a nonzero time and noreply",
            "delete k 10 noreply\r\n",
            "",
            false,
        ),
        (
            "delete with too many tokens",
            "delete k 0 noreply x\r\n",
            "ERROR\r\n",
            false,
        ),
        ("delete without a key", "delete\r\n", "ERROR\r\n", false),
        (
            "delete twice",
            "delete k\r\ndelete k\r\n",
            "DELETED\r\nNOT_FOUND\r\n",
            true,
        ),
    ] {
        let after = if gone {
            found(&[])
        } else {
            found(&[value("k", 0, b"v")])
        };
        cases.push(
            Case::new(name, &prelude, "STORED\r\n")
                .then(request, reply)
                .then("get k\r\n", after),
        );
    }
    cases
}

/// memcached's incr/decr on a stored decimal: the new digits are written in place, padded with
/// spaces to the old length, unless they are longer than the old value.
fn delta(old: &[u8], incr: bool, by: u64) -> Option<(u64, Vec<u8>)> {
    let text = std::str::from_utf8(old).ok()?;
    let n: u64 = text.trim_end_matches(' ').parse().ok()?;
    let new = if incr {
        n.wrapping_add(by)
    } else {
        n.saturating_sub(by)
    };
    let digits = new.to_string().into_bytes();
    let stored = if digits.len() <= old.len() {
        let mut padded = digits;
        padded.resize(old.len(), b' ');
        padded
    } else {
        digits
    };
    Some((new, stored))
}

fn incr_decr() -> Vec<Case> {
    let mut cases = Vec::new();
    let max = u64::MAX.to_string();
    let starts: Vec<&str> = vec![
        "0",
        "1",
        "9",
        "10",
        "99",
        "100",
        "12345",
        "4294967295",
        "4294967296",
        &max,
        "18446744073709551614",
    ];
    let deltas: [u64; 5] = [0, 1, 10, 4294967296, u64::MAX];
    for start in &starts {
        for by in deltas {
            for incr in [true, false] {
                // Keep the family to the interesting corners: every delta on the edges, small
                // deltas elsewhere.
                let edge = matches!(*start, "0" | "1" | "10" | "100") || start.len() >= 10;
                if !edge && by > 10 {
                    continue;
                }
                let cmd = if incr { "incr" } else { "decr" };
                let (n, stored) = delta(start.as_bytes(), incr, by).expect("numeric start");
                cases.push(
                    Case::new(
                        format!("{cmd} {start} by {by}"),
                        set("n", 3, "0", start.as_bytes()),
                        "STORED\r\n",
                    )
                    .then(format!("{cmd} n {by}\r\n"), format!("{n}\r\n"))
                    .then("get n\r\n", found(&[value("n", 3, &stored)])),
                );
            }
        }
    }
    // Repeated steps over the padded representation. No get in between: memcached rewrites in
    // place only while no reply still holds the item, and a get's reply holds it for a moment.
    let mut case = Case::new(
        "decr 1000 to 0 and back up",
        set("n", 0, "0", b"1000"),
        "STORED\r\n",
    );
    let mut current = b"1000".to_vec();
    for (incr, by) in [
        (false, 1),
        (false, 990),
        (false, 9),
        (false, 5),
        (true, 7),
        (true, 100000),
        (false, 1),
    ] {
        let (n, stored) = delta(&current, incr, by).expect("numeric");
        let cmd = if incr { "incr" } else { "decr" };
        case = case.then(format!("{cmd} n {by}\r\n"), format!("{n}\r\n"));
        current = stored;
    }
    cases.push(case.then("get n\r\n", found(&[value("n", 0, &current)])));
    for (name, data, request, reply) in [
        (
            "incr of a non-numeric value",
            "abc",
            "incr n 1\r\n",
            NON_NUMERIC,
        ),
        (
            "decr of a non-numeric value",
            "abc",
            "decr n 1\r\n",
            NON_NUMERIC,
        ),
        (
            "incr of a number with a suffix",
            "12a",
            "incr n 1\r\n",
            NON_NUMERIC,
        ),
        (
            "incr of a negative number",
            "-5",
            "incr n 1\r\n",
            NON_NUMERIC,
        ),
        ("incr of an empty value", "", "incr n 1\r\n", NON_NUMERIC),
        (
            "incr of a 20-digit overflow",
            "99999999999999999999",
            "incr n 1\r\n",
            NON_NUMERIC,
        ),
        (
            "incr of a number with leading zeros",
            "0007",
            "incr n 1\r\n",
            "8\r\n",
        ),
        (
            "incr of a number with a leading space",
            " 7",
            "incr n 1\r\n",
            "8\r\n",
        ),
        (
            "incr of a number with a trailing space",
            "7 ",
            "incr n 1\r\n",
            "8\r\n",
        ),
        (
            "incr of a number with a trailing CR",
            "7\r",
            "incr n 1\r\n",
            "8\r\n",
        ),
        (
            "incr by a non-numeric delta",
            "5",
            "incr n abc\r\n",
            INVALID_DELTA,
        ),
        (
            "incr by a negative delta",
            "5",
            "incr n -1\r\n",
            INVALID_DELTA,
        ),
        (
            "decr by a negative delta",
            "5",
            "decr n -1\r\n",
            INVALID_DELTA,
        ),
        (
            "incr by a delta over 64 bits",
            "5",
            "incr n 18446744073709551616\r\n",
            INVALID_DELTA,
        ),
        (
            "incr by a delta with a suffix",
            "5",
            "incr n 1x\r\n",
            INVALID_DELTA,
        ),
        (
            "incr of a missing key",
            "5",
            "incr nope 1\r\n",
            "NOT_FOUND\r\n",
        ),
        (
            "decr of a missing key",
            "5",
            "decr nope 1\r\n",
            "NOT_FOUND\r\n",
        ),
        (
            "incr noreply",
            "5",
            "incr n 1 noreply\r\nget n\r\n",
            "VALUE n 0 1\r\n6\r\nEND\r\n",
        ),
        (
            "decr noreply",
            "5",
            "decr n 1 noreply\r\nget n\r\n",
            "VALUE n 0 1\r\n4\r\nEND\r\n",
        ),
        (
            "incr noreply of a missing key",
            "5",
            "incr nope 1 noreply\r\n",
            "",
        ),
        ("incr without delta", "5", "incr n\r\n", "ERROR\r\n"),
        (
            "incr with too many tokens",
            "5",
            "incr n 1 noreply x\r\n",
            "ERROR\r\n",
        ),
        (
            "incr with a long key",
            "5",
            &format!("incr {} 1\r\n", key(251, b'n')),
            BAD_FORMAT,
        ),
        (
            "incr noreply of a non-numeric value",
            "x",
            "incr n 1 noreply\r\n",
            "",
        ),
    ] {
        cases.push(
            Case::new(name, set("n", 0, "0", data.as_bytes()), "STORED\r\n").then(request, reply),
        );
    }
    cases.push(
        Case::new("incr changes the CAS", set("n", 0, "0", b"5"), "STORED\r\n")
            .then("gets n\r\n", found(&[value_cas("n", 0, b"5", 1)]))
            .then("incr n 1\r\n", "6\r\n")
            .then("gets n\r\n", found(&[value_cas("n", 0, b"6", 2)])),
    );
    cases
}

fn cas() -> Vec<Case> {
    let prelude = set("k", 1, "0", b"old");
    let mut cases = vec![
        Case::new(
            "cas on a missing key",
            "cas k 0 0 1 1\r\nx\r\n",
            "NOT_FOUND\r\n",
        )
        .then("get k\r\n", "END\r\n"),
        Case::new(
            "cas noreply on a missing key",
            "cas k 0 0 1 1 noreply\r\nx\r\n",
            "",
        )
        .then("get k\r\n", "END\r\n"),
        Case::new("cas with the right unique", &prelude, "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old", 1)]))
            .then("cas k 2 0 3 {cas}\r\nnew\r\n", "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 2, b"new", 2)]))
            .then("cas k 2 0 3 {cas}\r\nnxt\r\n", "STORED\r\n")
            .then("get k\r\n", found(&[value("k", 2, b"nxt")])),
        Case::new("cas noreply with the right unique", &prelude, "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old", 1)]))
            .then("cas k 2 0 3 {cas} noreply\r\nnew\r\n", "")
            .then("get k\r\n", found(&[value("k", 2, b"new")])),
        Case::new("cas with a stale unique", &prelude, "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old", 1)]))
            .then(set("k", 1, "0", b"mid"), "STORED\r\n")
            .then("cas k 2 0 3 {cas}\r\nnew\r\n", "EXISTS\r\n")
            .then("get k\r\n", found(&[value("k", 1, b"mid")])),
        Case::new("cas noreply with a stale unique", &prelude, "STORED\r\n")
            .then("cas k 2 0 3 999999999 noreply\r\nnew\r\n", "")
            .then("get k\r\n", found(&[value("k", 1, b"old")])),
        Case::new("cas after delete", &prelude, "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old", 1)]))
            .then("delete k\r\n", "DELETED\r\n")
            .then("cas k 2 0 3 {cas}\r\nnew\r\n", "NOT_FOUND\r\n"),
        Case::new("cas unique 0", &prelude, "STORED\r\n")
            .then("cas k 2 0 3 0\r\nnew\r\n", "EXISTS\r\n"),
        Case::new("append changes the CAS", &prelude, "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old", 1)]))
            .then("append k 0 0 1\r\n!\r\n", "STORED\r\n")
            .then("gets k\r\n", found(&[value_cas("k", 1, b"old!", 2)])),
    ];
    for (name, request, reply) in [
        (
            "cas with a non-numeric unique",
            "cas k 0 0 1 abc\r\nx\r\n",
            format!("{BAD_FORMAT}ERROR\r\n"),
        ),
        (
            "cas with a negative unique",
            "cas k 0 0 1 -1\r\nx\r\n",
            format!("{BAD_FORMAT}ERROR\r\n"),
        ),
        (
            "cas without unique",
            "cas k 0 0 1\r\nx\r\n",
            "ERROR\r\nERROR\r\n".to_string(),
        ),
        (
            "cas with too many tokens",
            "cas k 0 0 1 1 noreply x\r\nx\r\n",
            "ERROR\r\nERROR\r\n".to_string(),
        ),
        (
            "cas with a bad data chunk",
            "cas k 0 0 1 1\r\nxy\r\n",
            "CLIENT_ERROR bad data chunk\r\nERROR\r\n".to_string(),
        ),
    ] {
        cases.push(Case::new(name, &prelude, "STORED\r\n").then(request, reply));
    }
    cases
}

/// Malformed storage commands: token counts, lengths, data chunks, noreply on errors.
fn storage_errors() -> Vec<Case> {
    let mut cases = Vec::new();
    let err_err = format!("{BAD_FORMAT}ERROR\r\n");
    let chunk_err = "CLIENT_ERROR bad data chunk\r\nERROR\r\n";
    let long_key_noreply = format!("set {} 0 0 1 noreply\r\nv\r\n", key(251, b'k'));
    let stored_v = "VALUE k 0 1\r\nv\r\nEND\r\n";
    for (name, request, reply, after) in [
        ("set without arguments", "set\r\n", "ERROR\r\n", "END\r\n"),
        ("set with a key only", "set k\r\n", "ERROR\r\n", "END\r\n"),
        (
            "set without length",
            "set k 0 0\r\n",
            "ERROR\r\n",
            "END\r\n",
        ),
        (
            "set with too many tokens",
            "set k 0 0 1 noreply x\r\nv\r\n",
            "ERROR\r\nERROR\r\n",
            "END\r\n",
        ),
        (
            "set with a non-noreply 6th token",
            "set k 0 0 1 norepl\r\nv\r\n",
            "STORED\r\n",
            stored_v,
        ),
        (
            "add without length",
            "add k 0 0\r\n",
            "ERROR\r\n",
            "END\r\n",
        ),
        (
            "append with too many tokens",
            "append k 0 0 1 noreply x\r\nv\r\n",
            "ERROR\r\nERROR\r\n",
            "END\r\n",
        ),
        (
            "set with a negative length",
            "set k 0 0 -1\r\n",
            BAD_FORMAT,
            "END\r\n",
        ),
        (
            "set with a non-numeric length",
            "set k 0 0 abc\r\nabc\r\n",
            &err_err,
            "END\r\n",
        ), // The length keeps its low 32 bits: 4294967296 is read as 0.
        (
            "set with a length over 32 bits",
            "set k 0 0 4294967296\r\nv\r\n",
            chunk_err,
            "END\r\n",
        ),
        (
            "set with length INT_MAX",
            "set k 0 0 2147483647\r\nv\r\n",
            &err_err,
            "END\r\n",
        ), // noreply also silences the error; the data line is then an unknown command.
        (
            "set with a bad flag noreply",
            "set k x 0 1 noreply\r\nv\r\n",
            "ERROR\r\n",
            "END\r\n",
        ),
        (
            "set with a long key noreply",
            &long_key_noreply,
            "ERROR\r\n",
            "END\r\n",
        ),
        (
            "set with a data block too long",
            "set k 0 0 1\r\nvv\r\n",
            chunk_err,
            "END\r\n",
        ),
        (
            "set with a data block too long noreply",
            "set k 0 0 1 noreply\r\nvv\r\n",
            "ERROR\r\n",
            "END\r\n",
        ),
        (
            "set with data ending in LF only",
            "set k 0 0 1\r\nv\nget k\r\n",
            chunk_err,
            "END\r\n",
        ),
        (
            "set with data ending in CR only",
            "set k 0 0 1\r\nv\rx\r\n",
            chunk_err,
            "END\r\n",
        ),
        (
            "set with a command line ending in LF",
            "set k 0 0 1\nv\r\n",
            "STORED\r\n",
            stored_v,
        ),
        (
            "set with extra spaces",
            "set  k  0  0  1 \r\nv\r\n",
            "STORED\r\n",
            stored_v,
        ),
        (
            "SET in capitals",
            "SET k 0 0 1\r\nv\r\n",
            "ERROR\r\nERROR\r\n",
            "END\r\n",
        ),
    ] {
        cases.push(Case::new(name, request, reply).then("get k\r\n", after));
    }
    // A short data block makes memcached read the next bytes as data: the reply only ends when
    // the connection goes quiet, and the next request shows what state the server is in.
    let quiet = End::Quiet(Duration::from_millis(300));
    cases.push(
        Case::new(
            "set with a data block too short",
            "set k 0 0 5\r\nab\r\n",
            "",
        )
        .ending(quiet.clone())
        .then("\r\nget k\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    );
    cases.push(
        Case::new("set waiting for its data", "set k 0 0 3\r\n", "")
            .ending(quiet.clone())
            .then(
                "abc\r\nget k\r\n",
                "STORED\r\nVALUE k 0 3\r\nabc\r\nEND\r\n",
            ),
    );
    cases.push(
        Case::new("data split over writes", "set k 0 0 10\r\n01234", "")
            .ending(quiet.clone())
            .then(
                "56789\r\nget k\r\n",
                "STORED\r\nVALUE k 0 10\r\n0123456789\r\nEND\r\n",
            ),
    );
    cases.push(
        Case::new("a command line split over writes", "get", "")
            .ending(quiet.clone())
            .then(" k\r\n", "END\r\n"),
    );
    cases.push(
        Case::new(
            "set over a present key with a bad chunk",
            set("k", 0, "0", b"old"),
            "STORED\r\n",
        )
        .then(
            "set k 0 0 1\r\nvv\r\n",
            "CLIENT_ERROR bad data chunk\r\nERROR\r\n",
        )
        .then("get k\r\n", "VALUE k 0 3\r\nold\r\nEND\r\n"),
    );
    cases
}

/// Commands outside storage: unknown, empty, version, verbosity, quit, shutdown, flush_all.
fn misc_commands() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, request, reply) in [
        ("unknown command", "foo\r\n", "ERROR\r\n"),
        (
            "unknown command with arguments",
            "foo bar baz\r\n",
            "ERROR\r\n",
        ),
        ("empty line", "\r\n", "ERROR\r\n"),
        ("bare LF", "\n", "ERROR\r\n"),
        ("line of spaces", "    \r\n", "ERROR\r\n"),
        ("NUL byte line", "\0\r\n", "ERROR\r\n"),
        ("binary garbage", "\x01\x02\x03\r\n", "ERROR\r\n"),
        (
            "too many tokens",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z\r\n",
            "ERROR\r\n",
        ),
        ("prefix of a command", "ge k\r\n", "ERROR\r\n"),
        ("command with a suffix", "gett k\r\n", "ERROR\r\n"),
        ("version", "version\r\n", "VERSION 1.6.18\r\n"),
        (
            "version twice pipelined",
            "version\r\nversion\r\n",
            "VERSION 1.6.18\r\nVERSION 1.6.18\r\n",
        ),
        (
            "version with an argument",
            "version x\r\n",
            "VERSION 1.6.18\r\n",
        ),
        ("verbosity 1", "verbosity 1\r\n", "OK\r\n"),
        ("verbosity 0", "verbosity 0\r\n", "OK\r\n"),
        ("verbosity noreply", "verbosity 1 noreply\r\n", ""),
        ("verbosity without level", "verbosity\r\n", "ERROR\r\n"),
        ("verbosity with a word", "verbosity abc\r\n", BAD_FORMAT),
        (
            "verbosity with too many tokens",
            "verbosity 1 2 3\r\n",
            "ERROR\r\n",
        ),
        (
            "shutdown without -A",
            "shutdown\r\n",
            "ERROR: shutdown not enabled\r\n",
        ),
        (
            "shutdown graceful without -A",
            "shutdown graceful\r\n",
            "ERROR: shutdown not enabled\r\n",
        ),
        ("an HTTP request line", "GET / HTTP/1.1\r\n", ""),
    ] {
        let case = Case::new(name, request, reply);
        let case = if request.contains("HTTP/") {
            case.ending(End::Closed)
        } else {
            case
        };
        cases.push(case);
    }
    cases.push(Case::new("quit", "quit\r\n", "").ending(End::Closed));
    cases.push(Case::new("quit with an argument", "quit now\r\n", "").ending(End::Closed));
    cases.push(
        Case::new(
            "quit after pipelined requests",
            "set k 0 0 1\r\nv\r\nget k\r\nquit\r\nget k\r\n",
            "STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n",
        )
        .ending(End::Closed)
        .then("get k\r\n", "VALUE k 0 1\r\nv\r\nEND\r\n"),
    );
    cases.push(
        Case::new("a long line without newline closes", "x".repeat(3000), "").ending(End::Closed),
    );
    cases.push(
        Case::new(
            "a long get line without newline waits",
            format!("get {}", "k ".repeat(1500)),
            "",
        )
        .ending(End::Quiet(Duration::from_millis(300)))
        .then("\r\n", "END\r\n"),
    );
    cases.push(Case::new(
        "a complete 3 KB unknown line",
        format!("{}\r\n", "x".repeat(3000)),
        "ERROR\r\n",
    ));
    let prelude = set("k", 0, "0", b"v");
    for (name, request, reply, alive) in [
        ("flush_all", "flush_all\r\n", "OK\r\n", false),
        ("flush_all 0", "flush_all 0\r\n", "OK\r\n", false),
        ("flush_all noreply", "flush_all noreply\r\n", "", false),
        ("flush_all 0 noreply", "flush_all 0 noreply\r\n", "", false),
        (
            "flush_all with a delay",
            "flush_all 100\r\n",
            "OK\r\n",
            true,
        ),
        (
            "flush_all with a delay noreply",
            "flush_all 100 noreply\r\n",
            "",
            true,
        ),
        ("flush_all negative", "flush_all -1\r\n", "OK\r\n", false), // A time before the server started counts as "no flush time": nothing is flushed.
        (
            "flush_all with an absolute past time",
            "flush_all {unix-100000}\r\n",
            "OK\r\n",
            true,
        ),
        (
            "flush_all with an absolute future time",
            "flush_all {unix+100}\r\n",
            "OK\r\n",
            true,
        ),
        (
            "flush_all with a word",
            "flush_all abc\r\n",
            INVALID_EXPTIME,
            true,
        ),
        (
            "flush_all with too many tokens",
            "flush_all 1 noreply x\r\n",
            "ERROR\r\n",
            true,
        ),
    ] {
        let after = if alive {
            found(&[value("k", 0, b"v")])
        } else {
            found(&[])
        };
        cases.push(
            Case::new(name, &prelude, "STORED\r\n")
                .then(request, reply)
                .then("get k\r\n", after),
        );
    }
    cases.push(
        Case::new("set after flush_all is kept", &prelude, "STORED\r\n")
            .then("flush_all\r\n", "OK\r\n")
            .then(set("k", 0, "0", b"w"), "STORED\r\n")
            .then("get k\r\n", found(&[value("k", 0, b"w")])),
    );
    cases
}

/// `lru_crawler metadump all`: the key listing a repaired node's re-sync reads. Dump lines end
/// in a bare LF, the listing in END\r\n. memcached hands the connection to its crawler thread and
/// leaves what was pipelined after the dump until the client sends more, so the reply is read up
/// to END instead of a sentinel.
fn metadump() -> Vec<Case> {
    let items = [
        set("a", 0, "0", b"1"),
        set("b", 5, "100", b"22"),
        set("gone", 0, "-1", b"3"),
        set(&key(250, b'd'), 0, "0", b"x"),
        set("e%20f", 0, "0", b"x"),
    ]
    .concat();
    let long = key(250, b'd');
    vec![
        Case::new("metadump of an empty cache", "lru_crawler metadump all\r\n", "END\r\n")
            .ending(End::Suffix(b"END\r\n".to_vec()))
            .masked(Mask::Metadump),
        Case::new("metadump of a few items", items, "STORED\r\n".repeat(5))
            .then("get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n")
            .then(
                "lru_crawler metadump all\r\n",
                format!(
                    "key=a exp=-1 fetch=yes\nkey=b exp=<time> fetch=no\nkey={long} exp=-1 fetch=no\nkey=e%2520f exp=-1 fetch=no\nEND\r\n"
                ),
            )
            .ending(End::Suffix(b"END\r\n".to_vec()))
            .masked(Mask::Metadump),
        Case::new("metadump without a class", "lru_crawler metadump\r\n", "ERROR\r\n"),
        Case::new("metadump of two lists", "lru_crawler metadump 1 2\r\n", "ERROR\r\n"),
        Case::new(
            "metadump of bad classes",
            ["bogus", "0", "64", "-1", "1,x", "200,1", "all,1", "ALL", "18446744073709551617"]
                .iter()
                .map(|class| format!("get nope\r\nlru_crawler metadump {class}\r\n"))
                .collect::<String>(),
            "END\r\nBADCLASS invalid class id\r\n".repeat(9),
        ),
        Case::new("metadump hash", set("a", 0, "0", b"1"), "STORED\r\n")
            .then("lru_crawler metadump hash\r\n", "key=a exp=-1 fetch=no\nEND\r\n")
            .ending(End::Suffix(b"\nEND\r\n".to_vec()))
            .masked(Mask::Metadump),
        // memcached's class 1 holds items of up to 96 bytes; keepcached places items in the
        // classes memcached would.
        Case::new("metadump of class 1", set("a", 0, "0", b"1"), "STORED\r\n")
            .then("lru_crawler metadump 1\r\n", "key=a exp=-1 fetch=no\nEND\r\n")
            .ending(End::Suffix(b"\nEND\r\n".to_vec()))
            .masked(Mask::Metadump),
        Case::new("metadump of classes 1 and 2", set("a", 0, "0", b"1"), "STORED\r\n")
            .then("lru_crawler metadump 2,1\r\n", "key=a exp=-1 fetch=no\nEND\r\n")
            .ending(End::Suffix(b"\nEND\r\n".to_vec()))
            .masked(Mask::Metadump),
        Case::new("metadump of an empty class", set("a", 0, "0", b"1"), "STORED\r\n")
            .then("lru_crawler metadump 63\r\n", "END\r\n")
            .ending(End::Suffix(b"END\r\n".to_vec()))
            .masked(Mask::Metadump),
        // memcached lists a class's items only once they reach its cold LRU, so listings are
        // compared in server_fidelity.rs; the refusals are the same at once.
        Case::new(
            "stats cachedump refusals",
            [
                "stats cachedump\r\n",
                "stats cachedump 1\r\n",
                "stats cachedump x 1\r\n",
                "stats cachedump 1 x\r\n",
                "stats cachedump -1 1\r\n",
                "stats cachedump 64 1\r\n",
                "stats cachedump 0 1\r\n",
                "stats cachedump 63 0 extra\r\n",
            ]
            .concat(),
            [
                "CLIENT_ERROR bad command line\r\n",
                "CLIENT_ERROR bad command line\r\n",
                BAD_FORMAT,
                BAD_FORMAT,
                BAD_FORMAT,
                "CLIENT_ERROR Illegal slab id\r\n",
                "END\r\n",
                "END\r\n",
            ]
            .concat(),
        ),
        // keepcached has no slab pages to move: its answers are memcached's for a fresh server.
        // (`slabs reassign -1 N`, any source, and reassigns from the largest class are left
        // out: memcached may find a page to spare there, depending on what it has allocated.)
        Case::new(
            "slabs commands",
            [
                "slabs reassign invalid1 invalid2\r\n",
                "slabs reassign 5\r\n",
                "slabs reassign 1 1\r\n",
                "slabs reassign -5 70\r\n",
                "slabs reassign 1 64\r\n",
                "slabs reassign 2 1\r\n",
                "slabs automove 1\r\n",
                "slabs automove 3\r\n",
                "slabs automove x\r\n",
                "slabs automove ratio 0.5\r\n",
                "slabs automove\r\n",
                "slabs\r\n",
                "slabs foo 1 2\r\n",
            ]
            .concat(),
            [
                BAD_FORMAT,
                "ERROR\r\n",
                "SAME src and dst class are identical\r\n",
                "BADCLASS invalid src or dst class id\r\n",
                "BADCLASS invalid src or dst class id\r\n",
                "NOSPARE source class has no spare pages\r\n",
                "OK\r\n",
                "ERROR\r\n",
                BAD_FORMAT,
                "OK\r\n",
                "ERROR\r\n",
                "ERROR\r\n",
                "ERROR\r\n",
            ]
            .concat(),
        ),
        Case::new("lru_crawler alone", "lru_crawler\r\n", "ERROR\r\n"),
        Case::new("lru_crawler tocrawl of a word", "lru_crawler tocrawl x\r\n", BAD_FORMAT),
        Case::new("lru_crawler sleep over a second", "lru_crawler sleep 1000001\r\n", "CLIENT_ERROR sleep must be one second or less\r\n"),
        Case::new("lru_crawler sleep of two numbers", "lru_crawler sleep 1 2\r\n", "ERROR\r\n"),
        Case::new("lru_crawler crawl of a bad class", "lru_crawler crawl 0\r\n", "BADCLASS invalid class id\r\n"),
        Case::new("lru_crawler with an unknown verb", "lru_crawler foo\r\n", "ERROR\r\n"),
    ]
}

/// memcached's queue of replies it has not sent yet (its write follows a completed get, `mn`,
/// or the end of what it read): a get with a key over 250 bytes throws the queue away, a line
/// that closes the connection loses it, and a metadump refuses to run behind it.
fn queued_replies() -> Vec<Case> {
    let long = key(251, b'k');
    let line = |s: String| s.into_bytes();
    vec![
        Case::new(
            "a long get key drops the replies queued before it",
            [
                set("a", 0, "0", b"1"),
                line(format!("delete nope\r\nget a {long}\r\n")),
            ]
            .concat(),
            "CLIENT_ERROR bad command line format\r\n",
        )
        .then("get a\r\n", found(&[value("a", 0, b"1")])),
        Case::new(
            "a completed get sends the queue before a long key",
            format!("delete nope\r\nget nope\r\ntouch nope 0\r\ngets {long}\r\n"),
            "NOT_FOUND\r\nEND\r\nCLIENT_ERROR bad command line format\r\n",
        ),
        Case::new(
            "mn sends the queue before a long key",
            format!("delete nope\r\nmn\r\nincr nope 1\r\ngat 0 a {long}\r\n"),
            "NOT_FOUND\r\nMN\r\nCLIENT_ERROR bad command line format\r\n",
        ),
        Case::new(
            "noreply requests and an error line are dropped too",
            format!("set q 0 0 1 noreply\r\nx\r\nbogus\r\nbget {long}\r\n"),
            "CLIENT_ERROR bad command line format\r\n",
        )
        .then("bget q\r\n", found(&[value("q", 0, b"x")])),
        Case::new(
            "a long key elsewhere drops nothing",
            format!("delete nope\r\nmg {long} v\r\ndelete {long}\r\n"),
            "NOT_FOUND\r\nCLIENT_ERROR bad command line format\r\n\
             CLIENT_ERROR bad command line format\r\n",
        ),
        Case::new(
            "an HTTP line drops the queue and closes",
            "version\r\nget nope\r\ndelete nope\r\nxGET / HTTP/1.1\r\n",
            "VERSION 1.6.18\r\nEND\r\n",
        )
        .ending(End::Closed),
        Case::new(
            "an HTTP line under a command letter is an ERROR",
            "cas k -1 100 5 1\r\ntamiuxxGET / HTTP/1.1\r\ngx HTTP/1.0\r\nmx / HTTP/1.1\r\n",
            "CLIENT_ERROR bad command line format\r\nERROR\r\nERROR\r\nERROR\r\n",
        ),
        Case::new(
            "a metadump behind queued replies is refused",
            "version\r\nlru_crawler metadump all\r\n",
            "VERSION 1.6.18\r\nERROR cannot pipeline other commands before metadump\r\n",
        ),
        Case::new(
            "a metadump behind a silent request is refused",
            "set q 0 0 1 noreply\r\nx\r\nlru_crawler metadump 1\r\n",
            "ERROR cannot pipeline other commands before metadump\r\n",
        ),
        Case::new(
            "a refused metadump is queued",
            "lru_crawler metadump bogus\r\nlru_crawler metadump bogus\r\n",
            "BADCLASS invalid class id\r\n\
             ERROR cannot pipeline other commands before metadump\r\n",
        ),
        Case::new(
            "a completed get lets a metadump run",
            [
                set("a", 0, "0", b"1"),
                b"get a\r\nlru_crawler metadump 1\r\n".to_vec(),
            ]
            .concat(),
            // The mask puts the dump's lines first.
            "key=a exp=-1 fetch=yes\nSTORED\r\nVALUE a 0 1\r\n1\r\nEND\r\nEND\r\n",
        )
        // The dump's line ends in the item's size (the same in both: memcached's item size);
        // the get's END would end a shorter suffix too.
        .ending(End::Suffix(b"size=61\nEND\r\n".to_vec()))
        .masked(Mask::Metadump),
    ]
}

/// A tiny model of the store, to generate long pipelines with known replies.
#[derive(Default)]
struct Model {
    items: BTreeMap<String, (u32, Vec<u8>, u64)>,
    version: u64,
    cas_names: BTreeMap<u64, usize>,
}

impl Model {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// One command: its request bytes and memcached's reply.
    fn op(&mut self, rng: &mut Lcg) -> (Vec<u8>, Vec<u8>) {
        const KEYS: [&str; 4] = ["a", "b", "c", "dd"];
        const DATA: [&str; 7] = ["1", "42", "abc", "", "99999", "hello world", "7"];
        const FLAGS: [u32; 3] = [0, 7, u32::MAX];
        let k = KEYS[rng.below(KEYS.len())].to_string();
        let data = DATA[rng.below(DATA.len())].as_bytes().to_vec();
        let flags = FLAGS[rng.below(FLAGS.len())];
        let present = self.items.contains_key(&k);
        match rng.below(10) {
            0..=3 => {
                let cmd = ["set", "add", "replace", "append", "prepend"][rng.below(5)];
                let mut req = format!("{cmd} {k} {flags} 0 {}\r\n", data.len()).into_bytes();
                req.extend_from_slice(&data);
                req.extend_from_slice(b"\r\n");
                let stored = match cmd {
                    "set" => true,
                    "add" => !present,
                    _ => present,
                };
                if stored {
                    let v = self.bump();
                    let entry = match (cmd, self.items.get(&k)) {
                        ("append", Some((f, old, _))) => (*f, [old.clone(), data].concat(), v),
                        ("prepend", Some((f, old, _))) => (*f, [data, old.clone()].concat(), v),
                        _ => (flags, data, v),
                    };
                    self.items.insert(k, entry);
                }
                (
                    req,
                    if stored {
                        b"STORED\r\n".to_vec()
                    } else {
                        b"NOT_STORED\r\n".to_vec()
                    },
                )
            }
            4..=5 => {
                let n = 1 + rng.below(4);
                let keys: Vec<&str> = (0..n).map(|_| KEYS[rng.below(KEYS.len())]).collect();
                let gets = rng.below(2) == 0;
                let mut reply = Vec::new();
                for key in &keys {
                    if let Some((f, d, v)) = self.items.get(*key).cloned() {
                        if gets {
                            let next = self.cas_names.len() + 1;
                            let name = *self.cas_names.entry(v).or_insert(next);
                            reply.extend(value_cas(key, f, &d, name));
                        } else {
                            reply.extend(value(key, f, &d));
                        }
                    }
                }
                reply.extend_from_slice(b"END\r\n");
                let cmd = if gets { "gets" } else { "get" };
                (format!("{cmd} {}\r\n", keys.join(" ")).into_bytes(), reply)
            }
            6 => {
                let reply = if self.items.remove(&k).is_some() {
                    "DELETED\r\n"
                } else {
                    "NOT_FOUND\r\n"
                };
                (format!("delete {k}\r\n").into_bytes(), reply.into())
            }
            7..=8 => {
                let incr = rng.below(2) == 0;
                let by = [0u64, 1, 5, 100][rng.below(4)];
                let cmd = if incr { "incr" } else { "decr" };
                let req = format!("{cmd} {k} {by}\r\n").into_bytes();
                let Some((f, old, _)) = self.items.get(&k).cloned() else {
                    return (req, b"NOT_FOUND\r\n".to_vec());
                };
                match delta(&old, incr, by).filter(|_| !old.is_empty()) {
                    Some((n, stored)) => {
                        let v = self.bump();
                        self.items.insert(k, (f, stored, v));
                        (req, format!("{n}\r\n").into_bytes())
                    }
                    None => (req, NON_NUMERIC.into()),
                }
            }
            _ => {
                let reply = if present {
                    "TOUCHED\r\n"
                } else {
                    "NOT_FOUND\r\n"
                };
                (format!("touch {k} 0\r\n").into_bytes(), reply.into())
            }
        }
    }
}

/// A fixed linear congruential generator: the pipelines are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Pipelines: many mixed commands in one write, answered in order.
fn pipelines() -> Vec<Case> {
    let mut rng = Lcg(0x6b65_6570_6361_6368);
    let mut cases = Vec::new();
    for i in 0..50 {
        let mut model = Model::default();
        let n = 2 + rng.below(40);
        let (mut request, mut reply) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (req, rep) = model.op(&mut rng);
            request.extend(req);
            reply.extend(rep);
        }
        cases.push(Case::new(
            format!("pipeline {i} of {n} commands"),
            request,
            reply,
        ));
    }
    let mut big = Vec::new();
    let mut big_reply = Vec::new();
    for i in 0..2000 {
        big.extend(set(&format!("p{i}"), i, "0", format!("{i}").as_bytes()));
        big_reply.extend_from_slice(b"STORED\r\n");
    }
    for i in 0..2000 {
        big.extend(format!("get p{i}\r\n").into_bytes());
        big_reply.extend(found(&[value(
            &format!("p{i}"),
            i,
            format!("{i}").as_bytes(),
        )]));
    }
    cases.push(Case::new("pipeline of 4000 commands", big, big_reply));
    cases.push(Case::new(
        "pipeline of noreply sets then one get",
        format!(
            "{}get x\r\n",
            (0..100)
                .map(|i| format!("set x 0 0 {} noreply\r\n{i}\r\n", i.to_string().len()))
                .collect::<String>()
        ),
        "VALUE x 0 2\r\n99\r\nEND\r\n",
    ));
    cases
}

/// Groups with non-default flags.
fn flagged_groups() -> Vec<Group> {
    let big = vec![b'b'; 1536 * 1024];
    vec![
        Group::new(
            "-I 2m",
            &["-I", "2m"],
            vec![
                Case::new("1.5 MB value stored", set("k", 0, "0", &big), "STORED\r\n")
                    .then("get k\r\n", found(&[value("k", 0, &big)])),
                Case::new(
                    "3 MB value too large",
                    set("k", 0, "0", &vec![b'c'; 3 * 1024 * 1024]),
                    TOO_LARGE,
                )
                .then("get k\r\n", "END\r\n"),
            ],
        ),
        Group::new(
            "-I 512k",
            &["-I", "512k"],
            vec![
                Case::new(
                    "400 KB value stored",
                    set("k", 0, "0", &[b'd'; 400 * 1024]),
                    "STORED\r\n",
                )
                .then("get k\r\n", found(&[value("k", 0, &[b'd'; 400 * 1024])])),
                Case::new(
                    "600 KB value too large",
                    set("k", 0, "0", &[b'e'; 600 * 1024]),
                    TOO_LARGE,
                ),
            ],
        ),
        // Without CAS, memcached's flush_all also drops items stored later in the same second, so
        // these cases share one connection and are not flushed in between.
        Group::new(
            "-C (no CAS)",
            &["-C"],
            vec![
                Case::new("gets shows CAS 0", set("k", 0, "0", b"v"), "STORED\r\n")
                    .then("gets k\r\n", "VALUE k 0 1 0\r\nv\r\nEND\r\n")
                    .then(
                        "set k 0 0 1\r\nw\r\ngets k\r\n",
                        "STORED\r\nVALUE k 0 1 0\r\nw\r\nEND\r\n",
                    ),
                Case::new("cas with unique 0", set("j", 0, "0", b"v"), "STORED\r\n").then(
                    "cas j 0 0 1 0\r\nw\r\nget j\r\n",
                    "EXISTS\r\nVALUE j 0 1\r\nv\r\nEND\r\n",
                ),
                Case::new("cas with unique 1", set("i", 0, "0", b"v"), "STORED\r\n").then(
                    "cas i 0 0 1 1\r\nw\r\nget i\r\n",
                    "EXISTS\r\nVALUE i 0 1\r\nv\r\nEND\r\n",
                ),
            ],
        )
        .shared(),
        // flush_all is refused with -F, so the cases share one connection without flushing.
        Group::new(
            "-F (flush_all disabled)",
            &["-F"],
            vec![
                Case::new(
                    "flush_all refused",
                    "flush_all\r\n",
                    "CLIENT_ERROR flush_all not allowed\r\n",
                ),
                Case::new("flush_all noreply refused", "flush_all noreply\r\n", ""),
            ],
        )
        .shared(),
        Group::new(
            "cache_memlimit",
            &["-m", "64"],
            vec![
                Case::new(
                    "cache_memlimit raises the limit",
                    "cache_memlimit 100\r\n",
                    "OK\r\n",
                )
                .then("stats\r\n", "STAT limit_maxbytes 104857600\r\nEND\r\n")
                .masked(Mask::Stats(Some(&["limit_maxbytes"]))),
                Case::new(
                    "cache_memlimit noreply",
                    "cache_memlimit 80 noreply\r\n",
                    "",
                )
                .then("stats\r\n", "STAT limit_maxbytes 83886080\r\nEND\r\n")
                .masked(Mask::Stats(Some(&["limit_maxbytes"]))),
                Case::new(
                    "cache_memlimit below 8",
                    "cache_memlimit 7\r\n",
                    "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
                ),
                Case::new(
                    "cache_memlimit with a word",
                    "cache_memlimit abc\r\n",
                    "ERROR\r\n",
                ),
                Case::new(
                    "cache_memlimit without value",
                    "cache_memlimit\r\n",
                    "ERROR\r\n",
                ),
                Case::new(
                    "cache_memlimit back to 64",
                    "cache_memlimit 64\r\n",
                    "OK\r\n",
                ),
            ],
        ),
        Group::new("stats", &["-m", "64", "-t", "2"], stats_cases()).shared(),
    ]
}

/// The stats fields clients and dashboards read.
const CLIENT_STATS: &[&str] = &[
    "pid",
    "uptime",
    "time",
    "version",
    "curr_connections",
    "total_connections",
    "cmd_get",
    "cmd_set",
    "cmd_flush",
    "cmd_touch",
    "get_hits",
    "get_misses",
    "get_expired",
    "get_flushed",
    "delete_misses",
    "delete_hits",
    "incr_misses",
    "incr_hits",
    "decr_misses",
    "decr_hits",
    "cas_misses",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "bytes_read",
    "bytes_written",
    "limit_maxbytes",
    "threads",
    "bytes",
    "curr_items",
    "total_items",
    "expired_unfetched",
    "evicted_unfetched",
    "evictions",
];

const SETTINGS: &[&str] = &[
    "maxbytes",
    "maxconns",
    "tcpport",
    "udpport",
    "verbosity",
    "num_threads",
    "cas_enabled",
    "evictions",
    "item_size_max",
    "flush_enabled",
];

/// Counters on a fresh server, on one connection, so every count is known. `stats reset` comes
/// before the workload so byte counters do not include the first stats reply (whose length
/// depends on how many stats a server has).
fn stats_cases() -> Vec<Case> {
    let all = Mask::Stats(Some(CLIENT_STATS));
    let workload = "set a 0 0 1\r\n1\r\nset b 0 0 1\r\nx\r\nadd a 0 0 1\r\n2\r\nget a b c\r\nget c\r\nincr a 5\r\nincr c 1\r\ndecr a 1\r\ndecr c 1\r\ndelete b\r\ndelete b\r\ntouch a 0\r\ntouch b 0\r\ncas a 0 0 1 1\r\n9\r\ncas z 0 0 1 1\r\n9\r\nset e 0 -1 1\r\ne\r\nget e\r\n";
    vec![
        // memcached counts its listening socket in total_connections, and the sentinel that
        // follows `stats` in bytes_read. `stats reset` zeroes total_connections.
        Case::new("stats on a fresh server", "stats\r\n", "STAT pid <masked>\r\nSTAT uptime <masked>\r\nSTAT time <masked>\r\nSTAT version 1.6.18\r\nSTAT curr_connections 1\r\nSTAT total_connections 2\r\nSTAT cmd_get 0\r\nSTAT cmd_set 0\r\nSTAT cmd_flush 0\r\nSTAT cmd_touch 0\r\nSTAT get_hits 0\r\nSTAT get_misses 0\r\nSTAT get_expired 0\r\nSTAT get_flushed 0\r\nSTAT delete_misses 0\r\nSTAT delete_hits 0\r\nSTAT incr_misses 0\r\nSTAT incr_hits 0\r\nSTAT decr_misses 0\r\nSTAT decr_hits 0\r\nSTAT cas_misses 0\r\nSTAT cas_hits 0\r\nSTAT cas_badval 0\r\nSTAT touch_hits 0\r\nSTAT touch_misses 0\r\nSTAT bytes_read 16\r\nSTAT bytes_written 0\r\nSTAT limit_maxbytes 67108864\r\nSTAT threads 2\r\nSTAT bytes 0\r\nSTAT curr_items 0\r\nSTAT total_items 0\r\nSTAT expired_unfetched 0\r\nSTAT evicted_unfetched 0\r\nSTAT evictions 0\r\nEND\r\n").masked(all),
        Case::new("stats settings", "stats settings\r\n", "STAT maxbytes 67108864\r\nSTAT maxconns 1024\r\nSTAT tcpport <masked>\r\nSTAT udpport 0\r\nSTAT verbosity 0\r\nSTAT evictions on\r\nSTAT num_threads 2\r\nSTAT cas_enabled yes\r\nSTAT item_size_max 1048576\r\nSTAT flush_enabled yes\r\nEND\r\n")
            .masked(Mask::Stats(Some(SETTINGS))),
        Case::new("stats reset", "stats reset\r\n", "RESET\r\n"),
        Case::new(
            "a workload",
            workload,
            "STORED\r\nSTORED\r\nNOT_STORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\nx\r\nEND\r\nEND\r\n6\r\nNOT_FOUND\r\n5\r\nNOT_FOUND\r\nDELETED\r\nNOT_FOUND\r\nTOUCHED\r\nNOT_FOUND\r\nEXISTS\r\nNOT_FOUND\r\nSTORED\r\nEND\r\n",
        )
        .then("gets a\r\n", "VALUE a 0 1 <cas1>\r\n5\r\nEND\r\n")
        .then("cas a 0 0 1 {cas}\r\n8\r\n", "STORED\r\n"),
        Case::new(
            "stats after the workload",
            "stats\r\n",
            "STAT pid <masked>\r\nSTAT uptime <masked>\r\nSTAT time <masked>\r\nSTAT version 1.6.18\r\nSTAT curr_connections 1\r\nSTAT total_connections 0\r\nSTAT cmd_get 6\r\nSTAT cmd_set 7\r\nSTAT cmd_flush 0\r\nSTAT cmd_touch 2\r\nSTAT get_hits 3\r\nSTAT get_misses 3\r\nSTAT get_expired 1\r\nSTAT get_flushed 0\r\nSTAT delete_misses 1\r\nSTAT delete_hits 1\r\nSTAT incr_misses 1\r\nSTAT incr_hits 1\r\nSTAT decr_misses 1\r\nSTAT decr_hits 1\r\nSTAT cas_misses 1\r\nSTAT cas_hits 1\r\nSTAT cas_badval 1\r\nSTAT touch_hits 1\r\nSTAT touch_misses 1\r\nSTAT bytes_read 277\r\nSTAT bytes_written 272\r\nSTAT limit_maxbytes 67108864\r\nSTAT threads 2\r\nSTAT bytes <nonzero>\r\nSTAT curr_items 1\r\nSTAT total_items 4\r\nSTAT expired_unfetched 0\r\nSTAT evicted_unfetched 0\r\nSTAT evictions 0\r\nEND\r\n",
        )
        .masked(all),
        Case::new("flush_all", "flush_all\r\nflush_all 0\r\nget a\r\n", "OK\r\nOK\r\nEND\r\n"),
        Case::new(
            "stats after flush_all",
            "stats\r\n",
            "STAT cmd_get 7\r\nSTAT cmd_flush 2\r\nSTAT get_misses 4\r\nSTAT get_flushed 1\r\nSTAT curr_items 0\r\nEND\r\n",
        )
        .masked(Mask::Stats(Some(&["cmd_get", "cmd_flush", "get_misses", "get_flushed", "curr_items"]))),
        Case::new("stats with an unknown group", "stats nonsense\r\n", "ERROR\r\n"),
        Case::new("stats with too many tokens", "stats a b c d e f g h i j k l m n o p q r s t u v w x y\r\n", "ERROR\r\n"),
    ]
}

fn all_groups() -> Vec<Group> {
    let mut cases = Vec::new();
    cases.extend(storage_commands());
    cases.extend(value_sizes());
    cases.extend(flags());
    cases.extend(exptimes());
    cases.extend(keys());
    cases.extend(retrieval());
    cases.extend(touch_and_gat());
    cases.extend(deletes());
    cases.extend(incr_decr());
    cases.extend(cas());
    cases.extend(storage_errors());
    cases.extend(misc_commands());
    cases.extend(pipelines());
    cases.extend(metadump());
    cases.extend(queued_replies());
    let mut groups = vec![Group::new("default flags", &[], cases)];
    groups.extend(flagged_groups());
    groups
}

#[test]
fn text_protocol_matches_memcached() {
    if !env::require("text_protocol_matches_memcached", true, &["memcached"]) {
        return;
    }
    let groups = all_groups();
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"));
    let outcome = wire::run(&groups, &Target::memcached(), &subject);
    assert!(
        outcome.cases >= 300,
        "the table shrank to {} cases",
        outcome.cases
    );
    outcome.assert_clean("text protocol");
}
