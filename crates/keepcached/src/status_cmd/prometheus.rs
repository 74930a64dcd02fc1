//! The VRRP figures of a node, read from its Prometheus text exposition (`--metrics`):
//! `keepcached_vrrp_state{instance,state}` (1 for the current state), and
//! `keepcached_vrrp_priority{instance}`, `keepcached_vrrp_transitions_total{instance}` and
//! `keepcached_vrrp_vips_held{instance}` where the endpoint has them. Other lines are skipped, so the rest of a role's metrics can share
//! the endpoint.

use serde::Serialize;

/// One VRRP instance of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VrrpInstance {
    pub instance: String,
    /// master, backup, fault or init; `unknown` when no state's sample is 1.
    pub state: String,
    /// The effective priority (configured plus tracking weights).
    pub priority: Option<u64>,
    pub transitions: Option<u64>,
    /// How many of the instance's virtual addresses the node has on its interface.
    pub vips_held: Option<u64>,
}

/// The instances `text` reports, in the order their state first appears. An instance is one
/// that has a state metric; the other families may come before or after it.
pub fn vrrp_instances(text: &str) -> Vec<VrrpInstance> {
    let samples: Vec<Line> = text.lines().filter_map(parse_line).collect();
    let mut instances: Vec<VrrpInstance> = Vec::new();
    for sample in samples.iter().filter(|s| s.name == "keepcached_vrrp_state") {
        let Some(name) = sample.label("instance") else {
            continue;
        };
        let index = match instances.iter().position(|i| i.instance == name) {
            Some(i) => i,
            None => {
                instances.push(VrrpInstance {
                    instance: name.to_string(),
                    state: "unknown".into(),
                    ..VrrpInstance::default()
                });
                instances.len() - 1
            }
        };
        if sample.value == 1.0 {
            if let Some(state) = sample.label("state") {
                instances[index].state = state.to_string();
            }
        }
    }
    for sample in &samples {
        let Some(instance) = sample
            .label("instance")
            .and_then(|name| instances.iter_mut().find(|i| i.instance == name))
        else {
            continue;
        };
        match sample.name {
            "keepcached_vrrp_priority" => instance.priority = Some(sample.value as u64),
            "keepcached_vrrp_transitions_total" => instance.transitions = Some(sample.value as u64),
            "keepcached_vrrp_vips_held" => instance.vips_held = Some(sample.value as u64),
            _ => {}
        }
    }
    instances
}

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug)]
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Line<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Line {
        name,
        labels,
        value,
    })
}

/// `a="x",b="y\"z"}` -> the labels (unescaped) and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        text = &after[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP keepcached_vrrp_priority Effective priority.
# TYPE keepcached_vrrp_priority gauge
keepcached_vrrp_priority{instance="VI_1"} 100
# TYPE keepcached_vrrp_state gauge
keepcached_vrrp_state{instance="VI_1",state="backup"} 0
keepcached_vrrp_state{instance="VI_1",state="fault"} 0
keepcached_vrrp_state{instance="VI_1",state="init"} 0
keepcached_vrrp_state{instance="VI_1",state="master"} 1
keepcached_vrrp_state{state="backup",instance="VI_2"} 1.0
keepcached_vrrp_state{instance="VI_2",state="master"} 0
keepcached_vrrp_priority{instance="VI_2"} 90 1700000000000
keepcached_vrrp_transitions_total{instance="VI_1"} 3
keepcached_vrrp_vips_held{instance="VI_1"} 1
keepcached_vrrp_adverts_rejected_total{reason="auth \"bad\""} 2
keepcached_proxy_requests_total{command="get"} 12
"#;

    #[test]
    fn a_scrape_gives_each_instance_its_state_priority_and_transitions() {
        let instances = vrrp_instances(SCRAPE);
        assert_eq!(
            instances,
            [
                VrrpInstance {
                    instance: "VI_1".into(),
                    state: "master".into(),
                    priority: Some(100),
                    transitions: Some(3),
                    vips_held: Some(1),
                },
                VrrpInstance {
                    instance: "VI_2".into(),
                    state: "backup".into(),
                    priority: Some(90),
                    transitions: None,
                    vips_held: None,
                },
            ]
        );
    }

    #[test]
    fn labels_unescape_and_bad_lines_are_skipped() {
        let line = parse_line(r#"m{reason="a \"b\" \\ c",x="y"} 2"#).unwrap();
        assert_eq!(line.label("reason"), Some(r#"a "b" \ c"#));
        assert_eq!(line.label("x"), Some("y"));
        assert!(parse_line(r#"m{reason="unterminated} 2"#).is_none());
        assert!(parse_line("m not_a_number").is_none());
        assert!(vrrp_instances("garbage\n{}\n").is_empty());
    }
}
