//! Seeded differential fuzzing against Debian's memcached: generated and mutated requests of one
//! protocol (text, meta or binary) are sent to memcached and to keepcached, and the replies
//! compared byte for byte after masking what legitimately differs.
//!
//! - [`Rng`] is a xorshift generator: a case is a pure function of the run's seed and its
//!   number, so any failure reproduces from the printed seed, whatever the thread scheduling.
//! - [`Protocol::case`] makes one case: one to four requests (valid, slightly off, or garbage),
//!   sometimes mutated (a byte changed, inserted, or the tail cut). Every key of case `i` starts
//!   with its own prefix, so cases run concurrently on their own connections without seeing each
//!   other's items. Nothing a case sends may change what another case sees: no immediate
//!   `flush_all` (only one delayed by a day, in a case that is never mutated), no `stats reset`,
//!   no setting changes.
//! - [`differential`] plays every case on both servers at once, each on a connection that is
//!   reused until a case leaves it closed or waiting. A sentinel request follows each case
//!   (`version` for text and meta, a NOOP with a marked opaque for binary); a reply that is not
//!   complete within [`CASE_TIMEOUT`] is cut there and marked as waiting, so no case can hang
//!   the run; a case where both servers wait for more input compares equal (what each sent
//!   before waiting depends on when it flushes its queue, which is not compared).
//! - Masks: CAS values are named by identity within a case (text `VALUE` lines, meta `c` flags,
//!   binary response headers), meta TTLs are rounded up to 10 s and non-zero access ages named
//!   by identity, and a binary STAT reply is reduced to whether it succeeded (each engine keeps
//!   its own set of statistics).
//! - [`Known`] differences are counted and printed, not failed: memcached closing a connection
//!   without sending replies it had queued before a batch it read earlier, which keepcached
//!   sent.
//! - [`Feature`]s are request shapes that once differed; a run counts the cases that show each
//!   (and were compared), so a test can assert that the generator still makes them: a get key
//!   over 250 bytes behind other requests (memcached throws their queued replies away), an
//!   `HTTP/` line under a command's first letter (`ERROR`, not a close), an `mg`/`ma` with an
//!   opaque over 32 bytes (the item is created or changed before the error), and
//!   `lru_crawler` with a bad class or argument list. Only refusals of `lru_crawler` are
//!   generated, and such cases are never mutated: a dump lists every case's keys, and
//!   memcached's crawler stays broken after a `metadump ,` (NOTSTARTED).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use keepcached_protocol::binary::{opcode, HEADER_LEN, REQUEST_MAGIC};
use keepcached_protocol::meta::encode_base64;

use crate::client::{escape, Client, End, Reply};
use crate::mask::CasMasker;
use crate::process::ServerProcess;

/// How long a case's reply may take before it is cut and marked as waiting. A correct server
/// answers in well under a millisecond; this is what a case costs when both servers wait.
pub const CASE_TIMEOUT: Duration = Duration::from_millis(250);

/// The opaque of the binary sentinel NOOP.
const SENTINEL_OPAQUE: u32 = 0x5e47_1e10;

