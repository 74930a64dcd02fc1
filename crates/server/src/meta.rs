//! The meta commands against the store: `mg`, `ms`, `md`, `ma`, `me`, `mn`.
//!
//! A reply is a two-letter code (`VA`/`HD`/`EN`/`NF`/`NS`/`EX`/`MN`/`ME`) followed by the
//! return flags the request asked for, in the order it named them, as memcached 1.6.18 writes
//! them. Quiet mode (`q`) leaves out only the nominal reply (a miss for mg, success for
//! ms/md/ma); errors are always sent.
//!
//! The store does not yet keep the per-item state some flags need (see docs/meta.md,
//! "Differences from memcached"): whether an item was fetched and when it was last accessed
//! (`h`, `l`), the stale and win-token bits (`N`, `R`, `I` and the `W`/`X`/`Z` reply flags), and
//! which keys were stored in base64. Those flags are accepted; `h` and `l` answer 0, a vivifying
//! miss answers `EN`, `md I` deletes instead of marking stale, and no win token is handed out.
//! Compare-and-act for md, ma and ms append/prepend, and the CAS that ms and ma return, are
//! read and acted on in two steps of the store rather than one.

use keepcached_cache::{memcached_size, DeltaResult, ItemView, Lookup, StoreMode, StoreResult};
use keepcached_protocol::meta::{
    encode_base64, MetaCommand, MetaKey, MetaReject, MetaRequest, SetMode,
};
use keepcached_protocol::reply;

use crate::execute::{Next, Session};

/// Appends ` <flag><number>`.
fn flag_number(out: &mut Vec<u8>, flag: u8, n: impl itoa::Integer) {
    let mut num = itoa::Buffer::new();
    out.push(b' ');
    out.push(flag);
    out.extend_from_slice(num.format(n).as_bytes());
}

/// Appends ` k<key>`, in base64 with ` b` after it when the client sent it so.
fn flag_key(out: &mut Vec<u8>, key: &MetaKey<'_>) {
    out.extend_from_slice(b" k");
    if key.is_binary() {
        encode_base64(out, key.as_bytes());
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key.as_bytes());
    }
}

/// Appends the O and k flags of a request, the only ones a reply without an item carries.
fn opaque_and_key(out: &mut Vec<u8>, request: &MetaRequest<'_>) {
    for flag in request.flags() {
        match flag[0] {
            b'O' => {
                out.push(b' ');
                out.extend_from_slice(flag);
            }
            b'k' => flag_key(out, &request.key),
            _ => {}
        }
    }
}

/// Seconds left to live as memcached prints them: -1 for never, otherwise the unsigned
/// difference (which wraps for an item a `T-1` has just expired).
fn ttl_left(exptime: u32, now: u32) -> i64 {
    if exptime == 0 {
        -1
    } else {
        i64::from(exptime.wrapping_sub(now))
    }
}

