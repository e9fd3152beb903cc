//! One trace from Jaeger's query API (`/api/traces`) as a waterfall in the terminal:
//! each span indented under its parent, with its service, operation, offset from the
//! trace's start, duration and a bar on a common time axis.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Width of the service/operation column.
const LABEL: usize = 46;

struct Span<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    service: &'a str,
    operation: &'a str,
    start: u64,
    duration: u64,
}

/// The waterfall of `trace` (one element of `/api/traces`' `data`), the bars `bar`
/// columns wide.
pub fn render(trace: &Value, bar: usize) -> String {
    let processes = &trace["processes"];
    let spans: Vec<Span<'_>> = trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Span {
            id: s["spanID"].as_str().unwrap_or_default(),
            parent: s["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str()),
            service: processes[s["processID"].as_str().unwrap_or_default()]["serviceName"]
                .as_str()
                .unwrap_or("?"),
            operation: s["operationName"].as_str().unwrap_or("?"),
            start: s["startTime"].as_u64().unwrap_or(0),
            duration: s["duration"].as_u64().unwrap_or(0),
        })
        .collect();
    let Some(first) = spans.iter().map(|s| s.start).min() else {
        return "(no spans)\n".to_owned();
    };
    let end = spans
        .iter()
        .map(|s| s.start + s.duration)
        .max()
        .unwrap_or(first);
    let total = (end - first).max(1);
    let ids: HashSet<&str> = spans.iter().map(|s| s.id).collect();
    // Children by parent, in order of start; a span whose parent is not in the trace
    // is a root.
    let mut children: BTreeMap<Option<&str>, Vec<&Span<'_>>> = BTreeMap::new();
    for span in &spans {
        let parent = span.parent.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.start, s.id));
    }
    let services: HashSet<&str> = spans.iter().map(|s| s.service).collect();
    let mut out = format!(
        "trace {}: {} spans, {} services, {:.2} ms\n{:<LABEL$} {:>9} {:>9}\n",
        trace["traceID"].as_str().unwrap_or("?"),
        spans.len(),
        services.len(),
        ms(total),
        "SERVICE: OPERATION",
        "START ms",
        "DUR ms",
    );
    let mut stack: Vec<(&Span<'_>, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (*s, 0)).collect())
        .unwrap_or_default();
    while let Some((span, depth)) = stack.pop() {
        let label = format!("{}{}: {}", "  ".repeat(depth), span.service, span.operation);
        let offset = span.start - first;
        let from = column(offset, total, bar);
        let to = column(offset + span.duration, total, bar)
            .max(from + 1)
            .min(bar.max(1));
        let _ = writeln!(
            out,
            "{:<LABEL$} {:>9.2} {:>9.2} {}{}",
            truncate(&label, LABEL),
            ms(offset),
            ms(span.duration),
            " ".repeat(from),
            "█".repeat(to.saturating_sub(from).max(1)),
        );
        if let Some(kids) = children.get(&Some(span.id)) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The bar column of `micros` on an axis of `total` microseconds, `width` wide.
fn column(micros: u64, total: u64, width: usize) -> usize {
    usize::try_from(u128::from(micros) * width as u128 / u128::from(total)).unwrap_or(width)
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(
        id: &str,
        parent: Option<&str>,
        process: &str,
        op: &str,
        start: u64,
        dur: u64,
    ) -> Value {
        let references = match parent {
            Some(p) => json!([{"refType": "CHILD_OF", "traceID": "t", "spanID": p}]),
            None => json!([]),
        };
        json!({"spanID": id, "references": references, "processID": process,
               "operationName": op, "startTime": start, "duration": dur})
    }

    #[test]
    fn children_are_indented_under_their_parent_in_order_of_start() {
        let trace = json!({
            "traceID": "abc",
            "processes": {"p1": {"serviceName": "frontend"}, "p2": {"serviceName": "customer"}},
            "spans": [
                span("c2", Some("root"), "p2", "second", 1_006_000, 2_000),
                span("root", None, "p1", "HTTP GET /dispatch", 1_000_000, 10_000),
                span("c1", Some("root"), "p2", "first", 1_001_000, 4_000),
                span("gc", Some("c1"), "p1", "deep", 1_002_000, 1_000),
            ]
        });
        let text = render(&trace, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "trace abc: 4 spans, 2 services, 10.00 ms");
        assert_eq!(
            lines[2],
            format!(
                "{:<46} {:>9} {:>9} {}",
                "frontend: HTTP GET /dispatch",
                "0.00",
                "10.00",
                "█".repeat(10)
            )
        );
        assert_eq!(
            lines[3],
            format!(
                "{:<46} {:>9} {:>9}  {}",
                "  customer: first",
                "1.00",
                "4.00",
                "█".repeat(4)
            )
        );
        assert_eq!(
            lines[4],
            format!(
                "{:<46} {:>9} {:>9}   {}",
                "    frontend: deep", "2.00", "1.00", "█"
            )
        );
        assert_eq!(
            lines[5],
            format!(
                "{:<46} {:>9} {:>9}       {}",
                "  customer: second", "6.00", "2.00", "██"
            )
        );
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_a_root_and_an_empty_trace_says_so() {
        let trace = json!({
            "traceID": "t",
            "processes": {"p": {"serviceName": "s"}},
            "spans": [span("a", Some("gone"), "p", "orphan", 5, 1)]
        });
        assert!(
            render(&trace, 4)
                .lines()
                .nth(2)
                .unwrap()
                .starts_with("s: orphan")
        );
        assert_eq!(render(&json!({"spans": []}), 4), "(no spans)\n");
    }
}
