//! The meta commands against the store: `mg`, `ms`, `md`, `ma`, `me`, `mn`.
//!
//! A reply is a two-letter code (`VA`/`HD`/`EN`/`NF`/`NS`/`EX`/`MN`/`ME`) followed by the
//! return flags the request asked for, in the order it named them, as memcached 1.6.18 writes
//! them. Quiet mode (`q`) leaves out only the nominal reply (a miss for mg, success for
//! ms/md/ma); errors are always sent.
//!
//! Flags that change the item (`T`, `N`) act where they stand in the request, as memcached's
//! do, so a `t` before `T` shows the old TTL; each command is one call of the store, which
//! lends the item to the reply code under the shard lock. That call also carries the item's
//! meta state: whether it was fetched and when it was last accessed, as they were before this
//! read (`h`, `l`, `me`), the stale and win-token bits (`N`, `R`, `I` and the `W`/`X`/`Z` reply
//! flags), and whether its key was stored in base64. CAS compares and the CAS a reply shows
//! come from the same step that acts, so no other client's write can come between them.

use keepcached_cache::{
    memcached_size, DeleteResult, DeltaOutcome, DeltaRequest, ItemHandle, ReadOptions, StaleResult,
    StoreMode, StoreRequest, StoreResult,
};
use keepcached_protocol::meta::{
    encode_base64, MetaCommand, MetaError, MetaKey, MetaReject, MetaRequest, SetMode,
};
use keepcached_protocol::reply;

use crate::execute::{Next, Session, Spliced, SPLICE_MIN};

/// Appends ` <flag><number>`.
fn flag_number(out: &mut Vec<u8>, flag: u8, n: impl itoa::Integer) {
    let mut num = itoa::Buffer::new();
    out.push(b' ');
    out.push(flag);
    out.extend_from_slice(num.format(n).as_bytes());
}

