//! Configuration of the VRRP role: the TOML shape (`keepcached vrrp --config`),
//! its validation, and the conversion to state-machine [`Params`].
//!
//! `keepalived_conf.rs` builds the same [`VrrpConfig`] from a keepalived.conf,
//! so both paths share validation. Times are seconds as floating-point numbers,
//! as in keepalived.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::instance::{Params, PRIORITY_OWNER};
use crate::packet::{Auth, ChecksumMode, Version};

/// The whole VRRP role: named checks and the virtual routers that track them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// Scripts run periodically (keepalived's vrrp_script), by name.
    #[serde(default)]
    pub script: BTreeMap<String, ScriptCheck>,
    /// Built-in checks of a memcached-protocol proxy (`version` request), by name.
    #[serde(default)]
    pub proxy_check: BTreeMap<String, ProxyCheck>,
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceConfig>,
    /// A file kept up to date with every instance's state and advert counters.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
}

/// One virtual router (keepalived's vrrp_instance).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default = "default_version")]
    pub version: u8,
    /// Seconds; VRRPv2 needs whole seconds, VRRPv3 allows centiseconds.
    #[serde(default = "one")]
    pub advert_interval: f64,
    /// VRRPv2 PASS authentication; none when absent.
    #[serde(default)]
    pub auth_pass: Option<String>,
    /// keepalived's `state`: only decides whether `preempt = false` is allowed.
    #[serde(default)]
    pub initial_state: InitialState,
    #[serde(default = "yes")]
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay: f64,
    #[serde(default)]
    pub checksum: Checksum,
    /// Source address of adverts; the interface's first IPv4 address when absent.
    #[serde(default)]
    pub source: Option<Ipv4Addr>,
    /// Send adverts to these peers instead of multicast.
    #[serde(default)]
    pub unicast_peers: Vec<Ipv4Addr>,
    #[serde(default = "yes")]
    pub check_advert_addresses: bool,
    /// After the master's priority-0 advert, wait at most 1 ms per priority
    /// level below 256 instead of the full Skew_Time (see
    /// `Instance::takeover_skew` for why this is safe). Every backup of the
    /// virtual router should run keepcached; off when read from a keepalived.conf.
    #[serde(default = "yes")]
    pub fast_takeover: bool,
    /// Seconds after becoming master before a second gratuitous ARP burst; 0 for none.
    #[serde(default = "five")]
    pub garp_master_delay: f64,
    /// Gratuitous ARPs per burst.
    #[serde(default = "five_u32")]
    pub garp_master_repeat: u32,
    /// Seconds between the gratuitous ARPs of one burst.
    #[serde(default)]
    pub garp_interval: f64,
    pub vips: Vec<Vip>,
    #[serde(default)]
    pub track_script: Vec<Track>,
    #[serde(default)]
    pub track_proxy: Vec<Track>,
    #[serde(default)]
    pub track_interface: Vec<Track>,
    /// Enter FAULT when `interface` goes down, as keepalived does unless told
    /// `dont_track_primary`.
    #[serde(default = "yes")]
    pub track_primary_interface: bool,
    #[serde(default)]
    pub notify: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    #[default]
    Backup,
    Master,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checksum {
    #[default]
    PseudoHeader,
    WithoutPseudoHeader,
}

/// A virtual address, as `ip addr add ADDRESS/PREFIX dev DEV label LABEL`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub address: Cidr,
    /// The instance's interface when absent.
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

/// An IPv4 address with prefix length, written `a.b.c.d/len` (`/32` if omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)),
            None => (s, Some(32)),
        };
        match (addr.parse(), prefix) {
            (Ok(addr), Some(prefix)) => Ok(Cidr { addr, prefix }),
            _ => Err(format!(
                "`{s}` is not an IPv4 address with optional /prefix"
            )),
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A tracked check or interface; `weight` overrides the check's own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub name: String,
    #[serde(default)]
    pub weight: Option<i32>,
}

/// Commands run on transitions, with keepalived's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    pub stop: Option<String>,
    /// keepalived's `notify`: gets `INSTANCE NAME STATE PRIORITY` appended.
    pub any: Option<String>,
}

/// A periodic script (keepalived's vrrp_script). Exit status 0 is success; a
/// script that cannot be started, times out or is killed counts as a failure.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptCheck {
    /// Program and arguments, split on whitespace (double quotes group words).
    pub command: String,
    #[serde(default = "one")]
    pub interval: f64,
    /// Seconds; the interval when absent.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub weight: i32,
    #[serde(default = "one_u32")]
    pub rise: u32,
    #[serde(default = "one_u32")]
    pub fall: u32,
}

