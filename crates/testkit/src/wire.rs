//! Differential wire tables: the same request bytes sent to Debian's memcached (the reference)
//! and to keepcached (the subject), replies compared byte for byte after masking.
//!
//! A table is a list of [`Group`]s; a group names the server flags both servers get, and holds
//! [`Case`]s. A case is one or more steps of request bytes, each with the reply memcached is
//! documented to give. The runner checks two things and reports every failure, not the first:
//! 1. memcached's reply equals the documented one (so the table is true documentation);
//! 2. keepcached's reply equals memcached's.
//!
//! Isolation: unless a group shares one connection, each case gets a new connection and starts
//! with `flush_all`, so no case sees another's keys. Requests may use placeholders resolved per
//! server: `{cas}` (the last CAS value this case's replies showed) and `{unix+N}` / `{unix-N}`
//! (the current unix time plus or minus N seconds, for absolute expiry times).
//!
//! Tables for other protocols (meta, later) reuse [`run`] with their own cases.

use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::{escape, End};
use crate::mask::{mask_metadump, mask_stats, CasMasker};
use crate::process::{keepcached_server, memcached, ServerProcess};

/// How a case's replies are masked before comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// CAS numbers of VALUE lines are renamed by identity (the default).
    Cas,
    /// A stats reply: varying values masked; with a list, only those stats kept.
    Stats(Option<&'static [&'static str]>),
    /// An `lru_crawler metadump` reply: see [`mask_metadump`].
    Metadump,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub request: Vec<u8>,
    pub expect: Vec<u8>,
    pub end: End,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
    pub mask: Mask,
}

impl Case {
    /// One request and memcached's documented (masked) reply to it.
    pub fn new(
        name: impl Into<String>,
        request: impl AsRef<[u8]>,
        expect: impl AsRef<[u8]>,
    ) -> Case {
        Case {
            name: name.into(),
            steps: vec![Step {
                request: request.as_ref().to_vec(),
                expect: expect.as_ref().to_vec(),
                end: End::Sentinel,
            }],
            mask: Mask::Cas,
        }
    }

    /// A further request on the same connection (a new one if the previous step closed it).
    pub fn then(mut self, request: impl AsRef<[u8]>, expect: impl AsRef<[u8]>) -> Case {
        self.steps.push(Step {
            request: request.as_ref().to_vec(),
            expect: expect.as_ref().to_vec(),
            end: End::Sentinel,
        });
        self
    }

    /// How the last step's reply ends (default: the sentinel).
    pub fn ending(mut self, end: End) -> Case {
        if let Some(step) = self.steps.last_mut() {
            step.end = end;
        }
        self
    }

    pub fn masked(mut self, mask: Mask) -> Case {
        self.mask = mask;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    /// Extra server flags, after `-u root -l 127.0.0.1 -p PORT -U 0`.
    pub flags: Vec<String>,
    pub cases: Vec<Case>,
    /// All cases on one connection, in order, without the per-case flush (for sequences such
    /// as counters in stats that must see everything before them).
    pub shared_connection: bool,
}

impl Group {
    pub fn new(name: impl Into<String>, flags: &[&str], cases: Vec<Case>) -> Group {
        Group {
            name: name.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            cases,
            shared_connection: false,
        }
    }

    pub fn shared(mut self) -> Group {
        self.shared_connection = true;
        self
    }
}

/// Starts a server with the given extra flags.
type Spawn = Box<dyn Fn(&[&str]) -> io::Result<ServerProcess> + Send + Sync>;

/// A server implementation the table can be run against.
pub struct Target {
    pub label: String,
    spawn: Spawn,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("label", &self.label)
            .finish()
    }
}

impl Target {
    pub fn memcached() -> Target {
        Target {
            label: "memcached".into(),
            spawn: Box::new(memcached),
        }
    }

    pub fn keepcached(bin: impl Into<PathBuf>) -> Target {
        let bin = bin.into();
        Target {
            label: "keepcached".into(),
            spawn: Box::new(move |flags| keepcached_server(&bin, flags)),
        }
    }

    /// Starts this server with `flags` after `-u root -l 127.0.0.1 -p PORT -U 0`.
    pub fn start(&self, flags: &[&str]) -> io::Result<ServerProcess> {
        (self.spawn)(flags)
    }