/// Appends ` k<key>`, in base64 with ` b` after it for a binary key.
fn flag_key(out: &mut Vec<u8>, key: &[u8], binary: bool) {
    out.extend_from_slice(b" k");
    if binary {
        encode_base64(out, key);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

fn request_key(out: &mut Vec<u8>, key: &MetaKey<'_>) {
    flag_key(out, key.as_bytes(), key.is_binary());
}

fn opaque(out: &mut Vec<u8>, flag: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(flag);
}

/// Appends the O and k flags of a request, the only ones a reply without an item carries; the
/// key is shown as the request sent it.
fn opaque_and_key(out: &mut Vec<u8>, request: &MetaRequest<'_>) {
    for flag in request.flags() {
        match flag[0] {
            b'O' => opaque(out, flag),
            b'k' => request_key(out, &request.key),
            _ => {}
        }
    }
}

/// Ends a reply that names no item: the code, the O and k flags, CRLF; memcached's error
/// instead when an opaque is too long.
fn bare_reply(out: &mut Vec<u8>, code: &[u8], request: &MetaRequest<'_>) {
    if request.long_opaque().is_some() {
        opaque_too_long(out);
        return;
    }
    out.extend_from_slice(code);
    opaque_and_key(out, request);
    out.extend_from_slice(b"\r\n");
}

fn opaque_too_long(out: &mut Vec<u8>) {
    reply::line(out, MetaError::OpaqueTooLong.as_str().as_bytes());
}

/// The flags memcached acts on while it writes a reply: all of them, or those before an opaque
/// too long, where it stops with an error.
fn acted_flags<'r, 'a>(request: &'r MetaRequest<'a>) -> &'r [&'a [u8]] {
    let flags = request.flags();
    &flags[..request.long_opaque().unwrap_or(flags.len())]
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

    /// Answers a meta request; with `spliced`, an `mg` hands over a value of [`SPLICE_MIN`]
    /// bytes or more there instead of copying it.
    pub fn execute_meta(
        &mut self,
        request: MetaRequest<'_>,
        spliced: Option<&mut Spliced>,
    ) -> Next {
        match request.command {
            MetaCommand::Get => self.meta_get(&request, spliced),
            MetaCommand::Set => self.meta_set(&request),
            MetaCommand::Delete => self.meta_delete(&request),
            MetaCommand::Arith => self.meta_arith(&request),
            MetaCommand::Debug => self.meta_debug(&request),
            MetaCommand::Noop => self.out.extend_from_slice(reply::MN),
        }
        Next::Continue
    }

    fn meta_get(&mut self, request: &MetaRequest<'_>, spliced: Option<&mut Spliced>) {
        let server = self.server;
        let now = server.clock.now();
        let opts = &request.options;
        // memcached converts the times when it reads the flags, before it looks the item up.
        let ttl = opts.ttl.map(|t| server.clock.exptime(t));
        let vivify = opts.vivify.map(|t| server.clock.exptime(t));
        let recache = opts.recache.map(|t| server.clock.exptime(t));
        let long_opaque = request.long_opaque().is_some();
        // memcached bumps the item as it reads it, unless a flag makes it hold the item's lock
        // to bump after the reply is written, which an opaque too long prevents.
        let locked = request
            .flags()
            .iter()
            .any(|f| matches!(f[0], b'T' | b'N' | b'R' | b'l' | b'h'));
        let read = ReadOptions {
            bump: !(opts.no_bump || (long_opaque && locked)),
            vivify: vivify.is_some(),
        };
        let out = &mut *self.out;
        let start = out.len();
        let mut found = (0, 0);
        let write = |item: &mut ItemHandle<'_>| {
            let value_len = item.view().value.len();
            found = (value_len, item.view().flags);
            if opts.value {
                out.extend_from_slice(b"VA ");
                out.extend_from_slice(itoa::Buffer::new().format(value_len).as_bytes());
            } else {
                out.extend_from_slice(b"HD");
            }
            let mut won = false;
            for flag in acted_flags(request) {
                match flag[0] {
                    // The parser sets the time of every T, N and R flag it passes on.
                    b'T' => {
                        if let Some(exptime) = ttl {
                            item.set_exptime(exptime);
                        }
                    }
                    b'N' => {
                        if let (true, Some(exptime)) = (item.created(), vivify) {
                            item.set_exptime(exptime);
                            won = true;
                        }
                    }
                    b'R' => {
                        // A recache win: less than the R time is left, and nobody won yet.
                        let exptime = item.view().exptime;
                        won |= !item.token_sent()
                            && !item.created()
                            && exptime != 0
                            && recache.is_some_and(|recache| exptime < recache);
                    }
                    b's' => flag_number(out, b's', value_len),
                    b't' => flag_number(out, b't', ttl_left(item.view().exptime, now)),
                    b'c' => flag_number(out, b'c', item.view().cas),
                    b'f' => flag_number(out, b'f', item.view().flags),
                    b'l' => flag_number(out, b'l', now.wrapping_sub(item.last_access())),
                    b'h' => flag_number(out, b'h', u8::from(item.fetched())),
                    b'O' => opaque(out, flag),
                    b'k' => flag_key(out, item.view().key, item.binary_key()),
                    _ => {}
                }
            }
            if long_opaque {
                // The item stays as the flags before the opaque left it, with no token sent.
                out.truncate(start);
                opaque_too_long(out);
                return;
            }
            // memcached's order: Z (a token went out before), X (stale), W (this client won);
            // a stale item hands out one token, to the first reader after it went stale.
            let token_sent = item.token_sent();
            if token_sent {
                out.extend_from_slice(b" Z");
            }
            if item.stale() {
                out.extend_from_slice(b" X");
                won |= !token_sent;
            }
            if won {
                out.extend_from_slice(b" W");
                item.send_token();
            }
            out.extend_from_slice(b"\r\n");
            if opts.value {
                match spliced {
                    Some(spliced) if value_len >= SPLICE_MIN => {
                        spliced.bytes += value_len;
                        spliced.values.push((out.len(), item.shared_value()));
                    }
                    _ => out.extend_from_slice(item.view().value),
                }
                out.extend_from_slice(b"\r\n");
            }
        };
        let lookup = server.cache.read(request.key.as_bytes(), read, now, write);
        if server.watch.wants(crate::watch::FETCHERS) {
            self.watch_get(request.key.as_bytes(), &lookup, found);
        }
        // A vivified item counts as a hit, as in memcached.
        self.counters.count_read(&lookup, ttl.is_some());
        let hit = lookup.is_hit();
        if !hit && (!opts.quiet || long_opaque) {
            bare_reply(self.out, b"EN", request);
        }
    }

    fn meta_set(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let opts = &request.options;
        self.counters.cmd_set += 1;
        let cas = opts.compare_cas;
        // memcached: a CAS (0 included) turns set and replace into a compare-and-swap, is
        // ignored by add, and makes append/prepend compare it when it is not 0.
        let (mode, compare_cas) = match (request.set_mode, cas) {
            (SetMode::Set | SetMode::Replace, Some(c)) => (StoreMode::Cas(c), 0),
            (SetMode::Set, None) => (StoreMode::Set, 0),
            (SetMode::Replace, None) => (StoreMode::Replace, 0),
            (SetMode::Add, _) => (StoreMode::Add, 0),
            (SetMode::Append, c) => (StoreMode::Append, c.unwrap_or(0)),
            (SetMode::Prepend, c) => (StoreMode::Prepend, c.unwrap_or(0)),
        };
        let exptime = opts.ttl.map_or(0, |t| server.clock.exptime(t));
        let store = StoreRequest {
            compare_cas,
            // Only a compare-and-swap can store stale (memcached's set_stale needs NREAD_CAS).
            invalidate: opts.invalidate,
            binary_key: request.key.is_binary(),
            ..StoreRequest::new(
                mode,
                request.key.as_bytes(),
                opts.client_flags,
                exptime,
                request.data,
            )
        };
        let watched = crate::watch::FETCHERS | crate::watch::MUTATIONS;
        let before = self.watch_peek(request.key.as_bytes(), watched);
        let outcome = server.cache.store_item(store, now);
        if server.watch.wants(crate::watch::MUTATIONS) {
            let cmd = crate::watch::mode_name(mode);
            let key = request.key.as_bytes();
            let len = match (mode, outcome.result) {
                (StoreMode::Append | StoreMode::Prepend, StoreResult::Stored) => {
                    request.data.len() + before.map_or(0, |(old, _)| old)
                }
                _ => request.data.len(),
            };
            let flags = opts.client_flags;
            self.watch_store(cmd, key, flags, exptime, len, outcome.result);
        }
        if let StoreMode::Cas(_) = mode {
            match outcome.result {
                StoreResult::Stored => self.counters.cas_hits += 1,
                StoreResult::Exists => self.counters.cas_badval += 1,
                StoreResult::NotFound => self.counters.cas_misses += 1,
                _ => {}
            }
        }
        let code: &[u8] = match outcome.result {
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
        self.out.extend_from_slice(code);
        for flag in request.flags() {
            match flag[0] {
                b'O' => opaque(self.out, flag),
                b'k' => request_key(self.out, &request.key),
                b'c' => flag_number(self.out, b'c', outcome.cas),
                _ => {}
            }
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn meta_delete(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let key = request.key.as_bytes();
        let opts = &request.options;
        let cas = opts.compare_cas;
        self.watch_peek(key, crate::watch::FETCHERS);
        let done = if opts.invalidate {
            // md I: the item stays, stale, so that one client wins the token to refresh it.
            let exptime = opts.ttl.map(|t| server.clock.exptime(t));
            match server.cache.mark_stale(key, cas, exptime, now) {
                StaleResult::Marked { .. } => true,
                StaleResult::NotFound => false,
                StaleResult::Exists => {
                    self.counters.delete_misses += 1;
                    bare_reply(self.out, b"EX", request);
                    return;
                }
            }
        } else {
            match server.cache.delete_if(key, cas, now) {
                DeleteResult::Deleted => {
                    self.counters.delete_hits += 1;
                    true
                }
                DeleteResult::NotFound => false,
                DeleteResult::Exists => {
                    self.counters.delete_misses += 1;
                    bare_reply(self.out, b"EX", request);
                    return;
                }
            }
        };
        if done {
            if !opts.quiet {
                bare_reply(self.out, b"HD", request);
            }
        } else {
            self.counters.delete_misses += 1;
            bare_reply(self.out, b"NF", request);
        }
    }

    fn meta_arith(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        let opts = &request.options;
        let ttl = opts.ttl.map(|t| server.clock.exptime(t));
        let vivify = opts.vivify.map(|t| server.clock.exptime(t));
        let delta = DeltaRequest {
            incr: request.incr,
            delta: opts.delta,
            compare_cas: opts.compare_cas.unwrap_or(0),
            // memcached creates the counter with no expiry time; N gives it one below.
            create: vivify.map(|_| (opts.initial, 0)),
        };
        self.watch_peek(request.key.as_bytes(), crate::watch::FETCHERS);
        let start = self.out.len();
        let out = &mut *self.out;
        let outcome = server
            .cache
            .delta(request.key.as_bytes(), delta, now, |counter| {
                let mut num = itoa::Buffer::new();
                let digits = num.format(counter.value());
                if opts.value {
                    out.extend_from_slice(b"VA ");
                    out.extend_from_slice(itoa::Buffer::new().format(digits.len()).as_bytes());
                } else {
                    out.extend_from_slice(b"HD");
                }
                for flag in acted_flags(request) {
                    match flag[0] {
                        b'c' => flag_number(out, b'c', counter.cas()),
                        b't' => flag_number(out, b't', ttl_left(counter.exptime(), now)),
                        b'T' => {
                            if let Some(exptime) = ttl {
                                counter.set_exptime(exptime);
                            }
                        }
                        b'N' => {
                            if let (true, Some(exptime)) = (counter.created(), vivify) {
                                counter.set_exptime(exptime);
                            }
                        }
                        b'O' => opaque(out, flag),
                        b'k' => request_key(out, &request.key),
                        _ => {}
                    }
                }
                out.extend_from_slice(b"\r\n");
                if opts.value {
                    out.extend_from_slice(digits.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                if request.long_opaque().is_some() {
                    // The counter has changed; only the reply is refused.
                    out.truncate(start);
                    opaque_too_long(out);
                }
                counter.created()
            });
        let counters = &mut *self.counters;
        match outcome {
            DeltaOutcome::Done(created) => {
                // memcached quiets only a change of an existing counter; a created one is
                // answered, and counts as neither hit nor miss.
                if !created {
                    if request.incr {
                        counters.incr_hits += 1;
                    } else {
                        counters.decr_hits += 1;
                    }
                    if opts.quiet && request.long_opaque().is_none() {
                        self.out.truncate(start);
                    }
                }
            }
            DeltaOutcome::NonNumeric => self.out.extend_from_slice(reply::NON_NUMERIC),
            DeltaOutcome::OutOfMemory => self.out.extend_from_slice(reply::OUT_OF_MEMORY),
            DeltaOutcome::Exists => bare_reply(self.out, b"EX", request),
            DeltaOutcome::NotFound => {
                if request.incr {
                    counters.incr_misses += 1;
                } else {
                    counters.decr_misses += 1;
                }
                bare_reply(self.out, b"NF", request);
            }
        }
    }

    fn meta_debug(&mut self, request: &MetaRequest<'_>) {
        let server = self.server;
        let now = server.clock.now();
        self.counters.cmd_meta += 1;
        let cas_enabled = server.settings.cas;
        let out = &mut *self.out;
        // me reads without a trace: it shows fetch and la as they are, and changes neither.
        let peek = ReadOptions {
            bump: false,
            vivify: false,
        };
        let found = server
            .cache
            .read(request.key.as_bytes(), peek, now, |item| {
                let view = item.view();
                out.extend_from_slice(b"ME ");
                // memcached shows the key as the item was stored, not as this request sent it.
                if item.binary_key() {
                    encode_base64(out, view.key);
                } else {
                    out.extend_from_slice(view.key);
                }
                // memcached prints the expiry as now minus exptime: negative for a live item.
                let exp = if view.exptime == 0 {
                    -1
                } else {
                    i64::from(now) - i64::from(view.exptime)
                };
                let size =
                    memcached_size(view.key.len(), view.value.len(), view.flags, cas_enabled);
                let line = format!(
                    " exp={exp} la={} cas={} fetch={} cls=1 size={size}\r\n",
                    now.wrapping_sub(item.last_access()),
                    view.cas,
                    if item.fetched() { "yes" } else { "no" },
                );
                out.extend_from_slice(line.as_bytes());
            });
        if !found.is_hit() {
            self.out.extend_from_slice(b"EN\r\n");
        }
    }
}
