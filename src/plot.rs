//! The one SVG writer: documents, elements and attributes as text, with one rule for escaping,
//! one for writing numbers and one for rounding an axis, so every plot the project draws (the
//! simulator's benchmark charts in `sim/plot.rs`, the chaos harness's scenario timelines) is
//! written the same way. No dependency, and the same input always gives the same bytes.
//!
//! It knows SVG and the frame of a chart (the plot area inside its margins, the two axes); it
//! does not know what a chart shows. Each chart lays out its own series, ticks and legend on
//! top of it.

use std::fmt::Write;

/// Escapes text for SVG character data and attribute values. Control characters, which XML
/// 1.0 does not allow, are left out.
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

/// The smallest "nice" number (1, 2 or 5 × a power of ten) at or above `x`: the top of a y axis
/// (`nice(max)`), or a tick step giving about `n` ticks over a span (`nice(span / n)`). 1 for
/// a value that is not positive and finite.
pub fn nice(x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

/// A coordinate or length as written into the document: to a tenth of a pixel, without a
/// trailing `.0` (`50`, `123.4`).
fn number(out: &mut String, v: f64) {
    let s = format!("{v:.1}");
    out.push_str(s.strip_suffix(".0").unwrap_or(&s));
}

/// The frame of a chart: the document's size and the margins around the plot area, in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

impl Frame {
    /// The width of the plot area.
    pub fn plot_width(&self) -> f64 {
        self.width - self.left - self.right
    }

    /// The height of the plot area.
    pub fn plot_height(&self) -> f64 {
        self.height - self.top - self.bottom
    }

    /// The y of the x axis (the bottom edge of the plot area).
    pub fn baseline(&self) -> f64 {
        self.top + self.plot_height()
    }

    /// The x of the right edge of the plot area.
    pub fn right_edge(&self) -> f64 {
        self.left + self.plot_width()
    }

    /// Opens a document of this size on a white background; text is sans-serif at `font_size`.
    pub fn document(&self, font_size: u32) -> Svg {
        let (w, h) = (self.width, self.height);
        let mut doc = String::new();
        let _ = writeln!(
            doc,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{font_size}">"#
        );
        let mut svg = Svg { doc };
        svg.element("rect")
            .num("width", w)
            .num("height", h)
            .attr("fill", "white")
            .end();
        svg
    }

    /// The two axes: along the bottom and up the left of the plot area.
    pub fn axes(&self, svg: &mut Svg) {
        let (bottom, right) = (self.baseline(), self.right_edge());
        svg.line(self.left, bottom, right, bottom)
            .attr("stroke", "black")
            .end();
        svg.line(self.left, self.top, self.left, bottom)
            .attr("stroke", "black")
            .end();
    }
}

/// An SVG document being written, one element per line. `Frame::document` opens one;
/// `finish` closes it.
#[derive(Debug)]
pub struct Svg {
    doc: String,
}

impl Svg {
    /// A `<line>` from `(x1, y1)` to `(x2, y2)`.
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64) -> Element<'_> {
        self.element("line")
            .num("x1", x1)
            .num("y1", y1)
            .num("x2", x2)
            .num("y2", y2)
    }

    /// A `<rect>` with its top left corner at `(x, y)`.
    pub fn rect(&mut self, x: f64, y: f64, width: f64, height: f64) -> Element<'_> {
        self.element("rect")
            .num("x", x)
            .num("y", y)
            .num("width", width)
            .num("height", height)
    }

    /// A `<text>` anchored at `(x, y)`; its content comes with `Element::text`.
    pub fn text(&mut self, x: f64, y: f64) -> Element<'_> {
        self.element("text").num("x", x).num("y", y)
    }

    /// A `<polyline>` through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)]) -> Element<'_> {
        let mut list = String::new();
        for (k, (x, y)) in points.iter().enumerate() {
            if k > 0 {
                list.push(' ');
            }
            number(&mut list, *x);
            list.push(',');
            number(&mut list, *y);
        }
        self.element("polyline").attr("points", &list)
    }

    /// A `<circle>` of radius `r` around `(cx, cy)`.
    pub fn circle(&mut self, cx: f64, cy: f64, r: f64) -> Element<'_> {
        self.element("circle")
            .num("cx", cx)
            .num("cy", cy)
            .num("r", r)
    }

    /// The finished document.
    pub fn finish(mut self) -> String {
        self.doc.push_str("</svg>\n");
        self.doc
    }

    fn element(&mut self, name: &'static str) -> Element<'_> {
        self.doc.push('<');
        self.doc.push_str(name);
        Element {
            doc: &mut self.doc,
            name,
        }
    }
}

