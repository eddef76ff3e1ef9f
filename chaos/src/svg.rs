//! A scenario's timeline as a hand-written SVG: faults as shaded bands with their labels,
//! instances per service as step lines over time, writes as ticks on the time axis.
//! No plotting crate; the output is plain text a browser or the file viewer shows.

use std::fmt::Write;

use crate::runner::Timeline;

const W: f64 = 960.0;
const H: f64 = 360.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Escapes text for XML content and attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// A tick step (in the data's unit) that gives about `want` ticks over `span`.
fn nice_step(span: f64, want: f64) -> f64 {
    let raw = (span / want).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Renders the timeline of scenario `title`.
pub fn render(title: &str, t: &Timeline) -> String {
    let end_s = (t.end_ms.max(1000)) as f64 / 1000.0;
    let max_y = t
        .series
        .values()
        .flat_map(|v| v.iter().map(|(_, c)| *c))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        + 1.0;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |ms: u64| LEFT + (ms as f64 / 1000.0) / end_s * pw;
    let y = |c: f64| TOP + ph - c / max_y * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Fault bands, each label on its own row so overlapping faults stay readable.
    for (k, b) in t.bands.iter().enumerate() {
        let (x0, x1) = (x(b.start_ms), x(b.end_ms));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#f4a582" fill-opacity="0.35"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            esc(&b.label)
        );
        // A repeated fault (a flapping link) is labelled once.
        if k > 0 && t.bands[k - 1].label == b.label {
            continue;
        }
        let row = TOP + 12.0 + (k % 6) as f64 * 12.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{row:.1}" fill="#b2182b">{}</text>"##,
            x0 + 2.0,
            esc(&b.label)
        );
    }
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph
    );
    let xs = nice_step(end_s, 10.0);
    let mut tx = 0.0;
    while tx <= end_s + 1e-9 {
        let px = LEFT + tx / end_s * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}s</text>"##,
            TOP + ph,
            TOP + ph + 14.0,
            tx
        );
        tx += xs;
    }
    let ys = nice_step(max_y, 5.0).max(1.0);
    let mut ty = 0.0;
    while ty <= max_y + 1e-9 {
        let py = y(ty);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ty}</text>"##,
            LEFT + pw,
            LEFT - 4.0,
            py + 4.0
        );
        ty += ys;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start</text>"#,
        LEFT + pw / 2.0,
        H - 8.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">instances</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Writes.
    for (ms, label) in &t.marks {
        let px = x(*ms);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#555" stroke-width="2"><title>{}</title></line>"##,
            TOP + ph - 6.0,
            TOP + ph + 4.0,
            esc(label)
        );
    }
    // One step line per service, and the legend.
    for (k, (service, points)) in t.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut d = String::new();
        let mut prev: Option<f64> = None;
        for (ms, c) in points {
            let (px, py) = (x(*ms), y(*c as f64));
            match prev {
                None => {
                    let _ = write!(d, "{px:.1},{py:.1}");
                }
                Some(last_y) => {
                    let _ = write!(d, " {px:.1},{last_y:.1} {px:.1},{py:.1}");
                }
            }
            prev = Some(py);
        }
        if !d.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
            );
        }
        let ly = TOP + 10.0 + k as f64 * 16.0;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 16.0,
            lx + 20.0,
            ly + 4.0,
            esc(service)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Band;
    use std::collections::BTreeMap;

    fn timeline() -> Timeline {
        Timeline {
            end_ms: 30_000,
            bands: vec![Band {
                start_ms: 10_000,
                end_ms: 15_000,
                label: "kill9 n2 <&>".into(),
            }],
            series: BTreeMap::from([(
                "web".to_string(),
                vec![(0, 0), (2_000, 3), (10_500, 2), (13_000, 3)],
            )]),
            marks: vec![(1_000, "deploy".into())],
        }
    }

    #[test]
    fn the_svg_has_a_band_per_fault_and_a_line_per_service() {
        let svg = render("kill-one", &timeline());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#f4a582\"").count(), 1);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains(">web</text>"));
    }

    #[test]
    fn labels_are_escaped() {
        let svg = render("a<b", &timeline());
        assert!(svg.contains("kill9 n2 &lt;&amp;&gt;"));
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("<&>"));
    }

    #[test]
    fn the_band_sits_where_its_time_is() {
        let svg = render("t", &timeline());
        // 10 s of 30 s over an 760 px plot that starts at x = 50.
        let x0 = LEFT + 10.0 / 30.0 * (W - LEFT - RIGHT);
        assert!(svg.contains(&format!("<rect x=\"{x0:.1}\"")), "{svg}");
    }

    #[test]
    fn the_line_steps_rather_than_slopes() {
        let svg = render("t", &timeline());
        let pts = svg
            .split("points=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a polyline");
        // 4 samples: a first point, then two points (horizontal, vertical) per later sample.
        assert_eq!(pts.split_whitespace().count(), 7);
    }

    #[test]
    fn an_empty_timeline_still_renders() {
        let svg = render("empty", &Timeline::default());
        assert!(svg.contains("</svg>"));
    }
}
