//! The VRRP state machine of one virtual router, RFC 5798 §6 (and RFC 3768 §6
//! for v2), with the keepalived behaviours its peers rely on.
//!
//! Pure: [`Instance::handle`] takes an [`Event`] and the current time (any
//! monotonic clock, as a `Duration` since an origin the caller picks) and
//! returns the [`Action`]s to perform; [`Instance::next_deadline`] says when to
//! call it next with [`Event::Timer`]. No I/O and no clock, so every transition
//! is tested deterministically below.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::packet::{Advert, Auth, Version};

/// Priority of the router that owns the virtual addresses (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority sent by a master that stops being master (RFC 5798 §5.2.4).
pub const PRIORITY_LEAVING: u8 = 0;
/// With `fast_takeover`, the most a backup waits per priority level below 256
/// after a priority-0 advert (see [`Instance::takeover_skew`]).
pub const FAST_SKEW_STEP: Duration = Duration::from_millis(1);

/// What the state machine needs to know about its virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub vrid: u8,
    pub version: Version,
    /// Configured priority; the effective one comes with [`Event::Priority`].
    pub priority: u8,
    /// Advertisement interval in centiseconds (VRRPv2: a multiple of 100).
    pub interval_cs: u16,
    pub auth: Auth,
    /// The virtual addresses, as advertised.
    pub addresses: Vec<IpAddr>,
    /// Preempt a lower-priority master (RFC 5798 §6.1 Preempt_Mode).
    pub preempt: bool,
    /// keepalived's preempt_delay: after startup, or after first hearing a
    /// lower-priority master, wait this long before preempting it.
    pub preempt_delay: Duration,
    /// The address adverts are sent from; breaks priority ties (RFC 5798 §6.4.3)
    /// and identifies our own adverts looped back to us.
    pub local_address: IpAddr,
    /// Reject adverts whose address list differs from ours (keepalived's default;
    /// `vrrp_skip_check_adv_addr` turns it off).
    pub check_addresses: bool,
    /// Gratuitous ARP again this long after becoming master (keepalived's
    /// garp_master_delay); `None` sends only the first burst.
    pub garp_master_delay: Option<Duration>,
    /// After a priority-0 advert, wait [`Instance::takeover_skew`] instead of
    /// the full Skew_Time (keepcached's own behaviour, see there).
    pub fast_takeover: bool,
}

/// RFC 5798 §6.4 states, plus keepalived's FAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or stopped.
    Initialize,
    Backup,
    Master,
    /// A tracked check or interface says this node must not hold the addresses.
    Fault,
}

impl State {
    /// The state names keepalived passes to notify scripts.
    pub fn keepalived_name(self) -> &'static str {
        match self {
            State::Initialize => "STOP",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// RFC 5798 §6.4.1 Startup.
    Startup,
    /// A decoded advert for this VRID or another, with its IPv4 source.
    Advert { src: IpAddr, advert: Advert },
    /// A deadline from [`Instance::next_deadline`] has passed.
    Timer,
    /// The effective priority computed from tracked checks changed.
    Priority(u8),
    /// A tracked check or interface entered (`true`) or left (`false`) fault.
    Fault(bool),
    /// RFC 5798 §6.4.1 Shutdown.
    Shutdown,
}

/// Outputs of the state machine, performed in order by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority.
    SendAdvert { priority: u8 },
    /// Configure the virtual addresses on the interface.
    AddAddresses,
    /// Remove the virtual addresses from the interface.
    RemoveAddresses,
    /// Send gratuitous ARPs for the virtual addresses.
    Garp,
    /// The state changed: log it and run the notify scripts.
    Transition {
        from: State,
        to: State,
        priority: u8,
        cause: Cause,
    },
    /// An advert for this virtual router (or carrying its addresses) was
    /// discarded: the operator should hear of it, a misconfigured peer is
    /// otherwise a silent split brain.
    Rejected { src: IpAddr, reason: Reject },
}

/// Why the state changed, as the log line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// RFC 5798 §6.4.1: the owner starts as master, everyone else as backup.
    Startup,
    /// Master_Down_Timer fired (RFC 5798 §6.4.2).
    MasterDown(Down),
    /// A master heard an advert that outranks it (RFC 5798 §6.4.3).
    Outranked { src: IpAddr, priority: u8 },
    /// A tracked check or interface put the instance in FAULT; the caller
    /// knows which.
    Fault,
    /// Every tracked item that caused FAULT is up again.
    Recovered,
    /// The instance stops (shutdown, or removed by a reload).
    Shutdown,
}

/// What a backup concluded when Master_Down_Timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// The master sent priority 0: it is leaving.
    Left { src: IpAddr },
    /// The master has a lower priority and this backup preempts it.
    Preempt { src: IpAddr, priority: u8 },
    /// No advert from the master (`None`: none heard in this state) for this long.
    Silent { src: Option<IpAddr>, for_: Duration },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Startup => write!(f, "startup"),
            Cause::MasterDown(Down::Left { src }) => {
                write!(f, "master {src} left (advertised priority 0)")
            }
            Cause::MasterDown(Down::Preempt { src, priority }) => {
                write!(f, "preempting master {src} of lower priority {priority}")
            }
            Cause::MasterDown(Down::Silent {
                src: Some(src),
                for_,
            }) => write!(
                f,
                "master {src} silent for {:.2} s (Master_Down_Interval)",
                for_.as_secs_f64()
            ),
            Cause::MasterDown(Down::Silent { src: None, for_ }) => write!(
                f,
                "no master heard for {:.2} s (Master_Down_Interval)",
                for_.as_secs_f64()
            ),
            Cause::Outranked { src, priority } => {
                write!(
                    f,
                    "{src} advertises priority {priority}, which outranks ours"
                )
            }
            Cause::Fault => write!(f, "a tracked item is down"),
            Cause::Recovered => write!(f, "tracked items up again"),
            Cause::Shutdown => write!(f, "stopping"),
        }
    }
}

