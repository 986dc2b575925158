//! The throughput chart: one SVG polyline per topic, drawn on the server.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const COLORS: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// `(topic, minute, count)` rows over the `minutes` before `now`, as an SVG document fragment.
pub(crate) fn svg(
    rows: &[(String, DateTime<Utc>, i64)],
    now: DateTime<Utc>,
    minutes: i64,
) -> String {
    let start = now - Duration::minutes(minutes);
    let mut series: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (topic, at, count) in rows {
        let slot = (*at - start).num_minutes();
        if (0..minutes).contains(&slot) {
            let counts = series
                .entry(topic)
                .or_insert_with(|| vec![0; minutes as usize]);
            counts[slot as usize] += count;
        }
    }
    let peak = series.values().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let step = WIDTH / (minutes.max(2) - 1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="events published per minute">"#,
        w = WIDTH + 60.0,
        h = HEIGHT + 32.0
    );
    let _ = write!(
        out,
        r##"<line x1="40" y1="{y}" x2="{x}" y2="{y}" stroke="#999"/><text x="0" y="12" font-size="11">{peak}/min</text><text x="0" y="{y}" font-size="11">0</text>"##,
        y = HEIGHT,
        x = WIDTH + 40.0,
    );
    let _ = write!(
        out,
        r#"<text x="40" y="{y}" font-size="11">-{minutes} min</text><text x="{x}" y="{y}" font-size="11" text-anchor="end">now</text>"#,
        y = HEIGHT + 12.0,
        x = WIDTH + 40.0,
    );
    for (i, (topic, counts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(slot, n)| {
                format!(
                    "{:.1},{:.1}",
                    40.0 + slot as f64 * step,
                    HEIGHT - (*n as f64 / peak) * (HEIGHT - 20.0)
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{color}">{}</text>"#,
            points.join(" "),
            48 + i * 120,
            HEIGHT + 26.0,
            escape(topic)
        );
    }
    out.push_str("</svg>");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_topic_scaled_to_the_peak() {
        let now = Utc::now();
        let rows = vec![
            ("orders".to_owned(), now - Duration::minutes(2), 10),
            ("orders".to_owned(), now - Duration::minutes(1), 5),
            ("<script>".to_owned(), now - Duration::minutes(1), 1),
        ];
        let svg = svg(&rows, now, 60);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("10/min"));
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
    }
}
