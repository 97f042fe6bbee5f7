//! The HTML report: the load timeline as inline SVG charts (answers per second by status,
//! both breakers' states over time, the pool's peaks), the per-second table and the
//! summary. One self-contained file: no scripts, no external assets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade::breaker::State;

use crate::error::{Context, TourError};
use crate::load::{self, LOAD_DURATION, LoadReport};
use crate::telemetry::Breaker;
use crate::upstream::SCRIPT;

const WIDTH: f64 = 780.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const PLOT: f64 = WIDTH - LEFT - RIGHT;

const GREEN: &str = "#2e9d5b";
const AMBER: &str = "#e3a21a";
const RED: &str = "#d64545";
const PURPLE: &str = "#7d5ba6";
const BLUE: &str = "#3573b9";
const GREY: &str = "#8a8f98";

/// Where the report goes: `target/tour/report.html` under the workspace's target directory
/// (`CARGO_TARGET_DIR` as it was when the tour was built, if set).
fn report_path() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = option_env!("CARGO_TARGET_DIR").map_or_else(
        || workspace.join("target"),
        // A relative target directory is relative to the workspace; `join` keeps an
        // absolute one as it is.
        |dir| workspace.join(dir),
    );
    target.join("tour").join("report.html")
}

/// Writes the report; returns its path.
pub(crate) fn write(
    load: &LoadReport,
    summary: &[(&str, String)],
    took: Duration,
) -> Result<PathBuf, TourError> {
    let path = report_path();
    let dir = path.parent().context("the report's directory")?;
    std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
    std::fs::write(&path, html(load, summary, took))
        .context(format!("writing {}", path.display()))?;
    Ok(path.canonicalize().unwrap_or(path))
}

fn html(load: &LoadReport, summary: &[(&str, String)], took: Duration) -> String {
    let mut page = String::new();
    page.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>Palisade tour</title>\n<style>\n",
        "body{font:14px/1.45 system-ui,sans-serif;max-width:820px;margin:2em auto;color:#1d2330;padding:0 1em}\n",
        "h1{font-size:1.6em;margin-bottom:0}h2{font-size:1.15em;margin-top:2em}\n",
        ".sub{color:#5b6270;margin-top:.2em}svg{display:block;margin:.5em 0}\n",
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;text-align:right;border-bottom:1px solid #e4e6ea}\n",
        "th{background:#f4f5f7}td.l,th.l{text-align:left}\n",
        ".legend span{display:inline-block;margin-right:1.2em}.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:-1px}\n",
        "</style>\n</head>\n<body>\n<h1>Palisade tour</h1>\n",
    ));
    let _ = writeln!(
        page,
        "<p class=\"sub\">Measured by <code>cargo run --release --example tour</code>: every number comes from the layers' listeners and handles or from the answers the load driver received. The whole tour took {:.1} s.</p>",
        took.as_secs_f64()
    );

    page.push_str("<h2>Answers per second, by status</h2>\n");
    page.push_str(&legend(&[
        ("2xx", GREEN),
        ("429", AMBER),
        ("503", RED),
        ("other (502)", PURPLE),
    ]));
    page.push_str(&status_chart(load));

    page.push_str("<h2>Circuit breakers over time</h2>\n");
    page.push_str(&legend(&[
        ("closed", GREEN),
        ("open", RED),
        ("half-open", AMBER),
    ]));
    page.push_str(&breaker_chart(load));

    page.push_str("<h2>Gateway pool: peak in flight and queued, per second</h2>\n");
    page.push_str(&legend(&[("in flight", BLUE), ("queued", AMBER)]));
    page.push_str(&pool_chart(load));

    page.push_str("<h2>Per second</h2>\n");
    page.push_str(&load_table(load));

    page.push_str("<h2>Summary</h2>\n<table>\n");
    for (section, line) in summary {
        let _ = writeln!(
            page,
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
            escape(section),
            escape(line)
        );
    }
    page.push_str("</table>\n</body>\n</html>\n");
    page
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut out = String::from("<div class=\"legend\">");
    for (name, color) in items {
        let _ = write!(
            out,
            "<span><i style=\"background:{color}\"></i>{}</span>",
            escape(name)
        );
    }
    out.push_str("</div>\n");
    out
}

