//! Invariants of `keepcached_protocol::parse_request` that must hold for any input bytes.
//!
//! [`check_text_request`] is the body of the `text_request` fuzz target (fuzz/, run with
//! cargo-fuzz on nightly) and is also driven here by a deterministic generator of valid,
//! mutated and random requests, so the workspace tests check the same properties on stable.
//! A violated invariant panics with the input escaped.

use keepcached_protocol::{parse_request, Incomplete, Invalid, Limits, Parsed, Request};

use crate::client::escape;

/// Limits small enough that generated inputs reach every limit branch.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_key_len: 250,
        item_size_max: 4096,
        max_line: 2048,
        max_multiget_line: 8192,
        ..Limits::default()
    }
}

/// Parses `input` with the default limits and with [`fuzz_limits`], and checks every invariant.
pub fn check_text_request(input: &[u8]) {
    check_with(input, &Limits::default());
    check_with(input, &fuzz_limits());
}

/// Parses the whole input the way a connection does (parse, advance by `consumed`, repeat) and
/// checks each step.
pub fn check_with(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while !rest.is_empty() {
        let result = parse_request(rest, limits);
        // The parser is a pure function of its input.
        assert_eq!(
            result,
            parse_request(rest, limits),
            "nondeterministic on {}",
            escape(rest)
        );
        match result {
            Err(Incomplete { needed }) => {
                if let Some(needed) = needed {
                    assert!(
                        needed > rest.len(),
                        "Incomplete needs {needed} bytes but {} are there: {}",
                        rest.len(),
                        escape(rest)
                    );
                }
                return;
            }
            Ok(parsed) => {
                check_parsed(rest, &parsed, limits);
                // What was consumed alone determines the outcome (a runaway line is judged by
                // its length, so it is exempt).
                if !matches!(parsed.outcome, Err(Invalid::Close)) {
                    let alone = parse_request(&rest[..parsed.consumed], limits);
                    assert_eq!(
                        alone.as_ref().map(|p| &p.outcome),
                        Ok(&parsed.outcome),
                        "the consumed bytes alone parse differently: {}",
                        escape(&rest[..parsed.consumed])
                    );
                }
                if matches!(parsed.outcome, Err(Invalid::Close)) {
                    return;
                }
                rest = &rest[parsed.consumed..];
            }
        }
    }
}