/// Built-in check: connect to a memcached-protocol endpoint, send `version`,
/// expect `VERSION ...` within the timeout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCheck {
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub interval: f64,
    #[serde(default = "half")]
    pub timeout: f64,
    #[serde(default)]
    pub weight: i32,
    #[serde(default = "one_u32")]
    pub rise: u32,
    #[serde(default = "one_u32")]
    pub fall: u32,
}

fn default_priority() -> u8 {
    100
}
fn default_version() -> u8 {
    2
}
fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn five() -> f64 {
    5.0
}
fn five_u32() -> u32 {
    5
}
fn one_u32() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("{0}")]
    Toml(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfError {
    ConfError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// Largest magnitude of a tracking weight, as keepalived allows.
const MAX_WEIGHT: i32 = 253;

impl VrrpConfig {
    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<VrrpConfig, ConfError> {
        let config: VrrpConfig =
            toml::from_str(text).map_err(|e| ConfError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that can be checked before any socket exists.
    pub fn validate(&self) -> Result<(), ConfError> {
        if self.instances.is_empty() {
            return Err(invalid("instance", "no instance configured"));
        }
        for (name, s) in &self.script {
            let key = format!("script.{name}");
            if split_command(&s.command).is_empty() {
                return Err(invalid(format!("{key}.command"), "empty command"));
            }
            check_period(&key, s.interval, s.timeout.unwrap_or(s.interval))?;
            check_weight(&format!("{key}.weight"), s.weight)?;
            check_rise_fall(&key, s.rise, s.fall)?;
        }
        for (name, p) in &self.proxy_check {
            let key = format!("proxy_check.{name}");
            check_period(&key, p.interval, p.timeout)?;
            check_weight(&format!("{key}.weight"), p.weight)?;
            check_rise_fall(&key, p.rise, p.fall)?;
        }
        let mut names = BTreeSet::new();
        let mut vrids = BTreeSet::new();
        for i in &self.instances {
            let key = format!("instance `{}`", i.name);
            if !names.insert(&i.name) {
                return Err(invalid(key, "duplicate instance name"));
            }
            if !vrids.insert((&i.interface, i.vrid)) {
                return Err(invalid(
                    key,
                    format!("vrid {} used twice on {}", i.vrid, i.interface),
                ));
            }
            self.validate_instance(&key, i)?;
        }
        Ok(())
    }

    fn validate_instance(&self, key: &str, i: &InstanceConfig) -> Result<(), ConfError> {
        if i.vrid == 0 {
            return Err(invalid(format!("{key}.vrid"), "must be 1 to 255"));
        }
        if i.priority == 0 {
            return Err(invalid(format!("{key}.priority"), "must be 1 to 255"));
        }
        if i.interface.is_empty() {
            return Err(invalid(format!("{key}.interface"), "empty"));
        }
        interval_cs(i).map_err(|why| invalid(format!("{key}.advert_interval"), why))?;
        if i.version == 3 && i.auth_pass.is_some() {
            return Err(invalid(
                format!("{key}.auth_pass"),
                "VRRPv3 has no authentication (RFC 5798 §9.2)",
            ));
        }
        if i.auth_pass.as_deref() == Some("") {
            return Err(invalid(format!("{key}.auth_pass"), "empty password"));
        }
        if !i.preempt && i.initial_state == InitialState::Master {
            return Err(invalid(
                format!("{key}.preempt"),
                "preempt = false needs initial_state = \"backup\", as in keepalived",
            ));
        }
        if !(0.0..=1000.0).contains(&i.preempt_delay) {
            return Err(invalid(
                format!("{key}.preempt_delay"),
                "must be 0 to 1000 seconds",
            ));
        }
        for (what, v) in [
            ("garp_master_delay", i.garp_master_delay),
            ("garp_interval", i.garp_interval),
        ] {
            if !(0.0..=1000.0).contains(&v) {
                return Err(invalid(
                    format!("{key}.{what}"),
                    "must be 0 to 1000 seconds",
                ));
            }
        }
        if i.vips.is_empty() {
            return Err(invalid(format!("{key}.vips"), "no virtual address"));
        }
        if i.vips.len() > 255 {
            return Err(invalid(format!("{key}.vips"), "more than 255 addresses"));
        }
        for t in &i.track_script {
            if !self.script.contains_key(&t.name) {
                return Err(invalid(
                    format!("{key}.track_script"),
                    format!("no script named `{}`", t.name),
                ));
            }
        }
        for t in &i.track_proxy {
            let Some(check) = self.proxy_check.get(&t.name) else {
                return Err(invalid(
                    format!("{key}.track_proxy"),
                    format!("no proxy_check named `{}`", t.name),
                ));
            };
            // The deadlock the old docs' recipe fell into: every host fails such a check
            // until it holds the VIP, and none takes the VIP while its check fails.
            let checked = check.address.ip();
            if i.vips
                .iter()
                .any(|v| std::net::IpAddr::V4(v.address.addr) == checked)
            {
                return Err(invalid(
                    format!("proxy_check.{}.address", t.name),
                    format!(
                        "{checked} is a virtual address of instance `{}`, which tracks this check: \
                         a host without the VIP fails the check and so never takes the VIP, \
                         on any host; check the proxy on a local address it also listens on \
                         (127.0.0.1, with the proxy's `-l VIP,127.0.0.1`)",
                        i.name
                    ),
                ));
            }
        }
        for t in i
            .track_script
            .iter()
            .chain(&i.track_proxy)
            .chain(&i.track_interface)
        {
            if let Some(w) = t.weight {
                check_weight(&format!("{key} weight of `{}`", t.name), w)?;
            }
        }
        Ok(())
    }
}

fn check_period(key: &str, interval: f64, timeout: f64) -> Result<(), ConfError> {
    if !(interval > 0.0 && interval <= 86400.0) {
        return Err(invalid(
            format!("{key}.interval"),
            "must be above 0 and at most a day",
        ));
    }
    if !(timeout > 0.0 && timeout <= 86400.0) {
        return Err(invalid(
            format!("{key}.timeout"),
            "must be above 0 and at most a day",
        ));
    }
    Ok(())
}

fn check_weight(key: &str, weight: i32) -> Result<(), ConfError> {
    if weight.abs() > MAX_WEIGHT {
        return Err(invalid(
            key,
            format!("must be -{MAX_WEIGHT} to {MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

fn check_rise_fall(key: &str, rise: u32, fall: u32) -> Result<(), ConfError> {
    if rise == 0 || fall == 0 {
        return Err(invalid(key, "rise and fall must be at least 1"));
    }
    Ok(())
}

/// The advert interval in centiseconds, checked against what the version can carry.
fn interval_cs(i: &InstanceConfig) -> Result<u16, String> {
    let cs = (i.advert_interval * 100.0).round();
    match i.version {
        // RFC 3768 §5.3.7: whole seconds in 8 bits.
        2 if (1.0..=255.0).contains(&i.advert_interval) && cs % 100.0 == 0.0 => Ok(cs as u16),
        2 => Err("VRRPv2 needs whole seconds from 1 to 255".into()),
        // RFC 5798 §5.2.7: centiseconds in 12 bits.
        3 if (1.0..=4095.0).contains(&cs) => Ok(cs as u16),
        3 => Err("VRRPv3 needs 0.01 to 40.95 seconds".into()),
        v => Err(format!("version {v}: only 2 and 3 exist")),
    }
}

/// Splits a command line on whitespace; double quotes group words, as
/// keepalived does for `script` and `notify` strings (no shell involved).
pub fn split_command(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in command.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl InstanceConfig {
    /// State-machine parameters; `local_address` is the advert source address
    /// found on the interface (or `source`).
    pub fn params(&self, local_address: Ipv4Addr) -> Params {
        let version = if self.version == 3 {
            Version::V3
        } else {
            Version::V2
        };
        Params {
            vrid: self.vrid,
            version,
            priority: self.priority,
            interval_cs: interval_cs(self).unwrap_or(100),
            auth: match (&self.auth_pass, version) {
                (Some(p), Version::V2) => Auth::pass(p),
                _ => Auth::None,
            },
            addresses: self.vips.iter().map(|v| v.address.addr).collect(),
            preempt: self.preempt,
            preempt_delay: secs(self.preempt_delay),
            local_address,
            check_addresses: self.check_advert_addresses,
            garp_master_delay: (self.garp_master_delay > 0.0).then(|| secs(self.garp_master_delay)),
            fast_takeover: self.fast_takeover,
        }
    }

    pub fn checksum_mode(&self) -> ChecksumMode {
        match self.checksum {
            Checksum::PseudoHeader => ChecksumMode::PseudoHeader,
            Checksum::WithoutPseudoHeader => ChecksumMode::WithoutPseudoHeader,
        }
    }

    pub fn garp_interval(&self) -> Duration {
        secs(self.garp_interval)
    }

    /// keepalived ignores tracking weights for the address owner.
    pub fn weights_apply(&self) -> bool {
        self.priority != PRIORITY_OWNER
    }
}

impl ScriptCheck {
    pub fn interval(&self) -> Duration {
        secs(self.interval)
    }
    pub fn timeout(&self) -> Duration {
        secs(self.timeout.unwrap_or(self.interval))
    }
}

impl ProxyCheck {
    pub fn interval(&self) -> Duration {
        secs(self.interval)
    }
    pub fn timeout(&self) -> Duration {
        secs(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[script.check_m]
command = "/opt/magent.sh"
interval = 2
weight = 20

[proxy_check.local]
address = "127.0.0.1:12000"
interval = 0.5
timeout = 0.2
weight = -50
fall = 2

[[instance]]
name = "VI_1"
interface = "ens32"
vrid = 51
priority = 100
advert_interval = 1
auth_pass = "1111"
initial_state = "master"
vips = [{ address = "192.168.111.100/32", dev = "ens32", label = "ens32:2" }]
track_script = [{ name = "check_m" }]
track_proxy = [{ name = "local" }]
track_interface = [{ name = "ens32", weight = -10 }]
notify = { master = "/bin/true master", any = "/usr/local/bin/notify" }
"#;

    #[test]
    fn a_proxy_check_on_the_vip_is_refused() {
        let text = EXAMPLE.replace("127.0.0.1:12000", "192.168.111.100:12000");
        let e = VrrpConfig::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("proxy_check.local.address"), "{e}");
        assert!(e.contains("never takes the VIP"), "{e}");
    }

    #[test]
    fn example_parses_with_defaults() {
        let c = VrrpConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.script["check_m"].interval(), Duration::from_secs(2));
        assert_eq!(c.script["check_m"].timeout(), Duration::from_secs(2));
        assert_eq!(c.proxy_check["local"].fall, 2);
        let i = &c.instances[0];
        assert_eq!(i.version, 2);
        assert!(i.preempt);
        assert_eq!(i.vips[0].address.to_string(), "192.168.111.100/32");
        let p = i.params(Ipv4Addr::new(192, 168, 111, 4));
        assert_eq!(p.interval_cs, 100);
        assert_eq!(p.auth, Auth::pass("1111"));
        assert_eq!(p.garp_master_delay, Some(Duration::from_secs(5)));
        assert!(p.fast_takeover);
        assert_eq!(i.notify.any.as_deref(), Some("/usr/local/bin/notify"));
    }

    #[test]
    fn status_file_and_fast_takeover_can_be_set() {
        let text = format!("status_file = \"/run/kc/vrrp.status\"\n{EXAMPLE}")
            .replace("vrid = 51", "vrid = 51\nfast_takeover = false");
        let c = VrrpConfig::from_toml(&text).unwrap();
        assert_eq!(
            c.status_file.as_deref(),
            Some(std::path::Path::new("/run/kc/vrrp.status"))
        );
        assert!(!c.instances[0].params(Ipv4Addr::LOCALHOST).fast_takeover);
    }

    fn err(text: &str) -> String {
        VrrpConfig::from_toml(text).unwrap_err().to_string()
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(EXAMPLE.contains(replace), "{replace}");
        EXAMPLE.replace(replace, by)
    }

    #[test]
    fn bad_configs_say_which_key_and_why() {
        assert!(err(&with("vrid = 51", "vrid = 51\ncolour = 1")).contains("unknown field `colour`"));
        assert!(
            err(&with("advert_interval = 1", "advert_interval = 0.5")).contains("whole seconds")
        );
        assert!(err(&with(
            "auth_pass = \"1111\"",
            "auth_pass = \"1111\"\nversion = 3"
        ))
        .contains("VRRPv3 has no authentication"));
        assert!(
            err(&with("name = \"check_m\"", "name = \"nope\"")).contains("no script named `nope`")
        );
        assert!(err(&with("weight = 20", "weight = 300")).contains("script.check_m.weight"));
        assert!(err(&with(
            "initial_state = \"master\"",
            "initial_state = \"master\"\npreempt = false"
        ))
        .contains("initial_state"));
        assert!(
            err(&with("192.168.111.100/32", "192.168.111.100/33")).contains("not an IPv4 address")
        );
        assert!(err(&with("vrid = 51", "vrid = 0")).contains("vrid"));
        assert!(err("").contains("no instance"));
    }

    #[test]
    fn v3_intervals_are_centiseconds() {
        let text = with("auth_pass = \"1111\"", "version = 3")
            .replace("advert_interval = 1", "advert_interval = 0.1");
        let c = VrrpConfig::from_toml(&text).unwrap();
        assert_eq!(c.instances[0].params(Ipv4Addr::LOCALHOST).interval_cs, 10);
        assert_eq!(c.instances[0].params(Ipv4Addr::LOCALHOST).auth, Auth::None);
        let text = text.replace("advert_interval = 0.1", "advert_interval = 41");
        assert!(err(&text).contains("0.01 to 40.95"));
    }

    #[test]
    fn commands_split_like_keepalived() {
        assert_eq!(
            split_command("/opt/a.sh  x \"y z\""),
            ["/opt/a.sh", "x", "y z"]
        );
        assert_eq!(split_command("\"\""), [""]);
        assert!(split_command("   ").is_empty());
    }
}
