//! One request against the store; the reply is appended to the connection's output buffer.
//!
//! Replies and counters follow memcached 1.6.18: which counters a command moves (a `gat` hit
//! counts as a touch hit, not a get hit), and which replies `noreply` silences (all of them,
//! errors included, except the few memcached sends regardless).

use bytes::Bytes;
use keepcached_cache::{DeltaResult, Lookup, ReadOptions, StoreMode, StoreResult};
use keepcached_protocol::reply::{self, ErrorReply};
use keepcached_protocol::{Command, Invalid, Keys, Request, StoreKind, Verb};

use crate::report;
use crate::stats::Counters;
use crate::watch;
use crate::Server;

/// The version clients see; keepcached speaks memcached 1.6.18's protocol, and clients choose
/// features by this number.
pub const PROTOCOL_VERSION: &str = "1.6.18";

/// Values at least this long go out by reference to the stored bytes when the caller takes
/// them ([`Spliced`]): the cache keeps exactly these refcounted, so taking one costs a refcount
/// and not a copy. A 4 KiB get copied instead, into a reply buffer grown for it, took 1.8x
/// memcached's instructions (callgrind, scripts/bench-server.sh's fixed sequence with 4 KiB
/// values); spliced, 1.2x.
pub const SPLICE_MIN: usize = keepcached_cache::SHARED_MIN;

/// Values a multi-get or `mg` hands over by reference instead of copying them into the output:
/// each belongs at an offset of the output, before the bytes written there after it.
#[derive(Debug, Default)]
pub struct Spliced {
    pub values: Vec<(usize, Bytes)>,
    /// Their total length.
    pub bytes: usize,
}

impl Spliced {
    /// Keeps the values whose offset `keep` accepts, after the output was cut back.
    pub fn retain(&mut self, keep: impl Fn(usize) -> bool) {
        self.values.retain(|(offset, _)| keep(*offset));
        self.bytes = self.values.iter().map(|(_, value)| value.len()).sum();
    }
}

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Discard this many bytes of input as they arrive (the data block of a rejected value).
    Swallow(usize),
    /// Close the connection once the replies so far are written.
    Close,
}

/// Per-connection state the executor needs besides the request.
#[derive(Debug)]
pub struct Session<'a> {
    pub server: &'a Server,
    pub out: &'a mut Vec<u8>,
    pub counters: &'a mut Counters,
    /// The connection's number, which `watch` lines show as `cfd` (0 for UDP).
    pub conn_id: u64,
}