    /// keepcached, unless KEEPCACHED_DIFF_SUBJECT=memcached asks to run the table against
    /// memcached on both sides: that shows whether a new table is deterministic and its masking
    /// sufficient before our server is blamed for a difference.
    pub fn subject_from_env(bin: impl Into<PathBuf>) -> Target {
        match std::env::var("KEEPCACHED_DIFF_SUBJECT").as_deref() {
            Ok("memcached") => Target {
                label: "memcached (as subject)".into(),
                spawn: Box::new(memcached),
            },
            _ => Target::keepcached(bin),
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub cases: usize,
    pub steps: usize,
    /// memcached's reply differed from the table's documentation.
    pub reference_mismatches: Vec<String>,
    /// keepcached's reply differed from memcached's.
    pub subject_mismatches: Vec<String>,
}

impl Outcome {
    /// Panics with every mismatch listed, if there is any.
    pub fn assert_clean(&self, table: &str) {
        let total = self.reference_mismatches.len() + self.subject_mismatches.len();
        eprintln!(
            "{table}: {} cases, {} steps, {} reference mismatches, {} subject mismatches",
            self.cases,
            self.steps,
            self.reference_mismatches.len(),
            self.subject_mismatches.len()
        );
        if total == 0 {
            return;
        }
        let mut msg = String::new();
        if !self.reference_mismatches.is_empty() {
            msg.push_str(&format!(
                "\n== {} cases where memcached does not give the documented reply (fix the table) ==\n",
                self.reference_mismatches.len()
            ));
            for m in &self.reference_mismatches {
                msg.push_str(m);
            }
        }
        if !self.subject_mismatches.is_empty() {
            msg.push_str(&format!(
                "\n== {} cases where keepcached differs from memcached ==\n",
                self.subject_mismatches.len()
            ));
            for m in &self.subject_mismatches {
                msg.push_str(m);
            }
        }
        eprintln!("{msg}");
        panic!("{table}: {total} mismatches (listed above)");
    }
}

/// Runs every group against both targets (the two servers of a group run concurrently) and
/// collects every difference.
pub fn run(groups: &[Group], reference: &Target, subject: &Target) -> Outcome {
    let mut outcome = Outcome::default();
    for group in groups {
        outcome.cases += group.cases.len();
        outcome.steps += group.cases.iter().map(|c| c.steps.len()).sum::<usize>();
        let (ref_result, sub_result) = thread::scope(|s| {
            let r = s.spawn(|| play(group, reference));
            let t = s.spawn(|| play(group, subject));
            (
                r.join().unwrap_or_else(|_| Err("runner panicked".into())),
                t.join().unwrap_or_else(|_| Err("runner panicked".into())),
            )
        });
        let (ref_replies, sub_replies) = match (ref_result, sub_result) {
            (Ok(r), Ok(s)) => (r, s),
            (r, s) => {
                if let Err(e) = r {
                    outcome
                        .reference_mismatches
                        .push(format!("[{}] {}: {e}\n", group.name, reference.label));
                }
                if let Err(e) = s {
                    outcome
                        .subject_mismatches
                        .push(format!("[{}] {}: {e}\n", group.name, subject.label));
                }
                continue;
            }
        };
        for (i, case) in group.cases.iter().enumerate() {
            let request = case
                .steps
                .iter()
                .map(|s| escape(&s.request))
                .collect::<Vec<_>>()
                .join(" | ");
            let expected = case
                .steps
                .iter()
                .map(|s| escape(&s.expect))
                .collect::<Vec<_>>()
                .join(" | ");
            let got_ref = ref_replies[i].join(" | ");
            let got_sub = sub_replies[i].join(" | ");
            let title = format!("[{}] {}", group.name, case.name);
            if got_ref != expected {
                outcome.reference_mismatches.push(format!(
                    "{title}\n  request:    {request}\n  documented: {expected}\n  {}: {got_ref}\n",
                    reference.label
                ));
            }
            if got_sub != got_ref {
                outcome.subject_mismatches.push(format!(
                    "{title}\n  request:    {request}\n  {}: {got_ref}\n  {}: {got_sub}\n",
                    reference.label, subject.label
                ));
            }
        }
    }
    outcome
}

/// Plays a group against one target: for each case, the rendered masked reply of each step.
fn play(group: &Group, target: &Target) -> Result<Vec<Vec<String>>, String> {
    let flags: Vec<&str> = group.flags.iter().map(String::as_str).collect();
    let mut server = target
        .start(&flags)
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut shared = None;
    let mut results = Vec::with_capacity(group.cases.len());
    for case in &group.cases {
        let mut rendered = Vec::with_capacity(case.steps.len());
        let mut masker = CasMasker::default();
        let mut conn = match shared.take() {
            Some(c) => Some(c),
            None => Some(open(&server, !group.shared_connection)?),
        };
        for step in &case.steps {
            let client = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(open(&server, false)?),
            };
            let request = substitute(&step.request, masker.last.as_deref());
            let reply = client
                .exchange(&request, &step.end)
                .map_err(|e| format!("case {}: {e}", case.name))?;
            let masked = match case.mask {
                Mask::Cas => masker.mask(&reply.bytes),
                Mask::Stats(keep) => mask_stats(&reply.bytes, keep),
                Mask::Metadump => mask_metadump(&reply.bytes),
            };
            let masked_reply = crate::client::Reply {
                bytes: masked,
                ..reply.clone()
            };
            rendered.push(masked_reply.render(&step.end));
            if reply.closed || reply.timed_out {
                conn = None;
            }
        }
        if group.shared_connection {
            shared = conn;
        }
        results.push(rendered);
    }
    if !server.is_running() {
        return Err(format!(
            "{} exited during the group; its output:\n{}",
            server.label(),
            server.log_text()
        ));
    }
    Ok(results)
}

/// A new connection; with `flush`, the cache is emptied first so the case starts clean.
fn open(server: &ServerProcess, flush: bool) -> Result<crate::client::Client, String> {
    let mut client = server
        .connect()
        .map_err(|e| format!("cannot connect to {}: {e}", server.label()))?;
    if flush {
        let reply = client
            .call("flush_all\r\n")
            .map_err(|e| format!("flush_all before a case: {e}"))?;
        if reply != "OK\r\n" {
            return Err(format!(
                "flush_all before a case answered {}",
                escape(reply.as_bytes())
            ));
        }
    }
    Ok(client)
}

/// Resolves `{cas}`, `{unix+N}` and `{unix-N}` in a request.
fn substitute(request: &[u8], cas: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(request.len());
    let mut rest = request;
    while let Some(start) = rest.iter().position(|&b| b == b'{') {
        out.extend_from_slice(&rest[..start]);
        let tail = &rest[start..];
        let close = tail.iter().position(|&b| b == b'}');
        let replaced = close.and_then(|end| {
            let inner = std::str::from_utf8(&tail[1..end]).ok()?;
            resolve(inner, cas).map(|v| (v, end + 1))
        });
        match replaced {
            Some((value, used)) => {
                out.extend_from_slice(&value);
                rest = &tail[used..];
            }
            None => {
                out.push(b'{');
                rest = &tail[1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

fn resolve(placeholder: &str, cas: Option<&[u8]>) -> Option<Vec<u8>> {
    if placeholder == "cas" {
        // No CAS seen yet (a bug in the server under test): a value no server hands out.
        return Some(cas.unwrap_or(b"18446744073709551615").to_vec());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let value = if let Some(n) = placeholder.strip_prefix("unix+") {
        now + n.parse::<i64>().ok()?
    } else if let Some(n) = placeholder.strip_prefix("unix-") {
        now - n.parse::<i64>().ok()?
    } else {
        return None;
    };
    Some(value.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_resolve_and_other_braces_stay() {
        assert_eq!(
            substitute(b"cas k 0 0 1 {cas}\r\n", Some(b"42")),
            b"cas k 0 0 1 42\r\n"
        );
        assert_eq!(substitute(b"set {x} {", None), b"set {x} {");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let got = String::from_utf8(substitute(b"{unix+100}", None)).unwrap();
        let t: u64 = got.parse().unwrap();
        assert!(t >= now + 100 && t <= now + 102);
    }
}
