//! The benchmark charts (metric against fleet size, ours against a baseline), drawn with the
//! one SVG writer (`crate::plot`): deterministic output for the same input.
//!
//! The x axis is categorical (one evenly spaced tick per distinct x value, in increasing
//! order), because fleet sizes are 100, 1,000, 10,000; the y axis is linear from 0 to a rounded
//! maximum. It draws lines, markers, axes, ticks, a legend and an optional dashed goal line;
//! nothing else (no log scale, no error bars).

use crate::plot::{Frame, nice};

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

const FRAME: Frame = Frame {
    width: 640.0,
    height: 400.0,
    left: 70.0,
    right: 180.0,
    top: 40.0,
    bottom: 50.0,
};
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A y value as a tick label or tooltip: whole numbers without decimals, large ones rounded,
/// small ones to two places.
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
        let ymax = nice(ymax_data);
        let f = FRAME;
        let (left, pw, ph) = (f.left, f.plot_width(), f.plot_height());
        let x_at = |x: u64| {
            let i = xs.iter().position(|v| *v == x).unwrap_or(0);
            if xs.len() <= 1 {
                left + pw / 2.0
            } else {
                left + pw * i as f64 / (xs.len() - 1) as f64
            }
        };
        let y_at = |y: f64| f.top + ph - ph * (y / ymax).clamp(0.0, 1.0);

        let mut s = f.document(12);
        s.text(f.width / 2.0, 22.0)
            .attr("text-anchor", "middle")
            .attr("font-size", "14")
            .text(&self.title);
        f.axes(&mut s);
        for k in 0..=4 {
            let v = ymax * f64::from(k) / 4.0;
            let y = y_at(v);
            s.line(left, y, f.right_edge(), y)
                .attr("stroke", "#ddd")
                .end();
            s.text(left - 6.0, y + 4.0)
                .attr("text-anchor", "end")
                .text(&fmt_num(v));
        }
        for x in &xs {
            s.text(x_at(*x), f.baseline() + 18.0)
                .attr("text-anchor", "middle")
                .text(&x.to_string());
        }
        s.text(left + pw / 2.0, f.height - 10.0)
            .attr("text-anchor", "middle")
            .text(&self.x_label);
        let mid = f.top + ph / 2.0;
        s.text(16.0, mid)
            .attr("text-anchor", "middle")
            .rotate(-90.0, 16.0, mid)
            .text(&self.y_label);
        let mut legend_y = f.top + 10.0;
        let legend_x = f.right_edge() + 15.0;
        if let Some((label, g)) = &self.goal
            && g.is_finite()
        {
            let y = y_at(*g);
            s.line(left, y, f.right_edge(), y)
                .attr("stroke", "#555")
                .attr("stroke-dasharray", "6 4")
                .end();
            s.line(legend_x, legend_y, legend_x + 20.0, legend_y)
                .attr("stroke", "#555")
                .attr("stroke-dasharray", "6 4")
                .end();
            s.text(legend_x + 26.0, legend_y + 4.0).text(label);
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
                let path: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (x_at(*x), y_at(*y))).collect();
                s.polyline(&path)
                    .attr("fill", "none")
                    .attr("stroke", colour)
                    .attr("stroke-width", "2")
                    .end();
            }
            for (x, y) in &pts {
                s.circle(x_at(*x), y_at(*y), 4.0)
                    .attr("fill", colour)
                    .title(&format!("{}: {}", series.name, fmt_num(*y)));
            }
            s.line(legend_x, legend_y, legend_x + 20.0, legend_y)
                .attr("stroke", colour)
                .attr("stroke-width", "2")
                .end();
            s.text(legend_x + 26.0, legend_y + 4.0).text(&series.name);
            legend_y += 20.0;
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::well_formed;

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
}
