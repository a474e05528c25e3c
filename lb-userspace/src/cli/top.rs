//! `lb top`: a live terminal view of an instance, refreshed every interval. Rates come from the
//! pinned maps (two snapshots an interval apart), so the view works while the agent is down;
//! health, weights, active flows and flood mode come from the agent when it answers.
//!
//! Keys: `p` sort by packets/s, `b` by bits/s, `f` by new flows/s, `n` by name, `q` or Esc quits.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lb_userspace::{
    agent::{control::Request, status::Status},
    dataplane::PinDir,
    inspect::{PinnedStats, RateRow, Rates},
};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Row, Table},
};

use super::AgentArgs;

#[derive(clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// Seconds between refreshes (the interval of the rates).
    #[arg(long, default_value_t = 1.0, value_parser = super::stats::interval)]
    interval: f64,
}

/// The column the rows are sorted by, largest first (names: alphabetically).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Packets,
    Bits,
    Flows,
    Name,
}

struct View {
    instance: String,
    rates: Option<Rates>,
    status: Option<Status>,
    agent_problem: Option<String>,
    sort: SortBy,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let pins = PinDir::instance(&args.agent.instance);
    let stats =
        PinnedStats::open(&pins).with_context(|| format!("opening the maps pinned at {}", pins.root().display()))?;
    let interval = Duration::from_secs_f64(args.interval);
    let mut view = View {
        instance: args.agent.instance.clone(),
        rates: None,
        status: None,
        agent_problem: None,
        sort: SortBy::Packets,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let (mut earlier, mut at) = (stats.snapshot()?, Instant::now());
        let mut next = at + interval;
        loop {
            terminal.draw(|frame| draw(frame, &view))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                {
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('p') => view.sort = SortBy::Packets,
                        KeyCode::Char('b') => view.sort = SortBy::Bits,
                        KeyCode::Char('f') => view.sort = SortBy::Flows,
                        KeyCode::Char('n') => view.sort = SortBy::Name,
                        _ => {}
                    }
                }
                continue;
            }
            let (now, now_at) = (stats.snapshot()?, Instant::now());
            view.rates = Some(now.rates_since(&earlier, now_at - at));
            (earlier, at) = (now, now_at);
            next = at + interval;
            match args.agent.ask::<Status>(Request::Status) {
                Ok(status) => (view.status, view.agent_problem) = (Some(status), None),
                Err(e) => (view.status, view.agent_problem) = (None, Some(format!("{e:#}"))),
            }
        }
    })();
    ratatui::restore();
    result
}

fn sorted(rows: &[RateRow], by: SortBy) -> Vec<&RateRow> {
    let mut rows: Vec<&RateRow> = rows.iter().collect();
    let key = |r: &RateRow| match by {
        SortBy::Packets => r.packets_per_second,
        SortBy::Bits => r.bits_per_second,
        SortBy::Flows => r.new_flows_per_second,
        SortBy::Name => 0.0,
    };
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
    rows
}

