//! The VRRP state machine of one virtual router, RFC 5798 §6 (and RFC 3768 §6
//! for v2), with the keepalived behaviours its peers rely on.
//!
//! Pure: [`Instance::handle`] takes an [`Event`] and the current time (any
//! monotonic clock, as a `Duration` since an origin the caller picks) and
//! returns the [`Action`]s to perform; [`Instance::next_deadline`] says when to
//! call it next with [`Event::Timer`]. No I/O and no clock, so every transition
//! is tested deterministically below.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::packet::{Advert, Auth, Version};

/// Priority of the router that owns the virtual addresses (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority sent by a master that stops being master (RFC 5798 §5.2.4).
pub const PRIORITY_LEAVING: u8 = 0;

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
    pub addresses: Vec<Ipv4Addr>,
    /// Preempt a lower-priority master (RFC 5798 §6.1 Preempt_Mode).
    pub preempt: bool,
    /// keepalived's preempt_delay: after startup, or after first hearing a
    /// lower-priority master, wait this long before preempting it.
    pub preempt_delay: Duration,
    /// The address adverts are sent from; breaks priority ties (RFC 5798 §6.4.3)
    /// and identifies our own adverts looped back to us.
    pub local_address: Ipv4Addr,
    /// Reject adverts whose address list differs from ours (keepalived's default;
    /// `vrrp_skip_check_adv_addr` turns it off).
    pub check_addresses: bool,
    /// Gratuitous ARP again this long after becoming master (keepalived's
    /// garp_master_delay); `None` sends only the first burst.
    pub garp_master_delay: Option<Duration>,
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
    Advert { src: Ipv4Addr, advert: Advert },
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
    },
}