/// Why an advert for our VRID was discarded, as keepalived would discard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    Version,
    AuthType,
    AuthPassword,
    Interval,
    Addresses,
    /// Another VRID advertising one of our addresses: a peer configured with
    /// the wrong `vrid` (unrelated VRIDs on the same LAN are normal and quiet).
    Vrid,
}

impl Reject {
    /// What the operator reads in the log.
    pub fn describe(self) -> &'static str {
        match self {
            Reject::Version => "VRRP version differs from ours",
            Reject::AuthType => "authentication type differs from ours",
            Reject::AuthPassword => "authentication password mismatch",
            Reject::Interval => "advert interval differs from ours (VRRPv2 needs the same)",
            Reject::Addresses => "virtual address list differs from ours",
            Reject::Vrid => "another VRID advertises one of our virtual addresses",
        }
    }
}

/// Counts of received adverts, by fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxStats {
    pub accepted: u64,
    pub other_vrid: u64,
    pub own: u64,
    pub version: u64,
    pub auth_type: u64,
    pub auth_password: u64,
    pub interval: u64,
    pub addresses: u64,
    pub vrid: u64,
}

/// One virtual router.
#[derive(Debug)]
pub struct Instance {
    params: Params,
    state: State,
    priority: u8,
    fault: bool,
    /// RFC 5798 §6.1 Master_Adver_Interval: learnt from the master in v3.
    master_interval_cs: u16,
    /// Adver_Timer (Master).
    adver_at: Option<Duration>,
    /// Master_Down_Timer (Backup).
    master_down_at: Option<Duration>,
    /// Second gratuitous ARP burst (Master).
    garp_at: Option<Duration>,
    /// Before this time a lower-priority master is not preempted.
    preempt_at: Option<Duration>,
    /// The last accepted advert while backup: source, priority, when. Says
    /// why Master_Down_Timer fired.
    heard: Option<(IpAddr, u8, Duration)>,
    /// When the instance last became backup.
    backup_since: Duration,
    stats: RxStats,
}

impl Instance {
    pub fn new(params: Params) -> Instance {
        Instance {
            priority: params.priority,
            master_interval_cs: params.interval_cs,
            params,
            state: State::Initialize,
            fault: false,
            adver_at: None,
            master_down_at: None,
            garp_at: None,
            preempt_at: None,
            heard: None,
            backup_since: Duration::ZERO,
            stats: RxStats::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The effective priority (configured priority plus tracking weights).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// When to deliver the next [`Event::Timer`], if any timer runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.adver_at, self.master_down_at, self.garp_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Skew_Time from the effective priority: RFC 3768 §6.1 for v2, a fraction
    /// of one second whatever the advert interval; RFC 5798 §6.1 for v3, a
    /// fraction of Master_Adver_Interval. In microseconds, as keepalived
    /// computes it: whole centiseconds would give adjacent priorities the same
    /// wait and lose their order.
    pub fn skew_time(&self) -> Duration {
        let interval_us = match self.params.version {
            Version::V2 => 1_000_000,
            Version::V3 => u64::from(self.master_interval_cs) * 10_000,
        };
        Duration::from_micros((256 - u64::from(self.priority)) * interval_us / 256)
    }

    /// How long a backup waits after a priority-0 advert before taking over.
    ///
    /// RFC 5798 §6.4.2 (RFC 3768 §6.4.2 alike) sets Master_Down_Timer to
    /// Skew_Time there. In that place Skew_Time does one job, ordering: all
    /// backups hear the same priority-0 advert at about the same moment, the
    /// highest priority waits least and takes over first, and its advert reaches
    /// the others before their own timers fire, so they stay backup (§6.4.2: an
    /// advert of higher priority resets Master_Down_Timer). The order only needs
    /// adjacent priorities to wait long enough apart for one advert to cross the
    /// LAN and be handled. The RFCs space them 1/256 of a second (v2) or of
    /// Master_Adver_Interval (v3) apart: 3.9 ms at 1 s, and RFC 5798 relies on
    /// 0.39 ms at 0.1 s. The absolute length, up to a whole second (613 ms for
    /// priority 99), buys nothing more, and it is what the clients of the
    /// leaving master wait.
    ///
    /// With `fast_takeover` the spacing is capped at [`FAST_SKEW_STEP`] (1 ms,
    /// the daemon's timer resolution and well above a LAN's one-way delay):
    /// min(Skew_Time, (256 - Priority) × 1 ms). A higher priority still always
    /// waits less, so the same backup wins; priority 99 waits 157 ms instead of
    /// 613 ms; v3 at 0.256 s and shorter intervals is unchanged. Should
    /// two backups still both become master (a host stalled longer than a step),
    /// each hears the other and the lower yields (§6.4.3), as when the RFC's own
    /// timers tie.
    ///
    /// Only this backup's own wait changes: beside keepalived masters, and
    /// keepalived backups of lower priority, the outcome is the RFC's, sooner.
    /// A keepalived backup of higher priority, though, waits the full
    /// Skew_Time: ours would take over first and then yield to it (or keep the
    /// role if it runs nopreempt). So the
    /// option is on by default in TOML configurations (keepcached clusters) and
    /// off when reading a keepalived.conf, whose peers may be keepalived.
    pub fn takeover_skew(&self) -> Duration {
        let skew = self.skew_time();
        if !self.params.fast_takeover {
            return skew;
        }
        let levels = 256 - u32::from(self.priority);
        skew.min(FAST_SKEW_STEP * levels)
    }

    /// RFC 5798 §6.1 Master_Down_Interval.
    pub fn master_down_interval(&self) -> Duration {
        centis(3 * u32::from(self.master_interval_cs)) + self.skew_time()
    }

    fn adver_interval(&self) -> Duration {
        centis(u32::from(self.params.interval_cs))
    }

    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Startup => self.startup(now, &mut out),
            Event::Advert { src, advert } => self.receive(now, src, &advert, &mut out),
            Event::Timer => self.timers(now, &mut out),
            Event::Priority(p) => self.set_priority(now, p, &mut out),
            Event::Fault(f) => self.set_fault(now, f, &mut out),
            Event::Shutdown => self.shutdown(&mut out),
        }
        out
    }

