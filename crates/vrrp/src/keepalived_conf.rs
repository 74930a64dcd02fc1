//! Reader for the VRRP parts of a keepalived.conf (`keepcached vrrp
//! --keepalived-conf FILE`), so that a host can be migrated without rewriting
//! its configuration.
//!
//! Text goes through a tokenizer (words, quoted strings, braces, `!`/`#`
//! comments) into a tree of statements, then `vrrp_script` and `vrrp_instance`
//! blocks become a [`VrrpConfig`]. Keywords that have no meaning for us (mail
//! alerts, LVS) come back as [`Warning`]s, one per keyword; anything that would
//! change VRRP behaviour and that we do not implement is a [`ConfError`] naming
//! its line, so a migration never silently loses a setting.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::config::{
    Cidr, ConfError, InitialState, InstanceConfig, Notify, ScriptCheck, Track, Vip, VrrpConfig,
};

/// A keyword that was read and ignored because it does not apply here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub keyword: String,
    pub why: &'static str,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: `{}` ignored: {}",
            self.line, self.keyword, self.why
        )
    }
}

/// Reads the `vrrp_script` and `vrrp_instance` blocks of a keepalived.conf.
pub fn parse_keepalived_conf(text: &str) -> Result<(VrrpConfig, Vec<Warning>), ConfError> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let nodes = parse_block(&tokens, &mut pos, None)?;
    let mut reader = Reader::default();
    reader.top(&nodes)?;
    let config = reader.finish()?;
    config.validate()?;
    Ok((config, reader.warnings))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ConfError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let mut chars = raw.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                c if c.is_whitespace() => {
                    chars.next();
                }
                '!' | '#' => break,
                '{' | '}' => {
                    chars.next();
                    let tok = if c == '{' { Tok::Open } else { Tok::Close };
                    out.push(Token { tok, line });
                }
                '"' => {
                    chars.next();
                    let mut word = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some(c) => word.push(c),
                            None => return Err(at(line, "unterminated quoted string")),
                        }
                    }
                    out.push(Token {
                        tok: Tok::Word(word),
                        line,
                    });
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || c == '{' || c == '}' {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    out.push(Token {
                        tok: Tok::Word(word),
                        line,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A statement: the words of one line, and a block if a `{` follows.
#[derive(Debug)]
struct Node {
    line: usize,
    words: Vec<String>,
    block: Option<Vec<Node>>,
}

impl Node {
    fn keyword(&self) -> &str {
        &self.words[0]
    }

    fn args(&self) -> &[String] {
        &self.words[1..]
    }

    fn children(&self) -> Result<&[Node], ConfError> {
        self.block.as_deref().ok_or_else(|| {
            at(
                self.line,
                format!("`{}` needs a {{ block }}", self.keyword()),
            )
        })
    }

    fn arg(&self) -> Result<&str, ConfError> {
        match self.args() {
            [one] => Ok(one),
            _ => Err(at(
                self.line,
                format!("`{}` takes one value", self.keyword()),
            )),
        }
    }

    fn num<T: FromStr>(&self) -> Result<T, ConfError> {
        let v = self.arg()?;
        v.parse().map_err(|_| {
            at(
                self.line,
                format!("`{}`: `{v}` is not a valid number", self.keyword()),
            )
        })
    }

    /// A command line: keepalived takes one (usually quoted) word as the whole
    /// command line, and joins several words.
    fn command(&self) -> Result<String, ConfError> {
        match self.args() {
            [] => {
                return Err(at(
                    self.line,
                    format!("`{}` needs a command", self.keyword()),
                ))
            }
            [one] => return Ok(one.clone()),
            _ => {}
        }
        Ok(self
            .args()
            .iter()
            .map(|w| {
                if w.contains(char::is_whitespace) {
                    format!("\"{w}\"")
                } else {
                    w.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "))
    }
}

fn parse_block(
    tokens: &[Token],
    pos: &mut usize,
    open_line: Option<usize>,
) -> Result<Vec<Node>, ConfError> {
    let mut nodes: Vec<Node> = Vec::new();
    while let Some(t) = tokens.get(*pos) {
        match &t.tok {
            Tok::Close => {
                *pos += 1;
                return match open_line {
                    Some(_) => Ok(nodes),
                    None => Err(at(t.line, "`}` without a matching `{`")),
                };
            }
            Tok::Open => {
                // A `{` alone on its line opens the block of the statement above.
                *pos += 1;
                let line = t.line;
                let block = parse_block(tokens, pos, Some(line))?;
                match nodes.last_mut() {
                    Some(n) if n.block.is_none() => n.block = Some(block),
                    _ => return Err(at(line, "`{` without a keyword")),
                }
            }
            Tok::Word(_) => {
                let line = t.line;
                let mut words = Vec::new();
                while let Some(Token {
                    tok: Tok::Word(w),
                    line: l,
                }) = tokens.get(*pos)
                {
                    if *l != line {
                        break;
                    }
                    words.push(w.clone());
                    *pos += 1;
                }
                let block = match tokens.get(*pos) {
                    Some(Token {
                        tok: Tok::Open,
                        line: l,
                    }) if *l == line => {
                        *pos += 1;
                        Some(parse_block(tokens, pos, Some(line))?)
                    }
                    _ => None,
                };
                nodes.push(Node { line, words, block });
            }
        }
    }
    match open_line {
        Some(line) => Err(at(line, "block opened here is never closed")),
        None => Ok(nodes),
    }
}

fn at(line: usize, why: impl Into<String>) -> ConfError {
    ConfError::Line {
        line,
        why: why.into(),
    }
}

fn unsupported(n: &Node, context: &str) -> ConfError {
    at(
        n.line,
        format!(
            "`{}` in {context} is not supported by keepcached",
            n.keyword()
        ),
    )
}

const MAIL: &str = "keepcached sends no e-mail alerts";
const LVS: &str = "keepcached does not configure LVS";
const IDENT: &str = "keepcached does not use it";
const SCRIPT_USER: &str = "scripts run as the user keepcached runs as";
const IPV6_ONLY: &str = "it applies to IPv6 instances only";
const NO_ALERTS: &str = "keepcached sends no SMTP or SNMP alerts";

/// Globals that change nothing for VRRP over IPv4 as keepcached does it.
fn ignored_global(keyword: &str) -> Option<&'static str> {
    Some(match keyword {
        "notification_email"
        | "notification_email_from"
        | "smtp_server"
        | "smtp_connect_timeout"
        | "smtp_helo_name"
        | "smtp_alert"
        | "smtp_alert_vrrp"
        | "email_from" => MAIL,
        "router_id" => IDENT,
        "script_user" | "enable_script_security" => SCRIPT_USER,
        "vrrp_gna_interval" => IPV6_ONLY,
        "enable_snmp_vrrp" | "enable_snmp_keepalived" | "enable_traps" => NO_ALERTS,
        k if k.starts_with("lvs_") || k.starts_with("checker_") => LVS,
        _ => return None,
    })
}

/// Instance-wide settings that may come from global_defs.
#[derive(Debug, Default)]
struct Globals {
    skip_check_adv_addr: bool,
    garp_interval: Option<f64>,
    garp_master_delay: Option<f64>,
    garp_master_repeat: Option<u32>,
    version: Option<u8>,
}

#[derive(Debug, Default)]
struct Reader {
    globals: Globals,
    config: Option<VrrpConfig>,
    instances: Vec<(InstanceConfig, InstanceOverrides)>,
    warned: BTreeSet<String>,
    warnings: Vec<Warning>,
}

/// What an instance set itself, so globals fill only the rest.
#[derive(Debug, Default)]
struct InstanceOverrides {
    version: bool,
    garp_interval: bool,
    garp_master_delay: bool,
    garp_master_repeat: bool,
}

impl Reader {
    fn config(&mut self) -> &mut VrrpConfig {
        self.config.get_or_insert_with(|| VrrpConfig {
            script: Default::default(),
            proxy_check: Default::default(),
            instances: Vec::new(),
            status_file: None,
        })
    }

    fn warn(&mut self, n: &Node, why: &'static str) {
        if self.warned.insert(n.keyword().to_owned()) {
            self.warnings.push(Warning {
                line: n.line,
                keyword: n.keyword().to_owned(),
                why,
            });
        }
    }

    fn top(&mut self, nodes: &[Node]) -> Result<(), ConfError> {
        for n in nodes {
            match n.keyword() {
                "global_defs" => self.global_defs(n.children()?)?,
                "vrrp_script" => self.vrrp_script(n)?,
                "vrrp_instance" => self.vrrp_instance(n)?,
                "virtual_server" | "virtual_server_group" => self.warn(n, LVS),
                _ => return Err(unsupported(n, "the top level")),
            }
        }
        Ok(())
    }

    fn global_defs(&mut self, nodes: &[Node]) -> Result<(), ConfError> {
        for n in nodes {
            match n.keyword() {
                "vrrp_skip_check_adv_addr" => self.globals.skip_check_adv_addr = true,
                "vrrp_garp_interval" => self.globals.garp_interval = Some(n.num()?),
                "vrrp_garp_master_delay" => self.globals.garp_master_delay = Some(n.num()?),
                "vrrp_garp_master_repeat" => self.globals.garp_master_repeat = Some(n.num()?),
                "vrrp_version" => self.globals.version = Some(n.num()?),
                k => match ignored_global(k) {
                    Some(why) => self.warn(n, why),
                    None => return Err(unsupported(n, "global_defs")),
                },
            }
        }
        Ok(())
    }

    fn vrrp_script(&mut self, n: &Node) -> Result<(), ConfError> {
        let name = n.arg()?.to_owned();
        let mut script = ScriptCheck {
            command: String::new(),
            interval: 1.0,
            timeout: None,
            weight: 0,
            rise: 1,
            fall: 1,
        };
        for c in n.children()? {
            match c.keyword() {
                "script" => script.command = c.command()?,
                "interval" => script.interval = c.num()?,
                "timeout" => script.timeout = Some(c.num()?),
                "weight" => script.weight = c.num()?,
                "rise" => script.rise = c.num()?,
                "fall" => script.fall = c.num()?,
                _ => return Err(unsupported(c, "vrrp_script")),
            }
        }
        if script.command.is_empty() {
            return Err(at(n.line, format!("vrrp_script {name} has no `script`")));
        }
        self.config().script.insert(name, script);
        Ok(())
    }

    fn vrrp_instance(&mut self, n: &Node) -> Result<(), ConfError> {
        let mut i = InstanceConfig {
            name: n.arg()?.to_owned(),
            interface: String::new(),
            vrid: 0,
            priority: 100,
            version: 2,
            advert_interval: 1.0,
            auth_pass: None,
            initial_state: InitialState::Backup,
            preempt: true,
            preempt_delay: 0.0,
            checksum: Default::default(),
            source: None,
            unicast_peers: Vec::new(),
            check_advert_addresses: true,
            // Its peers may be keepalived, whose backups wait the full Skew_Time.
            fast_takeover: false,
            garp_master_delay: 5.0,
            garp_master_repeat: 5,
            garp_interval: 0.0,
            vips: Vec::new(),
            track_script: Vec::new(),
            track_proxy: Vec::new(),
            track_interface: Vec::new(),
            track_primary_interface: true,
            notify: Notify::default(),
        };
        let mut set = InstanceOverrides::default();
        for c in n.children()? {
            match c.keyword() {
                "state" => {
                    i.initial_state = match c.arg()? {
                        "MASTER" => InitialState::Master,
                        "BACKUP" => InitialState::Backup,
                        s => return Err(at(c.line, format!("state `{s}`: MASTER or BACKUP"))),
                    }
                }
                "interface" => i.interface = c.arg()?.to_owned(),
                "virtual_router_id" => i.vrid = c.num()?,
                "priority" => i.priority = c.num()?,
                "advert_int" => i.advert_interval = c.num()?,
                "version" => {
                    i.version = c.num()?;
                    set.version = true;
                }
                "authentication" => self.authentication(c, &mut i)?,
                "virtual_ipaddress" => {
                    for v in c.children()? {
                        i.vips.push(vip(v)?);
                    }
                }
                "virtual_ipaddress_excluded" => {
                    for v in c.children()? {
                        i.vips.push(Vip {
                            excluded: true,
                            ..vip(v)?
                        });
                    }
                }
                "track_script" => i.track_script.extend(tracks(c)?),
                "track_interface" => i.track_interface.extend(tracks(c)?),
                "dont_track_primary" => i.track_primary_interface = false,
                "nopreempt" => i.preempt = false,
                "preempt" => i.preempt = true,
                "preempt_delay" => i.preempt_delay = c.num()?,
                "unicast_src_ip" | "mcast_src_ip" => {
                    i.source = Some(
                        c.arg()?
                            .parse()
                            .map_err(|_| at(c.line, "not an IP address"))?,
                    )
                }
                "unicast_peer" => {
                    for p in c.children()? {
                        i.unicast_peers.push(
                            p.keyword()
                                .parse()
                                .map_err(|_| at(p.line, "not an IP address"))?,
                        );
                    }
                }
                "skip_check_adv_addr" => i.check_advert_addresses = false,
                "garp_master_delay" => {
                    i.garp_master_delay = c.num()?;
                    set.garp_master_delay = true;
                }
                "garp_master_repeat" => {
                    i.garp_master_repeat = c.num()?;
                    set.garp_master_repeat = true;
                }
                "garp_interval" => {
                    i.garp_interval = c.num()?;
                    set.garp_interval = true;
                }
                "notify_master" => i.notify.master = Some(c.command()?),
                "notify_backup" => i.notify.backup = Some(c.command()?),
                "notify_fault" => i.notify.fault = Some(c.command()?),
                "notify_stop" => i.notify.stop = Some(c.command()?),
                "notify" => i.notify.any = Some(c.command()?),
                "smtp_alert" => self.warn(c, MAIL),
                _ => return Err(unsupported(c, "vrrp_instance")),
            }
        }
        if i.interface.is_empty() {
            return Err(at(
                n.line,
                format!("vrrp_instance {} has no `interface`", i.name),
            ));
        }
        if i.vrid == 0 {
            return Err(at(
                n.line,
                format!("vrrp_instance {} has no `virtual_router_id`", i.name),
            ));
        }
        self.instances.push((i, set));
        Ok(())
    }

    fn authentication(&mut self, n: &Node, i: &mut InstanceConfig) -> Result<(), ConfError> {
        let mut pass = None;
        for c in n.children()? {
            match c.keyword() {
                "auth_type" => match c.arg()? {
                    "PASS" => {}
                    // RFC 3768 §5.3.6 withdrew IP Authentication Header.
                    "AH" => return Err(at(c.line, "auth_type AH is not supported; use PASS")),
                    t => return Err(at(c.line, format!("auth_type `{t}`: PASS or AH"))),
                },
                "auth_pass" => pass = Some(c.arg()?.to_owned()),
                _ => return Err(unsupported(c, "authentication")),
            }
        }
        i.auth_pass = Some(pass.ok_or_else(|| at(n.line, "authentication without auth_pass"))?);
        Ok(())
    }

    fn finish(&mut self) -> Result<VrrpConfig, ConfError> {
        let g = &self.globals;
        let mut instances = Vec::new();
        for (mut i, set) in std::mem::take(&mut self.instances) {
            if g.skip_check_adv_addr {
                i.check_advert_addresses = false;
            }
            if let (false, Some(v)) = (set.version, g.version) {
                i.version = v;
            }
            // keepalived runs an IPv6 instance as VRRPv3 unless the instance
            // itself asks for v2, which validation then refuses.
            if !set.version && i.is_ipv6() {
                i.version = 3;
            }
            if let (false, Some(v)) = (set.garp_interval, g.garp_interval) {
                i.garp_interval = v;
            }
            if let (false, Some(v)) = (set.garp_master_delay, g.garp_master_delay) {
                i.garp_master_delay = v;
            }
            if let (false, Some(v)) = (set.garp_master_repeat, g.garp_master_repeat) {
                i.garp_master_repeat = v;
            }
            // keepalived ignores authentication in VRRPv3 rather than failing.
            if i.version == 3 {
                i.auth_pass = None;
            }
            instances.push(i);
        }
        let mut config = self.config().clone();
        config.instances = instances;
        Ok(config)
    }
}

/// `ADDRESS[/PREFIX] [dev DEV] [label LABEL] [scope global]`
fn vip(n: &Node) -> Result<Vip, ConfError> {
    let address = Cidr::from_str(n.keyword()).map_err(|why| at(n.line, why))?;
    let mut v = Vip {
        address,
        excluded: false,
        dev: None,
        label: None,
    };
    let mut args = n.args().iter();
    while let Some(k) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| at(n.line, format!("`{k}` needs a value")))?
            .clone();
        match k.as_str() {
            "dev" => v.dev = Some(value),
            "label" => v.label = Some(value),
            "scope" if value == "global" => {}
            _ => {
                return Err(at(
                    n.line,
                    format!("virtual address option `{k} {value}` is not supported"),
                ))
            }
        }
    }
    Ok(v)
}

/// `NAME [weight N]` lines of track_script / track_interface.
fn tracks(n: &Node) -> Result<Vec<Track>, ConfError> {
    n.children()?
        .iter()
        .map(|c| match c.args() {
            [] => Ok(Track {
                name: c.keyword().to_owned(),
                weight: None,
            }),
            [w, v] if w == "weight" => Ok(Track {
                name: c.keyword().to_owned(),
                weight: Some(
                    v.parse()
                        .map_err(|_| at(c.line, format!("weight `{v}` is not a number")))?,
                ),
            }),
            _ => Err(at(
                c.line,
                format!("`{}`: only `weight N` is supported", c.words.join(" ")),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_keepalived_conf(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = "vrrp_instance V {\n interface eth0\n virtual_router_id 7\n virtual_ipaddress {\n 198.18.0.100\n }\n}\n";

    #[test]
    fn minimal_instance_gets_keepalived_defaults() {
        let (c, w) = parse_keepalived_conf(MINIMAL).unwrap();
        assert!(w.is_empty());
        let i = &c.instances[0];
        assert_eq!(
            (i.vrid, i.priority, i.version, i.advert_interval),
            (7, 100, 2, 1.0)
        );
        assert_eq!(i.vips[0].address.to_string(), "198.18.0.100/32");
        assert!(i.preempt && i.track_primary_interface && i.check_advert_addresses);
        assert!(!i.fast_takeover);
    }

    #[test]
    fn brace_on_its_own_line_and_quotes() {
        let text = "vrrp_script chk\n{\n script \"/bin/check --port 1\"\n}\n".to_owned()
            + &MINIMAL.replace("eth0\n", "eth0\n notify \"/x y/n.sh\"\n");
        let (c, _) = parse_keepalived_conf(&text).unwrap();
        assert_eq!(c.script["chk"].command, "/bin/check --port 1");
        assert_eq!(c.instances[0].notify.any.as_deref(), Some("/x y/n.sh"));
    }

    #[test]
    fn v3_unicast_and_globals() {
        let text = "global_defs {\n vrrp_version 3\n vrrp_garp_master_delay 1\n}\n".to_owned()
            + &MINIMAL.replace(
                "eth0\n",
                "eth0\n advert_int 0.1\n unicast_src_ip 198.18.0.1\n unicast_peer {\n 198.18.0.2\n }\n nopreempt\n dont_track_primary\n track_interface {\n eth1 weight -30\n }\n",
            );
        let (c, _) = parse_keepalived_conf(&text).unwrap();
        let i = &c.instances[0];
        assert_eq!(i.version, 3);
        assert_eq!(i.garp_master_delay, 1.0);
        assert_eq!(i.source, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(
            i.unicast_peers,
            vec!["198.18.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!i.preempt && !i.track_primary_interface);
        assert_eq!(i.track_interface[0].weight, Some(-30));
        assert_eq!(
            i.params(std::net::Ipv4Addr::LOCALHOST.into()).interval_cs,
            10
        );
    }

    #[test]
    fn ipv6_instances_are_vrrpv3_and_may_exclude_ipv4_addresses() {
        let text = "global_defs {\n vrrp_version 2\n}\n".to_owned()
            + &MINIMAL.replace(
                "198.18.0.100\n }\n",
                "2001:2::100/64\n }\n virtual_ipaddress_excluded {\n 198.18.0.100/24 dev eth1\n }\n",
            );
        let (c, _) = parse_keepalived_conf(&text).unwrap();
        let i = &c.instances[0];
        assert!(i.is_ipv6());
        assert_eq!(i.version, 3);
        assert_eq!(i.vips[1].address.to_string(), "198.18.0.100/24");
        assert!(i.vips[1].excluded && !i.vips[0].excluded);
        let v2 = MINIMAL
            .replace("198.18.0.100", "2001:2::100")
            .replace("eth0\n", "eth0\n version 2\n");
        assert!(err(&v2).contains("IPv6 needs VRRPv3"));
        let mixed = MINIMAL.replace("198.18.0.100\n", "198.18.0.100\n 2001:2::100\n");
        assert!(err(&mixed).contains("2001:2::100 is not IPv4"));
    }

    #[test]
    fn unsupported_keywords_name_their_line() {
        assert_eq!(
            err(&MINIMAL.replace("eth0\n", "eth0\n use_vmac\n")),
            "line 3: `use_vmac` in vrrp_instance is not supported by keepcached"
        );
        assert_eq!(
            err("vrrp_sync_group G {\n}\n"),
            "line 1: `vrrp_sync_group` in the top level is not supported by keepcached"
        );
        assert_eq!(
            err("global_defs {\n vrrp_strict\n}\n"),
            "line 2: `vrrp_strict` in global_defs is not supported by keepcached"
        );
        assert!(err(&MINIMAL.replace(
            "eth0\n",
            "eth0\n authentication {\n auth_type AH\n auth_pass x\n }\n"
        ))
        .starts_with("line 4: auth_type AH"));
        assert!(
            err(&MINIMAL.replace("198.18.0.100", "198.18.0.100 brd 1.2.3.4"))
                .starts_with("line 5:")
        );
        assert!(
            err(&MINIMAL.replace("virtual_router_id 7", "virtual_router_id x"))
                .starts_with("line 3:")
        );
        assert!(err("vrrp_instance V {\n").contains("never closed"));
        assert!(err("}\n").contains("line 1"));
        assert!(err("vrrp_script s {\n script \"/bin/x\n}\n").contains("unterminated"));
    }

    #[test]
    fn irrelevant_keywords_are_reported_once() {
        let text = "global_defs {\n router_id A\n smtp_server 1.2.3.4\n smtp_connect_timeout 3\n}\nvirtual_server 10.0.0.1 80 {\n lb_algo rr\n}\nvirtual_server 10.0.0.2 80 {\n}\n".to_owned()
            + MINIMAL;
        let (_, w) = parse_keepalived_conf(&text).unwrap();
        let keywords: Vec<_> = w.iter().map(|w| (w.line, w.keyword.as_str())).collect();
        assert_eq!(
            keywords,
            [
                (2, "router_id"),
                (3, "smtp_server"),
                (4, "smtp_connect_timeout"),
                (6, "virtual_server")
            ]
        );
        assert_eq!(
            w[0].to_string(),
            "line 2: `router_id` ignored: keepcached does not use it"
        );
    }
}
