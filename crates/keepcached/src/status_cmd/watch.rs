//! `status --watch`: the report redrawn live in the terminal (ratatui over crossterm, in the
//! alternate screen), every target with small history sparklines of what moves: requests per
//! second and the hit ratio over each interval, and for a proxy its backends' latency.
//!
//! q, Esc or Ctrl-C quits and gives the terminal back as it was (ratatui's restore; its panic
//! hook does the same if drawing panics); so do SIGTERM and SIGHUP (the terminal went away),
//! which would otherwise end the process with the terminal left in raw mode.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Sparkline};
use ratatui::Frame;

use super::{
    backend_row, columns, percent, proxy_line, sample_all, server_row, Probe, Report,
    BACKEND_HEADER, NODE_HEADER, SERVER_HEADER,
};

/// Points of history kept per series: more than a wide terminal shows.
const HISTORY: usize = 240;
/// Width of the sparkline column of a target's box.
const CHARTS_WIDTH: u16 = 48;

/// How often the keyboard wait looks at the stop signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

pub fn run(probes: &mut [Probe], interval: Duration) -> anyhow::Result<()> {
    let stop = stop_signals()?;
    let mut terminal = ratatui::try_init()?;
    let result = watch(&mut terminal, probes, interval, &stop);
    ratatui::try_restore()?;
    result
}

/// A flag that SIGTERM or SIGHUP sets, handled on a thread of its own (the watch has no
/// runtime); the handlers are in place when this returns.
fn stop_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut hangup) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = hangup.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}

fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    probes: &mut [Probe],
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut history = History::default();
    loop {
        let samples = sample_all(probes);
        let report = Report::new(probes, &samples);
        let sampled = Instant::now();
        history.record(&report, sampled);
        terminal.draw(|frame| draw(frame, &report, &history, interval))?;
        let next = sampled + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left.min(SIGNAL_CHECK))? {
                continue;
            }
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|frame| draw(frame, &report, &history, interval))?;
                }
                _ => {}
            }
        }
    }
}

/// Each target's series, by target name.
#[derive(Debug, Default)]
pub struct History {
    series: BTreeMap<String, Series>,
}

/// Rates over each interval, from two consecutive samples of a target's counters. A point is
/// absent when it cannot be told: the first sample, no gets (hit ratio) or no requests
/// (latency) in the interval, or a counter that went back (the target restarted).
#[derive(Debug, Default)]
struct Series {
    ops_per_s: VecDeque<Option<u64>>,
    hit_pct: VecDeque<Option<u64>>,
    latency_us: VecDeque<Option<u64>>,
    last: Option<(Instant, Counters)>,
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    ops: u64,
    hits: u64,
    misses: u64,
    /// Sum over backends of average latency times requests, and of requests.
    latency_weight: u64,
    requests: u64,
}

impl History {
    pub fn record(&mut self, report: &Report, now: Instant) {
        for proxy in &report.proxies {
            let f = &proxy.figures;
            let counters = Counters {
                ops: f.ops,
                hits: f.get_hits,
                misses: f.get_misses,
                latency_weight: f
                    .backends
                    .iter()
                    .map(|b| b.avg_latency_us.saturating_mul(b.requests))
                    .sum(),
                requests: f.backends.iter().map(|b| b.requests).sum(),
            };
            self.series
                .entry(proxy.target.clone())
                .or_default()
                .push(now, counters);
        }
        for server in &report.servers {
            let f = &server.figures;
            let counters = Counters {
                ops: f.ops,
                hits: f.get_hits,
                misses: f.get_misses,
                latency_weight: 0,
                requests: 0,
            };
            self.series
                .entry(server.target.clone())
                .or_default()
                .push(now, counters);
        }
    }
}

impl Series {
    fn push(&mut self, now: Instant, counters: Counters) {
        let (ops, hit, latency) = match self.last {
            Some((then, last)) => {
                let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
                let delta = |new: u64, old: u64| new.checked_sub(old);
                let ops = delta(counters.ops, last.ops).map(|d| (d as f64 / seconds) as u64);
                let hits = delta(counters.hits, last.hits);
                let misses = delta(counters.misses, last.misses);
                let hit = match (hits, misses) {
                    (Some(h), Some(m)) if h + m > 0 => Some(h * 100 / (h + m)),
                    _ => None,
                };
                let latency = match (
                    delta(counters.latency_weight, last.latency_weight),
                    delta(counters.requests, last.requests),
                ) {
                    (Some(w), Some(r)) if r > 0 => Some(w / r),
                    _ => None,
                };
                (ops, hit, latency)
            }
            None => (None, None, None),
        };
        self.last = Some((now, counters));
        for (series, point) in [
            (&mut self.ops_per_s, ops),
            (&mut self.hit_pct, hit),
            (&mut self.latency_us, latency),
        ] {
            if series.len() == HISTORY {
                series.pop_front();
            }
            series.push_back(point);
        }
    }
}

/// One box of the screen.
#[derive(Debug)]
enum Panel<'a> {
    Text {
        title: &'static str,
        lines: Vec<String>,
    },
    Target {
        title: &'static str,
        lines: Vec<String>,
        series: Option<&'a Series>,
        latency: bool,
    },
}