fn check_parsed(buf: &[u8], parsed: &Parsed<'_>, limits: &Limits) {
    let shown = || escape(&buf[..buf.len().min(300)]);
    assert!(parsed.consumed > 0, "no progress on {}", shown());
    assert!(
        parsed.consumed <= buf.len(),
        "consumed {} of {} bytes: {}",
        parsed.consumed,
        buf.len(),
        shown()
    );
    let key_ok = |key: &[u8]| {
        !key.is_empty()
            && key.len() <= limits.max_key_len
            && !key.iter().any(|&b| b == b' ' || b == b'\n' || b == 0)
    };
    match &parsed.outcome {
        Ok(Request::Get { keys, .. }) => {
            for key in keys.iter() {
                assert!(
                    key_ok(key),
                    "bad key {} accepted in {}",
                    escape(key),
                    shown()
                );
            }
        }
        Ok(Request::Store { key, data, .. }) => {
            assert!(
                key_ok(key),
                "bad key {} accepted in {}",
                escape(key),
                shown()
            );
            assert!(
                data.len() <= limits.item_size_max,
                "a {}-byte value passed the {}-byte item limit",
                data.len(),
                limits.item_size_max
            );
            // The value is taken from the buffer, right before the "\r\n" that ends the request.
            let start = (data.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
            assert!(
                start <= buf.len(),
                "the value is not inside the input buffer"
            );
            assert_eq!(
                start + data.len() + 2,
                parsed.consumed,
                "value and consumed length disagree: {}",
                shown()
            );
            assert_eq!(
                &buf[parsed.consumed - 2..parsed.consumed],
                b"\r\n",
                "a value accepted without its \\r\\n: {}",
                shown()
            );
        }
        Ok(Request::Delete { key, .. })
        | Ok(Request::Arith { key, .. })
        | Ok(Request::Touch { key, .. }) => {
            assert!(
                key_ok(key),
                "bad key {} accepted in {}",
                escape(key),
                shown()
            );
        }
        Err(Invalid::TooLarge { key, swallow, .. }) => {
            assert!(
                key_ok(key),
                "bad key {} in a too-large store: {}",
                escape(key),
                shown()
            );
            assert!(
                *swallow >= 2,
                "a too-large store swallows {swallow} bytes: {}",
                shown()
            );
        }
        _ => {}
    }
    // Everything but a runaway line and a data block is one line: it ends at the first '\n'.
    if !matches!(
        parsed.outcome,
        Ok(Request::Store { .. }) | Err(Invalid::Close) | Err(Invalid::TooLarge { .. })
    ) {
        let newline = buf.iter().position(|&b| b == b'\n');
        let line_end = newline.map(|n| n + 1);
        let with_data = matches!(
            parsed.outcome,
            Err(Invalid::Reply { .. }) if line_end.is_some_and(|end| parsed.consumed > end)
        );
        if !with_data {
            assert_eq!(
                Some(parsed.consumed),
                line_end,
                "a one-line request consumed past or short of its line: {}",
                shown()
            );
        }
    }
}

/// A deterministic input generator (xorshift), so a failure reproduces from its seed.
#[derive(Debug)]
pub struct Generator(u64);

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A key: usually short, sometimes at or past the 250-byte limit, sometimes with odd bytes.
    fn key(&mut self) -> Vec<u8> {
        match self.below(10) {
            0 => vec![b'k'; 249 + self.below(3)],
            1 => vec![b'a', self.below(32) as u8, b'b'],
            _ => format!("k{}", self.below(5)).into_bytes(),
        }
    }

    fn number(&mut self) -> String {
        self.pick(&[
            "0",
            "1",
            "100",
            "-1",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "abc",
            "1x",
            "2147483647",
            "-2147483649",
            "",
        ])
        .to_string()
    }

    /// One plausible request, valid or slightly off.
    pub fn request(&mut self) -> Vec<u8> {
        let key = self.key();
        let mut out = Vec::new();
        match self.below(9) {
            0..=2 => {
                let cmd = self.pick(&["set", "add", "replace", "append", "prepend", "cas"]);
                let len = match self.below(6) {
                    0 => 5000,
                    1 => self.below(20),
                    _ => self.below(8),
                };
                let announced = match self.below(8) {
                    0 => self.number(),
                    _ => len.to_string(),
                };
                out.extend_from_slice(cmd.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&key);
                let flags = self.number();
                let exptime = self.number();
                out.extend_from_slice(format!(" {flags} {exptime} {announced}").as_bytes());
                if cmd == "cas" {
                    out.extend_from_slice(format!(" {}", self.number()).as_bytes());
                }
                if self.below(3) == 0 {
                    out.extend_from_slice(b" noreply");
                }
                out.extend_from_slice(b"\r\n");
                out.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                out.extend_from_slice(self.pick(&["\r\n", "\r\n", "\n", "xx", ""]).as_bytes());
            }
            3 => {
                let cmd = self.pick(&["get", "gets", "gat 10", "gats -1"]);
                out.extend_from_slice(cmd.as_bytes());
                for _ in 0..self.below(30) {
                    out.push(b' ');
                    out.extend(self.key());
                }
                out.extend_from_slice(b"\r\n");
            }
            4 => {
                let cmd = self.pick(&["incr", "decr", "touch", "delete"]);
                out.extend_from_slice(cmd.as_bytes());
                out.push(b' ');
                out.extend(key);
                out.extend_from_slice(format!(" {}", self.number()).as_bytes());
                out.extend_from_slice(
                    self.pick(&["", " noreply", " 0 noreply", " x y"])
                        .as_bytes(),
                );
                out.extend_from_slice(b"\r\n");
            }
            5 => {
                let line = self.pick(&[
                    "flush_all",
                    "flush_all 10",
                    "flush_all -1 noreply",
                    "flush_all abc",
                    "version",
                    "verbosity 1",
                    "verbosity",
                    "quit",
                    "shutdown",
                    "shutdown graceful",
                    "cache_memlimit 100",
                    "cache_memlimit abc",
                    "stats",
                    "stats settings",
                    "stats reset",
                    "lru_crawler metadump all",
                    "mn",
                    "",
                    " ",
                    "GET / HTTP/1.1",
                ]);
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            6 => out.extend((0..self.below(3000)).map(|_| b'x')),
            7 => {
                out.extend_from_slice(b"get ");
                out.extend(
                    (0..2100 + self.below(8000)).map(|i| if i % 7 == 0 { b' ' } else { b'k' }),
                );
                if self.below(2) == 0 {
                    out.extend_from_slice(b"\r\n");
                }
            }
            _ => out.extend((0..self.below(64)).map(|_| self.next() as u8)),
        }
        out
    }

    /// A pipeline of requests with occasional corruption: a flipped byte, a cut, an insertion.
    pub fn input(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..1 + self.below(4) {
            out.extend(self.request());
        }
        for _ in 0..self.below(3) {
            if out.is_empty() {
                break;
            }
            let at = self.below(out.len());
            match self.below(3) {
                0 => out[at] = self.next() as u8,
                1 => out.truncate(at),
                _ => out.insert(at, self.pick(&["\r", "\n", " ", "\0"]).as_bytes()[0]),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_invariants_hold_on_generated_inputs() {
        let mut generator = Generator::new(0x5eed_1234_abcd_0001);
        for _ in 0..5_000 {
            let input = generator.input();
            check_text_request(&input);
            // Every prefix too: that is what a connection sees while bytes trickle in.
            for cut in [
                input.len() / 3,
                input.len() / 2,
                input.len().saturating_sub(1),
            ] {
                check_text_request(&input[..cut]);
            }
        }
    }
}
