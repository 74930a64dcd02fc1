//! The binary protocol against the store, with SASL.
//!
//! Replies follow memcached 1.6.18's `proto_bin.c`: quiet commands answer only errors (a quiet
//! get answers its hits too), errors carry memcached's text, a STAT reply is one packet per
//! statistic and an empty packet to end it. With SASL on (`-S`), every command but VERSION and
//! the SASL ones is refused, and the connection closed, until the client has authenticated.
//!
//! A command that carries a CAS compares it in the same step of the store that acts, and the
//! CAS a reply shows comes from that step too, so no other client's write can come between.

use keepcached_cache::{
    DeleteResult, DeltaOutcome, DeltaRequest, ReadOptions, StoreMode, StoreRequest, StoreResult,
};
use keepcached_protocol::binary::{
    self, opcode, BinaryCommand, BinaryOutcome, BinaryParsed, BinaryRequest, BinaryStore, Header,
    Status,
};

use crate::auth;
use crate::execute::{Next, Session, Spliced, PROTOCOL_VERSION, SPLICE_MIN};
use crate::report;

/// Per connection: whether SASL has let the client in, and which replies memcached would still
/// hold back.
#[derive(Debug, Default, Clone, Copy)]
pub struct BinaryState {
    pub authenticated: bool,
    /// Bytes at the end of the output that memcached would not have sent yet: it queues a
    /// success and sends its queue at the next error reply, NOOP, or wait for input. A packet
    /// with a bad magic closes the connection and loses that queue.
    held: usize,
    /// The output's length after the last packet: a different length means the connection has
    /// written its output since, and nothing is held any more.
    out_len: usize,
}

/// Whether memcached sends `replies` (one request's response packets) at once rather than
/// queueing them: an error does (apart from a miss that carries its key, and an error whose
/// body is still to be discarded), and so does a NOOP.
fn sent_at_once(replies: &[u8]) -> bool {
    let Some(header) = replies.get(..binary::HEADER_LEN) else {
        return false;
    };
    let key_len = u16::from_be_bytes([header[2], header[3]]);
    let status = u16::from_be_bytes([header[6], header[7]]);
    let keyed_miss = status == Status::KeyNotFound as u16 && key_len > 0;
    header[1] == opcode::NOOP || (status != Status::Ok as u16 && !keyed_miss)
}

fn exptime_arg(t: u32) -> i32 {
    i32::try_from(t).unwrap_or(i32::MAX)
}