/// A xorshift64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The generator for case `index` of the run seeded with `seed`.
    pub fn for_case(seed: u64, index: usize) -> Rng {
        let mut rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` in 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn letters(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b'a' + self.below(26) as u8).collect()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Text,
    Meta,
    Binary,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Text => "text",
            Protocol::Meta => "meta",
            Protocol::Binary => "binary",
        }
    }

    /// One case's bytes; every key starts with `prefix`. With `raw`, also inputs unfit for a
    /// differential run (a binary body of 2 GiB or more, whose fate in memcached depends on
    /// stale per-socket state; mutations of a `flush_all`), for the parser invariant tests.
    pub fn case(self, rng: &mut Rng, prefix: &str, raw: bool) -> Vec<u8> {
        let mut out = Vec::new();
        // A request whose mutation could change what other cases see.
        let mut fragile = false;
        for _ in 0..1 + rng.below(4) {
            let request = match self {
                Protocol::Text => text_request(rng, prefix, &mut fragile),
                Protocol::Meta => meta_request(rng, prefix),
                Protocol::Binary => binary_request(rng, prefix, raw, &mut fragile),
            };
            out.extend(request);
        }
        if (raw || !fragile) && rng.chance(15) && !out.is_empty() {
            let at = rng.below(out.len());
            match rng.below(4) {
                0 => out.truncate(at),
                1 => out.insert(at, *rng.pick(&[&b'\r', &b'\n', &b' ', &0, &0x80])),
                _ => out[at] = rng.next_u64() as u8,
            }
        }
        out
    }
}

fn key(rng: &mut Rng, prefix: &str) -> Vec<u8> {
    match rng.below(40) {
        0 => vec![b'k'; 251],
        1 => {
            let mut k = prefix.as_bytes().to_vec();
            k.resize(250, b'x');
            k
        }
        2 => format!("{prefix}a\x01b").into_bytes(),
        _ => format!("{prefix}k{}", rng.below(4)).into_bytes(),
    }
}

fn number(rng: &mut Rng) -> &'static str {
    rng.pick(&[
        "0",
        "1",
        "5",
        "100",
        "-1",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "abc",
        "1x",
        "",
    ])
}

/// A value: letters, a number (for incr/decr) or nothing.
fn data(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => rng.pick(&["0", "12", "18446744073709551615", "007"]).into(),
        1 => Vec::new(),
        _ => {
            let n = 1 + rng.below(12);
            rng.letters(n)
        }
    }
}

/// An opaque over memcached's 32 bytes.
const LONG_OPAQUE: &str = "O0123456789abcdef0123456789abcdef";

fn text_request(rng: &mut Rng, prefix: &str, fragile: &mut bool) -> Vec<u8> {
    let k = key(rng, prefix);
    let mut out = Vec::new();
    match rng.below(12) {
        0..=3 => {
            let cmd = rng.pick(&["set", "add", "replace", "append", "prepend", "cas"]);
            let value = data(rng);
            let declared = match rng.below(12) {
                0 => number(rng).to_string(),
                1 => "2000000".to_string(),
                2 => (value.len() + 1).to_string(),
                _ => value.len().to_string(),
            };
            let flags = rng.pick(&["0", "0", "5", "4294967295", "-1", "abc"]);
            let exptime = rng.pick(&["0", "0", "100", "-1", "86400", "x"]);
            out.extend_from_slice(cmd.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&k);
            out.extend_from_slice(format!(" {flags} {exptime} {declared}").as_bytes());
            if cmd == "cas" {
                // Never a CAS either server could have handed out: the counters differ.
                let unique = rng.pick(&["0", "18446744073709551615", "99999999999", "x"]);
                out.extend_from_slice(format!(" {unique}").as_bytes());
            }
            if rng.chance(20) {
                out.extend_from_slice(b" noreply");
            }
            out.extend_from_slice(b"\r\n");
            out.extend(value);
            out.extend_from_slice(rng.pick(&["\r\n", "\r\n", "\r\n", "\n", "xx"]).as_bytes());
        }
        4..=5 => {
            let cmd = rng.pick(&["get", "gets", "gat 100", "gats 0", "gat", "gat x", "bget"]);
            out.extend_from_slice(cmd.as_bytes());
            for _ in 0..1 + rng.below(4) {
                out.push(b' ');
                out.extend(key(rng, prefix));
            }
            out.extend_from_slice(b"\r\n");
        }
        6 => {
            let cmd = rng.pick(&["incr", "decr"]);
            out.extend_from_slice(format!("{cmd} ").as_bytes());
            out.extend(k);
            let n = number(rng);
            let tail = rng.pick(&["", " noreply", " x"]);
            out.extend_from_slice(format!(" {n}{tail}\r\n").as_bytes());
        }
        7 => {
            out.extend_from_slice(b"delete ");
            out.extend(k);
            let tail = rng.pick(&["", " noreply", " 0", " 1", " x y"]);
            out.extend_from_slice(format!("{tail}\r\n").as_bytes());
        }
        8 => {
            out.extend_from_slice(b"touch ");
            out.extend(k);
            let n = number(rng);
            let tail = rng.pick(&["", " noreply"]);
            out.extend_from_slice(format!(" {n}{tail}\r\n").as_bytes());
        }
        9 => {
            // Delayed by a day: it changes nothing another case can see during the run.
            let line = rng.pick(&[
                "flush_all 86400",
                "flush_all 86400 noreply",
                "flush_all abc",
                "flush_all 86400 x",
            ]);
            *fragile = true;
            out.extend_from_slice(format!("{line}\r\n").as_bytes());
        }
        10 => {
            let line = rng.pick(&[
                "",
                " ",
                "bogus",
                "get",
                "set",
                "set k",
                "incr",
                "delete",
                "gets \x01",
                "verbosity",
                "GET / HTTP/1.1",
                "tamiuxxGET / HTTP/1.1",
                "gx HTTP/1.0",
                "mx / HTTP/1.1",
                "stats HTTP/1.1",
                "bget",
            ]);
            out.extend_from_slice(format!("{line}\r\n").as_bytes());
        }
        11 if rng.chance(40) => {
            // Refusals only, and never mutated (see the module documentation).
            let line = rng.pick(&[
                "lru_crawler metadump bogus",
                "lru_crawler metadump 0",
                "lru_crawler metadump 64",
                "lru_crawler metadump 1,x",
                "lru_crawler metadump 200,1",
                "lru_crawler metadump ALL",
                "lru_crawler metadump all 2",
                "lru_crawler metadump",
                "lru_crawler crawl bogus",
                "lru_crawler crawl 1 2",
                "lru_crawler tocrawl x",
                "lru_crawler sleep 2000000",
                "lru_crawler sleep x",
                "lru_crawler bogus",
            ]);
            *fragile = true;
            out.extend_from_slice(format!("{line}\r\n").as_bytes());
        }
        _ => {
            let n = rng.below(40);
            let junk = rng.bytes(n);
            out.extend(junk);
            if rng.chance(50) {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

fn meta_key(rng: &mut Rng, prefix: &str) -> (Vec<u8>, bool) {
    if rng.chance(10) {
        let mut encoded = Vec::new();
        encode_base64(
            &mut encoded,
            format!("{prefix}k{}", rng.below(4)).as_bytes(),
        );
        (encoded, true)
    } else {
        (key(rng, prefix), false)
    }
}

fn meta_flags(rng: &mut Rng, pool: &[&str], base64: bool) -> String {
    let mut flags = String::new();
    if base64 {
        flags.push_str(" b");
    }
    for _ in 0..rng.below(5) {
        flags.push(' ');
        flags.push_str(rng.pick(pool));
    }
    flags
}

fn meta_request(rng: &mut Rng, prefix: &str) -> Vec<u8> {
    let (k, base64) = meta_key(rng, prefix);
    let mut out = Vec::new();
    match rng.below(10) {
        0..=2 => {
            let value = data(rng);
            let declared = match rng.below(12) {
                0 => number(rng).to_string(),
                1 => "2000000".to_string(),
                _ => value.len().to_string(),
            };
            let flags = meta_flags(
                rng,
                &[
                    "T0",
                    "T100",
                    "F5",
                    "I",
                    "q",
                    "c",
                    "k",
                    "O12",
                    "MS",
                    "MA",
                    "MP",
                    "MR",
                    "ME",
                    "MX",
                    "Mz",
                    "C99999999999",
                    "N30",
                    "S3",
                    "zz",
                    "T",
                    LONG_OPAQUE,
                ],
                base64,
            );
            out.extend_from_slice(b"ms ");
            out.extend(k);
            out.extend_from_slice(format!(" {declared}{flags}\r\n").as_bytes());
            out.extend(value);
            out.extend_from_slice(rng.pick(&["\r\n", "\r\n", "\r\n", "xx"]).as_bytes());
        }
        3..=5 => {
            let flags = meta_flags(
                rng,
                &[
                    "v",
                    "s",
                    "f",
                    "t",
                    "c",
                    "k",
                    "O1",
                    "q",
                    "u",
                    "h",
                    "l",
                    "N30",
                    "T100",
                    "E5",
                    "R30",
                    "x",
                    "!",
                    LONG_OPAQUE,
                    LONG_OPAQUE,
                ],
                base64,
            );
            out.extend_from_slice(b"mg ");
            out.extend(k);
            out.extend_from_slice(format!("{flags}\r\n").as_bytes());
        }
        6 => {
            let flags = meta_flags(
                rng,
                &[
                    "q",
                    "C99999999999",
                    "I",
                    "T30",
                    "O9",
                    "k",
                    "x",
                    "zz",
                    LONG_OPAQUE,
                ],
                base64,
            );
            out.extend_from_slice(b"md ");
            out.extend(k);
            out.extend_from_slice(format!("{flags}\r\n").as_bytes());
        }
        7 => {
            let flags = meta_flags(
                rng,
                &[
                    "N30",
                    "J13",
                    "D2",
                    "Dx",
                    "MI",
                    "MD",
                    "M+",
                    "Mz",
                    "q",
                    "T30",
                    "c",
                    "t",
                    "v",
                    "O7",
                    "k",
                    LONG_OPAQUE,
                ],
                base64,
            );
            out.extend_from_slice(b"ma ");
            out.extend(k);
            out.extend_from_slice(format!("{flags}\r\n").as_bytes());
        }
        8 => {
            let line = rng.pick(&[
                "mn", "mg", "ms", "md", "ma", "mz", "ms k", "ms k abc", "mg  ", "me", "mn x",
            ]);
            out.extend_from_slice(format!("{line}\r\n").as_bytes());
        }
        _ => {
            let n = rng.below(40);
            let junk = rng.bytes(n);
            out.extend_from_slice(b"m");
            out.extend(junk);
            if rng.chance(50) {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

/// A binary request packet; `body_len` overrides the sum of extras, key and value.
pub fn binary_packet(
    op: u8,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
    body_len: Option<u32>,
    opaque: u32,
    cas: u64,
) -> Vec<u8> {
    let natural = (extras.len() + key.len() + value.len()) as u32;
    let mut p = vec![REQUEST_MAGIC, op];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&body_len.unwrap_or(natural).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&cas.to_be_bytes());
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

fn binary_request(rng: &mut Rng, prefix: &str, raw: bool, fragile: &mut bool) -> Vec<u8> {
    use opcode::*;
    let op = *rng.pick(&[
        &GET,
        &GETQ,
        &GETK,
        &GETKQ,
        &SET,
        &SET,
        &SETQ,
        &ADD,
        &ADDQ,
        &REPLACE,
        &REPLACEQ,
        &APPEND,
        &APPENDQ,
        &PREPEND,
        &PREPENDQ,
        &DELETE,
        &DELETEQ,
        &INCREMENT,
        &INCREMENTQ,
        &DECREMENT,
        &DECREMENTQ,
        &TOUCH,
        &GAT,
        &GATQ,
        &GATK,
        &GATKQ,
        &NOOP,
        &VERSION,
        &STAT,
        &FLUSH,
        &FLUSHQ,
        &QUIT,
        &QUITQ,
        &SASL_LIST_MECHS,
        &SASL_AUTH,
        &SASL_STEP,
        &0x1b,
        &0x1f,
        &0x25,
        &0x40,
        &0xff,
    ]);
    let exptime = |rng: &mut Rng| -> [u8; 4] {
        rng.pick(&[&0u32, &0, &100, &86400, &4_000_000_000])
            .to_be_bytes()
    };
    let mut extras = match op {
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ => {
            let mut e = rng.pick(&[&0u32, &5, &u32::MAX]).to_be_bytes().to_vec();
            e.extend_from_slice(&exptime(rng));
            e
        }
        INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => {
            let mut e = rng.pick(&[&1u64, &0, &7, &u64::MAX]).to_be_bytes().to_vec();
            e.extend_from_slice(&rng.pick(&[&0u64, &10, &u64::MAX]).to_be_bytes());
            e.extend_from_slice(&rng.pick(&[&0u32, &100, &u32::MAX]).to_be_bytes());
            e
        }
        TOUCH | GAT | GATQ | GATK | GATKQ => exptime(rng).to_vec(),
        // Delayed by a day: it changes nothing another case can see during the run.
        FLUSH | FLUSHQ => {
            *fragile = true;
            86400u32.to_be_bytes().to_vec()
        }
        _ => Vec::new(),
    };
    let mut k = match op {
        NOOP | VERSION | QUIT | QUITQ | SASL_LIST_MECHS | FLUSH | FLUSHQ => Vec::new(),
        STAT => rng
            .pick(&["", "", "items", "slabs", "settings", "bogus", "detail"])
            .into(),
        SASL_AUTH | SASL_STEP => b"PLAIN".to_vec(),
        _ => key(rng, prefix),
    };
    let mut value = match op {
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ | APPEND | APPENDQ | PREPEND | PREPENDQ => {
            data(rng)
        }
        SASL_AUTH | SASL_STEP => b"\0u\0p".to_vec(),
        _ => Vec::new(),
    };
    if rng.chance(8) {
        // Extras of the wrong size for the command.
        let n = rng.below(24);
        extras = rng.bytes(n);
    }
    if rng.chance(4) {
        k.clear();
    }
    if rng.chance(3) {
        value = rng.letters(3);
    }
    let cas = if rng.chance(10) {
        *rng.pick(&[&1u64, &u64::MAX, &99_999_999_999])
    } else {
        0
    };
    let opaque = rng.next_u64() as u32;
    let natural = (extras.len() + k.len() + value.len()) as u32;
    let fixed = (extras.len() + k.len()) as u32;
    let mut surplus = Vec::new();
    let body_len = match rng.below(20) {
        // A longer body than the command needs: memcached answers from the extras and key and
        // reads what follows as the next packet (or swallows it, for a store).
        0..=2 => {
            surplus = match rng.below(3) {
                0 => binary_packet(NOOP, &[], &[], &[], None, 1, 0),
                1 => binary_packet(GET, &[], format!("{prefix}k0").as_bytes(), &[], None, 2, 0),
                _ => {
                    let n = 1 + rng.below(40);
                    rng.bytes(n)
                }
            };
            Some(natural + surplus.len() as u32)
        }
        // Shorter than its extras and key.
        3 if fixed > 0 => Some(rng.below(fixed as usize) as u32),
        // Far longer than anything sent: a store waits for (or swallows) it, others answer.
        4 => Some(if raw && rng.chance(50) {
            *rng.pick(&[&0xFFFF_FFF0u32, &0x8000_0000, &u32::MAX])
        } else {
            *rng.pick(&[&(2u32 << 20), &0x7FFF_FFF0, &(natural + 5000)])
        }),
        _ => None,
    };
    let mut p = binary_packet(op, &extras, &k, &value, body_len, opaque, cas);
    p.extend(surplus);
    p
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: usize,
    /// Cases where both servers were still waiting for input when the case timed out.
    pub both_waiting: usize,
    /// Cases after which both servers had closed the connection.
    pub both_closed: usize,
    /// Cases that differ only in a [`Known`] way, by kind.
    pub known: std::collections::BTreeMap<String, usize>,
    /// Compared cases (not left waiting by both servers) that show each [`Feature`].
    pub features: std::collections::BTreeMap<Feature, usize>,
    pub mismatches: Vec<String>,
}

impl Report {
    /// Prints the summary and panics listing the first mismatches, if there is any.
    pub fn assert_clean(&self, protocol: Protocol, seed: u64) {
        eprintln!(
            "fuzz differential ({}): seed {seed:#x}, {} cases, {} left both servers waiting, {} \
             closed by both, known differences {:?}, features {:?}, {} mismatches",
            protocol.name(),
            self.cases,
            self.both_waiting,
            self.both_closed,
            self.known,
            self.features,
            self.mismatches.len()
        );
        if !self.mismatches.is_empty() {
            let shown: Vec<&String> = self.mismatches.iter().take(20).collect();
            panic!(
                "{} of {} {} cases differ from memcached (seed {seed:#x}); the first:\n{}",
                self.mismatches.len(),
                self.cases,
                protocol.name(),
                shown.iter().map(|s| s.as_str()).collect::<String>()
            );
        }
    }
}

impl Report {
    /// Panics unless each feature was seen in at least its number of compared cases: the
    /// generator still makes the inputs that once differed.
    pub fn assert_features(&self, minimums: &[(Feature, usize)]) {
        for &(feature, min) in minimums {
            let seen = self.features.get(&feature).copied().unwrap_or(0);
            assert!(
                seen >= min,
                "{feature:?}: {seen} compared cases, at least {min} expected"
            );
        }
    }
}

/// Request shapes in which keepcached once answered differently from memcached (see the
/// module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// A get, gets, gat, gats or bget with a key over 250 bytes, behind another request.
    LongGetKeyBehindReplies,
    /// A line ending in an `HTTP/` token whose first word starts like one of memcached's
    /// commands.
    HttpUnderCommandLetter,
    /// An `mg` or `ma` with an opaque over 32 bytes.
    LongOpaque,
    /// An `lru_crawler` line.
    Crawler,
}

impl Feature {
    /// The features a case's bytes show.
    pub fn of(request: &[u8]) -> Vec<Feature> {
        let mut features = Vec::new();
        for (i, line) in request.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let tokens: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|t| !t.is_empty())
                .collect();
            let (Some(first), Some(last)) = (tokens.first(), tokens.last()) else {
                continue;
            };
            let feature = match *first {
                b"get" | b"gets" | b"gat" | b"gats" | b"bget"
                    if i > 0 && tokens.iter().any(|t| t.len() > 250) =>
                {
                    Feature::LongGetKeyBehindReplies
                }
                b"mg" | b"ma" if tokens.iter().any(|t| t[0] == b'O' && t.len() > 32) => {
                    Feature::LongOpaque
                }
                b"lru_crawler" => Feature::Crawler,
                _ if first.len() > 1
                    && b"gsacidt".contains(&first[0])
                    && last.starts_with(b"HTTP/") =>
                {
                    Feature::HttpUnderCommandLetter
                }
                _ => continue,
            };
            if !features.contains(&feature) {
                features.push(feature);
            }
        }
        features
    }
}

/// A connection to each server, reused while cases leave it clean.
struct Pair {
    reference: Option<Client>,
    subject: Option<Client>,
}

fn connect(server: &ServerProcess) -> Result<Client, String> {
    let mut client = server
        .connect()
        .map_err(|e| format!("cannot connect to {}: {e}", server.label()))?;
    client.set_timeout(CASE_TIMEOUT);
    Ok(client)
}

/// Runs `cases` cases of `protocol` seeded with `seed` against both servers, on `workers`
/// threads.
pub fn differential(
    protocol: Protocol,
    seed: u64,
    cases: usize,
    reference: &ServerProcess,
    subject: &ServerProcess,
    workers: usize,
) -> Report {
    let next = AtomicUsize::new(0);
    let report = Mutex::new(Report {
        cases,
        ..Report::default()
    });
    let sentinel = match Sentinel::for_protocol(protocol, reference) {
        Ok(sentinel) => sentinel,
        Err(e) => {
            let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
            report.mismatches.push(e);
            return report;
        }
    };
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut pair = Pair {
                    reference: None,
                    subject: None,
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= cases {
                        break;
                    }
                    let mut rng = Rng::for_case(seed, index);
                    let request = protocol.case(&mut rng, &format!("f{index}_"), false);
                    let outcome =
                        play(protocol, &sentinel, &request, &mut pair, reference, subject);
                    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                    if !matches!(outcome, Ok(Verdict::Same { waiting: true, .. })) {
                        for feature in Feature::of(&request) {
                            *report.features.entry(feature).or_default() += 1;
                        }
                    }
                    match outcome {
                        Ok(Verdict::Same { waiting, closed }) => {
                            report.both_waiting += usize::from(waiting);
                            report.both_closed += usize::from(closed);
                        }
                        Ok(Verdict::Known(known)) => {
                            *report.known.entry(format!("{known:?}")).or_default() += 1;
                        }
                        Ok(Verdict::Differ(ours, theirs)) => report.mismatches.push(format!(
                            "case {index}\n  request:    {}\n  memcached:  {theirs}\n  \
                             keepcached: {ours}\n",
                            escape(&request)
                        )),
                        Err(e) => report.mismatches.push(format!("case {index}: {e}\n")),
                    }
                }
            });
        }
    });
    report.into_inner().unwrap_or_else(|e| e.into_inner())
}

enum Verdict {
    Same { waiting: bool, closed: bool },
    Known(Known),
    Differ(String, String),
}

fn play(
    protocol: Protocol,
    sentinel: &Sentinel,
    request: &[u8],
    pair: &mut Pair,
    reference: &ServerProcess,
    subject: &ServerProcess,
) -> Result<Verdict, String> {
    if pair.reference.is_none() {
        pair.reference = Some(connect(reference)?);
    }
    if pair.subject.is_none() {
        pair.subject = Some(connect(subject)?);
    }
    let (Some(theirs), Some(ours)) = (pair.reference.as_mut(), pair.subject.as_mut()) else {
        return Err("no connection".into());
    };
    let (theirs_reply, ours_reply) = thread::scope(|s| {
        let t = s.spawn(|| exchange(theirs, request, sentinel));
        let o = exchange(ours, request, sentinel);
        (t.join().unwrap_or_else(|_| Err("panicked".into())), o)
    });
    let (mut theirs_reply, mut ours_reply) = (theirs_reply?, ours_reply?);
    let waiting = |r: &Reply| r.timed_out && !r.closed;
    if waiting(&theirs_reply) && !waiting(&ours_reply) {
        theirs_reply = settle(theirs, theirs_reply, sentinel)?;
    } else if waiting(&ours_reply) && !waiting(&theirs_reply) {
        ours_reply = settle(ours, ours_reply, sentinel)?;
    }
    let (theirs, ours) = (theirs_reply, ours_reply);
    let dirty = |r: &Reply| r.closed || r.timed_out;
    if dirty(&theirs) || dirty(&ours) {
        pair.reference = None;
        pair.subject = None;
    }
    let render = |r: &Reply| {
        let masked = match protocol {
            Protocol::Text => escape(&CasMasker::default().mask(&r.bytes)),
            Protocol::Meta => escape(&MetaMasker::default().mask(&r.bytes)),
            Protocol::Binary => render_binary(&r.bytes),
        };
        let mut s = masked;
        if r.closed {
            s.push_str("<closed>");
        } else if r.timed_out {
            s.push_str("<waiting>");
        }
        s
    };
    // Both waiting for more input: equal, whatever each had sent by then (when a server
    // sends what it queued before it waits is its own business).
    if waiting(&ours) && waiting(&theirs) {
        return Ok(Verdict::Same {
            waiting: true,
            closed: false,
        });
    }
    let (a, b) = (render(&ours), render(&theirs));
    if a == b {
        return Ok(Verdict::Same {
            waiting: false,
            closed: ours.closed,
        });
    }
    Ok(match known_difference(protocol, &ours, &theirs) {
        Some(known) => Verdict::Known(known),
        None => Verdict::Differ(a, b),
    })
}

/// Differences that come from when memcached's text protocol sends what it has queued, not from
/// what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// memcached closes the connection without sending the replies it had queued since it last
    /// waited for input: its reply is a prefix of ours and both connections are closed.
    /// keepcached drops the replies of the batch it is running too; this remains for replies
    /// it sent at the end of an earlier read that memcached still held.
    LostOnClose,
}

fn known_difference(protocol: Protocol, ours: &Reply, theirs: &Reply) -> Option<Known> {
    if protocol == Protocol::Binary {
        return None;
    }
    let (ours_masked, theirs_masked) = match protocol {
        Protocol::Meta => (
            MetaMasker::default().mask(&ours.bytes),
            MetaMasker::default().mask(&theirs.bytes),
        ),
        _ => (
            CasMasker::default().mask(&ours.bytes),
            CasMasker::default().mask(&theirs.bytes),
        ),
    };
    (ours.closed && theirs.closed && ours_masked.starts_with(&theirs_masked))
        .then_some(Known::LostOnClose)
}

/// The request sent after each case, and the reply that ends it.
#[derive(Debug, Clone)]
struct Sentinel {
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Sentinel {
    /// `version` (its reply read from memcached once) for text and meta; a NOOP with a marked
    /// opaque for binary.
    fn for_protocol(protocol: Protocol, reference: &ServerProcess) -> Result<Sentinel, String> {
        if protocol == Protocol::Binary {
            let mut reply = vec![0x81, opcode::NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            reply.extend_from_slice(&SENTINEL_OPAQUE.to_be_bytes());
            reply.extend_from_slice(&[0; 8]);
            let request = binary_packet(opcode::NOOP, &[], &[], &[], None, SENTINEL_OPAQUE, 0);
            return Ok(Sentinel { request, reply });
        }
        let mut client = reference
            .connect()
            .map_err(|e| format!("cannot connect to {}: {e}", reference.label()))?;
        let version = client
            .exchange(b"version\r\n", &End::Suffix(b"\r\n".to_vec()))
            .map_err(|e| format!("version: {e}"))?;
        Ok(Sentinel {
            request: b"version\r\n".to_vec(),
            reply: version.bytes,
        })
    }
}

/// How long a reply that one server completed may take on the other before it counts as
/// waiting: a loaded CI machine can stall one server past [`CASE_TIMEOUT`].
const GRACE: Duration = Duration::from_secs(3);

/// Sends one case plus the sentinel and reads the reply, sentinel removed.
fn exchange(client: &mut Client, request: &[u8], sentinel: &Sentinel) -> Result<Reply, String> {
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(&sentinel.request);
    let reply = client
        .exchange(&bytes, &End::Suffix(sentinel.reply.clone()))
        .map_err(|e| format!("exchange failed: {e}"))?;
    Ok(strip(reply, sentinel))
}

/// Reads on for [`GRACE`] after a reply that timed out.
fn settle(client: &mut Client, mut reply: Reply, sentinel: &Sentinel) -> Result<Reply, String> {
    let end = End::Suffix(sentinel.reply.clone());
    client.set_timeout(GRACE);
    let more = client
        .read_reply(&end, 0)
        .map_err(|e| format!("read failed: {e}"));
    client.set_timeout(CASE_TIMEOUT);
    let more = more?;
    reply.bytes.extend_from_slice(&more.bytes);
    reply.closed = more.closed;
    reply.timed_out = more.timed_out;
    Ok(strip(reply, sentinel))
}

fn strip(mut reply: Reply, sentinel: &Sentinel) -> Reply {
    if !reply.closed && !reply.timed_out && reply.bytes.ends_with(&sentinel.reply) {
        reply
            .bytes
            .truncate(reply.bytes.len() - sentinel.reply.len());
    }
    reply
}

/// Binary response packets, one `[opcode status key extras value cas]` each, CAS named by
/// identity; a run of successful STAT packets becomes `[stats]`.
pub fn render_binary(bytes: &[u8]) -> String {
    let mut names: HashMap<u64, usize> = HashMap::new();
    let mut out = String::new();
    let mut pos = 0;
    let mut in_stats = false;
    while pos + HEADER_LEN <= bytes.len() {
        let h = &bytes[pos..pos + HEADER_LEN];
        let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let extras_len = usize::from(h[4]);
        let status = u16::from_be_bytes([h[6], h[7]]);
        let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let cas = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let Some(packet_body) = bytes.get(pos + HEADER_LEN..pos + HEADER_LEN + body) else {
            break;
        };
        pos += HEADER_LEN + body;
        if h[1] == opcode::STAT && status == 0 {
            if !in_stats {
                out.push_str(&format!("[stats opaque={opaque:x}]"));
            }
            in_stats = true;
            continue;
        }
        in_stats = false;
        let cas = if cas == 0 {
            "0".to_string()
        } else {
            let next = names.len() + 1;
            format!("<cas{}>", names.entry(cas).or_insert(next))
        };
        let split = |from: usize, len: usize| {
            escape(packet_body.get(from..from + len).unwrap_or(b"<short>"))
        };
        out.push_str(&format!(
            "[{:#04x}{:02x} op={:02x} st={status} opaque={opaque:x} e={} k={} v={} cas={cas}]",
            h[0],
            h[5],
            h[1],
            split(0, extras_len),
            split(extras_len, key_len),
            escape(
                packet_body
                    .get(extras_len + key_len..)
                    .unwrap_or(b"<short>")
            ),
        ));
    }
    if pos < bytes.len() {
        out.push_str(&format!("<partial {}>", escape(&bytes[pos..])));
    }
    out
}

/// Names meta CAS values by identity, rounds TTLs up to 10 s and names non-zero access ages by
/// identity (the two servers' clocks tick at different moments).
#[derive(Debug, Default)]
struct MetaMasker {
    names: HashMap<Vec<u8>, usize>,
    ages: HashMap<Vec<u8>, usize>,
}

impl MetaMasker {
    fn name(&mut self, cas: &[u8]) -> String {
        let next = self.names.len() + 1;
        format!("<cas{}>", self.names.entry(cas.to_vec()).or_insert(next))
    }

    fn age(&mut self, age: &[u8]) -> String {
        if age == b"0" {
            return "0".into();
        }
        let next = self.ages.len() + 1;
        format!("<age{}>", self.ages.entry(age.to_vec()).or_insert(next))
    }

    fn mask(&mut self, reply: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(reply.len());
        let mut pos = 0;
        while pos < reply.len() {
            let Some(end) = reply[pos..].windows(2).position(|w| w == b"\r\n") else {
                out.extend_from_slice(&reply[pos..]);
                break;
            };
            let line = &reply[pos..pos + end];
            pos += end + 2;
            let mut tokens: Vec<Vec<u8>> = line.split(|&b| b == b' ').map(<[u8]>::to_vec).collect();
            let mut data = None;
            if matches!(
                tokens[0].as_slice(),
                b"HD" | b"VA" | b"EN" | b"NF" | b"NS" | b"EX"
            ) {
                if tokens[0] == b"VA" {
                    data = tokens.get(1).and_then(|t| parse_number(t));
                }
                for t in tokens.iter_mut().skip(1) {
                    let Some((&flag, arg)) = t.split_first() else {
                        continue;
                    };
                    let arg = arg.to_vec();
                    if flag == b'c' && arg != b"0" && parse_number(&arg).is_some() {
                        *t = format!("c{}", self.name(&arg)).into_bytes();
                    } else if flag == b't' {
                        if let Some(ttl) = parse_number(&arg) {
                            *t = format!("t{}", ttl.div_ceil(10) * 10).into_bytes();
                        }
                    } else if flag == b'l' && parse_number(&arg).is_some() {
                        *t = format!("l{}", self.age(&arg)).into_bytes();
                    }
                }
            }
            out.extend_from_slice(&tokens.join(&b' '));
            out.extend_from_slice(b"\r\n");
            if let Some(len) = data {
                if pos + len + 2 <= reply.len() {
                    out.extend_from_slice(&reply[pos..pos + len + 2]);
                    pos += len + 2;
                }
            }
        }
        out
    }
}

fn parse_number(token: &[u8]) -> Option<usize> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_a_function_of_seed_and_index() {
        for protocol in [Protocol::Text, Protocol::Meta, Protocol::Binary] {
            let a = protocol.case(&mut Rng::for_case(7, 3), "f3_", false);
            let b = protocol.case(&mut Rng::for_case(7, 3), "f3_", false);
            let c = protocol.case(&mut Rng::for_case(7, 4), "f4_", false);
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn binary_rendering_names_cas_and_folds_stats() {
        let mut reply = Vec::new();
        for (op, cas) in [(opcode::SET, 77u64), (opcode::GET, 77), (opcode::SET, 78)] {
            let mut p = binary_packet(op, &[], &[], &[], None, 1, cas);
            p[0] = 0x81;
            reply.extend(p);
        }
        for _ in 0..3 {
            let mut p = binary_packet(opcode::STAT, &[], b"pid", b"12", None, 2, 0);
            p[0] = 0x81;
            reply.extend(p);
        }
        let shown = render_binary(&reply);
        assert!(shown.contains("op=01 st=0 opaque=1 e= k= v= cas=<cas1>"));
        assert!(shown.contains("op=00 st=0 opaque=1 e= k= v= cas=<cas1>"));
        assert!(shown.contains("cas=<cas2>"));
        assert_eq!(shown.matches("[stats").count(), 1);
    }
}
