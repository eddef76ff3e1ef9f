//! A small SVG line-chart writer for the benchmark plots (metric against fleet size, ours
//! against a baseline): text out, no dependency, deterministic output for the same input.
//!
//! The x axis is categorical (one evenly spaced tick per distinct x value, in increasing
//! order), because fleet sizes are 100, 1,000, 10,000; the y axis is linear from 0 to a rounded
//! maximum. It draws lines, markers, axes, ticks, a legend and an optional dashed goal line;
//! nothing else (no log scale, no error bars).

use std::fmt::Write;

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(x, y)` points; x values are fleet sizes (or any ordered categories).
    pub points: Vec<(u64, f64)>,
}

/// A chart: title, axis labels, lines, and an optional horizontal goal line `(label, y)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub goal: Option<(String, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Escapes text for SVG character data and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for the y axis (1, 2 or 5 × a power of ten) at or above `max`.
fn nice_max(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn fmt_num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    /// The chart as a standalone SVG document. Non-finite y values are left out.
    pub fn svg(&self) -> String {
        let mut xs: Vec<u64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        xs.sort_unstable();
        xs.dedup();
        let ymax_data = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.goal.iter().map(|g| g.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let ymax = nice_max(ymax_data);
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let x_at = |x: u64| {
            let i = xs.iter().position(|v| *v == x).unwrap_or(0);
            if xs.len() <= 1 {
                LEFT + pw / 2.0
            } else {
                LEFT + pw * i as f64 / (xs.len() - 1) as f64
            }
        };
        let y_at = |y: f64| TOP + ph - ph * (y / ymax).clamp(0.0, 1.0);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        // Axes.
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            TOP + ph,
            LEFT + pw,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>"#,
            TOP + ph
        );
        for k in 0..=4 {
            let v = ymax * f64::from(k) / 4.0;
            let y = y_at(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        for x in &xs {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"#,
                x_at(*x),
                TOP + ph + 18.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 10.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        let mut legend_y = TOP + 10.0;
        let legend_x = LEFT + pw + 15.0;
        if let Some((label, g)) = &self.goal
            && g.is_finite()
        {
            let y = y_at(*g);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r##"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="#555" stroke-dasharray="6 4"/>"##,
                legend_x + 20.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                legend_x + 26.0,
                legend_y + 4.0,
                escape(label)
            );
            legend_y += 20.0;
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut pts: Vec<(u64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            pts.sort_by_key(|p| p.0);
            if pts.len() > 1 {
                let path: Vec<String> = pts
                    .iter()
                    .map(|(x, y)| format!("{:.1},{:.1}", x_at(*x), y_at(*y)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                    path.join(" ")
                );
            }
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"><title>{}: {}</title></circle>"#,
                    x_at(*x),
                    y_at(*y),
                    escape(&series.name),
                    fmt_num(*y)
                );
            }
            let _ = writeln!(
                s,
                r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"/>"#,
                legend_x + 20.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                legend_x + 26.0,
                legend_y + 4.0,
                escape(&series.name)
            );
            legend_y += 20.0;
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formedness check: every tag is closed in order, attributes are quoted,
    /// and the document is one `<svg>` element.
    fn well_formed(doc: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc.trim();
        if !rest.starts_with("<svg") {
            return Err("does not start with <svg".into());
        }
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if text.contains('>') || (text.contains('&') && !text.contains(';')) {
                return Err(format!("stray markup in text {text:?}"));
            }
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            if !tag.matches('"').count().is_multiple_of(2) || tag.contains('<') {
                return Err(format!("bad tag {tag:?}"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().ok_or("empty tag")?;
                stack.push(name.to_string());
            }
            rest = &rest[close + 1..];
            if stack.is_empty() && !rest.trim().is_empty() {
                return Err("content after the root element".into());
            }
        }
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    fn chart() -> Chart {
        Chart {
            title: "detection p99 <ms> & more".into(),
            x_label: "nodes".into(),
            y_label: "ms".into(),
            series: vec![
                Series {
                    name: "ours".into(),
                    points: vec![(1_000, 2_100.0), (100, 1_800.0)],
                },
                Series {
                    name: "memberlist \"defaults\"".into(),
                    points: vec![(100, 9_000.0), (1_000, f64::NAN), (10_000, 14_000.0)],
                },
            ],
            goal: Some(("goal 3 s".into(), 3_000.0)),
        }
    }

    #[test]
    fn the_svg_is_well_formed_and_escapes_text() {
        let svg = chart().svg();
        well_formed(&svg).unwrap();
        assert!(svg.contains("detection p99 &lt;ms&gt; &amp; more"));
        assert!(svg.contains("memberlist &quot;defaults&quot;"));
        assert!(!svg.contains("NaN"));
        // Three categories on the x axis, in order.
        let a = svg.find(r#""middle">100<"#).unwrap();
        let b = svg.find(r#""middle">1000<"#).unwrap();
        let c = svg.find(r#""middle">10000<"#).unwrap();
        assert!(a < b && b < c);
        // Two points of "ours", two finite ones of the baseline.
        assert_eq!(svg.matches("<circle").count(), 4);
    }

    #[test]
    fn an_empty_chart_is_still_a_document() {
        let svg = Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![],
            goal: None,
        }
        .svg();
        well_formed(&svg).unwrap();
    }

    #[test]
    fn the_checker_refuses_broken_documents() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg><text>a > b</text></svg>").is_err());
        assert!(well_formed("<svg></svg><svg></svg>").is_err());
    }

    #[test]
    fn the_y_axis_ends_on_a_round_number() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1_000.0), 1_000.0);
        assert_eq!(nice_max(14_000.0), 20_000.0);
    }
}
