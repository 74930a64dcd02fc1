//! Blank out reply values that legitimately differ between two correct servers.
//!
//! CAS numbers are each server's own counter: only which replies share a CAS matters, so the
//! n-th distinct CAS seen in a case becomes `<casN>` (a changed item gets a new name, an
//! unchanged one keeps its name). Statistics that depend on the process or the clock (pid,
//! uptime, time, rusage, ...) become `<masked>`; `bytes` depends on each engine's per-item
//! overhead, so only whether it is zero is kept.

use std::collections::HashMap;

/// Stats whose values depend on the process, the clock or the engine's internals.
pub const VARYING_STATS: &[&str] = &[
    "pid",
    "uptime",
    "time",
    "rusage_user",
    "rusage_system",
    "libevent",
    "pointer_size",
    "hash_bytes",
    "hash_power_level",
    "total_malloced",
    "slab_global_page_pool",
    "lru_crawler_starts",
    "lru_maintainer_juggles",
    "time_in_listen_disabled_us",
    "log_worker_dropped",
    "log_worker_written",
    "log_watcher_skipped",
    "log_watcher_sent",
    "log_watchers",
    "reserved_fds",
    "tcpport",
    "connection_structures",
    "response_obj_bytes",
    "read_buf_bytes",
    "read_buf_bytes_free",
];

/// Names CAS values consistently across all replies of one case.
#[derive(Debug, Default)]
pub struct CasMasker {
    names: HashMap<Vec<u8>, usize>,
    /// The last CAS value seen, raw: what `{cas}` in a later request stands for.
    pub last: Option<Vec<u8>>,
}

impl CasMasker {
    /// Replaces the CAS field of every `VALUE key flags bytes cas` line. Data blocks are skipped
    /// by their declared length, so a value that looks like a VALUE line is left alone.
    pub fn mask(&mut self, reply: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(reply.len());
        let mut pos = 0;
        while pos < reply.len() {
            let line_end = match find_crlf(&reply[pos..]) {
                Some(i) => pos + i + 2,
                None => {
                    out.extend_from_slice(&reply[pos..]);
                    break;
                }
            };
            let line = &reply[pos..line_end - 2];
            let tokens: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let data_len = if tokens.first() == Some(&b"VALUE".as_slice()) && tokens.len() >= 4 {
                parse_usize(tokens[3])
            } else {
                None
            };
            match data_len {
                Some(len) if line_end + len + 2 <= reply.len() => {
                    // CAS 0 is not a counter value but "no CAS" (-C): it is compared as is.
                    if tokens.len() == 5 && tokens[4] != b"0" {
                        let name = self.name(tokens[4]);
                        out.extend_from_slice(&tokens[..4].join(&b' '));
                        out.extend_from_slice(format!(" <cas{name}>\r\n").as_bytes());
                    } else {
                        out.extend_from_slice(&reply[pos..line_end]);
                    }
                    out.extend_from_slice(&reply[line_end..line_end + len + 2]);
                    pos = line_end + len + 2;
                }
                _ => {
                    out.extend_from_slice(&reply[pos..line_end]);
                    pos = line_end;
                }
            }
        }
        out
    }

    fn name(&mut self, cas: &[u8]) -> usize {
        self.last = Some(cas.to_vec());
        let next = self.names.len() + 1;
        *self.names.entry(cas.to_vec()).or_insert(next)
    }
}

/// Masks the varying values of `STAT name value` lines. With `keep`, only the named stats are
/// kept (in the order the server printed them): the fields clients rely on, not every internal
/// counter of memcached's engine.
pub fn mask_stats(reply: &[u8], keep: Option<&[&str]>) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        let mut parts = line.trim_end_matches("\r\n").splitn(3, ' ');
        let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            out.push_str(line);
            continue;
        };
        if keep.is_some_and(|keep| !keep.contains(&name)) {
            continue;
        }
        let value = if VARYING_STATS.contains(&name) {
            "<masked>"
        } else if name == "bytes" {
            if value == "0" {
                "0"
            } else {
                "<nonzero>"
            }
        } else {
            value
        };
        out.push_str(&format!("STAT {name} {value}\r\n"));
    }
    out.into_bytes()
}

/// Reduces `lru_crawler metadump` lines (`key=K exp=E la=T cas=C fetch=F cls=N size=S\n`) to
/// what two engines share: the key, whether it expires (`exp=-1` or `exp=<time>`: the time is
/// each server's clock) and whether it was fetched. The access time, CAS, slab class and size
/// belong to the engine, and the dump's order is the order of its LRU, so lines are sorted.
pub fn mask_metadump(reply: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    let mut items = Vec::new();
    let mut rest = String::new();
    for line in text.split_inclusive('\n') {
        if !line.starts_with("key=") {
            rest.push_str(line);
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or("<missing>")
                .to_string()
        };
        let exp = match field("exp=").as_str() {
            "-1" => "-1".to_string(),
            "<missing>" => "<missing>".to_string(),
            _ => "<time>".to_string(),
        };
        let end = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
        items.push(format!(
            "key={} exp={exp} fetch={}{end}",
            field("key="),
            field("fetch=")
        ));
    }
    items.sort();
    let mut out = items.concat();
    out.push_str(&rest);
    out.into_bytes()
}

/// Parses a stats reply into (name, value) pairs.
pub fn parse_stats(reply: &str) -> Vec<(String, String)> {
    reply
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(name), Some(value)) => Some((name.into(), value.into())),
                _ => None,
            }
        })
        .collect()
}

/// One stat as a number; `None` when absent or not a number.
pub fn stat_u64(reply: &str, name: &str) -> Option<u64> {
    parse_stats(reply)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn parse_usize(token: &[u8]) -> Option<usize> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_names_follow_identity() {
        let mut m = CasMasker::default();
        let a = m.mask(b"VALUE k 0 1 17\r\na\r\nVALUE j 0 1 18\r\nb\r\nEND\r\n");
        assert_eq!(
            a,
            b"VALUE k 0 1 <cas1>\r\na\r\nVALUE j 0 1 <cas2>\r\nb\r\nEND\r\n"
        );
        assert_eq!(
            m.mask(b"VALUE k 0 1 17\r\na\r\nEND\r\n"),
            b"VALUE k 0 1 <cas1>\r\na\r\nEND\r\n"
        );
        assert_eq!(m.last.as_deref(), Some(b"17".as_slice()));
    }

    #[test]
    fn data_that_looks_like_a_value_line_is_kept() {
        let mut m = CasMasker::default();
        let reply = b"VALUE k 0 16 5\r\nVALUE x 0 1 99\r\n\r\nEND\r\n";
        assert_eq!(
            m.mask(reply),
            b"VALUE k 0 16 <cas1>\r\nVALUE x 0 1 99\r\n\r\nEND\r\n"
        );
    }

    #[test]
    fn get_replies_are_untouched() {
        let mut m = CasMasker::default();
        let reply = b"VALUE k 5 2\r\nab\r\nEND\r\n";
        assert_eq!(m.mask(reply), reply);
    }

    #[test]
    fn stats_are_masked_and_projected() {
        let reply = b"STAT pid 12\r\nSTAT cmd_get 3\r\nSTAT bytes 70\r\nSTAT other 1\r\nEND\r\n";
        assert_eq!(
            mask_stats(reply, Some(&["pid", "cmd_get", "bytes"])),
            b"STAT pid <masked>\r\nSTAT cmd_get 3\r\nSTAT bytes <nonzero>\r\nEND\r\n"
        );
        assert_eq!(stat_u64("STAT cmd_get 3\r\nEND\r\n", "cmd_get"), Some(3));
    }
}