/// The x coordinate of `seconds` into the load.
fn x_at(seconds: f64) -> f64 {
    LEFT + PLOT * seconds / LOAD_DURATION.as_secs_f64()
}

/// Shaded bands for the upstream's bad phases, labelled, from `top` to `bottom`.
fn phase_bands(top: f64, bottom: f64) -> String {
    let mut out = String::new();
    let end = LOAD_DURATION.as_secs_f64();
    for (index, phase) in SCRIPT.iter().enumerate() {
        let until = SCRIPT.get(index + 1).map_or(end, |next| next.from);
        let tint = if phase.throttled {
            "#fbefd5"
        } else if phase.failure_share > 0.5 {
            "#f9e0e0"
        } else {
            continue;
        };
        let (x0, x1) = (x_at(phase.from), x_at(until));
        let _ = write!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{tint}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#6b7280\" text-anchor=\"middle\">upstream {}</text>",
            x1 - x0,
            bottom - top,
            (x0 + x1) / 2.0,
            top + 12.0,
            phase.name
        );
    }
    out
}

/// The x axis: a tick per second, labelled.
fn time_axis(y: f64) -> String {
    let mut out = format!(
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{:.1}\" y2=\"{y}\" stroke=\"#9aa0a6\"/>",
        LEFT + PLOT
    );
    for second in 0..=LOAD_DURATION.as_secs() {
        let x = x_at(second as f64);
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#9aa0a6\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#4b5563\">{second}s</text>",
            y + 4.0,
            y + 16.0
        );
    }
    out
}

/// A y axis from 0 to `max` with a few gridlines, between `top` and `bottom`.
fn value_axis(max: f64, top: f64, bottom: f64, label: &str) -> String {
    let mut out = String::new();
    for step in 0..=4 {
        let value = max * f64::from(step) / 4.0;
        let y = bottom - (bottom - top) * f64::from(step) / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eceef1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#4b5563\">{value:.0}</text>",
            LEFT + PLOT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"12\" y=\"{:.1}\" font-size=\"11\" fill=\"#4b5563\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        (top + bottom) / 2.0,
        (top + bottom) / 2.0,
        escape(label)
    );
    out
}

/// A maximum for an axis: `value` rounded up to a multiple of `step` (at least one step).
fn nice_max(value: f64, step: f64) -> f64 {
    ((value / step).ceil() * step).max(step)
}

fn status_chart(load: &LoadReport) -> String {
    const HEIGHT: f64 = 280.0;
    let (top, bottom) = (20.0, HEIGHT - 30.0);
    let max = nice_max(
        load.seconds
            .iter()
            .map(|s| s.counts.done() as f64)
            .fold(0.0, f64::max),
        50.0,
    );
    let mut svg = svg_open(HEIGHT, "Answers per second by status");
    svg.push_str(&phase_bands(top, bottom));
    svg.push_str(&value_axis(max, top, bottom, "answers / s"));
    let slot = PLOT / LOAD_DURATION.as_secs_f64();
    for (index, second) in load.seconds.iter().enumerate() {
        let c = &second.counts;
        let x = x_at(index as f64) + slot * 0.15;
        let mut y = bottom;
        for (count, color, name) in [
            (c.ok, GREEN, "2xx"),
            (c.limited, AMBER, "429"),
            (c.unavailable, RED, "503"),
            (c.failed + c.errors, PURPLE, "other"),
        ] {
            if count == 0 {
                continue;
            }
            let h = (bottom - top) * count as f64 / max;
            y -= h;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"><title>{}s: {count} × {name}</title></rect>",
                slot * 0.7,
                index + 1
            );
        }
    }
    svg.push_str(&time_axis(bottom));
    svg.push_str("</svg>\n");
    svg
}