    /// A reload changed the configuration of this virtual router: the state
    /// is kept (keepalived does the same, so an unchanged or re-prioritised
    /// instance does not drop its addresses); a master announces the new
    /// parameters at once. The effective priority follows with
    /// [`Event::Priority`].
    pub fn reconfigure(&mut self, now: Duration, params: Params) -> Vec<Action> {
        let mut out = Vec::new();
        if params.interval_cs != self.params.interval_cs {
            self.master_interval_cs = params.interval_cs;
        }
        self.params = params;
        if self.state == State::Master {
            self.send_now(now, &mut out);
        }
        out
    }

    /// RFC 5798 §6.4.1: the owner starts as master, everyone else as backup.
    fn startup(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        if !self.params.preempt_delay.is_zero() {
            self.preempt_at = Some(now + self.params.preempt_delay);
        }
        if self.fault {
            self.transition(State::Fault, Cause::Fault, out);
        } else if self.priority == PRIORITY_OWNER {
            self.become_master(now, Cause::Startup, out);
        } else {
            self.become_backup(now, Cause::Startup, out);
        }
    }

    fn timers(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.master_down_at.is_some_and(|t| t <= now) {
            // RFC 5798 §6.4.2: Master_Down_Timer fired, no master is heard.
            let why = self.down_cause(now);
            self.become_master(now, Cause::MasterDown(why), out);
            return;
        }
        if self.adver_at.is_some_and(|t| t <= now) {
            // RFC 5798 §6.4.3: Adver_Timer fired.
            out.push(Action::SendAdvert {
                priority: self.priority,
            });
            self.adver_at = Some(now + self.adver_interval());
        }
        if self.garp_at.is_some_and(|t| t <= now) {
            self.garp_at = None;
            out.push(Action::Garp);
        }
    }

    /// Why Master_Down_Timer fired, from the last advert heard.
    fn down_cause(&self, now: Duration) -> Down {
        match self.heard {
            Some((src, PRIORITY_LEAVING, _)) => Down::Left { src },
            Some((src, priority, at))
                if priority < self.priority
                    && self.params.preempt
                    && now.saturating_sub(at) < self.master_down_interval() =>
            {
                Down::Preempt { src, priority }
            }
            Some((src, _, at)) => Down::Silent {
                src: Some(src),
                for_: now.saturating_sub(at),
            },
            None => Down::Silent {
                src: None,
                for_: now.saturating_sub(self.backup_since),
            },
        }
    }

    fn receive(&mut self, now: Duration, src: IpAddr, advert: &Advert, out: &mut Vec<Action>) {
        if src == self.params.local_address {
            self.stats.own += 1;
            return;
        }
        if advert.vrid != self.params.vrid {
            self.stats.other_vrid += 1;
            if advert
                .addresses
                .iter()
                .any(|a| self.params.addresses.contains(a))
            {
                self.stats.vrid += 1;
                out.push(Action::Rejected {
                    src,
                    reason: Reject::Vrid,
                });
            }
            return;
        }
        if let Err(reason) = self.check(advert) {
            match reason {
                Reject::Version => self.stats.version += 1,
                Reject::AuthType => self.stats.auth_type += 1,
                Reject::AuthPassword => self.stats.auth_password += 1,
                Reject::Interval => self.stats.interval += 1,
                Reject::Addresses => self.stats.addresses += 1,
                Reject::Vrid => self.stats.vrid += 1,
            }
            out.push(Action::Rejected { src, reason });
            return;
        }
        self.stats.accepted += 1;
        match self.state {
            State::Backup => {
                self.heard = Some((src, advert.priority, now));
                self.backup_receive(now, advert)
            }
            State::Master => self.master_receive(now, src, advert, out),
            State::Initialize | State::Fault => {}
        }
    }

    /// The checks RFC 3768 §7.1 / RFC 5798 §7.1 leave to the instance, as
    /// keepalived applies them.
    pub fn check(&self, advert: &Advert) -> Result<(), Reject> {
        if advert.version != self.params.version {
            return Err(Reject::Version);
        }
        if advert.version == Version::V2 {
            // RFC 3768 §7.1: authentication type and data must match ours.
            match (advert.auth, self.params.auth) {
                (Auth::None, Auth::None) => {}
                (Auth::Pass(got), Auth::Pass(want)) if got == want => {}
                (Auth::Pass(_), Auth::Pass(_)) => return Err(Reject::AuthPassword),
                _ => return Err(Reject::AuthType),
            }
            // RFC 3768 §7.1: v2 has no interval learning, so it must match.
            if advert.interval_cs != self.params.interval_cs {
                return Err(Reject::Interval);
            }
        }
        if self.params.check_addresses && !same_addresses(&advert.addresses, &self.params.addresses)
        {
            return Err(Reject::Addresses);
        }
        Ok(())
    }

    /// RFC 5798 §6.4.2, Backup receives an advert.
    fn backup_receive(&mut self, now: Duration, advert: &Advert) {
        if advert.priority == PRIORITY_LEAVING {
            // The master is leaving: take over after Skew_Time only, or less.
            self.master_down_at = Some(now + self.takeover_skew());
            return;
        }
        let lower = advert.priority < self.priority;
        let delayed = lower && self.params.preempt && self.preempt_delayed(now);
        if !self.params.preempt || !lower || delayed {
            if self.params.version == Version::V3 {
                self.master_interval_cs = advert.interval_cs;
            }
            self.master_down_at = Some(now + self.master_down_interval());
        }
        // Otherwise a lower-priority master is ignored, so Master_Down_Timer fires.
    }

    /// keepalived's preempt_delay: starts at startup or at the first
    /// lower-priority master heard, whichever comes first.
    fn preempt_delayed(&mut self, now: Duration) -> bool {
        if self.params.preempt_delay.is_zero() {
            return false;
        }
        let until = *self
            .preempt_at
            .get_or_insert(now + self.params.preempt_delay);
        now < until
    }