impl Session<'_> {
    fn reply(&mut self, noreply: bool, line: &[u8]) {
        if !noreply {
            self.out.extend_from_slice(line);
        }
    }

    fn error(&mut self, error: ErrorReply, noreply: bool) {
        if !noreply {
            reply::line(self.out, error.as_str().as_bytes());
        }
    }

    /// Answers one parsed text or meta command, valid or not.
    pub fn execute_command(&mut self, command: Command<'_>) -> Next {
        self.execute_command_into(command, None)
    }

    /// [`Session::execute_command`], with the values of an `mg` of [`SPLICE_MIN`] bytes or
    /// more handed over in `spliced` instead of copied into the output.
    pub fn execute_command_into(
        &mut self,
        command: Command<'_>,
        spliced: Option<&mut Spliced>,
    ) -> Next {
        match command {
            Command::Text(text) => match text.outcome {
                Ok(request) => self.execute(request),
                Err(invalid) => self.invalid(invalid),
            },
            Command::Meta(meta) => match meta.outcome {
                Ok(request) => self.execute_meta(request, spliced),
                Err(reject) => self.meta_reject(reject),
            },
        }
    }

    pub fn execute(&mut self, request: Request<'_>) -> Next {
        let server = self.server;
        let now = server.clock.now();
        match request {
            Request::Get {
                verb,
                exptime,
                keys,
            } => {
                self.get_keys(verb, exptime, keys, 0, usize::MAX, None);
                Next::Continue
            }
            Request::Store {
                kind,
                key,
                flags,
                exptime,
                data,
                cas,
                noreply,
            } => {
                self.counters.cmd_set += 1;
                server.detail.record_set(key);
                let mode = match kind {
                    StoreKind::Set => StoreMode::Set,
                    StoreKind::Add => StoreMode::Add,
                    StoreKind::Replace => StoreMode::Replace,
                    StoreKind::Append => StoreMode::Append,
                    StoreKind::Prepend => StoreMode::Prepend,
                    StoreKind::Cas => StoreMode::Cas(cas),
                };
                let exptime = server.clock.exptime(exptime);
                let before = self.watch_peek(key, watch::FETCHERS | watch::MUTATIONS);
                let result = server.cache.store(mode, key, flags, exptime, data, now);
                if server.watch.wants(watch::MUTATIONS) {
                    let len = match (kind, result) {
                        (StoreKind::Append | StoreKind::Prepend, StoreResult::Stored) => {
                            data.len() + before.map_or(0, |(old, _)| old)
                        }
                        _ => data.len(),
                    };
                    self.watch_store(kind.name(), key, flags, exptime, len, result);
                }
                if kind == StoreKind::Cas {
                    match result {
                        StoreResult::Stored => self.counters.cas_hits += 1,
                        StoreResult::Exists => self.counters.cas_badval += 1,
                        StoreResult::NotFound => self.counters.cas_misses += 1,
                        _ => {}
                    }
                }
                let line = match result {
                    StoreResult::Stored => reply::STORED,
                    StoreResult::NotStored => reply::NOT_STORED,
                    StoreResult::Exists => reply::EXISTS,
                    StoreResult::NotFound => reply::NOT_FOUND,
                    StoreResult::TooLarge => {
                        self.counters.store_too_large += 1;
                        reply::TOO_LARGE
                    }
                    StoreResult::OutOfMemory => {
                        self.counters.store_no_memory += 1;
                        reply::OUT_OF_MEMORY_STORING
                    }
                };
                self.reply(noreply, line);
                Next::Continue
            }
            Request::Delete { key, noreply } => {
                server.detail.record_delete(key);
                self.watch_peek(key, watch::FETCHERS);
                let line = if server.cache.delete(key, now) {
                    self.counters.delete_hits += 1;
                    reply::DELETED
                } else {
                    self.counters.delete_misses += 1;
                    reply::NOT_FOUND
                };
                self.reply(noreply, line);
                Next::Continue
            }
            Request::Arith {
                incr,
                key,
                delta,
                noreply,
            } => {
                self.watch_peek(key, watch::FETCHERS);
                let result = server.cache.incr_decr(key, incr, delta, now);
                let (hits, misses) = if incr {
                    (&mut self.counters.incr_hits, &mut self.counters.incr_misses)
                } else {
                    (&mut self.counters.decr_hits, &mut self.counters.decr_misses)
                };
                match result {
                    DeltaResult::Value(value) => {
                        *hits += 1;
                        if !noreply {
                            reply::number(self.out, value);
                        }
                    }
                    DeltaResult::NotFound => {
                        *misses += 1;
                        self.reply(noreply, reply::NOT_FOUND);
                    }
                    DeltaResult::NonNumeric => self.reply(noreply, reply::NON_NUMERIC),
                    DeltaResult::OutOfMemory => self.reply(noreply, reply::OUT_OF_MEMORY),
                }
                Next::Continue
            }
            Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                self.counters.cmd_touch += 1;
                let exptime = server.clock.exptime(exptime);
                self.watch_peek(key, watch::FETCHERS);
                let line = if server.cache.touch(key, exptime, now) {
                    self.counters.touch_hits += 1;
                    reply::TOUCHED
                } else {
                    self.counters.touch_misses += 1;
                    reply::NOT_FOUND
                };
                self.reply(noreply, line);
                Next::Continue
            }
            Request::FlushAll { delay, noreply } => {
                if !server.settings.flush_enabled {
                    self.reply(noreply, b"CLIENT_ERROR flush_all not allowed\r\n");
                    return Next::Continue;
                }
                self.counters.cmd_flush += 1;
                // memcached: a positive delay is an exptime (relative or absolute); zero or
                // negative means now. An absolute time already past comes out as relative time
                // 1, which memcached stores as "no flush pending": it answers OK and flushes
                // nothing, and clients see that, so we do the same.
                match delay {
                    Some(d) if d > 0 => {
                        let at = server.clock.exptime(d);
                        if at > 1 {
                            server.cache.flush_all(at, now);
                        }
                    }
                    _ => server.cache.flush_all(now, now),
                }
                self.reply(noreply, reply::OK);
                Next::Continue
            }
            Request::Version => {
                self.out.extend_from_slice(b"VERSION ");
                self.out.extend_from_slice(PROTOCOL_VERSION.as_bytes());
                self.out.extend_from_slice(b"\r\n");
                Next::Continue
            }
            Request::Verbosity { level, noreply } => {
                // memcached caps the level at its most verbose setting.
                server
                    .verbosity
                    .store(level.min(3), std::sync::atomic::Ordering::Relaxed);
                self.reply(noreply, reply::OK);
                Next::Continue
            }
            Request::Quit => Next::Close,
            Request::Shutdown { mode } => {
                if !server.settings.shutdown_command {
                    self.out
                        .extend_from_slice(b"ERROR: shutdown not enabled\r\n");
                    return Next::Continue;
                }
                match mode {
                    None | Some(b"graceful") => {
                        server.shutdown_requested.send_replace(true);
                        Next::Close
                    }
                    Some(_) => {
                        self.out
                            .extend_from_slice(b"CLIENT_ERROR invalid shutdown mode\r\n");
                        Next::Continue
                    }
                }
            }
            Request::CacheMemlimit { megabytes, noreply } => {
                if megabytes < 8 {
                    self.reply(
                        noreply,
                        b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
                    );
                } else {
                    server
                        .cache
                        .set_max_bytes(u64::from(megabytes) * 1024 * 1024);
                    self.reply(noreply, reply::OK);
                }
                Next::Continue
            }
            Request::Stats { args } => {
                // Counts of this batch's earlier requests must show, as they do in memcached.
                server.stats.merge(self.counters);
                *self.counters = Counters::default();
                report::stats(self, args);
                Next::Continue
            }
            Request::LruCrawler { args } => {
                report::lru_crawler(self, args);
                Next::Continue
            }
            Request::Slabs { args } => {
                report::slabs_command(self, args);
                Next::Continue
            }
            Request::MetaNoop => {
                self.out.extend_from_slice(reply::MN);
                Next::Continue
            }
        }
    }

    /// Answers a multi-get from its `skip`th key on, and stops early once the output (with
    /// what `spliced` holds) reaches `high_water` bytes: `Some(n)` when it stopped with the
    /// first `n` keys answered, `None` when it answered them all and ended the reply. The
    /// connection writes what is buffered and comes back for the rest, so one request naming a
    /// large value thousands of times holds no more than the high-water mark and one value.
    /// With `spliced`, values of [`SPLICE_MIN`] bytes or more go there instead of being copied.
    pub fn get_keys(
        &mut self,
        verb: Verb,
        exptime: Option<i32>,
        keys: Keys<'_>,
        skip: usize,
        high_water: usize,
        mut spliced: Option<&mut Spliced>,
    ) -> Option<usize> {
        let server = self.server;
        let now = server.clock.now();
        let with_cas = matches!(verb, Verb::Gets | Verb::Gats);
        let touch_to = exptime.map(|e| server.clock.exptime(e));
        let mut keys = keys.iter().enumerate().skip(skip).peekable();
        while let Some((i, key)) = keys.next() {
            self.get_one(key, with_cas, touch_to, now, spliced.as_deref_mut());
            let held = self.out.len() + spliced.as_deref().map_or(0, |s| s.bytes);
            if held >= high_water && keys.peek().is_some() {
                return Some(i + 1);
            }
        }
        self.out.extend_from_slice(reply::END);
        None
    }

    fn get_one(
        &mut self,
        key: &[u8],
        with_cas: bool,
        touch_to: Option<u32>,
        now: u32,
        spliced: Option<&mut Spliced>,
    ) {
        let server = self.server;
        let out = &mut *self.out;
        let fetch = ReadOptions {
            bump: true,
            vivify: false,
        };
        let lookup = server.cache.read(key, fetch, now, |item| {
            if let Some(exptime) = touch_to {
                item.set_exptime(exptime);
            }
            let view = item.view();
            let found = (view.value.len(), view.flags);
            let cas = with_cas.then_some(view.cas);
            match spliced {
                Some(spliced) if view.value.len() >= SPLICE_MIN => {
                    reply::value_header(out, view.key, view.flags, view.value.len(), cas);
                    spliced.bytes += view.value.len();
                    spliced.values.push((out.len(), item.shared_value()));
                    out.extend_from_slice(b"\r\n");
                }
                _ => reply::value(out, view.key, view.flags, view.value, cas),
            }
            found
        });
        if server.watch.wants(watch::FETCHERS) {
            let found = match lookup {
                Lookup::Hit(found) => found,
                _ => (0, 0),
            };
            self.watch_get(key, &lookup, found);
        }
        server
            .detail
            .record_get(key, matches!(lookup, Lookup::Hit(_)));
        self.counters.count_read(&lookup, touch_to.is_some());
        if touch_to.is_some() {
            // memcached's text gat also counts as a get.
            self.counters.cmd_get += 1;
        }
    }

    /// Answers input that did not parse into a request.
    pub fn invalid(&mut self, invalid: Invalid<'_>) -> Next {
        match invalid {
            Invalid::Reply { error, noreply } => {
                self.error(error, noreply);
                Next::Continue
            }
            Invalid::TooLarge {
                kind,
                key,
                swallow,
                noreply,
            } => {
                self.counters.store_too_large += 1;
                if kind == StoreKind::Set {
                    // A failed set must not leave the previous value readable.
                    self.server.cache.delete(key, self.server.clock.now());
                }
                self.reply(noreply, reply::TOO_LARGE);
                Next::Swallow(swallow)
            }
            Invalid::Close => Next::Close,
        }
    }
}