/// An element whose start tag is being written: add attributes, then close it with `end`,
/// `text` or `title`.
#[must_use = "an element is written only when it is closed with end, text or title"]
#[derive(Debug)]
pub struct Element<'a> {
    doc: &'a mut String,
    name: &'static str,
}

impl Element<'_> {
    /// A text attribute, escaped.
    pub fn attr(self, name: &str, value: &str) -> Self {
        let _ = write!(self.doc, r#" {name}="{}""#, escape(value));
        self
    }

    /// A numeric attribute, written by the one number rule.
    pub fn num(self, name: &str, value: f64) -> Self {
        let _ = write!(self.doc, r#" {name}=""#);
        number(self.doc, value);
        self.doc.push('"');
        self
    }

    /// A `transform` turning the element by `degrees` around `(x, y)`.
    pub fn rotate(self, degrees: f64, x: f64, y: f64) -> Self {
        self.doc.push_str(r#" transform="rotate("#);
        for (k, v) in [degrees, x, y].into_iter().enumerate() {
            if k > 0 {
                self.doc.push(' ');
            }
            number(self.doc, v);
        }
        self.doc.push_str(r#")""#);
        self
    }

    /// Closes an element without content.
    pub fn end(self) {
        self.doc.push_str("/>\n");
    }

    /// Closes an element with `content` (escaped) inside.
    pub fn text(self, content: &str) {
        let _ = writeln!(self.doc, ">{}</{}>", escape(content), self.name);
    }

    /// Closes an element with a tooltip (`<title>`, escaped) inside.
    pub fn title(self, tooltip: &str) {
        let _ = writeln!(
            self.doc,
            "><title>{}</title></{}>",
            escape(tooltip),
            self.name
        );
    }
}

/// A minimal well-formedness check for tests: every tag is closed in order, attributes are
/// quoted, and the document is one `<svg>` element.
#[cfg(test)]
pub(crate) fn well_formed(doc: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Frame = Frame {
        width: 200.0,
        height: 100.0,
        left: 20.0,
        right: 30.0,
        top: 10.0,
        bottom: 15.0,
    };

    #[test]
    fn a_document_is_well_formed_and_escapes_text_and_attributes() {
        let mut svg = FRAME.document(11);
        FRAME.axes(&mut svg);
        svg.text(1.0, 2.0)
            .attr("fill", "a\"b")
            .text("x < y & \u{7}z");
        svg.rect(3.0, 4.0, 5.0, 6.0).title("it's <here>");
        svg.polyline(&[(1.0, 2.0), (3.26, 4.0)])
            .attr("fill", "none")
            .end();
        svg.circle(1.0, 1.0, 4.0).end();
        svg.text(14.0, 50.0).rotate(-90.0, 14.0, 50.0).text("up");
        let doc = svg.finish();
        well_formed(&doc).unwrap();
        assert!(doc.contains(r#"fill="a&quot;b">x &lt; y &amp; z</text>"#));
        assert!(doc.contains("<title>it&apos;s &lt;here&gt;</title></rect>"));
        assert!(doc.contains(r#"points="1,2 3.3,4""#), "{doc}");
        assert!(doc.contains(r#"transform="rotate(-90 14 50)">up</text>"#));
    }

    #[test]
    fn numbers_are_written_to_a_tenth_without_a_trailing_zero() {
        let mut svg = FRAME.document(12);
        svg.line(50.0, 123.45, 0.04, 1e6).end();
        let doc = svg.finish();
        assert!(
            doc.contains(r#"<line x1="50" y1="123.5" x2="0" y2="1000000"/>"#),
            "{doc}"
        );
    }

    #[test]
    fn the_frame_places_the_axes_on_the_plot_area() {
        assert_eq!(FRAME.plot_width(), 150.0);
        assert_eq!(FRAME.plot_height(), 75.0);
        let mut svg = FRAME.document(12);
        FRAME.axes(&mut svg);
        let doc = svg.finish();
        assert!(doc.contains(r#"<line x1="20" y1="85" x2="170" y2="85" stroke="black"/>"#));
        assert!(doc.contains(r#"<line x1="20" y1="10" x2="20" y2="85" stroke="black"/>"#));
        assert!(doc.contains(r#"<rect width="200" height="100" fill="white"/>"#));
    }

    #[test]
    fn nice_numbers_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(f64::NAN), 1.0);
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(1_000.0), 1_000.0);
        assert_eq!(nice(14_000.0), 20_000.0);
        assert_eq!(nice(0.3), 0.5);
    }

    #[test]
    fn the_checker_refuses_broken_documents() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg><text>a > b</text></svg>").is_err());
        assert!(well_formed("<svg></svg><svg></svg>").is_err());
    }
}