    /// RFC 5798 §6.4.3, Master receives an advert.
    fn master_receive(
        &mut self,
        now: Duration,
        src: IpAddr,
        advert: &Advert,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == PRIORITY_LEAVING {
            // Another master is leaving: assert ourselves at once.
            self.send_now(now, out);
            return;
        }
        let higher = advert.priority > self.priority
            || (advert.priority == self.priority && src > self.params.local_address);
        if higher {
            if self.params.version == Version::V3 {
                self.master_interval_cs = advert.interval_cs;
            }
            out.push(Action::RemoveAddresses);
            self.become_backup(
                now,
                Cause::Outranked {
                    src,
                    priority: advert.priority,
                },
                out,
            );
            self.heard = Some((src, advert.priority, now));
        } else {
            // keepalived answers a lower-priority master at once (and re-announces
            // the addresses) instead of waiting for its Adver_Timer, so that two
            // masters after a partition heal resolve within one round trip.
            self.send_now(now, out);
            out.push(Action::Garp);
        }
    }

    fn send_now(&mut self, now: Duration, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        self.adver_at = Some(now + self.adver_interval());
    }

    fn set_priority(&mut self, now: Duration, priority: u8, out: &mut Vec<Action>) {
        if priority == self.priority {
            return;
        }
        self.priority = priority;
        // A master tells its peers at once, so a backup that now has the higher
        // priority can preempt without waiting for the next advert.
        if self.state == State::Master {
            self.send_now(now, out);
        }
    }

    fn set_fault(&mut self, now: Duration, fault: bool, out: &mut Vec<Action>) {
        if fault == self.fault {
            return;
        }
        self.fault = fault;
        match (fault, self.state) {
            (true, State::Master) => {
                out.push(Action::SendAdvert {
                    priority: PRIORITY_LEAVING,
                });
                out.push(Action::RemoveAddresses);
                self.stop_timers();
                self.transition(State::Fault, Cause::Fault, out);
            }
            (true, State::Backup) => {
                self.stop_timers();
                self.transition(State::Fault, Cause::Fault, out);
            }
            (false, State::Fault) => {
                if self.priority == PRIORITY_OWNER {
                    self.become_master(now, Cause::Recovered, out);
                } else {
                    self.become_backup(now, Cause::Recovered, out);
                }
            }
            _ => {}
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Master {
            // RFC 5798 §6.4.3 Shutdown: priority 0 lets a backup take over after
            // Skew_Time instead of Master_Down_Interval.
            out.push(Action::SendAdvert {
                priority: PRIORITY_LEAVING,
            });
            out.push(Action::RemoveAddresses);
        }
        self.stop_timers();
        if self.state != State::Initialize {
            self.transition(State::Initialize, Cause::Shutdown, out);
        }
    }

    fn become_master(&mut self, now: Duration, cause: Cause, out: &mut Vec<Action>) {
        // RFC 5798 §6.4.1 / §6.4.2: advertise, take the addresses, announce them.
        self.stop_timers();
        self.preempt_at = None;
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::AddAddresses);
        out.push(Action::Garp);
        self.adver_at = Some(now + self.adver_interval());
        self.garp_at = self.params.garp_master_delay.map(|d| now + d);
        self.transition(State::Master, cause, out);
    }

    fn become_backup(&mut self, now: Duration, cause: Cause, out: &mut Vec<Action>) {
        self.stop_timers();
        self.master_down_at = Some(now + self.master_down_interval());
        self.heard = None;
        self.backup_since = now;
        self.transition(State::Backup, cause, out);
    }

    fn stop_timers(&mut self) {
        self.adver_at = None;
        self.master_down_at = None;
        self.garp_at = None;
    }

    fn transition(&mut self, to: State, cause: Cause, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::Transition {
            from,
            to,
            priority: self.priority,
            cause,
        });
    }
}