impl Session<'_> {
    /// Answers a meta request that did not parse.
    pub fn meta_reject(&mut self, reject: MetaReject<'_>) -> Next {
        reply::line(self.out, reject.error.as_str().as_bytes());
        if let Some(key) = reject.unlink {
            self.counters.store_too_large += 1;
            self.server
                .cache
                .delete(key.as_bytes(), self.server.clock.now());
        }
        if reject.swallow > 0 {
            Next::Swallow(reject.swallow)
        } else {
            Next::Continue
        }
    }

    pub fn execute_meta(&mut self, request: MetaRequest<'_>) -> Next {
        match request.command {
            MetaCommand::Get => self.meta_get(&request),
            MetaCommand::Set => self.meta_set(&request),
            MetaCommand::Delete => self.meta_delete(&request),
            MetaCommand::Arith => self.meta_arith(&request),
            MetaCommand::Debug => self.meta_debug(&request),
            MetaCommand::Noop => self.out.extend_from_slice(reply::MN),
        }
        Next::Continue
    }

    fn meta_get(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let key = request.key.as_bytes();
        let out = &mut *self.out;
        let write = |item: ItemView<'_>| {
            if request.options.value {
                out.extend_from_slice(b"VA ");
                out.extend_from_slice(itoa::Buffer::new().format(item.value.len()).as_bytes());
            } else {
                out.extend_from_slice(b"HD");
            }
            for flag in request.flags() {
                match flag[0] {
                    b's' => flag_number(out, b's', item.value.len()),
                    b't' => flag_number(out, b't', ttl_left(item.exptime, now)),
                    b'c' => flag_number(out, b'c', item.cas),
                    b'f' => flag_number(out, b'f', item.flags),
                    b'l' => out.extend_from_slice(b" l0"),
                    b'h' => out.extend_from_slice(b" h0"),
                    b'O' => {
                        out.push(b' ');
                        out.extend_from_slice(flag);
                    }
                    b'k' => flag_key(out, &request.key),
                    _ => {}
                }
            }
            out.extend_from_slice(b"\r\n");
            if request.options.value {
                out.extend_from_slice(item.value);
                out.extend_from_slice(b"\r\n");
            }
        };
        let touch = request.options.ttl.map(|t| server.clock.exptime(t));
        let lookup = match touch {
            Some(exptime) => server.cache.get_and_touch(key, exptime, now, write),
            None => server.cache.get(key, now, write),
        };
        let counters = &mut *self.counters;
        match lookup {
            Lookup::Expired => counters.get_expired += 1,
            Lookup::Flushed => counters.get_flushed += 1,
            Lookup::Hit(()) | Lookup::Miss => {}
        }
        let hit = lookup.is_hit();
        if touch.is_some() {
            counters.cmd_touch += 1;
            if hit {
                counters.touch_hits += 1;
            } else {
                counters.touch_misses += 1;
            }
        } else {
            counters.cmd_get += 1;
            if hit {
                counters.get_hits += 1;
            } else {
                counters.get_misses += 1;
            }
        }
        if !hit && !request.options.quiet {
            self.out.extend_from_slice(b"EN");
            opaque_and_key(self.out, request);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// The CAS of a key's live item, read without changing it.
    fn current_cas(&self, key: &[u8], now: u32) -> Option<u64> {
        self.server.cache.get(key, now, |item| item.cas).hit()
    }

    fn meta_set(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let key = request.key.as_bytes();
        let opts = &request.options;
        self.counters.cmd_set += 1;
        let cas = opts.compare_cas;
        // memcached: a CAS turns set and replace into a compare-and-swap, is ignored by add,
        // and makes append/prepend check it when it is not 0.
        let mode = match (request.set_mode, cas) {
            (SetMode::Set | SetMode::Replace, Some(c)) => StoreMode::Cas(c),
            (SetMode::Set, None) => StoreMode::Set,
            (SetMode::Replace, None) => StoreMode::Replace,
            (SetMode::Add, _) => StoreMode::Add,
            (SetMode::Append, _) => StoreMode::Append,
            (SetMode::Prepend, _) => StoreMode::Prepend,
        };
        let stale_cas = match (mode, cas) {
            (StoreMode::Append | StoreMode::Prepend, Some(c)) if c != 0 => self
                .current_cas(key, now)
                .is_some_and(|current| current != c),
            _ => false,
        };
        let exptime = opts.ttl.map_or(0, |t| server.clock.exptime(t));
        let result = if stale_cas {
            StoreResult::Exists
        } else {
            server
                .cache
                .store(mode, key, opts.client_flags, exptime, request.data, now)
        };
        if let StoreMode::Cas(_) = mode {
            match result {
                StoreResult::Stored => self.counters.cas_hits += 1,
                StoreResult::Exists => self.counters.cas_badval += 1,
                StoreResult::NotFound => self.counters.cas_misses += 1,
                _ => {}
            }
        }
        let code: &[u8] = match result {
            StoreResult::Stored if opts.quiet => return,
            StoreResult::Stored => b"HD",
            StoreResult::NotStored => b"NS",
            StoreResult::Exists => b"EX",
            StoreResult::NotFound => b"NF",
            StoreResult::TooLarge => {
                self.counters.store_too_large += 1;
                self.out.extend_from_slice(reply::TOO_LARGE);
                return;
            }
            StoreResult::OutOfMemory => {
                self.counters.store_no_memory += 1;
                self.out.extend_from_slice(reply::OUT_OF_MEMORY_STORING);
                return;
            }
        };
        let stored_cas = if result == StoreResult::Stored {
            self.current_cas(key, now).unwrap_or(0)
        } else {
            0
        };
        self.out.extend_from_slice(code);
        for flag in request.flags() {
            match flag[0] {
                b'O' => {
                    self.out.push(b' ');
                    self.out.extend_from_slice(flag);
                }
                b'k' => flag_key(self.out, &request.key),
                b'c' => flag_number(self.out, b'c', stored_cas),
                _ => {}
            }
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn meta_delete(&mut self, request: &MetaRequest<'_>) {
        let now = self.server.clock.now();
        let key = request.key.as_bytes();
        let code: &[u8] = match request.options.compare_cas {
            Some(c)
                if self
                    .current_cas(key, now)
                    .is_some_and(|current| current != c) =>
            {
                self.counters.delete_misses += 1;
                b"EX"
            }
            _ => {
                if self.server.cache.delete(key, now) {
                    self.counters.delete_hits += 1;
                    if request.options.quiet {
                        return;
                    }
                    b"HD"
                } else {
                    self.counters.delete_misses += 1;
                    b"NF"
                }
            }
        };
        self.out.extend_from_slice(code);
        opaque_and_key(self.out, request);
        self.out.extend_from_slice(b"\r\n");
    }

    fn meta_arith(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let key = request.key.as_bytes();
        let opts = &request.options;
        if let Some(c) = opts.compare_cas {
            if self
                .current_cas(key, now)
                .is_some_and(|current| current != c)
            {
                self.out.extend_from_slice(b"EX");
                opaque_and_key(self.out, request);
                self.out.extend_from_slice(b"\r\n");
                return;
            }
        }
        let value = match server.cache.incr_decr(key, request.incr, opts.delta, now) {
            DeltaResult::Value(v) => {
                if request.incr {
                    self.counters.incr_hits += 1;
                } else {
                    self.counters.decr_hits += 1;
                }
                v
            }
            DeltaResult::NonNumeric => {
                self.out.extend_from_slice(reply::NON_NUMERIC);
                return;
            }
            DeltaResult::OutOfMemory => {
                self.out.extend_from_slice(reply::OUT_OF_MEMORY);
                return;
            }
            DeltaResult::NotFound => match opts.vivify {
                Some(ttl) => {
                    let digits = itoa::Buffer::new().format(opts.initial).to_owned();
                    let exptime = server.clock.exptime(ttl);
                    let stored =
                        server
                            .cache
                            .store(StoreMode::Add, key, 0, exptime, digits.as_bytes(), now);
                    if stored != StoreResult::Stored {
                        self.out.extend_from_slice(b"NS\r\n");
                        return;
                    }
                    opts.initial
                }
                None => {
                    if request.incr {
                        self.counters.incr_misses += 1;
                    } else {
                        self.counters.decr_misses += 1;
                    }
                    self.out.extend_from_slice(b"NF");
                    opaque_and_key(self.out, request);
                    self.out.extend_from_slice(b"\r\n");
                    return;
                }
            },
        };
        if let Some(ttl) = opts.ttl {
            server.cache.touch(key, server.clock.exptime(ttl), now);
        }
        if opts.quiet {
            return;
        }
        let (cas, exptime) = server
            .cache
            .get(key, now, |item| (item.cas, item.exptime))
            .hit()
            .unwrap_or((0, 0));
        let mut num = itoa::Buffer::new();
        let digits = num.format(value);
        let out = &mut *self.out;
        if opts.value {
            out.extend_from_slice(b"VA ");
            out.extend_from_slice(itoa::Buffer::new().format(digits.len()).as_bytes());
        } else {
            out.extend_from_slice(b"HD");
        }
        for flag in request.flags() {
            match flag[0] {
                b'c' => flag_number(out, b'c', cas),
                b't' => flag_number(out, b't', ttl_left(exptime, now)),
                b'O' => {
                    out.push(b' ');
                    out.extend_from_slice(flag);
                }
                b'k' => flag_key(out, &request.key),
                _ => {}
            }
        }
        out.extend_from_slice(b"\r\n");
        if opts.value {
            out.extend_from_slice(digits.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    fn meta_debug(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        self.counters.cmd_meta += 1;
        let cas_enabled = server.settings.cas;
        let out = &mut *self.out;
        let found = server.cache.get(request.key.as_bytes(), now, |item| {
            out.extend_from_slice(b"ME ");
            if request.key.is_binary() {
                encode_base64(out, item.key);
            } else {
                out.extend_from_slice(item.key);
            }
            // memcached prints the expiry as now minus exptime: negative for a live item.
            let exp = if item.exptime == 0 {
                -1
            } else {
                i64::from(now) - i64::from(item.exptime)
            };
            let size = memcached_size(item.key.len(), item.value.len(), item.flags, cas_enabled);
            let line = format!(
                " exp={exp} la=0 cas={} fetch=no cls=1 size={size}\r\n",
                item.cas
            );
            out.extend_from_slice(line.as_bytes());
        });
        if !found.is_hit() {
            self.out.extend_from_slice(b"EN\r\n");
        }
    }
}
