//! The running daemon: checks and instances as tokio tasks, one shutdown path.
//!
//! Each instance owns its socket and its [`Instance`] state machine; its task
//! turns packets, deadlines and tracking changes into events, and performs
//! the actions that come back (send adverts, add or remove the virtual
//! addresses, gratuitous ARP, notify scripts). Everything that can fail at
//! startup (interfaces, addresses, sockets) fails before any instance starts;
//! at a reload, before anything running changes. The daemon keeps a handle
//! per instance (a stop signal and an update channel) and one task per
//! tracked check, so that a reload can stop, start or reconfigure each.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfError, InstanceConfig, ProxyCheck, ScriptCheck, Vip, VrrpConfig};
use crate::garp::GarpSender;
use crate::instance::{Action, Cause, Event, Instance, State};
use crate::ndisc;
use crate::netlink::Netlink;
use crate::network::{interface_index, link_local_ipv6, primary_ipv4, Received, VrrpSocket};
use crate::notify;
use crate::packet::{
    ipv4_header, ipv4_source, parse_ipv4, Advert, ChecksumMode, DecodeError, MULTICAST_V4,
    MULTICAST_V6,
};
use crate::privileges;
use crate::rejects::{RejectLog, Verdict};
use crate::status::{self, InstanceStatus, Invalid, Slots};
use crate::track::{self, Key, Status};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfError),
    #[error("instance `{instance}`: {what}: {source}")]
    Io {
        instance: String,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A configuration to apply in place of the running one, and who to tell once it is applied
/// (or refused and logged): systemd's READY=1 after a reload waits for that.
#[derive(Debug)]
pub struct Reload {
    pub config: VrrpConfig,
    pub done: oneshot::Sender<()>,
}

/// Runs every configured instance until `shutdown` completes, then leaves
/// cleanly: a master sends priority 0 and removes its addresses. Each
/// notification of `report` logs the status of every instance (and rewrites
/// the status file, if configured). Each configuration received on `reload`
/// replaces the running one as keepalived's reload does (see [`Daemon::reload`]);
/// one that cannot be applied is logged and the running one kept.
pub async fn run(
    config: VrrpConfig,
    shutdown: impl Future<Output = ()>,
    report: Arc<Notify>,
    reload: mpsc::Receiver<Reload>,
) -> Result<(), Error> {
    run_with(config, shutdown, report, reload, Embedding::default()).await
}

/// What the process that runs the VRRP role adds to its configuration.
#[derive(Debug, Default)]
pub struct Embedding {
    /// Health sources every instance tracks besides what the configuration names (they are no
    /// part of it, so a reload keeps them).
    pub local: Vec<track::Local>,
    /// Told once every instance's sockets are open and the instances run: the role serves.
    pub started: Option<oneshot::Sender<()>>,
    /// Where every instance publishes its status after each event; the caller may read it
    /// (the metrics endpoint: [`crate::metrics::VrrpMetrics`]).
    pub slots: Slots,
    /// Other roles run in the same process, some on threads started before this one: the
    /// capability drop, which applies to the calling thread only, would leave them with every
    /// capability and take from this thread what they need (a cache save as root, say), so it
    /// is not done. The process's privileges are then its own business (a unit's
    /// CapabilityBoundingSet, `-u`).
    pub shares_threads: bool,
}

/// [`run`], with what the embedding process adds.
pub async fn run_with(
    config: VrrpConfig,
    shutdown: impl Future<Output = ()>,
    report: Arc<Notify>,
    mut reload: mpsc::Receiver<Reload>,
    embedding: Embedding,
) -> Result<(), Error> {
    config.validate()?;
    let local: Vec<(Key, i32)> = embedding
        .local
        .iter()
        .map(|l| (l.key(), l.weight))
        .collect();
    let mut runners = Vec::new();
    for i in &config.instances {
        runners.push(Runner::open(&config, &local, i.clone())?);
    }
    // Every socket of the configuration is open. CAP_NET_RAW stays, because a
    // reload may add an instance, which needs a socket of its own.
    if !embedding.shares_threads {
        match privileges::drop_to_network() {
            Ok((before, after)) => tracing::debug!(
                "capabilities {:#x} reduced to {:#x} (CAP_NET_ADMIN, CAP_NET_RAW)",
                before.permitted,
                after.permitted
            ),
            Err(e) => tracing::warn!("could not drop capabilities: {e}"),
        }
    }
    // The local sources' states are in the status before any instance starts: an item not
    // yet there counts as up, and a node whose proxy is down must not start as master.
    let mut status = Status::new();
    for l in &embedding.local {
        let h = l.health.borrow().clone();
        status.insert(l.key(), h);
    }
    let (status_tx, status_rx) = watch::channel(status);
    let locals = embedding
        .local
        .into_iter()
        .map(|l| tokio::spawn(track::local_task(l, status_tx.clone())))
        .collect();
    let slots = embedding.slots;
    let reporter = tokio::spawn(status::report_task(
        Arc::clone(&slots),
        config.status_file.clone(),
        Arc::clone(&report),
    ));
    let mut daemon = Daemon {
        checks: Checks::default(),
        handles: Vec::new(),
        slots,
        status_tx,
        status_rx,
        reporter,
        report,
        next_id: 0,
        config,
        local,
        locals,
    };
    daemon
        .checks
        .update(&daemon.config, &daemon.local, &daemon.status_tx);
    for r in runners {
        daemon.spawn(r);
    }
    if let Some(started) = embedding.started {
        let _ = started.send(());
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(Reload { config, done }) = reload.recv() => {
                daemon.reload(config).await;
                let _ = done.send(());
            }
        }
    }
    daemon.stop_all().await;
    Ok(())
}