impl Panel<'_> {
    fn height(&self) -> u16 {
        let lines = match self {
            Panel::Text { lines, .. } => lines.len(),
            // As tall as its sparklines too.
            Panel::Target { lines, latency, .. } => lines.len().max(2 + usize::from(*latency)),
        };
        lines as u16 + 2
    }

    fn draw(&self, frame: &mut Frame, area: Rect) {
        match self {
            Panel::Text { title, lines } => text_box(frame, area, title, lines),
            Panel::Target {
                title,
                lines,
                series,
                latency,
            } => target_box(frame, area, title, lines, *series, *latency),
        }
    }
}

/// The whole screen: a title line, then one box per section or target.
pub fn draw(frame: &mut Frame, report: &Report, history: &History, interval: Duration) {
    let mut panels = Vec::new();
    if !report.nodes.is_empty() {
        let mut lines: Vec<String> = columns(&NODE_HEADER, &report.node_rows())
            .lines()
            .map(String::from)
            .collect();
        lines.extend(report.vip_lines());
        panels.push(Panel::Text {
            title: "VRRP",
            lines,
        });
    }
    for proxy in &report.proxies {
        let rows: Vec<Vec<String>> = proxy.figures.backends.iter().map(backend_row).collect();
        let mut lines = vec![proxy_line(proxy)];
        lines.extend(columns(&BACKEND_HEADER, &rows).lines().map(String::from));
        panels.push(Panel::Target {
            title: "proxy",
            lines,
            series: history.series.get(&proxy.target),
            latency: true,
        });
    }
    for server in &report.servers {
        panels.push(Panel::Target {
            title: "server",
            lines: columns(&SERVER_HEADER, &[server_row(server)])
                .lines()
                .map(String::from)
                .collect(),
            series: history.series.get(&server.target),
            latency: false,
        });
    }
    if !report.unreachable.is_empty() {
        panels.push(Panel::Text {
            title: "unreachable",
            lines: report
                .unreachable
                .iter()
                .map(|u| format!("{}  {}", u.target, u.error))
                .collect(),
        });
    }
    let mut constraints = vec![Constraint::Length(1)];
    constraints.extend(panels.iter().map(|p| Constraint::Length(p.height())));
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(frame.area());
    let title = format!(
        "keepcached status: every {:.1}s, q to quit",
        interval.as_secs_f64()
    );
    frame.render_widget(Paragraph::new(title), areas[0]);
    for (panel, area) in panels.iter().zip(&areas[1..]) {
        panel.draw(frame, *area);
    }
}

fn text_box(frame: &mut Frame, area: Rect, title: &str, lines: &[String]) {
    let text: Vec<Line> = lines.iter().map(|l| Line::raw(l.as_str())).collect();
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(title)),
        area,
    );
}

/// A target's figures on the left and its sparklines on the right.
fn target_box(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    lines: &[String],
    series: Option<&Series>,
    latency: bool,
) {
    let block = Block::bordered().title(title.to_string());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [text, charts] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(CHARTS_WIDTH)]).areas(inner);
    let content: Vec<Line> = lines
        .iter()
        .map(|l| Line::styled(l.as_str(), state_style(l)))
        .collect();
    frame.render_widget(Paragraph::new(content), text);
    let Some(series) = series else {
        return;
    };
    let mut charts_shown = vec![
        (
            "ops/s",
            &series.ops_per_s,
            latest(&series.ops_per_s).map_or("-".into(), |v| v.to_string()),
            Color::Green,
        ),
        (
            "hits",
            &series.hit_pct,
            percent(latest(&series.hit_pct).map(|p| p as f64 / 100.0)),
            Color::Cyan,
        ),
    ];
    if latency {
        charts_shown.push((
            "latency",
            &series.latency_us,
            latest(&series.latency_us).map_or("-".into(), |v| format!("{v}us")),
            Color::Yellow,
        ));
    }
    let rows = Layout::vertical(vec![Constraint::Length(1); charts_shown.len()]).split(charts);
    for ((name, points, now, color), row) in charts_shown.into_iter().zip(rows.iter()) {
        let [label, chart] =
            Layout::horizontal([Constraint::Length(18), Constraint::Min(0)]).areas(*row);
        frame.render_widget(Paragraph::new(format!("{name} {now}")), label);
        let shown: Vec<Option<u64>> = points
            .iter()
            .skip(points.len().saturating_sub(chart.width as usize))
            .copied()
            .collect();
        let sparkline = Sparkline::default()
            .data(&shown)
            .style(Style::default().fg(color));
        let sparkline = if name == "hits" {
            sparkline.max(100)
        } else {
            sparkline
        };
        frame.render_widget(sparkline, chart);
    }
}

/// A backend row (indented) in the colour of its state, so a glance finds the one that is not
/// up.
fn state_style(line: &str) -> Style {
    if !line.starts_with("  ") {
        return Style::default();
    }
    match line.split_whitespace().nth(1) {
        Some("up") => Style::default().fg(Color::Green),
        Some("down" | "drained") => Style::default().fg(Color::Red),
        Some("warming" | "suspect" | "connecting") => Style::default().fg(Color::Yellow),
        _ => Style::default(),
    }
}