/// Why an advert for our VRID was discarded, as keepalived would discard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Version,
    AuthType,
    AuthPassword,
    Interval,
    Addresses,
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

    /// RFC 5798 §6.1 Skew_Time, from the effective priority.
    pub fn skew_time(&self) -> Duration {
        let cs = (256 - u32::from(self.priority)) * u32::from(self.master_interval_cs) / 256;
        centis(cs)
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

    /// RFC 5798 §6.4.1: the owner starts as master, everyone else as backup.
    fn startup(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        if !self.params.preempt_delay.is_zero() {
            self.preempt_at = Some(now + self.params.preempt_delay);
        }
        if self.fault {
            self.transition(State::Fault, out);
        } else if self.priority == PRIORITY_OWNER {
            self.become_master(now, out);
        } else {
            self.become_backup(now, out);
        }
    }

    fn timers(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.master_down_at.is_some_and(|t| t <= now) {
            // RFC 5798 §6.4.2: Master_Down_Timer fired, no master is heard.
            self.become_master(now, out);
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

    fn receive(&mut self, now: Duration, src: Ipv4Addr, advert: &Advert, out: &mut Vec<Action>) {
        if advert.vrid != self.params.vrid {
            self.stats.other_vrid += 1;
            return;
        }
        if src == self.params.local_address {
            self.stats.own += 1;
            return;
        }
        if let Err(reject) = self.check(advert) {
            match reject {
                Reject::Version => self.stats.version += 1,
                Reject::AuthType => self.stats.auth_type += 1,
                Reject::AuthPassword => self.stats.auth_password += 1,
                Reject::Interval => self.stats.interval += 1,
                Reject::Addresses => self.stats.addresses += 1,
            }
            return;
        }
        self.stats.accepted += 1;
        match self.state {
            State::Backup => self.backup_receive(now, advert),
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
            // The master is leaving: take over after Skew_Time only.
            self.master_down_at = Some(now + self.skew_time());
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
        src: Ipv4Addr,
        advert: &Advert,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == PRIORITY_LEAVING {
            // Another master is leaving: assert ourselves at once.
            self.send_now(now, out);
            return;
        }
        let higher = advert.priority > self.priority
            || (advert.priority == self.priority
                && u32::from(src) > u32::from(self.params.local_address));
        if higher {
            if self.params.version == Version::V3 {
                self.master_interval_cs = advert.interval_cs;
            }
            out.push(Action::RemoveAddresses);
            self.become_backup(now, out);
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
                self.transition(State::Fault, out);
            }
            (true, State::Backup) => {
                self.stop_timers();
                self.transition(State::Fault, out);
            }
            (false, State::Fault) => {
                if self.priority == PRIORITY_OWNER {
                    self.become_master(now, out);
                } else {
                    self.become_backup(now, out);
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
            self.transition(State::Initialize, out);
        }
    }

    fn become_master(&mut self, now: Duration, out: &mut Vec<Action>) {
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
        self.transition(State::Master, out);
    }

    fn become_backup(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.stop_timers();
        self.master_down_at = Some(now + self.master_down_interval());
        self.transition(State::Backup, out);
    }

    fn stop_timers(&mut self) {
        self.adver_at = None;
        self.master_down_at = None;
        self.garp_at = None;
    }

    fn transition(&mut self, to: State, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::Transition {
            from,
            to,
            priority: self.priority,
        });
    }
}

fn centis(cs: u32) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

fn same_addresses(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PEER_LOW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
    const PEER_HIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

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

    fn rx(i: &mut Instance, now: u64, src: Ipv4Addr, a: Advert) -> Vec<Action> {
        i.handle(ms(now), Event::Advert { src, advert: a })
    }

    fn tr(from: State, to: State, priority: u8) -> Action {
        Action::Transition { from, to, priority }
    }

    fn started(p: Params) -> Instance {
        let mut i = Instance::new(p);
        i.handle(ms(0), Event::Startup);
        i
    }

    /// A backup that became master at time 3609 ms (no adverts heard).
    fn master() -> Instance {
        let mut i = started(params());
        i.handle(ms(3609), Event::Timer);
        assert_eq!(i.state(), State::Master);
        i
    }

    #[test]
    fn timers_follow_rfc_5798_section_6_1() {
        let i = Instance::new(params());
        // Skew = (256 - 100) * 100 cs / 256 = 60 cs; down = 300 + 60 cs.
        assert_eq!(i.skew_time(), ms(600));
        assert_eq!(i.master_down_interval(), ms(3600));
        let mut p = params();
        p.priority = 254;
        p.interval_cs = 10;
        let i = Instance::new(p);
        assert_eq!(i.skew_time(), ms(0));
        assert_eq!(i.master_down_interval(), ms(300));
    }

    #[test]
    fn startup_enters_backup_and_arms_master_down() {
        let mut i = Instance::new(params());
        assert_eq!(i.next_deadline(), None);
        let out = i.handle(ms(0), Event::Startup);
        assert_eq!(out, vec![tr(State::Initialize, State::Backup, 100)]);
        assert_eq!(i.next_deadline(), Some(ms(3600)));
        // A second Startup changes nothing.
        assert!(i.handle(ms(5), Event::Startup).is_empty());
    }

    #[test]
    fn owner_starts_as_master() {
        let mut p = params();
        p.priority = PRIORITY_OWNER;
        let mut i = Instance::new(p);
        let out = i.handle(ms(0), Event::Startup);
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
        let out = i.handle(ms(0), Event::Startup);
        assert_eq!(out, vec![tr(State::Initialize, State::Fault, 100)]);
        assert_eq!(i.next_deadline(), None);
    }

    #[test]
    fn backup_becomes_master_when_master_down_fires() {
        let mut i = started(params());
        assert!(i.handle(ms(3599), Event::Timer).is_empty());
        let out = i.handle(ms(3600), Event::Timer);
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 100 },
                Action::AddAddresses,
                Action::Garp,
                tr(State::Backup, State::Master, 100),
            ]
        );
        assert_eq!(i.next_deadline(), Some(ms(4600)));
    }

    #[test]
    fn backup_hearing_higher_or_equal_priority_resets_master_down() {
        let mut i = started(params());
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(101)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(4600)));
        assert!(rx(&mut i, 2000, PEER_LOW, advert(100)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(5600)));
        assert_eq!(i.stats().accepted, 2);
    }

    #[test]
    fn backup_with_preempt_ignores_lower_priority_master() {
        let mut i = started(params());
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(99)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(3600)));
        assert_eq!(
            i.handle(ms(3600), Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
    }

    #[test]
    fn nopreempt_backup_accepts_lower_priority_master() {
        let mut p = params();
        p.preempt = false;
        let mut i = started(p);
        assert!(rx(&mut i, 1000, PEER_HIGH, advert(99)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(4600)));
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
        assert_eq!(i.next_deadline(), Some(ms(7600)));
        assert_eq!(i.state(), State::Backup);
        // From 5 s on it is ignored, so Master_Down_Interval after the last accepted one we take over.
        rx(&mut i, 5000, PEER_HIGH, advert(99));
        rx(&mut i, 6000, PEER_HIGH, advert(99));
        assert_eq!(i.next_deadline(), Some(ms(7600)));
        assert_eq!(
            i.handle(ms(7600), Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
    }

    #[test]
    fn backup_hearing_priority_zero_waits_only_skew_time() {
        let mut i = started(params());
        rx(&mut i, 1000, PEER_HIGH, advert(101));
        assert!(rx(&mut i, 1500, PEER_HIGH, advert(0)).is_empty());
        assert_eq!(i.next_deadline(), Some(ms(2100)));
        assert_eq!(
            i.handle(ms(2100), Event::Timer)[3],
            tr(State::Backup, State::Master, 100)
        );
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
        // Down = 3 * 10 cs + (256 - 100) * 10 / 256 = 30 + 6 cs.
        assert_eq!(i.master_down_interval(), ms(360));
        assert_eq!(i.next_deadline(), Some(ms(1360)));
    }

    #[test]
    fn master_sends_adverts_every_interval_and_garps_again_after_delay() {
        let mut i = master();
        assert_eq!(i.next_deadline(), Some(ms(4609)));
        assert_eq!(
            i.handle(ms(4609), Event::Timer),
            vec![Action::SendAdvert { priority: 100 }]
        );
        assert_eq!(i.next_deadline(), Some(ms(5609)));
        for t in [5609, 6609, 7609] {
            i.handle(ms(t), Event::Timer);
        }
        // garp_master_delay 5 s after 3609.
        assert_eq!(
            i.handle(ms(8609), Event::Timer),
            vec![Action::SendAdvert { priority: 100 }, Action::Garp]
        );
        assert_eq!(i.next_deadline(), Some(ms(9609)));
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
        assert_eq!(i.next_deadline(), Some(ms(7600)));
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
        let out = i.handle(ms(4000), Event::Shutdown);
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
        let out = i.handle(ms(10), Event::Shutdown);
        assert_eq!(out, vec![tr(State::Backup, State::Initialize, 100)]);
        assert_eq!(i.next_deadline(), None);
        assert!(i.handle(ms(20), Event::Shutdown).is_empty());
    }

    #[test]
    fn fault_from_master_leaves_with_priority_zero_and_recovers_as_backup() {
        let mut i = master();
        let out = i.handle(ms(4000), Event::Fault(true));
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
        let out = i.handle(ms(5000), Event::Fault(false));
        assert_eq!(out, vec![tr(State::Fault, State::Backup, 100)]);
        assert_eq!(i.next_deadline(), Some(ms(8600)));
    }

    #[test]
    fn fault_from_backup_and_owner_recovery() {
        let mut p = params();
        p.priority = PRIORITY_OWNER;
        let mut i = Instance::new(p);
        i.handle(ms(0), Event::Startup);
        i.handle(ms(10), Event::Fault(true));
        let out = i.handle(ms(20), Event::Fault(false));
        assert_eq!(out.last(), Some(&tr(State::Fault, State::Master, 255)));
        let mut i = started(params());
        let out = i.handle(ms(10), Event::Fault(true));
        assert_eq!(out, vec![tr(State::Backup, State::Fault, 100)]);
    }

    #[test]
    fn master_announces_priority_changes_at_once() {
        let mut i = master();
        let out = i.handle(ms(4000), Event::Priority(80));
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
        // Skew = (256 - 120) * 100 / 256 = 53 cs.
        assert_eq!(i.next_deadline(), Some(ms(1000 + 3530)));
        // A backup at 120 now preempts the 110 master.
        rx(&mut i, 2000, PEER_HIGH, advert(110));
        assert_eq!(i.next_deadline(), Some(ms(4530)));
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
            }
        );
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