fn breaker_chart(load: &LoadReport) -> String {
    const HEIGHT: f64 = 150.0;
    const LANE: f64 = 28.0;
    let (top, bottom) = (20.0, HEIGHT - 30.0);
    let end = LOAD_DURATION.as_secs_f64();
    let mut svg = svg_open(HEIGHT, "Breaker states over time");
    svg.push_str(&phase_bands(top, bottom));
    for (lane, which) in [Breaker::Gateway, Breaker::Upstream]
        .into_iter()
        .enumerate()
    {
        let y = top + 22.0 + lane as f64 * (LANE + 14.0);
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#4b5563\">{}</text>",
            LEFT - 6.0,
            y + LANE / 2.0 + 4.0,
            which.label()
        );
        let mut segments = vec![(0.0, State::Closed)];
        segments.extend(
            load.transitions
                .iter()
                .filter(|t| t.breaker == which)
                .map(|t| (t.at.as_secs_f64().min(end), t.to)),
        );
        let spans: Vec<(f64, f64, State)> = segments
            .iter()
            .enumerate()
            .map(|(index, &(from, state))| {
                let until = segments.get(index + 1).map_or(end, |next| next.0);
                (from, until, state)
            })
            .filter(|(from, until, _)| until > from)
            .collect();
        // A half-open spell lasts milliseconds: drawn last, at least 3 px wide, to be seen.
        let (half_open, others): (Vec<_>, Vec<_>) = spans
            .into_iter()
            .partition(|(_, _, state)| *state == State::HalfOpen);
        for (from, until, state) in others.iter().chain(&half_open) {
            let min_width = if *state == State::HalfOpen { 3.0 } else { 0.0 };
            let color = match state {
                State::Closed => GREEN,
                State::Open | State::ForcedOpen => RED,
                State::HalfOpen => AMBER,
                _ => GREY,
            };
            let _ = write!(
                svg,
                "<rect x=\"{:.2}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{LANE}\" fill=\"{color}\"><title>{}: {} from {from:.2}s to {until:.2}s</title></rect>",
                x_at(*from),
                (x_at(*until) - x_at(*from)).max(min_width),
                which.label(),
                load::short(*state)
            );
        }
    }
    svg.push_str(&time_axis(bottom));
    svg.push_str("</svg>\n");
    svg
}

fn pool_chart(load: &LoadReport) -> String {
    const HEIGHT: f64 = 200.0;
    let (top, bottom) = (20.0, HEIGHT - 30.0);
    let max = nice_max(
        load.seconds
            .iter()
            .map(|s| f64::from(s.peak_in_flight).max(s.peak_queued as f64))
            .fold(0.0, f64::max),
        8.0,
    );
    let mut svg = svg_open(HEIGHT, "Pool peaks per second");
    svg.push_str(&phase_bands(top, bottom));
    svg.push_str(&value_axis(max, top, bottom, "requests"));
    let series: [(&str, Vec<f64>); 2] = [
        (
            BLUE,
            load.seconds
                .iter()
                .map(|s| f64::from(s.peak_in_flight))
                .collect(),
        ),
        (
            AMBER,
            load.seconds.iter().map(|s| s.peak_queued as f64).collect(),
        ),
    ];
    for (color, values) in &series {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    x_at(i as f64 + 0.5),
                    bottom - (bottom - top) * v / max
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            points.join(" ")
        );
        for point in &points {
            let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
    }
    svg.push_str(&time_axis(bottom));
    svg.push_str("</svg>\n");
    svg
}

fn svg_open(height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{0}\"><title>{0}</title>",
        escape(title)
    )
}

fn load_table(load: &LoadReport) -> String {
    let mut out = String::from(
        "<table>\n<tr><th>t</th><th class=\"l\">upstream</th><th>answers</th><th>2xx</th><th>429</th><th>503</th><th>other</th><th class=\"l\">gateway breaker</th><th class=\"l\">upstream breaker</th><th>pool in flight</th><th>queued</th></tr>\n",
    );
    for (index, second) in load.seconds.iter().enumerate() {
        let c = &second.counts;
        let _ = writeln!(
            out,
            "<tr><td>{}s</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>",
            index + 1,
            second.phase,
            c.done(),
            c.ok,
            c.limited,
            c.unavailable,
            c.failed + c.errors,
            escape(&load::chain(&second.gateway_states)),
            escape(&load::chain(&second.upstream_states)),
            second.peak_in_flight,
            second.peak_queued
        );
    }
    out.push_str("</table>\n");
    out
}

/// Text made safe for HTML and SVG.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