/// The running instances and checks, and what a reload needs to replace them.
struct Daemon {
    config: VrrpConfig,
    handles: Vec<Handle>,
    checks: Checks,
    slots: Slots,
    status_tx: watch::Sender<Status>,
    status_rx: watch::Receiver<Status>,
    reporter: JoinHandle<()>,
    report: Arc<Notify>,
    next_id: u64,
    /// The embedding process's health sources ([`Embedding::local`]) and their tasks.
    local: Vec<(Key, i32)>,
    locals: Vec<JoinHandle<()>>,
}

/// One running instance, seen from the daemon.
struct Handle {
    cfg: InstanceConfig,
    id: u64,
    stop: oneshot::Sender<Stop>,
    updates: mpsc::Sender<Update>,
    task: JoinHandle<()>,
}

/// Why an instance stops; the log line says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    Removed,
    /// Started again with a new socket (see [`same_socket`]).
    Replaced,
}

/// A new configuration for a running instance.
#[derive(Debug)]
struct Update {
    cfg: InstanceConfig,
    vip_ifindex: Vec<u32>,
    tracked: Vec<(Key, i32)>,
}

/// Whether `new` configures the virtual router `old` runs: keepalived keeps
/// the state of an instance with the same VRID and family on the same
/// interface, whatever its name.
fn same_router(old: &InstanceConfig, new: &InstanceConfig) -> bool {
    old.interface == new.interface && old.vrid == new.vrid && old.is_ipv6() == new.is_ipv6()
}

/// Whether the running instance can take `new` in place: it needs the same
/// socket (multicast or unicast), source address, version and checksum;
/// otherwise the instance is replaced.
fn same_socket(old: &InstanceConfig, new: &InstanceConfig) -> bool {
    old.unicast_peers.is_empty() == new.unicast_peers.is_empty()
        && old.source == new.source
        && old.version == new.version
        && old.checksum == new.checksum
}

impl Daemon {
    fn spawn(&mut self, runner: Runner) {
        let id = self.next_id;
        self.next_id += 1;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (update_tx, update_rx) = mpsc::channel(4);
        let cfg = runner.cfg.clone();
        let task = tokio::spawn(runner.run(
            id,
            Arc::clone(&self.slots),
            self.status_rx.clone(),
            stop_rx,
            update_rx,
        ));
        self.handles.push(Handle {
            cfg,
            id,
            stop: stop_tx,
            updates: update_tx,
            task,
        });
    }

