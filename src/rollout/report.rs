//! The evidence of a rollout as Markdown: what `ctl report` prints and
//! `GET /rollout/report` serves, for the release review and the post-incident one.

use std::fmt::Write as _;

use super::judge::{GateResult, Summary};
use super::{Evidence, Record, round};
use crate::history::Event;

/// The report of `record`, with the `events` that belong to it as the timeline.
pub fn markdown(record: &Record, events: &[Event]) -> String {
    let mut out = String::new();
    let plan = &record.plan;
    let _ = writeln!(out, "# Rollout {} → {}\n", record.from, plan.to);
    let _ = writeln!(out, "- **Outcome:** {}", record.state.as_str());
    if let Some(reason) = &record.reason {
        let _ = writeln!(out, "- **Why:** {reason}");
    }
    if let Some(by) = &record.decided_by {
        let _ = writeln!(out, "- **Decided by:** {by}");
    }
    if let Some(b) = &record.breach {
        let _ = writeln!(
            out,
            "- **Breaching gate:** {} measured {} against threshold {}",
            b.gate,
            round(b.value),
            round(b.threshold)
        );
    }
    let by = record
        .started_by
        .map_or_else(|| "-".to_owned(), |u| format!("uid {u}"));
    let _ = writeln!(out, "- **Started:** {} by {by}", record.started);
    if let Some(f) = &record.finished {
        let _ = writeln!(out, "- **Finished:** {f}");
    }
    let steps: Vec<String> = plan
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} % for {}",
                f64::from(s.weight) / 100.0,
                humantime::format_duration(s.duration)
            )
        })
        .collect();
    let _ = writeln!(out, "- **Plan:** {}", steps.join(", "));
    let _ = writeln!(out, "- **Gates:** {}", gates_text(record));
    let _ = writeln!(out, "\n## Steps\n");
    let _ = writeln!(
        out,
        "| step | % | verdict | canary req | canary err % | canary p50/p99 ms | live req | live err % | live p50/p99 ms |"
    );
    let _ = writeln!(out, "|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let all: Vec<&Evidence> = record.steps.iter().chain(&record.current).collect();
    for e in &all {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            e.step + 1,
            e.percent,
            e.verdict,
            [cells(&e.canary), cells(&e.live)].join(" | ")
        );
    }
    let _ = writeln!(out, "\n## Gates per step\n");
    for e in &all {
        let _ = writeln!(
            out,
            "Step {} ({} %, {}):\n",
            e.step + 1,
            e.percent,
            e.verdict
        );
        if e.gates.is_empty() {
            let _ = writeln!(out, "- no gate measured\n");
            continue;
        }
        for g in &e.gates {
            let _ = writeln!(out, "- {}", gate_line(g));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Timeline\n");
    for ev in events.iter().filter(|e| e.rollout == Some(record.id)) {
        let who = ev
            .uid
            .map_or_else(|| "cutover".to_owned(), |u| format!("uid {u}"));
        let _ = writeln!(
            out,
            "- {} `{}` ({who}, generation {}): {}",
            ev.time, ev.action, ev.generation, ev.reason
        );
    }
    out
}

fn cells(s: &Summary) -> String {
    format!(
        "{} | {:.2} | {:.1}/{:.1}",
        s.requests,
        s.error_rate * 100.0,
        s.p50_ms,
        s.p99_ms
    )
}

fn gate_line(g: &GateResult) -> String {
    let live = g
        .live
        .map(|l| format!(" (live {})", round(l)))
        .unwrap_or_default();
    format!(
        "{} {}: {}{live} against {}",
        if g.passed { "pass" } else { "**BREACH**" },
        g.gate,
        round(g.value),
        round(g.threshold)
    )
}

fn gates_text(record: &Record) -> String {
    let g = &record.plan.gates;
    let mut parts = vec![format!("min_requests {}", g.min_requests())];
    if let Some(v) = g.max_error_rate {
        parts.push(format!("max_error_rate {v}"));
    }
    if let Some(v) = g.max_p99 {
        parts.push(format!("max_p99 {}", humantime::format_duration(v)));
    }
    if let Some(v) = g.max_error_rate_vs_live {
        parts.push(format!("max_error_rate_vs_live {v}"));
    }
    if let Some(v) = g.max_p99_vs_live {
        parts.push(format!("max_p99_vs_live {v}"));
    }
    for q in &g.queries {
        parts.push(format!("query {:?}", q.name.as_deref().unwrap_or(&q.query)));
    }
    if !record.plan.webhooks.is_empty() {
        parts.push(format!("{} webhooks", record.plan.webhooks.len()));
    }
    parts.join(", ")
}
