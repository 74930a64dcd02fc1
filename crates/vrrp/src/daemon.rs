//! The running daemon: checks and instances as tokio tasks, one shutdown path.
//!
//! Each instance owns its socket and its [`Instance`] state machine; its task
//! turns packets, deadlines and tracking changes into events, and performs
//! the actions that come back (send adverts, add or remove the virtual
//! addresses, gratuitous ARP, notify scripts). Everything that can fail at
//! startup (interfaces, addresses, sockets) fails before any instance starts.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{ConfError, InstanceConfig, VrrpConfig};
use crate::garp::GarpSender;
use crate::instance::{Action, Event, Instance};
use crate::netlink::Netlink;
use crate::network::{interface_index, primary_ipv4, VrrpSocket};
use crate::notify;
use crate::packet::{ipv4_header, parse_ipv4, Advert, ChecksumMode, MULTICAST_V4};
use crate::privileges;
use crate::status::{self, InstanceStatus, Slots};
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

/// Runs every configured instance until `shutdown` completes, then leaves
/// cleanly: a master sends priority 0 and removes its addresses. Each
/// notification of `report` logs the status of every instance (and rewrites
/// the status file, if configured).
pub async fn run(
    config: VrrpConfig,
    shutdown: impl Future<Output = ()>,
    report: Arc<Notify>,
) -> Result<(), Error> {
    config.validate()?;
    let mut runners = Vec::new();
    let slots: Slots = Arc::default();
    for i in &config.instances {
        runners.push(Runner::open(&config, i.clone(), Arc::clone(&slots))?);
    }
    // Every socket that needs CAP_NET_RAW is open; only netlink changes remain.
    match privileges::drop_to_net_admin() {
        Ok((before, after)) => tracing::debug!(
            "capabilities {:#x} reduced to {:#x} (CAP_NET_ADMIN)",
            before.permitted,
            after.permitted
        ),
        Err(e) => tracing::warn!("could not drop capabilities: {e}"),
    }
    let (status_tx, status_rx) = watch::channel(Status::new());
    let mut checks = JoinSet::new();
    for (name, s) in &config.script {
        checks.spawn(track::script_task(
            name.clone(),
            s.clone(),
            status_tx.clone(),
        ));
    }
    for (name, p) in &config.proxy_check {
        checks.spawn(track::proxy_task(
            name.clone(),
            p.clone(),
            status_tx.clone(),
        ));
    }
    let interfaces: BTreeSet<String> = runners
        .iter()
        .flat_map(|r| r.tracked.iter())
        .filter_map(|(k, _)| match k {
            Key::Interface(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    for name in interfaces {
        checks.spawn(track::interface_task(name, status_tx.clone()));
    }
    checks.spawn(status::report_task(
        Arc::clone(&slots),
        config.status_file.clone(),
        report,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut instances = JoinSet::new();
    for r in runners {
        instances.spawn(r.run(status_rx.clone(), stop_rx.clone()));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while instances.join_next().await.is_some() {}
    checks.abort_all();
    status::write_final(&slots, config.status_file.as_deref());
    Ok(())
}

/// Most adverts read before acting on a due timer.
const PENDING_MAX: usize = 64;

/// One instance with its sockets.
#[derive(Debug)]
struct Runner {
    cfg: InstanceConfig,
    machine: Instance,
    source: Ipv4Addr,
    mode: ChecksumMode,
    socket: VrrpSocket,
    netlink: Netlink,
    garp: Arc<GarpSender>,
    /// Interface index of each virtual address, in `cfg.vips` order.
    vip_ifindex: Vec<u32>,
    /// Tracked items and their weights.
    tracked: Vec<(Key, i32)>,
    invalid: u64,
    /// Where this instance publishes its status, and its index there.
    slots: Slots,
    slot: usize,
    since: SystemTime,
    transitions: u64,
}

enum Wake {
    Stop,
    Status,
    Packet(io::Result<usize>),
    Timer,
}

impl Runner {
    fn open(config: &VrrpConfig, cfg: InstanceConfig, slots: Slots) -> Result<Runner, Error> {
        let err = |what: String| {
            let instance = cfg.name.clone();
            move |source| Error::Io {
                instance,
                what,
                source,
            }
        };
        let ifindex =
            interface_index(&cfg.interface).map_err(err(format!("interface {}", cfg.interface)))?;
        let vips: Vec<Ipv4Addr> = cfg.vips.iter().map(|v| v.address.addr).collect();
        let source = match cfg.source {
            Some(s) => s,
            None => primary_ipv4(&cfg.interface, &vips)
                .map_err(err("reading addresses".into()))?
                .ok_or_else(|| {
                    err(format!("interface {}", cfg.interface))(io::Error::new(
                        io::ErrorKind::NotFound,
                        "has no IPv4 address to send adverts from",
                    ))
                })?,
        };
        let mut vip_ifindex = Vec::new();
        for v in &cfg.vips {
            let dev = v.dev.as_deref().unwrap_or(&cfg.interface);
            vip_ifindex.push(
                interface_index(dev).map_err(err(format!("interface {dev} of {}", v.address)))?,
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
        let socket = VrrpSocket::open(&cfg.interface, ifindex, cfg.unicast_peers.is_empty())
            .map_err(err("opening the VRRP socket (needs CAP_NET_RAW)".into()))?;
        let netlink = Netlink::open().map_err(err("opening netlink".into()))?;
        let garp = Arc::new(GarpSender::open().map_err(err("opening the ARP socket".into()))?);
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
        let mut runner = Runner {
            machine: Instance::new(cfg.params(source)),
            mode: cfg.checksum_mode(),
            cfg,
            source,
            socket,
            netlink,
            garp,
            vip_ifindex,
            tracked,
            invalid: 0,
            slots,
            slot: 0,
            since: SystemTime::now(),
            transitions: 0,
        };
        runner.slot = {
            let mut slots = runner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.push(runner.snapshot());
            slots.len() - 1
        };
        Ok(runner)
    }

    async fn run(mut self, mut status: watch::Receiver<Status>, mut stop: watch::Receiver<bool>) {
        let origin = Instant::now();
        let snapshot = status.borrow_and_update().clone();
        self.apply_status(&snapshot, origin);
        let actions = self.machine.handle(origin.elapsed(), Event::Startup);
        self.execute(actions);
        let mut buf = vec![0u8; 4096];
        loop {
            self.publish();
            let deadline = self.machine.next_deadline().map(|d| origin + d);
            let wake = tokio::select! {
                _ = stop.changed() => Wake::Stop,
                r = status.changed() => if r.is_ok() { Wake::Status } else { Wake::Stop },
                r = self.socket.recv(&mut buf) => Wake::Packet(r),
                _ = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Stop => {
                    let actions = self.machine.handle(origin.elapsed(), Event::Shutdown);
                    self.execute(actions);
                    self.publish();
                    return;
                }
                Wake::Status => {
                    let snapshot = status.borrow_and_update().clone();
                    self.apply_status(&snapshot, origin);
                }
                Wake::Packet(Ok(n)) => self.receive(&buf[..n], origin),
                Wake::Packet(Err(e)) => {
                    tracing::warn!(instance = %self.cfg.name, "receive failed: {e}")
                }
                Wake::Timer => {
                    self.receive_pending(&mut buf, origin);
                    let actions = self.machine.handle(origin.elapsed(), Event::Timer);
                    self.execute(actions);
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
        }
    }

    /// Makes the instance's current status visible to the reporter.
    fn publish(&self) {
        let status = self.snapshot();
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[self.slot] = status;
    }

    fn apply_status(&mut self, status: &Status, origin: Instant) {
        let items = self
            .tracked
            .iter()
            .map(|(k, w)| (*w, status.get(k).copied().unwrap_or(true)));
        let (priority, fault) = track::effective(self.cfg.priority, items);
        let now = origin.elapsed();
        let mut actions = self.machine.handle(now, Event::Priority(priority));
        actions.extend(self.machine.handle(now, Event::Fault(fault)));
        self.execute(actions);
    }

    /// Handles the adverts already waiting before a deadline is acted on: when
    /// backups take over one Skew_Time step apart, the advert of the one that
    /// went first must win over a timer that is due as it arrives (`select!`
    /// would pick either). Bounded, so a flood cannot hold the timer back.
    fn receive_pending(&mut self, buf: &mut [u8], origin: Instant) {
        for _ in 0..PENDING_MAX {
            match self.socket.try_recv(buf) {
                Some(n) => self.receive(&buf[..n], origin),
                None => return,
            }
        }
    }

    fn receive(&mut self, packet: &[u8], origin: Instant) {
        let decoded = parse_ipv4(packet).and_then(|(h, payload)| {
            Advert::decode(payload, h.src, h.dst, self.mode).map(|a| (h.src, a))
        });
        match decoded {
            Ok((src, advert)) => {
                let actions = self
                    .machine
                    .handle(origin.elapsed(), Event::Advert { src, advert });
                self.execute(actions);
            }
            Err(e) => {
                self.invalid += 1;
                tracing::debug!(instance = %self.cfg.name, invalid = self.invalid, "advert discarded: {e}");
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::AddAddresses => self.add_addresses(),
                Action::RemoveAddresses => self.remove_addresses(),
                Action::Garp => self.garp(),
                Action::Transition { from, to, priority } => {
                    self.since = SystemTime::now();
                    self.transitions += 1;
                    tracing::info!(instance = %self.cfg.name, ?from, ?to, priority, "state change");
                    notify::run(&self.cfg.notify, &self.cfg.name, to, priority);
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
        let multicast = [MULTICAST_V4];
        let destinations = if self.cfg.unicast_peers.is_empty() {
            &multicast[..]
        } else {
            &self.cfg.unicast_peers[..]
        };
        for &dst in destinations {
            let payload = advert.encode(self.source, dst, self.mode);
            let mut packet = ipv4_header(self.source, dst, payload.len()).to_vec();
            packet.extend_from_slice(&payload);
            if let Err(e) = self.socket.send(&packet, dst) {
                // Expected while the link is down; the state machine goes on.
                tracing::debug!(instance = %self.cfg.name, %dst, "advert not sent: {e}");
            }
        }
    }

    fn add_addresses(&mut self) {
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            if let Err(e) = self.netlink.add_address(
                index,
                v.address.addr,
                v.address.prefix,
                v.label.as_deref(),
            ) {
                tracing::error!(instance = %self.cfg.name, vip = %v.address, "adding address failed: {e}");
            }
        }
    }

    fn remove_addresses(&mut self) {
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            if let Err(e) = self
                .netlink
                .remove_address(index, v.address.addr, v.address.prefix)
            {
                tracing::error!(instance = %self.cfg.name, vip = %v.address, "removing address failed: {e}");
            }
        }
    }

    /// One burst of `garp_master_repeat` announcements per address, spaced by
    /// `garp_interval`; a burst with spacing runs in its own task.
    fn garp(&mut self) {
        let mut frames = Vec::new();
        for (v, &index) in self.cfg.vips.iter().zip(&self.vip_ifindex) {
            match self.netlink.link(index) {
                Ok(link) => {
                    if let Some(mac) = link.mac {
                        frames.push((index, mac, v.address.addr));
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
            for &(index, mac, addr) in &frames {
                if let Err(e) = garp.send(index, mac, addr) {
                    tracing::debug!(instance = %name, %addr, "gratuitous ARP not sent: {e}");
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