    /// Applies a new configuration, as keepalived's reload does: an instance
    /// with the same VRID on the same interface keeps its state (a master
    /// keeps its addresses, removes those no longer configured, adds and
    /// announces new ones) and takes its new priority, interval, tracking and
    /// so on; an instance no longer configured stops as at shutdown (priority
    /// 0, addresses removed); a new one starts. Checks whose configuration is
    /// unchanged keep running and keep their state. Everything that can fail
    /// (validation, interfaces, sockets) is done before anything changes: a
    /// configuration that fails is logged and the running one kept.
    async fn reload(&mut self, new: VrrpConfig) {
        if let Err(e) = new.validate() {
            tracing::error!("configuration not reloaded, the running one is kept: {e}");
            return;
        }
        // What becomes of each running instance: `Some` keeps it with this update.
        let mut updates: Vec<Option<Update>> = self.handles.iter().map(|_| None).collect();
        let mut replaced = vec![false; self.handles.len()];
        let mut start = Vec::new();
        for cfg in &new.instances {
            let old = self.handles.iter().position(|h| same_router(&h.cfg, cfg));
            let prepared = match old {
                Some(k) if same_socket(&self.handles[k].cfg, cfg) => {
                    prepare(&new, &self.local, cfg).map(|u| updates[k] = Some(u))
                }
                _ => Runner::open(&new, &self.local, cfg.clone()).map(|r| {
                    if let Some(k) = old {
                        replaced[k] = true;
                    }
                    start.push(r);
                }),
            };
            if let Err(e) = prepared {
                tracing::error!("configuration not reloaded, the running one is kept: {e}");
                return;
            }
        }
        self.checks.update(&new, &self.local, &self.status_tx);
        let mut leaving = Vec::new();
        let mut replacing = Vec::new();
        for ((mut h, update), replaced) in std::mem::take(&mut self.handles)
            .into_iter()
            .zip(updates)
            .zip(replaced)
        {
            match update {
                Some(update) => {
                    h.cfg = update.cfg.clone();
                    if h.updates.send(update).await.is_err() {
                        tracing::error!(instance = %h.cfg.name, "instance task gone; not updated");
                    }
                    self.handles.push(h);
                }
                None if replaced => replacing.push(h),
                None => leaving.push(h),
            }
        }
        let removed = leaving.len() + replacing.len();
        stop(leaving, Stop::Removed, &self.slots).await;
        stop(replacing, Stop::Replaced, &self.slots).await;
        let (updated, added) = (self.handles.len(), start.len());
        for r in start {
            self.spawn(r);
        }
        if new.status_file != self.config.status_file {
            self.reporter.abort();
            self.reporter = tokio::spawn(status::report_task(
                Arc::clone(&self.slots),
                new.status_file.clone(),
                Arc::clone(&self.report),
            ));
        }
        self.config = new;
        tracing::info!(
            "configuration reloaded: {updated} instances kept, {added} started, {removed} stopped"
        );
    }

    async fn stop_all(mut self) {
        stop(
            std::mem::take(&mut self.handles),
            Stop::Shutdown,
            &self.slots,
        )
        .await;
        self.checks.stop_all();
        for task in self.locals.drain(..) {
            task.abort();
        }
        self.reporter.abort();
        status::write_final(&self.slots, self.config.status_file.as_deref());
    }
}

/// Stops instances together and waits for them: masters send priority 0 and
/// remove their addresses. A removed instance leaves the status output; at
/// shutdown they all stay, as STOP, for the last status file.
async fn stop(handles: impl IntoIterator<Item = Handle>, why: Stop, slots: &Slots) {
    let mut waiting = Vec::new();
    for h in handles {
        let _ = h.stop.send(why);
        waiting.push((h.id, h.task));
    }
    for (id, task) in waiting {
        let _ = task.await;
        if why != Stop::Shutdown {
            slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }
}

/// What a running instance needs from a new configuration besides the
/// configuration itself: its addresses' interfaces, and tracked items.
fn prepare(
    config: &VrrpConfig,
    local: &[(Key, i32)],
    cfg: &InstanceConfig,
) -> Result<Update, Error> {
    Ok(Update {
        vip_ifindex: vip_interfaces(cfg)?,
        tracked: tracked(config, local, cfg),
        cfg: cfg.clone(),
    })
}

fn io_error(cfg: &InstanceConfig, what: String) -> impl FnOnce(io::Error) -> Error {
    let instance = cfg.name.clone();
    move |source| Error::Io {
        instance,
        what,
        source,
    }
}

/// The interface index of each virtual address, in `cfg.vips` order.
fn vip_interfaces(cfg: &InstanceConfig) -> Result<Vec<u32>, Error> {
    let mut vip_ifindex = Vec::new();
    for v in &cfg.vips {
        let dev = v.dev.as_deref().unwrap_or(&cfg.interface);
        vip_ifindex.push(
            interface_index(dev)
                .map_err(io_error(cfg, format!("interface {dev} of {}", v.address)))?,
        );
        if let Some(label) = &v.label {
            // The kernel refuses a label that does not start with the device name.
            if !label.starts_with(dev) {
                return Err(Error::Config(ConfError::Invalid {
                    key: format!("instance `{}` vip {}", cfg.name, v.address),
                    why: format!("label `{label}` must start with `{dev}`"),
                }));
            }
        }
    }
    Ok(vip_ifindex)
}

/// Tracked items of one instance and their weights: the configuration's, then the embedding
/// process's `local` sources.
fn tracked(config: &VrrpConfig, local: &[(Key, i32)], cfg: &InstanceConfig) -> Vec<(Key, i32)> {
    let mut tracked = Vec::new();
    let weights = cfg.weights_apply();
    let w = |override_: Option<i32>, default: i32| {
        if weights {
            override_.unwrap_or(default)
        } else {
            0
        }
    };
    for t in &cfg.track_script {
        tracked.push((
            Key::Script(t.name.clone()),
            w(t.weight, config.script[&t.name].weight),
        ));
    }
    for t in &cfg.track_proxy {
        tracked.push((
            Key::Proxy(t.name.clone()),
            w(t.weight, config.proxy_check[&t.name].weight),
        ));
    }
    for t in &cfg.track_interface {
        tracked.push((Key::Interface(t.name.clone()), w(t.weight, 0)));
    }
    if cfg.track_primary_interface {
        tracked.push((Key::Interface(cfg.interface.clone()), 0));
    }
    for (key, weight) in local {
        tracked.push((key.clone(), if weights { *weight } else { 0 }));
    }
    tracked
}

/// What a check task was started with: a task whose spec is unchanged by a
/// reload keeps running.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Script(ScriptCheck),
    Proxy(ProxyCheck),
    Interface,
}