impl Session<'_> {
    /// Answers one parsed binary packet.
    pub fn execute_binary(&mut self, parsed: BinaryParsed<'_>, state: &mut BinaryState) -> Next {
        self.execute_binary_into(parsed, state, None)
    }

    /// [`Session::execute_binary`], with the value of a get of [`SPLICE_MIN`] bytes or more
    /// handed over in `spliced` instead of copied into the output.
    pub fn execute_binary_into(
        &mut self,
        parsed: BinaryParsed<'_>,
        state: &mut BinaryState,
        mut spliced: Option<&mut Spliced>,
    ) -> Next {
        if self.out.len() != state.out_len {
            state.held = 0;
        }
        let start = self.out.len();
        let bad_magic = parsed.outcome == BinaryOutcome::Close;
        let sasl_off = self.server.settings.sasl_users.is_none();
        // Errors memcached queues instead of sending at once: the ones it answers while it
        // discards a body (a store or SASL data that cannot fit, however long; without SASL,
        // SASL data of any length).
        let queued = match &parsed.outcome {
            BinaryOutcome::Request(r) => {
                matches!(r.command, BinaryCommand::SaslAuth | BinaryCommand::SaslStep)
                    && sasl_off
                    && !r.value.is_empty()
            }
            BinaryOutcome::Reject(r) => {
                !r.close && r.status != Status::UnknownCommand && !(r.sasl && sasl_off)
            }
            BinaryOutcome::Close => false,
        };
        let next = self.answer_binary(parsed, state, spliced.as_deref_mut());
        if bad_magic {
            // A bad magic: what memcached still held back is lost with the connection.
            let keep = self.out.len() - state.held.min(self.out.len());
            self.out.truncate(keep);
            if let Some(spliced) = spliced {
                // A value ends its packet, so one at `keep` belongs to the packet before.
                spliced.retain(|offset| offset <= keep);
            }
            state.held = 0;
        } else if !queued && !matches!(next, Next::Swallow(_)) && sent_at_once(&self.out[start..]) {
            state.held = 0;
        } else {
            state.held += self.out.len() - start;
        }
        state.out_len = self.out.len();
        next
    }

    fn answer_binary(
        &mut self,
        parsed: BinaryParsed<'_>,
        state: &mut BinaryState,
        spliced: Option<&mut Spliced>,
    ) -> Next {
        let (header, before_auth) = match &parsed.outcome {
            BinaryOutcome::Close => return Next::Close,
            BinaryOutcome::Request(r) => (r.header, false),
            BinaryOutcome::Reject(r) => (r.header, r.before_auth),
        };
        let open = matches!(
            header.opcode,
            opcode::SASL_LIST_MECHS | opcode::SASL_AUTH | opcode::SASL_STEP | opcode::VERSION
        );
        if self.server.settings.sasl_users.is_some()
            && !state.authenticated
            && !open
            && !before_auth
        {
            binary::error(self.out, &header, Status::AuthError);
            return Next::Close;
        }
        match parsed.outcome {
            BinaryOutcome::Close => Next::Close,
            BinaryOutcome::Reject(reject) => {
                let status = if reject.sasl && self.server.settings.sasl_users.is_none() {
                    Status::UnknownCommand
                } else {
                    reject.status
                };
                binary::error(self.out, &header, status);
                if let Some(key) = reject.unlink {
                    self.server.cache.delete(key, self.server.clock.now());
                }
                if reject.status == Status::TooLarge {
                    self.counters.store_too_large += 1;
                }
                if reject.close {
                    Next::Close
                } else if reject.swallow > 0 {
                    Next::Swallow(reject.swallow)
                } else {
                    Next::Continue
                }
            }
            BinaryOutcome::Request(request) => self.binary_request(&request, state, spliced),
        }
    }

    fn ok(&mut self, request: &BinaryRequest<'_>, cas: u64, value: &[u8]) {
        if !request.quiet {
            binary::response(self.out, &request.header, Status::Ok, cas, &[], &[], value);
        }
    }

    fn binary_request(
        &mut self,
        request: &BinaryRequest<'_>,
        state: &mut BinaryState,
        spliced: Option<&mut Spliced>,
    ) -> Next {
        let server = self.server;
        let now = server.clock.now();
        let header = &request.header;
        match request.command {
            BinaryCommand::Get {
                with_key,
                touch,
                value,
            } => self.binary_get(request, with_key, touch, value, now, spliced),
            BinaryCommand::Store {
                kind,
                flags,
                exptime,
            } => self.binary_store(request, kind, flags, exptime, now),
            BinaryCommand::Delete => {
                let cas = (header.cas != 0).then_some(header.cas);
                match server.cache.delete_if(request.key, cas, now) {
                    DeleteResult::Deleted => {
                        self.counters.delete_hits += 1;
                        self.ok(request, 0, &[]);
                    }
                    DeleteResult::NotFound => {
                        self.counters.delete_misses += 1;
                        binary::error(self.out, header, Status::KeyNotFound);
                    }
                    DeleteResult::Exists => binary::error(self.out, header, Status::KeyExists),
                }
            }
            BinaryCommand::Arith {
                incr,
                delta,
                initial,
                exptime,
            } => self.binary_arith(request, incr, delta, initial, exptime, now),
            BinaryCommand::Quit => {
                self.ok(request, 0, &[]);
                return Next::Close;
            }
            BinaryCommand::Flush { exptime } => {
                if !server.settings.flush_enabled {
                    binary::error(self.out, header, Status::AuthError);
                    return Next::Continue;
                }
                self.counters.cmd_flush += 1;
                let at = if exptime > 0 {
                    server.clock.exptime(exptime_arg(exptime))
                } else {
                    now
                };
                server.cache.flush_all(at, now);
                self.ok(request, 0, &[]);
            }
            BinaryCommand::Noop => self.ok(request, 0, &[]),
            BinaryCommand::Version => self.ok(request, 0, PROTOCOL_VERSION.as_bytes()),
            BinaryCommand::Stat => self.binary_stat(header, request.key),
            BinaryCommand::SaslListMechs => match &server.settings.sasl_users {
                Some(_) => self.ok(request, 0, auth::SASL_MECHS),
                None => binary::error(self.out, header, Status::UnknownCommand),
            },
            BinaryCommand::SaslAuth | BinaryCommand::SaslStep => {
                let Some(users) = &server.settings.sasl_users else {
                    binary::error(self.out, header, Status::UnknownCommand);
                    return Next::Continue;
                };
                self.counters.auth_cmds += 1;
                // PLAIN finishes in one step, so a SASL_STEP never has a started exchange.
                let accepted = request.command == BinaryCommand::SaslAuth
                    && request.key == auth::SASL_MECHS
                    && auth::check_plain(users, request.value);
                if accepted {
                    state.authenticated = true;
                    self.ok(request, 0, b"Authenticated");
                } else {
                    self.counters.auth_errors += 1;
                    binary::error(self.out, header, Status::AuthError);
                }
            }
        }
        Next::Continue
    }

    fn binary_get(
        &mut self,
        request: &BinaryRequest<'_>,
        with_key: bool,
        touch: Option<u32>,
        value: bool,
        now: u32,
        spliced: Option<&mut Spliced>,
    ) {
        let server = self.server;
        let out = &mut *self.out;
        let header = &request.header;
        let touch_to = touch.map(|t| server.clock.exptime(exptime_arg(t)));
        let fetch = ReadOptions {
            bump: true,
            vivify: false,
        };
        let mut found = (0, 0);
        let lookup = server.cache.read(request.key, fetch, now, |item| {
            if let Some(exptime) = touch_to {
                item.set_exptime(exptime);
            }
            let view = item.view();
            found = (view.value.len(), view.flags);
            let key = if with_key { view.key } else { &[] };
            let flags = view.flags.to_be_bytes();
            match spliced {
                // A large value goes out from the stored item, as a text get's does.
                Some(spliced) if value && view.value.len() >= SPLICE_MIN => {
                    let len = view.value.len();
                    binary::response_head(out, header, Status::Ok, view.cas, &flags, key, len);
                    spliced.bytes += len;
                    spliced.values.push((out.len(), item.shared_value()));
                }
                _ => {
                    let data = if value { view.value } else { &[] };
                    binary::response(out, header, Status::Ok, view.cas, &flags, key, data);
                }
            }
        });
        if server.watch.wants(crate::watch::FETCHERS) {
            self.watch_get(request.key, &lookup, found);
        }
        self.counters.count_read(&lookup, touch.is_some());
        let hit = lookup.is_hit();
        if !hit && !request.quiet {
            if with_key {
                // memcached's miss for GETK carries the key and no text.
                binary::response(
                    self.out,
                    header,
                    Status::KeyNotFound,
                    0,
                    &[],
                    request.key,
                    &[],
                );
            } else {
                binary::error(self.out, header, Status::KeyNotFound);
            }
        }
    }

    fn binary_store(
        &mut self,
        request: &BinaryRequest<'_>,
        kind: BinaryStore,
        flags: u32,
        exptime: u32,
        now: u32,
    ) {
        let server = self.server;
        let header = &request.header;
        let key = request.key;
        self.counters.cmd_set += 1;
        let cas = header.cas;
        let mode = match kind {
            // memcached turns any set, add or replace with a CAS into a compare-and-swap; with
            // CAS off (-C) its items cannot hold the CAS, and the store stays a plain one.
            BinaryStore::Set | BinaryStore::Add | BinaryStore::Replace
                if cas != 0 && server.settings.cas =>
            {
                StoreMode::Cas(cas)
            }
            BinaryStore::Set => StoreMode::Set,
            BinaryStore::Add => StoreMode::Add,
            BinaryStore::Replace => StoreMode::Replace,
            BinaryStore::Append => StoreMode::Append,
            BinaryStore::Prepend => StoreMode::Prepend,
        };
        let compare_cas = match mode {
            StoreMode::Append | StoreMode::Prepend => cas,
            _ => 0,
        };
        let exptime = server.clock.exptime(exptime_arg(exptime));
        let store = StoreRequest {
            compare_cas,
            ..StoreRequest::new(mode, key, flags, exptime, request.value)
        };
        let watched = crate::watch::FETCHERS | crate::watch::MUTATIONS;
        let before = self.watch_peek(key, watched);
        let outcome = server.cache.store_item(store, now);
        let result = outcome.result;
        if server.watch.wants(crate::watch::MUTATIONS) {
            let len = match (mode, result) {
                (StoreMode::Append | StoreMode::Prepend, StoreResult::Stored) => {
                    request.value.len() + before.map_or(0, |(old, _)| old)
                }
                _ => request.value.len(),
            };
            let cmd = crate::watch::mode_name(mode);
            self.watch_store(cmd, key, flags, exptime, len, result);
        }
        if let StoreMode::Cas(_) = mode {
            match result {
                StoreResult::Stored => self.counters.cas_hits += 1,
                StoreResult::Exists => self.counters.cas_badval += 1,
                StoreResult::NotFound => self.counters.cas_misses += 1,
                _ => {}
            }
        }
        let status = match result {
            StoreResult::Stored => {
                self.ok(request, outcome.cas, &[]);
                return;
            }
            StoreResult::Exists => Status::KeyExists,
            StoreResult::NotFound => Status::KeyNotFound,
            StoreResult::NotStored | StoreResult::TooLarge | StoreResult::OutOfMemory => match kind
            {
                BinaryStore::Add => Status::KeyExists,
                BinaryStore::Replace => Status::KeyNotFound,
                _ => Status::NotStored,
            },
        };
        binary::error(self.out, header, status);
    }

    fn binary_arith(
        &mut self,
        request: &BinaryRequest<'_>,
        incr: bool,
        delta: u64,
        initial: u64,
        exptime: u32,
        now: u32,
    ) {
        let server = self.server;
        let header = &request.header;
        let key = request.key;
        // 0xffffffff: the client asked not to create a missing counter.
        let create =
            (exptime != u32::MAX).then(|| (initial, server.clock.exptime(exptime_arg(exptime))));
        let delta = DeltaRequest {
            incr,
            delta,
            compare_cas: header.cas,
            create,
        };
        let outcome = server.cache.delta(key, delta, now, |counter| {
            (counter.value(), counter.cas(), counter.created())
        });
        let (value, cas) = match outcome {
            DeltaOutcome::Done((value, cas, created)) => {
                if !created {
                    if incr {
                        self.counters.incr_hits += 1;
                    } else {
                        self.counters.decr_hits += 1;
                    }
                }
                (value, cas)
            }
            DeltaOutcome::NonNumeric => {
                binary::error(self.out, header, Status::DeltaBadValue);
                return;
            }
            DeltaOutcome::OutOfMemory => {
                binary::error(self.out, header, Status::OutOfMemory);
                return;
            }
            DeltaOutcome::Exists => {
                binary::error(self.out, header, Status::KeyExists);
                return;
            }
            DeltaOutcome::NotFound => {
                if incr {
                    self.counters.incr_misses += 1;
                } else {
                    self.counters.decr_misses += 1;
                }
                binary::error(self.out, header, Status::KeyNotFound);
                return;
            }
        };
        if !request.quiet {
            binary::response(
                self.out,
                header,
                Status::Ok,
                cas,
                &[],
                &[],
                &value.to_be_bytes(),
            );
        }
    }

    /// Runs the ASCII `stats` for the group named in the key and re-frames each `STAT` line
    /// as a packet, so both protocols report the same numbers.
    fn binary_stat(&mut self, header: &Header, group: &[u8]) {
        let mut text = Vec::new();
        let mut inner = Session {
            server: self.server,
            out: &mut text,
            counters: &mut *self.counters,
            conn_id: self.conn_id,
        };
        report::stats_command(&mut inner, group);
        if text == b"ERROR\r\n" || text.starts_with(b"CLIENT_ERROR") {
            binary::error(self.out, header, Status::KeyNotFound);
            return;
        }
        if group.starts_with(b"detail dump") {
            binary::response(self.out, header, Status::Ok, 0, &[], b"detailed", &text);
        } else {
            for line in text.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(stat) = line.strip_prefix(b"STAT ") else {
                    continue;
                };
                let space = stat.iter().position(|b| *b == b' ').unwrap_or(stat.len());
                let value = stat.get(space + 1..).unwrap_or(&[]);
                binary::response(self.out, header, Status::Ok, 0, &[], &stat[..space], value);
            }
        }
        binary::response(self.out, header, Status::Ok, 0, &[], &[], &[]);
    }
}