fn latest(points: &VecDeque<Option<u64>>) -> Option<u64> {
    points.back().copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_cmd::{
        BackendFigures, Entry, Node, ProxyFigures, ServerFigures, Unreachable, VipHolder,
        VrrpInstance,
    };
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn proxy(ops: u64, hits: u64, misses: u64, requests: u64) -> Entry<ProxyFigures> {
        let backend = |addr: &str, state: &str, warm: Option<u64>| BackendFigures {
            pool: "main".into(),
            addr: addr.into(),
            state: state.into(),
            requests,
            avg_latency_us: 200,
            warm_pct: warm,
            ..BackendFigures::default()
        };
        Entry {
            target: "127.0.0.1:12000".into(),
            figures: ProxyFigures {
                serving: true,
                ops,
                get_hits: hits,
                get_misses: misses,
                backends: vec![
                    backend("127.0.0.1:11211", "warming", Some(40)),
                    backend("127.0.0.1:11212", "down", None),
                ],
                ..ProxyFigures::default()
            },
        }
    }

    fn report(p: Entry<ProxyFigures>) -> Report {
        Report {
            nodes: vec![Node {
                target: "http://198.18.0.1:9100/metrics".into(),
                instances: vec![VrrpInstance {
                    instance: "VI_1".into(),
                    state: "master".into(),
                    priority: Some(101),
                    transitions: Some(1),
                    vips_held: Some(1),
                }],
            }],
            vip: vec![VipHolder {
                instance: "VI_1".into(),
                masters: vec!["http://198.18.0.1:9100/metrics".into()],
            }],
            proxies: vec![p],
            servers: vec![Entry {
                target: "127.0.0.1:11211".into(),
                figures: ServerFigures {
                    items: 42,
                    ..ServerFigures::default()
                },
            }],
            unreachable: vec![Unreachable {
                target: "127.0.0.1:11212".into(),
                error: "connection refused".into(),
            }],
        }
    }

    fn screen(terminal: &Terminal<TestBackend>) -> String {
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        buffer
            .content()
            .chunks(width)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn a_frame_shows_states_figures_and_history() {
        let mut history = History::default();
        let start = Instant::now();
        let first = report(proxy(1000, 10, 0, 100));
        history.record(&first, start);
        // One second later: 500 requests, 3 hits of 4 gets, 100 backend calls at 200us.
        let second = report(proxy(1500, 13, 1, 200));
        history.record(&second, start + Duration::from_secs(1));
        let mut terminal = Terminal::new(TestBackend::new(140, 30)).unwrap();
        terminal
            .draw(|frame| draw(frame, &second, &history, Duration::from_secs(1)))
            .unwrap();
        let text = screen(&terminal);
        for wanted in [
            "master",
            "VIP of VI_1: held by http://198.18.0.1:9100/metrics",
            "main/127.0.0.1:11211",
            "warming",
            "40%",
            "down",
            "serving",
            "42",
            "connection refused",
            "ops/s 500",
            "hits 75.0%",
            "latency 200us",
        ] {
            assert!(
                text.contains(wanted),
                "no {wanted:?} on the screen:\n{text}"
            );
        }
        // The down backend's state is red, the warming one's yellow.
        let buffer = terminal.backend().buffer();
        for (word, colour) in [("down", Color::Red), ("warming", Color::Yellow)] {
            let (y, line) = text
                .lines()
                .enumerate()
                .find(|(_, l)| l.contains(&format!(" {word} ")))
                .unwrap();
            let x = line[..line.find(word).unwrap()].chars().count();
            assert_eq!(buffer[(x as u16, y as u16)].fg, colour, "{word}");
        }
        // The second point of each series is drawn as a bar.
        assert!(text.contains('█'), "no sparkline bar:\n{text}");
    }

    #[test]
    fn a_tiny_terminal_is_drawn_without_panicking() {
        let mut history = History::default();
        let report = report(proxy(1000, 10, 0, 100));
        history.record(&report, Instant::now());
        for (width, height) in [(1, 1), (10, 3), (30, 8), (200, 4)] {
            let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
            terminal
                .draw(|frame| draw(frame, &report, &history, Duration::from_secs(1)))
                .unwrap();
        }
    }

    #[test]
    fn a_counter_that_goes_back_leaves_a_gap_not_a_spike() {
        let mut series = Series::default();
        let t = Instant::now();
        let counters = |ops| Counters {
            ops,
            hits: 0,
            misses: 0,
            latency_weight: 0,
            requests: 0,
        };
        series.push(t, counters(100));
        series.push(t + Duration::from_secs(1), counters(300));
        series.push(t + Duration::from_secs(2), counters(5));
        assert_eq!(
            series.ops_per_s.iter().copied().collect::<Vec<_>>(),
            [None, Some(200), None]
        );
        assert_eq!(series.hit_pct.back(), Some(&None));
    }
}