/// The running check tasks, by tracked item.
#[derive(Default)]
struct Checks {
    tasks: BTreeMap<Key, (Spec, JoinHandle<()>)>,
}

impl Checks {
    /// Makes the running checks those `config` needs: unchanged ones keep
    /// running (and their state), changed ones restart, others stop and
    /// leave the shared status.
    fn update(
        &mut self,
        config: &VrrpConfig,
        local: &[(Key, i32)],
        status: &watch::Sender<Status>,
    ) {
        let mut wanted: BTreeMap<Key, Spec> = BTreeMap::new();
        for (name, s) in &config.script {
            wanted.insert(Key::Script(name.clone()), Spec::Script(s.clone()));
        }
        for (name, p) in &config.proxy_check {
            wanted.insert(Key::Proxy(name.clone()), Spec::Proxy(p.clone()));
        }
        for i in &config.instances {
            for (key, _) in tracked(config, local, i) {
                if let Key::Interface(_) = key {
                    wanted.insert(key, Spec::Interface);
                }
            }
        }
        let old = std::mem::take(&mut self.tasks);
        for (key, (spec, task)) in old {
            if wanted.get(&key) == Some(&spec) {
                self.tasks.insert(key, (spec, task));
            } else {
                task.abort();
                if !wanted.contains_key(&key) {
                    status.send_if_modified(|s| s.remove(&key).is_some());
                }
            }
        }
        for (key, spec) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let tx = status.clone();
            let task = match (&key, &spec) {
                (Key::Script(name), Spec::Script(s)) => {
                    tokio::spawn(track::script_task(name.clone(), s.clone(), tx))
                }
                (Key::Proxy(name), Spec::Proxy(p)) => {
                    tokio::spawn(track::proxy_task(name.clone(), p.clone(), tx))
                }
                (Key::Interface(name), _) => tokio::spawn(track::interface_task(name.clone(), tx)),
                _ => continue,
            };
            self.tasks.insert(key, (spec, task));
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }
}

/// Most adverts read before acting on a due timer.
const PENDING_MAX: usize = 64;

/// One instance with its sockets.
#[derive(Debug)]
struct Runner {
    cfg: InstanceConfig,
    machine: Instance,
    source: IpAddr,
    mode: ChecksumMode,
    socket: VrrpSocket,
    netlink: Netlink,
    garp: Arc<GarpSender>,
    /// Interface index of each virtual address, in `cfg.vips` order.
    vip_ifindex: Vec<u32>,
    /// Tracked items and their weights.
    tracked: Vec<(Key, i32)>,
    invalid: Invalid,
    rejects: RejectLog,
    /// Why the instance is in FAULT, from the tracked items that are down.
    fault_why: String,
    stopping: Stop,
    since: SystemTime,
    transitions: u64,
    sent: u64,
    vips_held: u32,
}

enum Wake {
    Stop(Stop),
    Status,
    Update(Box<Update>),
    Packet(io::Result<Received>),
    Timer,
}

