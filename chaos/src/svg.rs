//! A scenario's timeline as an SVG, drawn with the project's one SVG writer (`shoal::plot`):
//! faults as shaded bands with their labels, instances per service as step lines over time,
//! writes as ticks on the time axis. This file is the layout only; what is recorded is
//! `runner/`, and the report that links the file is `report.rs`.

use shoal::plot::{Frame, Svg, nice};

use crate::runner::Timeline;

const FRAME: Frame = Frame {
    width: 960.0,
    height: 360.0,
    left: 50.0,
    right: 150.0,
    top: 40.0,
    bottom: 40.0,
};
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Renders the timeline of scenario `title`.
pub fn render(title: &str, t: &Timeline) -> String {
    let f = FRAME;
    let end_s = (t.end_ms.max(1000)) as f64 / 1000.0;
    let max_y = t
        .series
        .values()
        .flat_map(|v| v.iter().map(|(_, c)| *c))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        + 1.0;
    let (left, top, pw, ph) = (f.left, f.top, f.plot_width(), f.plot_height());
    let x = |ms: u64| left + (ms as f64 / 1000.0) / end_s * pw;
    let y = |c: f64| top + ph - c / max_y * ph;
    let mut s = f.document(11);
    s.text(left, 18.0)
        .attr("font-size", "14")
        .attr("font-weight", "bold")
        .text(title);
    // Fault bands, each label on its own row so overlapping faults stay readable.
    for (k, b) in t.bands.iter().enumerate() {
        let (x0, x1) = (x(b.start_ms), x(b.end_ms));
        s.rect(x0, top, (x1 - x0).max(1.0), ph)
            .attr("fill", "#f4a582")
            .attr("fill-opacity", "0.35")
            .title(&b.label);
        // A repeated fault (a flapping link) is labelled once.
        if k > 0 && t.bands[k - 1].label == b.label {
            continue;
        }
        let row = top + 12.0 + (k % 6) as f64 * 12.0;
        s.text(x0 + 2.0, row).attr("fill", "#b2182b").text(&b.label);
    }
    f.axes(&mut s);
    grid(&mut s, end_s, max_y);
    s.text(left + pw / 2.0, f.height - 8.0)
        .attr("text-anchor", "middle")
        .text("time since start");
    let mid = top + ph / 2.0;
    s.text(14.0, mid)
        .rotate(-90.0, 14.0, mid)
        .attr("text-anchor", "middle")
        .text("instances");
    // Writes.
    for (ms, label) in &t.marks {
        let px = x(*ms);
        s.line(px, f.baseline() - 6.0, px, f.baseline() + 4.0)
            .attr("stroke", "#555")
            .attr("stroke-width", "2")
            .title(label);
    }
    // One step line per service, and the legend.
    for (k, (service, points)) in t.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut line = Vec::with_capacity(points.len() * 2);
        let mut prev: Option<f64> = None;
        for (ms, c) in points {
            let (px, py) = (x(*ms), y(*c as f64));
            // A count holds until the next sample: across at the old height, then up or down.
            if let Some(last_y) = prev {
                line.push((px, last_y));
            }
            line.push((px, py));
            prev = Some(py);
        }
        if !line.is_empty() {
            s.polyline(&line)
                .attr("fill", "none")
                .attr("stroke", color)
                .attr("stroke-width", "2")
                .end();
        }
        let ly = top + 10.0 + k as f64 * 16.0;
        let lx = f.right_edge() + 12.0;
        s.line(lx, ly, lx + 16.0, ly)
            .attr("stroke", color)
            .attr("stroke-width", "3")
            .end();
        s.text(lx + 20.0, ly + 4.0).text(service);
    }
    s.finish()
}

/// The grid: a vertical line and a label per time tick (about 10), a horizontal line and a
/// label per count tick (about 5, whole numbers).
fn grid(s: &mut Svg, end_s: f64, max_y: f64) {
    let f = FRAME;
    let (pw, ph, bottom) = (f.plot_width(), f.plot_height(), f.baseline());
    let xs = nice(end_s / 10.0);
    let mut tx = 0.0;
    while tx <= end_s + 1e-9 {
        let px = f.left + tx / end_s * pw;
        s.line(px, f.top, px, bottom).attr("stroke", "#ddd").end();
        s.text(px, bottom + 14.0)
            .attr("text-anchor", "middle")
            .text(&format!("{tx}s"));
        tx += xs;
    }
    let ys = nice(max_y / 5.0).max(1.0);
    let mut ty = 0.0;
    while ty <= max_y + 1e-9 {
        let py = f.top + ph - ty / max_y * ph;
        s.line(f.left, py, f.right_edge(), py)
            .attr("stroke", "#eee")
            .end();
        s.text(f.left - 4.0, py + 4.0)
            .attr("text-anchor", "end")
            .text(&ty.to_string());
        ty += ys;
    }
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
        let x0 = FRAME.left + 10.0 / 30.0 * FRAME.plot_width();
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