fn centis(cs: u32) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    const PEER_LOW: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0));
    const PEER_HIGH: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100));

    fn params() -> Params {
        Params {
            vrid: 51,
            version: Version::V2,
            priority: 100,
            interval_cs: 100,
            auth: Auth::pass("1111"),
            addresses: vec![VIP],
            preempt: true,
            preempt_delay: Duration::ZERO,
            local_address: ME,
            check_addresses: true,
            garp_master_delay: Some(Duration::from_secs(5)),
            fast_takeover: false,
        }
    }

    fn advert(priority: u8) -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority,
            interval_cs: 100,
            auth: Auth::pass("1111"),
            addresses: vec![VIP],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Master_Down_Interval at priority 100, v2: 3 s + (256 - 100) / 256 s.
    const DOWN: Duration = Duration::from_micros(3_609_375);

    fn rx(i: &mut Instance, now: u64, src: IpAddr, a: Advert) -> Vec<Action> {
        plain(i.handle(ms(now), Event::Advert { src, advert: a }))
    }

    /// The actions of one event, with the causes of transitions left out
    /// (`causes_name_what_happened` checks them).
    fn h(i: &mut Instance, now: Duration, event: Event) -> Vec<Action> {
        plain(i.handle(now, event))
    }

    fn plain(actions: Vec<Action>) -> Vec<Action> {
        actions
            .into_iter()
            .map(|a| match a {
                Action::Transition {
                    from, to, priority, ..
                } => tr(from, to, priority),
                a => a,
            })
            .collect()
    }

    fn tr(from: State, to: State, priority: u8) -> Action {
        Action::Transition {
            from,
            to,
            priority,
            cause: Cause::Startup,
        }
    }

    fn started(p: Params) -> Instance {
        let mut i = Instance::new(p);
        i.handle(ms(0), Event::Startup);
        i
    }

    /// A backup that became master at time 3610 ms (no adverts heard).
    fn master() -> Instance {
        let mut i = started(params());
        i.handle(ms(3610), Event::Timer);
        assert_eq!(i.state(), State::Master);
        i
    }

    #[test]
    fn timers_follow_rfc_3768_and_5798_section_6_1() {
        let i = Instance::new(params());
        // v2: Skew = (256 - 100) / 256 s; down = 3 * 1 s + Skew.
        assert_eq!(i.skew_time(), us(609_375));
        assert_eq!(i.master_down_interval(), DOWN);
        // v2: Skew is a fraction of one second whatever the interval.
        let mut p = params();
        p.interval_cs = 300;
        let i = Instance::new(p);
        assert_eq!(i.skew_time(), us(609_375));
        assert_eq!(i.master_down_interval(), ms(9000) + us(609_375));
        // v3: Skew = (256 - 254) * 10 cs / 256, kept to the microsecond.
        let mut p = params();
        p.version = Version::V3;
        p.priority = 254;
        p.interval_cs = 10;
        let i = Instance::new(p);
        assert_eq!(i.skew_time(), us(781));
        assert_eq!(i.master_down_interval(), us(300_781));
    }

    #[test]
    fn adjacent_priorities_keep_distinct_skews() {
        for version in [Version::V2, Version::V3] {
            let skews: Vec<Duration> = (1..=254)
                .map(|priority| {
                    let mut p = params();
                    p.version = version;
                    p.priority = priority;
                    p.interval_cs = 10;
                    Instance::new(p).skew_time()
                })
                .collect();
            assert!(skews.windows(2).all(|w| w[0] > w[1]), "{version:?}");
        }
    }

    #[test]
    fn startup_enters_backup_and_arms_master_down() {
        let mut i = Instance::new(params());
        assert_eq!(i.next_deadline(), None);
        let out = h(&mut i, ms(0), Event::Startup);
        assert_eq!(out, vec![tr(State::Initialize, State::Backup, 100)]);
        assert_eq!(i.next_deadline(), Some(DOWN));
        // A second Startup changes nothing.
        assert!(i.handle(ms(5), Event::Startup).is_empty());
    }

    #[test]
    fn owner_starts_as_master() {
        let mut p = params();
        p.priority = PRIORITY_OWNER;
        let mut i = Instance::new(p);
        let out = h(&mut i, ms(0), Event::Startup);
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 255 },
                Action::AddAddresses,
                Action::Garp,
                tr(State::Initialize, State::Master, 255),
            ]
        );
        assert_eq!(i.next_deadline(), Some(ms(1000)));
    }

    #[test]
    fn startup_with_fault_enters_fault() {
        let mut i = Instance::new(params());
        assert!(i.handle(ms(0), Event::Fault(true)).is_empty());
        let out = h(&mut i, ms(0), Event::Startup);
        assert_eq!(out, vec![tr(State::Initialize, State::Fault, 100)]);
        assert_eq!(i.next_deadline(), None);
    }

    #[test]
    fn backup_becomes_master_when_master_down_fires() {
        let mut i = started(params());
        assert!(i.handle(DOWN - us(1), Event::Timer).is_empty());
        let out = h(&mut i, DOWN, Event::Timer);
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 100 },
                Action::AddAddresses,
                Action::Garp,
                tr(State::Backup, State::Master, 100),
            ]
        );
        assert_eq!(i.next_deadline(), Some(DOWN + ms(1000)));
    }

    #[test]
    fn backup_hearing_higher_or_equal_priority_resets_master_down() {
        let mut i = started(params());
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(101)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(1000) + DOWN));
        assert!(rx(&mut i, 2000, PEER_LOW, advert(100)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(2000) + DOWN));
        assert_eq!(i.stats().accepted, 2);
    }

    #[test]
    fn backup_with_preempt_ignores_lower_priority_master() {
        let mut i = started(params());
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(99)).is_empty());
        assert_eq!(i.next_deadline(), Some(DOWN));
        assert_eq!(
            h(&mut i, DOWN, Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
    }

    #[test]
    fn nopreempt_backup_accepts_lower_priority_master() {
        let mut p = params();
        p.preempt = false;
        let mut i = started(p);
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(99)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(1000) + DOWN));
    }

    #[test]
    fn preempt_delay_holds_off_preemption_then_lets_it_happen() {
        let mut p = params();
        p.preempt_delay = Duration::from_secs(5);
        let mut i = started(p);
        // Within 5 s of startup the lower master is accepted.
        for t in [1000, 2000, 3000, 4000] {
            rx(&mut i, t, PEER_HIGH, advert(99));
        }
        assert_eq!(i.next_deadline(), Some(ms(4000) + DOWN));
        assert_eq!(i.state(), State::Backup);
        // From 5 s on it is ignored, so Master_Down_Interval after the last accepted one we take over.
        rx(&mut i, 5000, PEER_HIGH, advert(99));
        rx(&mut i, 6000, PEER_HIGH, advert(99));
        assert_eq!(i.next_deadline(), Some(ms(4000) + DOWN));
        assert_eq!(
            h(&mut i, ms(4000) + DOWN, Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
    }

    #[test]
    fn backup_hearing_priority_zero_waits_only_skew_time() {
        let mut i = started(params());
        rx(&mut i, 1000, PEER_HIGH, advert(101));
        assert!(rx(&mut i, 1500, PEER_HIGH, advert(0)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(1500) + us(609_375)));
        assert_eq!(
            h(&mut i, ms(1500) + us(609_375), Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
    }

    fn fast(priority: u8) -> Instance {
        let mut p = params();
        p.priority = priority;
        p.fast_takeover = true;
        Instance::new(p)
    }

    #[test]
    fn fast_takeover_waits_one_millisecond_per_priority_level_at_most() {
        assert_eq!(fast(99).takeover_skew(), ms(157));
        assert_eq!(fast(98).takeover_skew(), ms(158));
        assert_eq!(fast(254).takeover_skew(), ms(2));
        assert_eq!(fast(1).takeover_skew(), ms(255));
        // Master_Down_Interval, used when the master just goes silent, stays the RFC's.
        assert_eq!(fast(100).master_down_interval(), DOWN);
        // Off, the wait is Skew_Time.
        assert_eq!(Instance::new(params()).takeover_skew(), us(609_375));
        // At 0.1 s v3 adverts Skew_Time is already shorter, and is kept.
        let mut p = params();
        p.version = Version::V3;
        p.interval_cs = 10;
        p.priority = 99;
        p.fast_takeover = true;
        let i = Instance::new(p);
        assert_eq!(i.takeover_skew(), i.skew_time());
        assert_eq!(i.takeover_skew(), us(61_328));
        // Never longer than Skew_Time, and a higher priority always waits less.
        for priority in 1..=253u8 {
            let (lower, higher) = (fast(priority), fast(priority + 1));
            assert!(lower.takeover_skew() <= lower.skew_time());
            assert!(higher.takeover_skew() < lower.takeover_skew(), "{priority}");
        }
    }

    #[test]
    fn fast_takeover_backup_takes_over_157_ms_after_priority_zero() {
        let mut i = fast(99);
        i.handle(ms(0), Event::Startup);
        rx(&mut i, 1000, PEER_HIGH, advert(100));
        assert!(rx(&mut i, 1500, PEER_HIGH, advert(0)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(1657)));
        assert!(i.handle(ms(1656), Event::Timer).is_empty());
        assert_eq!(
            h(&mut i, ms(1657), Event::Timer)[3],
            tr(State::Backup, State::Master, 99)
        );
    }

    /// Backups of `priorities` hear a master (priority 255 at 198.18.0.2),
    /// then its priority 0 at 1 s; an advert sent by one reaches the others
    /// `latency` later, and is handled before a timer due at the same time (as
    /// the daemon reads pending packets before acting on a deadline). Returns
    /// the priorities that became master, in order, and who is master at 4 s.
    fn leave_race(priorities: &[u8], fast: bool, latency: Duration) -> (Vec<u8>, Vec<u8>) {
        let mut nodes: Vec<Instance> = priorities
            .iter()
            .zip(10u8..)
            .map(|(&priority, host)| {
                let mut p = params();
                p.priority = priority;
                p.fast_takeover = fast;
                p.local_address = Ipv4Addr::new(198, 18, 0, host).into();
                started(p)
            })
            .collect();
        // Packets in flight: (arrival, to node, source, priority).
        let mut wire = Vec::new();
        for to in 0..nodes.len() {
            wire.push((ms(0), to, PEER_HIGH, 255));
            wire.push((ms(1000), to, PEER_HIGH, PRIORITY_LEAVING));
        }
        let mut took_over = Vec::new();
        loop {
            let next_packet = wire.iter().map(|w| w.0).min();
            let next_timer = nodes.iter().filter_map(Instance::next_deadline).min();
            let Some(now) = next_packet.into_iter().chain(next_timer).min() else {
                break;
            };
            if now > ms(4000) {
                break;
            }
            let mut actions = Vec::new();
            if next_packet == Some(now) {
                let k = wire.iter().position(|w| w.0 == now).unwrap();
                let (_, to, src, priority) = wire.swap_remove(k);
                let advert = Advert {
                    priority,
                    ..advert(0)
                };
                actions.push((to, nodes[to].handle(now, Event::Advert { src, advert })));
            } else {
                for (n, node) in nodes.iter_mut().enumerate() {
                    if node.next_deadline() == Some(now) {
                        actions.push((n, node.handle(now, Event::Timer)));
                    }
                }
            }
            for (from, action) in actions
                .into_iter()
                .flat_map(|(n, a)| a.into_iter().map(move |a| (n, a)))
            {
                match action {
                    Action::SendAdvert { priority } => {
                        let src = nodes[from].params().local_address;
                        for to in (0..nodes.len()).filter(|&to| to != from) {
                            wire.push((now + latency, to, src, priority));
                        }
                    }
                    Action::Transition {
                        to: State::Master,
                        priority,
                        ..
                    } => took_over.push(priority),
                    _ => {}
                }
            }
        }
        let masters = nodes
            .iter()
            .filter(|n| n.state() == State::Master)
            .map(Instance::priority)
            .collect();
        (took_over, masters)
    }

    #[test]
    fn only_the_highest_backup_takes_over_when_adverts_cross_within_a_step() {
        let backups = [97, 99, 50, 98];
        // The RFC's 3.9 ms steps, and fast takeover's 1 ms steps, with adverts
        // arriving in 0.9 ms.
        for fast in [false, true] {
            let (took_over, masters) = leave_race(&backups, fast, us(900));
            assert_eq!(took_over, [99], "fast {fast}");
            assert_eq!(masters, [99], "fast {fast}");
        }
        let (took_over, _) = leave_race(&[253, 254, 1], true, us(900));
        assert_eq!(took_over, [254]);
    }

    #[test]
    fn backups_that_both_take_over_settle_on_the_higher_priority() {
        // Adverts slower than one 1 ms step: 98 takes over before it hears 99,
        // then yields to it, as when the RFC's own timers tie.
        let (took_over, masters) = leave_race(&[98, 99], true, us(1500));
        assert_eq!(took_over, [99, 98]);
        assert_eq!(masters, [99]);
    }

    #[test]
    fn v3_backup_learns_the_master_interval() {
        let mut p = params();
        p.version = Version::V3;
        p.auth = Auth::None;
        let mut i = started(p);
        let mut a = advert(150);
        a.version = Version::V3;
        a.auth = Auth::None;
        a.interval_cs = 10;
        rx(&mut i, 1000, PEER_HIGH, a);
        // Down = 3 * 10 cs + (256 - 100) * 10 cs / 256.
        assert_eq!(i.master_down_interval(), us(360_937));
        assert_eq!(i.next_deadline(), Some(ms(1000) + us(360_937)));
    }

    #[test]
    fn master_sends_adverts_every_interval_and_garps_again_after_delay() {
        let mut i = master();
        assert_eq!(i.next_deadline(), Some(ms(4610)));
        assert_eq!(
            i.handle(ms(4610), Event::Timer),
            vec![Action::SendAdvert { priority: 100 }]
        );
        assert_eq!(i.next_deadline(), Some(ms(5610)));
        for t in [5610, 6610, 7610] {
            i.handle(ms(t), Event::Timer);
        }
        // garp_master_delay 5 s after 3610.
        assert_eq!(
            i.handle(ms(8610), Event::Timer),
            vec![Action::SendAdvert { priority: 100 }, Action::Garp]
        );
        assert_eq!(i.next_deadline(), Some(ms(9610)));
    }

    #[test]
    fn master_yields_to_higher_priority() {
        let mut i = master();
        let out = rx(&mut i, 4000, PEER_LOW, advert(101));
        assert_eq!(
            out,
            vec![
                Action::RemoveAddresses,
                tr(State::Master, State::Backup, 100)
            ]
        );
        assert_eq!(i.next_deadline(), Some(ms(4000) + DOWN));
    }

    #[test]
    fn equal_priority_is_decided_by_the_higher_address() {
        let mut i = master();
        // Lower address, same priority: we stay master and answer at once.
        let out = rx(&mut i, 4000, PEER_LOW, advert(100));
        assert_eq!(
            out,
            vec![Action::SendAdvert { priority: 100 }, Action::Garp]
        );
        assert_eq!(i.next_deadline(), Some(ms(5000)));
        let out = rx(&mut i, 4100, PEER_HIGH, advert(100));
        assert_eq!(out[1], tr(State::Master, State::Backup, 100));
    }

    #[test]
    fn master_answers_lower_priority_at_once() {
        let mut i = master();
        let out = rx(&mut i, 4000, PEER_HIGH, advert(99));
        assert_eq!(
            out,
            vec![Action::SendAdvert { priority: 100 }, Action::Garp]
        );
        assert_eq!(i.state(), State::Master);
        assert_eq!(i.next_deadline(), Some(ms(5000)));
    }

    #[test]
    fn master_answers_priority_zero_at_once() {
        let mut i = master();
        let out = rx(&mut i, 4000, PEER_HIGH, advert(0));
        assert_eq!(out, vec![Action::SendAdvert { priority: 100 }]);
        assert_eq!(i.next_deadline(), Some(ms(5000)));
    }

    #[test]
    fn master_shutdown_sends_priority_zero_and_removes_addresses() {
        let mut i = master();
        let out = h(&mut i, ms(4000), Event::Shutdown);
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 0 },
                Action::RemoveAddresses,
                tr(State::Master, State::Initialize, 100),
            ]
        );
        assert_eq!(i.next_deadline(), None);
    }

    #[test]
    fn backup_shutdown_just_stops() {
        let mut i = started(params());
        let out = h(&mut i, ms(10), Event::Shutdown);
        assert_eq!(out, vec![tr(State::Backup, State::Initialize, 100)]);
        assert_eq!(i.next_deadline(), None);
        assert!(i.handle(ms(20), Event::Shutdown).is_empty());
    }

    #[test]
    fn fault_from_master_leaves_with_priority_zero_and_recovers_as_backup() {
        let mut i = master();
        let out = h(&mut i, ms(4000), Event::Fault(true));
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 0 },
                Action::RemoveAddresses,
                tr(State::Master, State::Fault, 100),
            ]
        );
        assert_eq!(i.next_deadline(), None);
        // Adverts are ignored in fault.
        assert!(rx(&mut i, 4500, PEER_HIGH, advert(99)).is_empty());
        assert!(i.handle(ms(4600), Event::Fault(true)).is_empty());
        let out = h(&mut i, ms(5000), Event::Fault(false));
        assert_eq!(out, vec![tr(State::Fault, State::Backup, 100)]);
        assert_eq!(i.next_deadline(), Some(ms(5000) + DOWN));
    }

    #[test]
    fn fault_from_backup_and_owner_recovery() {
        let mut p = params();
        p.priority = PRIORITY_OWNER;
        let mut i = Instance::new(p);
        i.handle(ms(0), Event::Startup);
        i.handle(ms(10), Event::Fault(true));
        let out = h(&mut i, ms(20), Event::Fault(false));
        assert_eq!(out.last(), Some(&tr(State::Fault, State::Master, 255)));
        let mut i = started(params());
        let out = h(&mut i, ms(10), Event::Fault(true));
        assert_eq!(out, vec![tr(State::Backup, State::Fault, 100)]);
    }

    #[test]
    fn master_announces_priority_changes_at_once() {
        let mut i = master();
        let out = h(&mut i, ms(4000), Event::Priority(80));
        assert_eq!(out, vec![Action::SendAdvert { priority: 80 }]);
        assert_eq!(i.priority(), 80);
        assert!(i.handle(ms(4100), Event::Priority(80)).is_empty());
        // Now a peer at 90 outranks us.
        let out = rx(&mut i, 4200, PEER_LOW, advert(90));
        assert_eq!(out[1], tr(State::Master, State::Backup, 80));
    }

    #[test]
    fn backup_priority_change_moves_skew_at_next_reset() {
        let mut i = started(params());
        assert!(i.handle(ms(10), Event::Priority(120)).is_empty());
        rx(&mut i, 1000, PEER_HIGH, advert(150));
        // Skew = (256 - 120) / 256 s.
        assert_eq!(i.next_deadline(), Some(ms(1000) + us(3_531_250)));
        // A backup at 120 now preempts the 110 master.
        rx(&mut i, 2000, PEER_HIGH, advert(110));
        assert_eq!(i.next_deadline(), Some(ms(1000) + us(3_531_250)));
    }

    #[test]
    fn adverts_keepalived_would_reject_are_counted_and_ignored() {
        let mut i = started(params());
        let deadline = i.next_deadline();
        let mut a = advert(150);
        a.vrid = 52;
        rx(&mut i, 100, PEER_HIGH, a);
        rx(&mut i, 100, ME, advert(150));
        let mut a = advert(150);
        a.version = Version::V3;
        rx(&mut i, 100, PEER_HIGH, a);
        let mut a = advert(150);
        a.auth = Auth::None;
        rx(&mut i, 100, PEER_HIGH, a);
        let mut a = advert(150);
        a.auth = Auth::pass("2222");
        rx(&mut i, 100, PEER_HIGH, a);
        let mut a = advert(150);
        a.interval_cs = 200;
        rx(&mut i, 100, PEER_HIGH, a);
        let mut a = advert(150);
        a.addresses.push(PEER_LOW);
        rx(&mut i, 100, PEER_HIGH, a);
        assert_eq!(i.next_deadline(), deadline);
        assert_eq!(
            i.stats(),
            RxStats {
                accepted: 0,
                other_vrid: 1,
                own: 1,
                version: 1,
                auth_type: 1,
                auth_password: 1,
                interval: 1,
                addresses: 1,
                vrid: 1,
            }
        );
    }

    #[test]
    fn rejected_adverts_are_reported_with_their_peer() {
        let mut i = started(params());
        let mut a = advert(150);
        a.auth = Auth::pass("2222");
        assert_eq!(
            rx(&mut i, 100, PEER_HIGH, a),
            vec![Action::Rejected {
                src: PEER_HIGH,
                reason: Reject::AuthPassword
            }]
        );
        // Another VRID with our address is a misconfigured peer...
        let mut a = advert(150);
        a.vrid = 52;
        assert_eq!(
            rx(&mut i, 100, PEER_HIGH, a),
            vec![Action::Rejected {
                src: PEER_HIGH,
                reason: Reject::Vrid
            }]
        );
        // ...another virtual router on the same LAN is not.
        let mut a = advert(150);
        a.vrid = 52;
        a.addresses = vec![Ipv4Addr::new(198, 18, 0, 200).into()];
        assert!(rx(&mut i, 100, PEER_HIGH, a).is_empty());
        assert_eq!(i.stats().other_vrid, 2);
        assert_eq!(i.stats().vrid, 1);
    }

    fn cause_of(actions: &[Action]) -> Cause {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Transition { cause, .. } => Some(*cause),
                _ => None,
            })
            .expect("a transition")
    }

    #[test]
    fn causes_name_what_happened() {
        let mut i = Instance::new(params());
        assert_eq!(cause_of(&i.handle(ms(0), Event::Startup)), Cause::Startup);
        assert_eq!(
            cause_of(&i.handle(DOWN, Event::Timer)),
            Cause::MasterDown(Down::Silent {
                src: None,
                for_: DOWN
            })
        );
        // The master that outranks it: then silent, then leaving.
        let out = i.handle(
            ms(4000),
            Event::Advert {
                src: PEER_LOW,
                advert: advert(101),
            },
        );
        assert_eq!(
            cause_of(&out),
            Cause::Outranked {
                src: PEER_LOW,
                priority: 101
            }
        );
        assert_eq!(
            cause_of(&i.handle(ms(4000) + DOWN, Event::Timer)),
            Cause::MasterDown(Down::Silent {
                src: Some(PEER_LOW),
                for_: DOWN
            })
        );
        let mut i = started(params());
        rx(&mut i, 1000, PEER_HIGH, advert(101));
        rx(&mut i, 1500, PEER_HIGH, advert(0));
        let due = i.next_deadline().unwrap();
        assert_eq!(
            cause_of(&i.handle(due, Event::Timer)),
            Cause::MasterDown(Down::Left { src: PEER_HIGH })
        );
        // A lower-priority master is preempted.
        let mut i = started(params());
        rx(&mut i, 1000, PEER_HIGH, advert(99));
        assert_eq!(
            cause_of(&i.handle(DOWN, Event::Timer)),
            Cause::MasterDown(Down::Preempt {
                src: PEER_HIGH,
                priority: 99
            })
        );
        assert_eq!(
            Cause::MasterDown(Down::Preempt {
                src: PEER_HIGH,
                priority: 99
            })
            .to_string(),
            "preempting master 198.18.0.2 of lower priority 99"
        );
        assert_eq!(
            cause_of(&i.handle(ms(5000), Event::Fault(true))),
            Cause::Fault
        );
        assert_eq!(
            cause_of(&i.handle(ms(6000), Event::Fault(false))),
            Cause::Recovered
        );
        assert_eq!(
            cause_of(&i.handle(ms(7000), Event::Shutdown)),
            Cause::Shutdown
        );
    }

    #[test]
    fn reconfigure_keeps_the_state_and_a_master_announces_at_once() {
        let mut i = master();
        let mut p = params();
        p.priority = 120;
        p.addresses.push(PEER_LOW);
        let out = i.reconfigure(ms(4000), p.clone());
        assert_eq!(out, vec![Action::SendAdvert { priority: 100 }]);
        assert_eq!(i.state(), State::Master);
        assert_eq!(i.params().addresses, p.addresses);
        // The effective priority comes from tracking, as at startup.
        assert_eq!(
            i.handle(ms(4000), Event::Priority(120)),
            vec![Action::SendAdvert { priority: 120 }]
        );
        let mut b = started(params());
        assert!(b.reconfigure(ms(10), params()).is_empty());
        assert_eq!(b.state(), State::Backup);
    }

    #[test]
    fn address_check_can_be_skipped_and_ignores_order() {
        let mut p = params();
        p.addresses = vec![VIP, PEER_LOW];
        let i = Instance::new(p.clone());
        let mut a = advert(150);
        a.addresses = vec![PEER_LOW, VIP];
        assert_eq!(i.check(&a), Ok(()));
        a.addresses = vec![VIP];
        assert_eq!(i.check(&a), Err(Reject::Addresses));
        p.check_addresses = false;
        assert_eq!(Instance::new(p).check(&a), Ok(()));
    }

    #[test]
    fn v3_accepts_a_different_interval() {
        let mut p = params();
        p.version = Version::V3;
        p.auth = Auth::None;
        let i = Instance::new(p);
        let a = Advert {
            version: Version::V3,
            auth: Auth::None,
            interval_cs: 35,
            ..advert(10)
        };
        assert_eq!(i.check(&a), Ok(()));
    }

    #[test]
    fn state_names_match_keepalived_notify_arguments() {
        let names: Vec<_> = [
            State::Master,
            State::Backup,
            State::Fault,
            State::Initialize,
        ]
        .map(State::keepalived_name)
        .into();
        assert_eq!(names, ["MASTER", "BACKUP", "FAULT", "STOP"]);
    }
}