impl Runner {
    fn open(
        config: &VrrpConfig,
        local: &[(Key, i32)],
        cfg: InstanceConfig,
    ) -> Result<Runner, Error> {
        let ifindex = interface_index(&cfg.interface)
            .map_err(io_error(&cfg, format!("interface {}", cfg.interface)))?;
        let vips: Vec<IpAddr> = cfg.vips.iter().map(|v| v.address.addr).collect();
        let ipv6 = cfg.is_ipv6();
        let source = match cfg.source {
            Some(s) => s,
            None => if ipv6 {
                link_local_ipv6(&cfg.interface, &vips).map(|a| a.map(IpAddr::V6))
            } else {
                primary_ipv4(&cfg.interface, &vips).map(|a| a.map(IpAddr::V4))
            }
            .map_err(io_error(&cfg, "reading addresses".into()))?
            .ok_or_else(|| {
                io_error(&cfg, format!("interface {}", cfg.interface))(io::Error::new(
                    io::ErrorKind::NotFound,
                    if ipv6 {
                        "has no link-local IPv6 address to send adverts from"
                    } else {
                        "has no IPv4 address to send adverts from"
                    },
                ))
            })?,
        };
        let vip_ifindex = vip_interfaces(&cfg)?;
        let multicast = cfg.unicast_peers.is_empty();
        let socket = match source {
            IpAddr::V4(_) => VrrpSocket::open_v4(&cfg.interface, ifindex, multicast),
            IpAddr::V6(s) => VrrpSocket::open_v6(&cfg.interface, ifindex, s, multicast),
        }
        .map_err(io_error(
            &cfg,
            format!("opening the VRRP socket from {source} (needs CAP_NET_RAW)"),
        ))?;
        let netlink = Netlink::open().map_err(io_error(&cfg, "opening netlink".into()))?;
        let garp =
            Arc::new(GarpSender::open().map_err(io_error(&cfg, "opening the ARP socket".into()))?);
        Ok(Runner {
            machine: Instance::new(cfg.params(source)),
            mode: cfg.checksum_mode(),
            tracked: tracked(config, local, &cfg),
            cfg,
            source,
            socket,
            netlink,
            garp,
            vip_ifindex,
            invalid: Invalid::default(),
            rejects: RejectLog::default(),
            fault_why: String::new(),
            stopping: Stop::Shutdown,
            since: SystemTime::now(),
            transitions: 0,
            sent: 0,
            vips_held: 0,
        })
    }

    async fn run(
        mut self,
        id: u64,
        slots: Slots,
        mut status: watch::Receiver<Status>,
        mut stop: oneshot::Receiver<Stop>,
        mut updates: mpsc::Receiver<Update>,
    ) {
        let origin = Instant::now();
        let snapshot = status.borrow_and_update().clone();
        self.apply_status(&snapshot, origin);
        let actions = self.machine.handle(origin.elapsed(), Event::Startup);
        self.execute(actions, origin);
        let mut buf = vec![0u8; 4096];
        loop {
            self.publish(id, &slots);
            let deadline = self.machine.next_deadline().map(|d| origin + d);
            let wake = tokio::select! {
                r = &mut stop => Wake::Stop(r.unwrap_or(Stop::Shutdown)),
                r = status.changed() => if r.is_ok() { Wake::Status } else { Wake::Stop(Stop::Shutdown) },
                // Only `stop` stops the instance: the daemon drops the update channel as it
                // stops an instance, which must not turn a removal into a plain shutdown.
                Some(u) = updates.recv() => Wake::Update(Box::new(u)),
                r = self.socket.recv(&mut buf) => Wake::Packet(r),
                _ = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Stop(why) => {
                    self.stopping = why;
                    let actions = self.machine.handle(origin.elapsed(), Event::Shutdown);
                    self.execute(actions, origin);
                    self.publish(id, &slots);
                    return;
                }
                Wake::Status => {
                    let snapshot = status.borrow_and_update().clone();
                    self.apply_status(&snapshot, origin);
                }
                Wake::Update(u) => {
                    let snapshot = status.borrow().clone();
                    self.update(*u, &snapshot, origin);
                }
                Wake::Packet(Ok(r)) => self.receive(&buf[..r.len], r, origin),
                Wake::Packet(Err(e)) => {
                    tracing::warn!(instance = %self.cfg.name, "receive failed: {e}")
                }
                Wake::Timer => {
                    self.receive_pending(&mut buf, origin);
                    let actions = self.machine.handle(origin.elapsed(), Event::Timer);
                    self.execute(actions, origin);
                }
            }
        }
    }

    fn snapshot(&self) -> InstanceStatus {
        InstanceStatus {
            name: self.cfg.name.clone(),
            state: self.machine.state(),
            priority: self.machine.priority(),
            base_priority: self.cfg.priority,
            since: self.since,
            transitions: self.transitions,
            rx: self.machine.stats(),
            invalid: self.invalid,
            sent: self.sent,
            vips_held: self.vips_held,
        }
    }