/// A rate, short: 1234 reads "1.2k", 12345678 reads "12.3M".
fn short(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.1}G", r / 1e9),
        r if r >= 1e6 => format!("{:.1}M", r / 1e6),
        r if r >= 1e3 => format!("{:.1}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn draw(frame: &mut Frame<'_>, view: &View) {
    let areas = Layout::vertical([
        Constraint::Length(2),
        Constraint::Percentage(30),
        Constraint::Percentage(45),
        Constraint::Percentage(25),
    ])
    .split(frame.area());
    let agent = match (&view.status, &view.agent_problem) {
        (Some(s), _) => {
            let plane = s.data_plane.problem.as_deref().unwrap_or("as configured");
            format!("agent: generation {}, data plane {plane}", s.generation)
        }
        (None, Some(problem)) => format!("agent: {problem} (rates from the pinned maps)"),
        (None, None) => "agent: asking".into(),
    };
    let interval = view.rates.as_ref().map_or_else(|| "measuring".into(), |r| format!("{:.1} s", r.interval_secs));
    frame.render_widget(
        ratatui::widgets::Paragraph::new(vec![
            Line::from(format!("lb top: instance {} (rates over {interval}); sort: p b f n, quit: q", view.instance)),
            Line::from(agent),
        ]),
        areas[0],
    );
    let Some(rates) = &view.rates else { return };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rate_cells = |r: &RateRow| {
        [short(r.packets_per_second), short(r.bits_per_second), short(r.new_flows_per_second)].map(Cell::from)
    };

    let vip_rows = sorted(&rates.vips, view.sort).into_iter().map(|r| {
        let flood = view.status.as_ref().and_then(|s| {
            s.vips.iter().find(|v| vip_key(v) == r.name).map(|v| {
                let flooding =
                    if v.flooding_cpus > 0 { format!("FLOOD on {} CPUs", v.flooding_cpus) } else { "-".into() };
                (v.name.clone(), flooding)
            })
        });
        let (name, flooding) = flood.unwrap_or_else(|| ("-".into(), "-".into()));
        let [p, b, f] = rate_cells(r);
        Row::new(vec![Cell::from(r.name.clone()), Cell::from(name), p, b, f, Cell::from(flooding)])
    });
    frame.render_widget(
        Table::new(
            vip_rows,
            [
                Constraint::Length(30),
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(["VIP", "name", "pkts/s", "bits/s", "new flows/s", "flood mode"]).style(bold))
        .block(Block::bordered().title("VIPs")),
        areas[1],
    );

    let backend_rows = sorted(&rates.backends, view.sort).into_iter().map(|r| {
        let state = view.status.as_ref().and_then(|s| {
            let (address, vip) = r.name.split_once(" via ")?;
            let vip_name = &s.vips.iter().find(|v| vip_key(v) == vip)?.name;
            let b =
                s.backends.iter().find(|b| b.decision.vip == *vip_name && b.decision.address.to_string() == address)?;
            Some([
                serde_json::to_value(b.decision.health).ok()?.as_str()?.to_string(),
                format!("{}/{}", b.decision.effective_weight, b.decision.weight),
                b.active_flows.map_or_else(|| "-".into(), |n| n.to_string()),
            ])
        });
        let [health, weight, active] = state.unwrap_or_else(|| ["-".into(), "-".into(), "-".into()]);
        let [p, b, f] = rate_cells(r);
        Row::new(vec![Cell::from(r.name.clone()), p, b, f, Cell::from(health), Cell::from(weight), Cell::from(active)])
    });
    frame.render_widget(
        Table::new(
            backend_rows,
            [
                Constraint::Length(44),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Min(8),
            ],
        )
        .header(
            Row::new(["backend via VIP", "pkts/s", "bits/s", "new flows/s", "health", "weight", "active"]).style(bold),
        )
        .block(Block::bordered().title("backends (weight: effective/configured)")),
        areas[2],
    );

    let mut reasons: Vec<_> = rates.reasons.iter().filter(|r| r.packets_per_second > 0.0).collect();
    reasons.sort_by(|a, b| b.packets_per_second.total_cmp(&a.packets_per_second));
    let reason_rows = reasons.into_iter().map(|r| {
        Row::new(vec![
            Cell::from(r.reason),
            Cell::from(short(r.packets_per_second)),
            Cell::from(short(r.bits_per_second)),
        ])
    });
    frame.render_widget(
        Table::new(reason_rows, [Constraint::Length(30), Constraint::Length(10), Constraint::Min(10)])
            .header(Row::new(["verdict (drops and passes by reason)", "pkts/s", "bits/s"]).style(bold))
            .block(Block::bordered().title("verdicts")),
        areas[3],
    );
}

/// A VIP as the pinned counters name it (`ADDRESS:PORT/PROTOCOL`, IPv6 in brackets).
fn vip_key(v: &lb_userspace::agent::status::VipStatus) -> String {
    if v.address.is_ipv6() {
        format!("[{}]:{}/{}", v.address, v.port, v.protocol)
    } else {
        format!("{}:{}/{}", v.address, v.port, v.protocol)
    }
}