    /// Makes the instance's current status visible to the reporter.
    fn publish(&self, id: u64, slots: &Slots) {
        let status = self.snapshot();
        slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, status);
    }

    fn apply_status(&mut self, status: &Status, origin: Instant) {
        let up = |k: &Key| status.get(k).is_none_or(|h| h.up);
        let items = self.tracked.iter().map(|(k, w)| (*w, up(k)));
        let (priority, fault) = track::effective(self.cfg.priority, items);
        self.fault_why = self
            .tracked
            .iter()
            .filter(|(k, w)| *w == 0 && !up(k))
            .map(|(k, _)| match status.get(k) {
                Some(h) if !h.why.is_empty() => format!("{k} down ({})", h.why),
                _ => format!("{k} down"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        if priority != self.machine.priority() {
            let weighted: Vec<String> = self
                .tracked
                .iter()
                .filter(|(_, w)| *w != 0)
                .map(|(k, w)| {
                    let state = if up(k) { "up" } else { "down" };
                    format!("{k} {state} (weight {w:+})")
                })
                .collect();
            let why = if weighted.is_empty() {
                "configured priority".to_owned()
            } else {
                weighted.join(", ")
            };
            tracing::info!(
                instance = %self.cfg.name,
                "effective priority {} -> {priority}: {why}",
                self.machine.priority()
            );
        }
        let now = origin.elapsed();
        let mut actions = self.machine.handle(now, Event::Priority(priority));
        actions.extend(self.machine.handle(now, Event::Fault(fault)));
        self.execute(actions, origin);
    }

    /// A reload changed this instance's configuration (see [`Daemon::reload`]).
    fn update(&mut self, u: Update, status: &Status, origin: Instant) {
        let mut added = false;
        if self.machine.state() == State::Master {
            let old: Vec<(&Vip, u32)> =
                self.cfg.vips.iter().zip(self.vip_ifindex.clone()).collect();
            let new: Vec<(&Vip, u32)> = u.cfg.vips.iter().zip(u.vip_ifindex.clone()).collect();
            let same = |a: &(&Vip, u32), b: &(&Vip, u32)| a.0.address == b.0.address && a.1 == b.1;
            for gone in old.iter().filter(|o| !new.iter().any(|n| same(o, n))) {
                remove_vip(&mut self.netlink, &self.cfg.name, gone.0, gone.1);
                self.vips_held = self.vips_held.saturating_sub(1);
            }
            for fresh in new.iter().filter(|n| !old.iter().any(|o| same(o, n))) {
                if add_vip(&mut self.netlink, &self.cfg.name, fresh.0, fresh.1) {
                    self.vips_held += 1;
                }
                added = true;
            }
        }
        if u.cfg != self.cfg {
            tracing::info!(instance = %u.cfg.name, "configuration changed; state {} kept", self.machine.state().keepalived_name());
        }
        self.cfg = u.cfg;
        self.vip_ifindex = u.vip_ifindex;
        self.tracked = u.tracked;
        self.mode = self.cfg.checksum_mode();
        let actions = self
            .machine
            .reconfigure(origin.elapsed(), self.cfg.params(self.source));
        self.execute(actions, origin);
        if added {
            self.garp();
        }
        self.apply_status(status, origin);
    }

    /// Handles the adverts already waiting before a deadline is acted on: when
    /// backups take over one Skew_Time step apart, the advert of the one that
    /// went first must win over a timer that is due as it arrives (`select!`
    /// would pick either). Bounded, so a flood cannot hold the timer back.
    fn receive_pending(&mut self, buf: &mut [u8], origin: Instant) {
        for _ in 0..PENDING_MAX {
            match self.socket.try_recv(buf) {
                Some(r) => self.receive(&buf[..r.len], r, origin),
                None => return,
            }
        }
    }

    fn receive(&mut self, packet: &[u8], r: Received, origin: Instant) {
        let decoded: Result<(IpAddr, Advert), DecodeError> = match r.ipv6 {
            None => parse_ipv4(packet).and_then(|(h, payload)| {
                let (src, dst) = (IpAddr::V4(h.src), IpAddr::V4(h.dst));
                Advert::decode(payload, src, dst, self.mode).map(|a| (src, a))
            }),
            Some(h) => h.check().and_then(|()| {
                let (src, dst) = (IpAddr::V6(h.src), IpAddr::V6(h.dst));
                Advert::decode(packet, src, dst, self.mode).map(|a| (src, a))
            }),
        };
        match decoded {
            Ok((src, advert)) => {
                let actions = self
                    .machine
                    .handle(origin.elapsed(), Event::Advert { src, advert });
                self.execute(actions, origin);
            }
            Err(e) => {
                self.invalid.count(&e);
                let src = match r.ipv6 {
                    Some(h) => IpAddr::V6(h.src),
                    None => IpAddr::V4(ipv4_source(packet).unwrap_or(Ipv4Addr::UNSPECIFIED)),
                };
                self.rejected(origin, src, e.kind(), &e);
            }
        }
    }

    /// Logs a discarded packet, rate-limited per (peer, reason).
    fn rejected(
        &mut self,
        origin: Instant,
        src: IpAddr,
        kind: &'static str,
        detail: &dyn fmt::Display,
    ) {
        let name = &self.cfg.name;
        match self.rejects.note(origin.elapsed(), src, kind) {
            Verdict::Quiet => {}
            Verdict::Log { peer, suppressed } => {
                let who = if peer.is_unspecified() {
                    format!("{src} (and other peers)")
                } else {
                    src.to_string()
                };
                if suppressed == 0 {
                    tracing::warn!(instance = %name, "advert from {who} discarded: {detail}");
                } else {
                    tracing::warn!(
                        instance = %name,
                        "advert from {who} discarded: {detail} ({suppressed} more for the same reason since the last warning)"
                    );
                }
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>, origin: Instant) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::AddAddresses => self.add_addresses(),
                Action::RemoveAddresses => self.remove_addresses(),
                Action::Garp => self.garp(),
                Action::Rejected { src, reason } => {
                    self.rejected(origin, src, reason.describe(), &reason.describe())
                }
                Action::Transition {
                    from,
                    to,
                    priority,
                    cause,
                } => {
                    self.since = SystemTime::now();
                    self.transitions += 1;
                    let why = match cause {
                        Cause::Fault if !self.fault_why.is_empty() => self.fault_why.clone(),
                        Cause::Shutdown if self.stopping == Stop::Removed => {
                            "removed from the configuration by a reload".to_owned()
                        }
                        Cause::Shutdown if self.stopping == Stop::Replaced => {
                            "a reload changed its source, version, checksum or unicast peers; \
                             starting again"
                                .to_owned()
                        }
                        Cause::Shutdown => "shutting down".to_owned(),
                        c => c.to_string(),
                    };
                    let (from, to) = (from.keepalived_name(), to.keepalived_name());
                    let name = &self.cfg.name;
                    if cause == Cause::Fault {
                        tracing::warn!(instance = %name, "{from} -> {to} (priority {priority}) because: {why}");
                    } else {
                        tracing::info!(instance = %name, "{from} -> {to} (priority {priority}) because: {why}");
                    }
                    notify::run(&self.cfg.notify, name, self.machine.state(), priority);
                }
            }
        }
    }

    fn send_advert(&mut self, priority: u8) {
        let p = self.machine.params();
        let advert = Advert {
            version: p.version,
            vrid: p.vrid,
            priority,
            interval_cs: p.interval_cs,
            auth: p.auth,
            addresses: p.addresses.clone(),
        };
        let multicast = [match self.source {
            IpAddr::V4(_) => IpAddr::V4(MULTICAST_V4),
            IpAddr::V6(_) => IpAddr::V6(MULTICAST_V6),
        }];
        let destinations = if self.cfg.unicast_peers.is_empty() {
            &multicast[..]
        } else {
            &self.cfg.unicast_peers[..]
        };
        for &dst in destinations {
            let payload = advert.encode(self.source, dst, self.mode);
            let packet = match (self.source, dst) {
                (IpAddr::V4(src), IpAddr::V4(d)) => {
                    let mut packet = ipv4_header(src, d, payload.len()).to_vec();
                    packet.extend_from_slice(&payload);
                    packet
                }
                // The kernel builds the IPv6 header (see `network.rs`).
                _ => payload,
            };
            match self.socket.send(&packet, dst) {
                Ok(_) => self.sent += 1,
                // Expected while the link is down; the state machine goes on.
                Err(e) => tracing::debug!(instance = %self.cfg.name, %dst, "advert not sent: {e}"),
            }
        }
    }

    fn add_addresses(&mut self) {
        let mut held = 0;
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            if add_vip(&mut self.netlink, &self.cfg.name, v, index) {
                held += 1;
            }
        }
        self.vips_held = held;
    }

    fn remove_addresses(&mut self) {
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            remove_vip(&mut self.netlink, &self.cfg.name, v, index);
        }
        self.vips_held = 0;
    }

    /// One burst of `garp_master_repeat` announcements per address (gratuitous
    /// ARP for IPv4, unsolicited neighbour advertisement for IPv6), spaced by
    /// `garp_interval`; a burst with spacing runs in its own task.
    fn garp(&mut self) {
        let mut frames = Vec::new();
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            match self.netlink.link(index) {
                Ok(link) => {
                    if let Some(mac) = link.mac {
                        let dev = v.dev.as_deref().unwrap_or(&self.cfg.interface);
                        let router = v.address.addr.is_ipv6() && ndisc::forwarding(dev);
                        frames.push((index, mac, v.address.addr, router));
                    }
                }
                Err(e) => tracing::debug!(instance = %self.cfg.name, "no hardware address: {e}"),
            }
        }
        let repeat = self.cfg.garp_master_repeat.max(1);
        let interval = self.cfg.garp_interval();
        let garp = Arc::clone(&self.garp);
        let name = self.cfg.name.clone();
        let send_all = move || {
            for &(index, mac, addr, router) in &frames {
                if let Err(e) = garp.send(index, mac, addr, router) {
                    tracing::debug!(instance = %name, %addr, "address announcement not sent: {e}");
                }
            }
        };
        if interval.is_zero() {
            for _ in 0..repeat {
                send_all();
            }
        } else {
            tokio::spawn(async move {
                for n in 0..repeat {
                    if n > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    send_all();
                }
            });
        }
    }
}

/// Whether the address is on the interface now.
fn add_vip(netlink: &mut Netlink, instance: &str, v: &Vip, index: u32) -> bool {
    match netlink.add_address(index, v.address.addr, v.address.prefix, v.label.as_deref()) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(instance, vip = %v.address, "adding address failed: {e}");
            false
        }
    }
}

fn remove_vip(netlink: &mut Netlink, instance: &str, v: &Vip, index: u32) {
    if let Err(e) = netlink.remove_address(index, v.address.addr, v.address.prefix) {
        tracing::error!(instance, vip = %v.address, "removing address failed: {e}");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A configuration with checks only (no validation: no instance needed).
    fn checks_only(text: &str) -> VrrpConfig {
        toml::from_str(text).unwrap()
    }

    async fn wait_for(rx: &mut watch::Receiver<Status>, f: impl Fn(&Status) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s)))
            .await
            .expect("in time")
            .unwrap();
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_checks_restarts_changed_ones_and_drops_removed_ones() {
        let (tx, mut rx) = watch::channel(Status::new());
        let mut checks = Checks::default();
        let ok = Key::Script("ok".into());
        let gone = Key::Proxy("gone".into());
        let new = Key::Script("new".into());
        checks.update(
            &checks_only(
                "[script.ok]\ncommand = \"true\"\ninterval = 0.05\n\
                 [proxy_check.gone]\naddress = \"127.0.0.1:1\"\ninterval = 0.05\n",
            ),
            &[],
            &tx,
        );
        wait_for(&mut rx, |s| {
            s.get(&ok).is_some_and(|h| h.up) && s.get(&gone).is_some_and(|h| !h.up)
        })
        .await;
        let why = rx.borrow()[&gone].why.clone();
        assert!(
            why.starts_with("failed 1 times in a row, last: connecting to 127.0.0.1:1: "),
            "{why}"
        );
        let kept = checks.tasks[&ok].1.id();
        checks.update(
            &checks_only(
                "[script.ok]\ncommand = \"true\"\ninterval = 0.05\n\
                 [script.new]\ncommand = \"false\"\ninterval = 0.05\n",
            ),
            &[],
            &tx,
        );
        assert!(!rx.borrow().contains_key(&gone));
        assert_eq!(checks.tasks[&ok].1.id(), kept, "unchanged: still running");
        wait_for(&mut rx, |s| {
            s.get(&new)
                .is_some_and(|h| !h.up && h.why.ends_with("exit status: 1"))
        })
        .await;
        checks.update(
            &checks_only(
                "[script.ok]\ncommand = \"true\"\ninterval = 0.1\n\
                 [script.new]\ncommand = \"false\"\ninterval = 0.05\n",
            ),
            &[],
            &tx,
        );
        assert_ne!(checks.tasks[&ok].1.id(), kept, "changed: restarted");
        // The restarted check keeps its last state until it reports.
        assert!(rx.borrow()[&ok].up);
        checks.stop_all();
        assert!(checks.tasks.is_empty());
    }
}
