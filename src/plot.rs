//! Small self-contained plotting: scatter and line panels, side by side, written as SVG
//! or rasterised to PNG without any font or drawing library.
//!
//! Both outputs are rendered from one list of shapes, so they agree: "nice" ticks
//! (1/2/5 x 10^k, or decades and their 2x/5x on a log axis), grid, axis labels, panel
//! and figure titles, a legend, and a text label next to every scatter point. Values
//! that cannot be drawn (NaN, infinities, non-positive x on a log axis) are skipped.
//!
//! ```
//! use tokenmix::plot::{Figure, Panel, PanelKind, Point};
//!
//! let point = |label: &str, group: &str, x, y| Point {
//!     label: label.into(),
//!     group: group.into(),
//!     x,
//!     y,
//! };
//! let figure = Figure {
//!     title: "Accuracy vs throughput".into(),
//!     panels: vec![Panel {
//!         title: "ImageNet".into(),
//!         x_label: "images/s".into(),
//!         y_label: "top-1 (%)".into(),
//!         log_x: true,
//!         kind: PanelKind::Scatter(vec![
//!             point("poolformer_s12", "PoolFormer", 1450.0, 77.2),
//!             point("caformer_s18", "CAFormer", 610.0, 83.6),
//!         ]),
//!     }],
//! };
//! assert!(figure.to_svg().contains("caformer_s18"));
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use font8x8::legacy::BASIC_LEGACY;
use image::{ImageFormat, Rgb, RgbImage};

/// One labelled point of a scatter panel; `group` picks the colour (one colour per group, legend).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Text drawn next to the point (e.g. a model name).
    pub label: String,
    /// Group the point belongs to; every group gets its own colour and legend entry.
    pub group: String,
    /// Horizontal coordinate.
    pub x: f64,
    /// Vertical coordinate.
    pub y: f64,
}

/// A named line of a line panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// `(x, y)` points, joined in order; a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
}

/// What a panel draws.
#[derive(Clone, Debug, PartialEq)]
pub enum PanelKind {
    /// Labelled points coloured by group.
    Scatter(Vec<Point>),
    /// Named lines, one colour each.
    Lines(Vec<Series>),
}

/// One plot: axes, title, legend and data.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Title above the plot area.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label left of the y axis (drawn vertically).
    pub y_label: String,
    /// Whether the x axis is logarithmic (points with `x <= 0` are then skipped).
    pub log_x: bool,
    /// The data.
    pub kind: PanelKind,
}

/// Panels side by side.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Title across the top of the figure (none drawn when empty).
    pub title: String,
    /// Panels, left to right.
    pub panels: Vec<Panel>,
}

impl Figure {
    /// Renders the figure as an SVG document.
    pub fn to_svg(&self) -> String {
        self.scene().to_svg()
    }

    /// Renders the figure to an image and returns the encoded PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        self.scene()
            .rasterize()
            .write_to(&mut bytes, ImageFormat::Png)
            .context("encoding the plot as PNG")?;
        Ok(bytes.into_inner())
    }

    /// Writes SVG or PNG by the file extension (.svg / .png, case-insensitive); any other extension is a clear error naming it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let bytes = match ext.as_deref() {
            Some("svg") => self.to_svg().into_bytes(),
            Some("png") => self.to_png()?,
            Some(other) => bail!(
                "cannot save plot {}: unsupported extension `.{other}` (use .svg or .png)",
                path.display()
            ),
            None => bail!(
                "cannot save plot {}: no file extension (use .svg or .png)",
                path.display()
            ),
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Lays the figure out as shapes in pixel coordinates.
    fn scene(&self) -> Scene {
        let columns = self.panels.len().max(1) as f64;
        let top = if self.title.is_empty() { 0.0 } else { TITLE_H };
        let mut scene = Scene {
            width: (PANEL_W * columns) as u32,
            height: (PANEL_H + top) as u32,
            shapes: Vec::new(),
        };
        if !self.title.is_empty() {
            let at = (PANEL_W * columns / 2.0, TITLE_H / 2.0);
            scene.shapes.push(text(at, &self.title, 2, Anchor::Middle));
        }
        for (i, panel) in self.panels.iter().enumerate() {
            panel.draw(&mut scene.shapes, i as f64 * PANEL_W, top);
        }
        scene
    }
}

/// Width of one panel in pixels.
const PANEL_W: f64 = 900.0;
/// Height of one panel in pixels.
const PANEL_H: f64 = 560.0;
/// Height of the figure title band.
const TITLE_H: f64 = 44.0;
/// Space left of the plot area (tick labels, y label).
const MARGIN_L: f64 = 80.0;
/// Space right of the plot area (legend).
const MARGIN_R: f64 = 190.0;
/// Space above the plot area (panel title).
const MARGIN_T: f64 = 44.0;
/// Space below the plot area (tick labels, x label).
const MARGIN_B: f64 = 60.0;
/// Vertical distance between legend entries.
const LEGEND_STEP: f64 = 18.0;
/// Longest legend entry, in characters.
const LEGEND_CHARS: usize = 17;

/// An RGB colour.
type Color = [u8; 3];

const BLACK: Color = [0, 0, 0];
const DARK: Color = [64, 64, 64];
const GRID: Color = [225, 225, 225];

/// Tableau 10.
/// Tableau 10, then five darker hues, so the zoo's families (up to 15) get distinct colours.
const PALETTE: [Color; 15] = [
    [0x4e, 0x79, 0xa7],
    [0xf2, 0x8e, 0x2b],
    [0xe1, 0x57, 0x59],
    [0x76, 0xb7, 0xb2],
    [0x59, 0xa1, 0x4f],
    [0xed, 0xc9, 0x48],
    [0xb0, 0x7a, 0xa1],
    [0xff, 0x9d, 0xa7],
    [0x9c, 0x75, 0x5f],
    [0xba, 0xb0, 0xac],
    [0x1f, 0x3a, 0x6e],
    [0x8c, 0x2d, 0x04],
    [0x2c, 0x6e, 0x2c],
    [0x6a, 0x3d, 0x9a],
    [0x33, 0x33, 0x33],
];

/// The `i`-th palette colour, cycling.
fn palette(i: usize) -> Color {
    PALETTE[i % PALETTE.len()]
}

/// Whether a data point can be drawn.
fn drawable(x: f64, y: f64, log_x: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log_x || x > 0.0)
}

// ---------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------

/// Where a text's reference point lies along the text.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// A line of 8x8-font text; `at` is the anchor point, vertically centred.
#[derive(Clone, Debug, PartialEq)]
struct Text {
    at: (f64, f64),
    s: String,
    scale: u32,
    anchor: Anchor,
    /// Rotated 90 degrees counter-clockwise (reads bottom to top).
    vertical: bool,
    color: Color,
}

/// Something to draw, in pixel coordinates.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Line {
        a: (f64, f64),
        b: (f64, f64),
        width: f64,
        color: Color,
    },
    Circle {
        c: (f64, f64),
        r: f64,
        color: Color,
    },
    Text(Text),
}

/// Black horizontal text.
fn label(at: (f64, f64), s: &str, scale: u32, anchor: Anchor) -> Text {
    Text {
        at,
        s: s.to_string(),
        scale,
        anchor,
        vertical: false,
        color: BLACK,
    }
}

/// Black horizontal text, as a shape.
fn text(at: (f64, f64), s: &str, scale: u32, anchor: Anchor) -> Shape {
    Shape::Text(label(at, s, scale, anchor))
}

/// A straight line.
fn line(a: (f64, f64), b: (f64, f64), width: f64, color: Color) -> Shape {
    Shape::Line { a, b, width, color }
}

/// Shortens `s` to at most `max` characters, marking the cut with "..".
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max.saturating_sub(2)).collect();
    format!("{head}..")
}

/// A whole figure as shapes.
struct Scene {
    width: u32,
    height: u32,
    shapes: Vec<Shape>,
}

// ---------------------------------------------------------------------------------------
// Axes and ticks
// ---------------------------------------------------------------------------------------

/// Smallest and largest value (`(inf, -inf)` when empty).
fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The data range widened by 5% each side; a degenerate range is padded, an empty one is `[0, 1]`.
fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return (0.0, 1.0);
    }
    let half = hi * 0.5 - lo * 0.5; // half the span: finite even for extreme values
    let pad = if half <= 5e-13 * lo.abs().max(hi.abs()).max(1e-300) {
        if lo == 0.0 {
            1.0
        } else {
            0.1 * lo.abs()
        }
    } else {
        0.1 * half
    };
    ((lo - pad).max(f64::MIN), (hi + pad).min(f64::MAX))
}

/// A 1, 2 or 5 x 10^k step giving about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = match norm {
        n if n < 1.5 => 1.0,
        n if n < 3.5 => 2.0,
        n if n < 7.5 => 5.0,
        _ => 10.0,
    };
    m * mag
}

/// Multiples of a nice step inside `[lo, hi]`, with the step.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (f64, Vec<f64>) {
    let step = match hi - lo {
        span if span.is_finite() => nice_step(span, target),
        _ => 2.0 * nice_step(hi * 0.5 - lo * 0.5, target),
    };
    if !(step.is_finite() && step > 0.0) {
        return (step, Vec::new());
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    if last.saturating_sub(first) > 1000 {
        return (step, Vec::new());
    }
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (step, ticks)
}

/// Ticks for a log axis spanning `[lo, hi]` in log10 units: decades (and 2x, 5x when
/// few decades), or linear nice ticks when that gives fewer than three.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (d0, d1) = (lo.floor() as i32, hi.ceil() as i32);
    let mults: &[f64] = if d1 - d0 <= 4 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let stride = ((d1 - d0) as usize).div_ceil(10).max(1);
    let ticks: Vec<f64> = (d0..=d1)
        .step_by(stride)
        .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
        .filter(|v| (lo - 1e-9..=hi + 1e-9).contains(&v.log10()))
        .collect();
    if ticks.len() >= 3 {
        return ticks;
    }
    let (_, linear) = nice_ticks(10f64.powf(lo), 10f64.powf(hi), 5);
    linear.into_iter().filter(|&v| v > 0.0).collect()
}

/// Drops trailing zeros (and a trailing point) from a decimal number.
fn trim_zeros(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Compact label for any value: plain decimals, or exponent form when very large/small.
fn fmt_general(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    trim_zeros(&format!("{v:.4}"))
}

/// Label for a linear tick with the given number of decimals.
fn fmt_fixed(v: f64, decimals: usize) -> String {
    if v.abs() >= 1e7 {
        return fmt_general(v);
    }
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        return s[1..].to_string();
    }
    s
}

/// Decimals needed to print multiples of `step`.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) || step >= 1.0 {
        return 0;
    }
    (-step.log10() - 1e-9).ceil().clamp(0.0, 12.0) as usize
}

/// One axis: its range (in log10 units when `log`) and ticks (data units).
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    decimals: usize,
}

impl Axis {
    /// An axis covering `values` (all drawable; positive when `log`).
    fn new(values: &[f64], log: bool) -> Self {
        if log {
            let logs: Vec<f64> = values.iter().map(|v| v.log10()).collect();
            let (min, max) = min_max(&logs);
            let (lo, hi) = padded_range(min, max);
            let ticks = log_ticks(lo, hi);
            return Axis {
                lo,
                hi,
                log,
                ticks,
                decimals: 0,
            };
        }
        let (min, max) = min_max(values);
        let (lo, hi) = padded_range(min, max);
        let (step, ticks) = nice_ticks(lo, hi, 6);
        let decimals = decimals_for(step);
        Axis {
            lo,
            hi,
            log,
            ticks,
            decimals,
        }
    }

    /// Position of `v` along the axis, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.log { v.log10() } else { v };
        (t * 0.5 - self.lo * 0.5) / (self.hi * 0.5 - self.lo * 0.5)
    }

    /// Tick label for `v`.
    fn label(&self, v: f64) -> String {
        if self.log {
            fmt_general(v)
        } else {
            fmt_fixed(v, self.decimals)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Panel layout
// ---------------------------------------------------------------------------------------

/// A panel's plot area and axes.
struct Plot {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: Axis,
    y: Axis,
}

impl Plot {
    /// Pixel position of a data point.
    fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let px = self.left + self.x.frac(x) * (self.right - self.left);
        let py = self.bottom - self.y.frac(y) * (self.bottom - self.top);
        (px, py)
    }

    /// Grid, tick marks and tick labels of both axes.
    fn draw_ticks(&self, out: &mut Vec<Shape>) {
        for &t in &self.x.ticks {
            let (px, _) = self.map(t, 0.0);
            out.push(line((px, self.top), (px, self.bottom), 1.0, GRID));
            out.push(line((px, self.bottom), (px, self.bottom + 5.0), 1.0, BLACK));
            out.push(text(
                (px, self.bottom + 15.0),
                &self.x.label(t),
                1,
                Anchor::Middle,
            ));
        }
        for &t in &self.y.ticks {
            let (_, py) = self.map(1.0, t);
            out.push(line((self.left, py), (self.right, py), 1.0, GRID));
            out.push(line((self.left - 5.0, py), (self.left, py), 1.0, BLACK));
            out.push(text(
                (self.left - 8.0, py),
                &self.y.label(t),
                1,
                Anchor::End,
            ));
        }
    }

    /// The black box around the plot area.
    fn draw_frame(&self, out: &mut Vec<Shape>) {
        let (l, r, t, b) = (self.left, self.right, self.top, self.bottom);
        for (a, z) in [
            ((l, t), (r, t)),
            ((r, t), (r, b)),
            ((r, b), (l, b)),
            ((l, b), (l, t)),
        ] {
            out.push(line(a, z, 1.0, BLACK));
        }
    }

    /// Panel title and axis labels.
    fn draw_labels(&self, out: &mut Vec<Shape>, panel: &Panel, ox: f64, oy: f64) {
        let mid_x = (self.left + self.right) / 2.0;
        out.push(text(
            (mid_x, oy + MARGIN_T / 2.0),
            &panel.title,
            2,
            Anchor::Middle,
        ));
        out.push(text(
            (mid_x, self.bottom + 40.0),
            &panel.x_label,
            1,
            Anchor::Middle,
        ));
        let at = (ox + 18.0, (self.top + self.bottom) / 2.0);
        out.push(Shape::Text(Text {
            vertical: true,
            ..label(at, &panel.y_label, 1, Anchor::Middle)
        }));
    }

    /// Legend right of the plot area; `lines` picks line swatches instead of dots.
    fn draw_legend(&self, out: &mut Vec<Shape>, entries: &[(String, Color)], lines: bool) {
        let x0 = self.right + 16.0;
        let room = ((self.bottom - self.top - 8.0) / LEGEND_STEP).max(1.0) as usize;
        let shown = if entries.len() > room {
            room - 1
        } else {
            entries.len()
        };
        for (i, (name, color)) in entries.iter().take(shown).enumerate() {
            let y = self.top + 10.0 + i as f64 * LEGEND_STEP;
            out.push(if lines {
                line((x0, y), (x0 + 18.0, y), 2.0, *color)
            } else {
                Shape::Circle {
                    c: (x0 + 9.0, y),
                    r: 4.0,
                    color: *color,
                }
            });
            out.push(text(
                (x0 + 26.0, y),
                &truncate(name, LEGEND_CHARS),
                1,
                Anchor::Start,
            ));
        }
        if shown < entries.len() {
            let y = self.top + 10.0 + shown as f64 * LEGEND_STEP;
            let more = format!("+{} more", entries.len() - shown);
            out.push(text((x0 + 26.0, y), &more, 1, Anchor::Start));
        }
    }

    /// Points coloured by group, each with its label, and the group legend.
    fn draw_scatter(&self, out: &mut Vec<Shape>, points: &[Point], log_x: bool) {
        let groups = group_colors(points);
        for p in points.iter().filter(|p| drawable(p.x, p.y, log_x)) {
            let c = self.map(p.x, p.y);
            let color = groups
                .iter()
                .find(|(g, _)| *g == p.group)
                .map_or(BLACK, |g| g.1);
            out.push(Shape::Circle { c, r: 4.5, color });
            if !p.label.is_empty() {
                out.push(self.point_label(c, &p.label));
            }
        }
        self.draw_legend(out, &groups, false);
    }

    /// A point's label, right of it (left of it near the right edge).
    fn point_label(&self, (px, py): (f64, f64), text: &str) -> Shape {
        let near_right = px > self.left + 0.75 * (self.right - self.left);
        let (x, anchor) = if near_right {
            (px - 7.0, Anchor::End)
        } else {
            (px + 7.0, Anchor::Start)
        };
        Shape::Text(Text {
            color: DARK,
            ..label((x, py - 8.0), text, 1, anchor)
        })
    }

    /// Series as coloured lines (broken at undrawable points), small markers, legend.
    fn draw_lines(&self, out: &mut Vec<Shape>, series: &[Series], log_x: bool) {
        let mut entries = Vec::new();
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            self.draw_series(out, &s.points, log_x, color);
            entries.push((s.name.clone(), color));
        }
        self.draw_legend(out, &entries, true);
    }

    /// One series' segments and markers.
    fn draw_series(&self, out: &mut Vec<Shape>, pts: &[(f64, f64)], log_x: bool, color: Color) {
        let markers = pts.len() <= 60;
        let mut prev: Option<(f64, f64)> = None;
        for &(x, y) in pts {
            if !drawable(x, y, log_x) {
                prev = None;
                continue;
            }
            let c = self.map(x, y);
            if let Some(p) = prev {
                out.push(line(p, c, 2.0, color));
            }
            if markers {
                out.push(Shape::Circle { c, r: 2.5, color });
            }
            prev = Some(c);
        }
    }
}

/// Groups in order of first appearance, each with its colour.
fn group_colors(points: &[Point]) -> Vec<(String, Color)> {
    let mut groups: Vec<(String, Color)> = Vec::new();
    for p in points {
        if !groups.iter().any(|(g, _)| *g == p.group) {
            groups.push((p.group.clone(), palette(groups.len())));
        }
    }
    groups
}

impl Panel {
    /// Drawable x and y values of the panel's data.
    fn values(&self) -> (Vec<f64>, Vec<f64>) {
        let pairs: Vec<(f64, f64)> = match &self.kind {
            PanelKind::Scatter(points) => points.iter().map(|p| (p.x, p.y)).collect(),
            PanelKind::Lines(series) => series.iter().flat_map(|s| s.points.clone()).collect(),
        };
        pairs
            .into_iter()
            .filter(|&(x, y)| drawable(x, y, self.log_x))
            .unzip()
    }

    /// The panel's plot area and axes, for a panel whose top-left corner is `(ox, oy)`.
    fn plot(&self, ox: f64, oy: f64) -> Plot {
        let (xs, ys) = self.values();
        Plot {
            left: ox + MARGIN_L,
            right: ox + PANEL_W - MARGIN_R,
            top: oy + MARGIN_T,
            bottom: oy + PANEL_H - MARGIN_B,
            x: Axis::new(&xs, self.log_x),
            y: Axis::new(&ys, false),
        }
    }

    /// Appends the panel's shapes, with its top-left corner at `(ox, oy)`.
    fn draw(&self, out: &mut Vec<Shape>, ox: f64, oy: f64) {
        let plot = self.plot(ox, oy);
        plot.draw_ticks(out);
        plot.draw_frame(out);
        plot.draw_labels(out, self, ox, oy);
        match &self.kind {
            PanelKind::Scatter(points) => plot.draw_scatter(out, points, self.log_x),
            PanelKind::Lines(series) => plot.draw_lines(out, series, self.log_x),
        }
        if self.values().0.is_empty() {
            let mid = (
                (plot.left + plot.right) / 2.0,
                (plot.top + plot.bottom) / 2.0,
            );
            out.push(text(mid, "no data", 1, Anchor::Middle));
        }
    }
}

// ---------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------

/// Escapes text for XML content and attribute values.
fn xml_escape(s: &str) -> String {
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

/// `#rrggbb`.
fn hex(c: Color) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

impl Scene {
    /// The scene as an SVG document.
    fn to_svg(&self) -> String {
        let (w, h) = (self.width, self.height);
        let mut s = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        for shape in &self.shapes {
            s.push_str(&shape_svg(shape));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// One shape as an SVG element (empty when its coordinates are not finite).
fn shape_svg(shape: &Shape) -> String {
    match shape {
        Shape::Line { a, b, width, color }
            if [a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) =>
        {
            format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                 stroke-width=\"{width}\" stroke-linecap=\"round\"/>\n",
                a.0,
                a.1,
                b.0,
                b.1,
                hex(*color)
            )
        }
        Shape::Circle { c, r, color } if c.0.is_finite() && c.1.is_finite() => format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\"/>\n",
            c.0,
            c.1,
            hex(*color)
        ),
        Shape::Text(t) if !t.s.is_empty() && t.at.0.is_finite() && t.at.1.is_finite() => {
            text_svg(t)
        }
        _ => String::new(),
    }
}

/// A text element; the monospace font at 13px per scale step roughly matches the 8x8 raster font.
fn text_svg(t: &Text) -> String {
    let anchor = match t.anchor {
        Anchor::Start => "start",
        Anchor::Middle => "middle",
        Anchor::End => "end",
    };
    let (x, y) = t.at;
    let rotate = match t.vertical {
        true => format!(" transform=\"rotate(-90 {x:.1} {y:.1})\""),
        false => String::new(),
    };
    let weight = if t.scale > 1 {
        " font-weight=\"bold\""
    } else {
        ""
    };
    format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-family=\"monospace\" font-size=\"{}\" fill=\"{}\" \
         text-anchor=\"{anchor}\" dominant-baseline=\"central\"{weight}{rotate}>{}</text>\n",
        13 * t.scale,
        hex(t.color),
        xml_escape(&t.s)
    )
}

// ---------------------------------------------------------------------------------------
// Raster
// ---------------------------------------------------------------------------------------

/// Largest coordinate magnitude the rasteriser accepts; shapes beyond it are skipped.
const MAX_COORD: f64 = 1e5;

/// Whether a pixel coordinate is safe to rasterise.
fn sane(v: f64) -> bool {
    v.is_finite() && v.abs() < MAX_COORD
}

/// Sets a pixel if it lies inside the image.
fn put(img: &mut RgbImage, x: i64, y: i64, c: Color) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// A `size` x `size` square of pixels centred on `(x, y)`.
fn brush(img: &mut RgbImage, x: i64, y: i64, size: i64, c: Color) {
    let lo = -(size - 1) / 2;
    for dy in lo..lo + size {
        for dx in lo..lo + size {
            put(img, x + dx, y + dy, c);
        }
    }
}

/// A line by Bresenham's algorithm, `width` pixels thick.
fn draw_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), width: f64, c: Color) {
    if ![a.0, a.1, b.0, b.1].into_iter().all(sane) {
        return;
    }
    let size = width.round().max(1.0) as i64;
    let (mut x, mut y) = (a.0.round() as i64, a.1.round() as i64);
    let (x1, y1) = (b.0.round() as i64, b.1.round() as i64);
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = ((x1 - x).signum(), (y1 - y).signum());
    let mut err = dx + dy;
    loop {
        brush(img, x, y, size, c);
        if x == x1 && y == y1 {
            return;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled circle.
fn fill_circle(img: &mut RgbImage, (cx, cy): (f64, f64), r: f64, c: Color) {
    if !(sane(cx) && sane(cy) && r.is_finite()) {
        return;
    }
    let (x0, y0, ri) = (cx.round() as i64, cy.round() as i64, r.ceil() as i64);
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            if ((dx * dx + dy * dy) as f64) <= r * r + 0.5 {
                put(img, x0 + dx, y0 + dy, c);
            }
        }
    }
}

/// The 8x8 glyph of `ch` (`?` outside ASCII); bit `j` of row `i` is pixel `(j, i)`.
fn glyph(ch: char) -> [u8; 8] {
    let i = if ch.is_ascii() {
        ch as usize
    } else {
        '?' as usize
    };
    BASIC_LEGACY[i]
}

/// Text drawn with the 8x8 font, each font pixel a `scale` x `scale` block.
fn draw_text(img: &mut RgbImage, t: &Text) {
    if !(sane(t.at.0) && sane(t.at.1)) {
        return;
    }
    let s = t.scale.max(1) as i64;
    let len = 8 * s * t.s.chars().count() as i64;
    let offset = match t.anchor {
        Anchor::Start => 0,
        Anchor::Middle => len / 2,
        Anchor::End => len,
    };
    let (x, y) = (t.at.0.round() as i64, t.at.1.round() as i64);
    for (k, ch) in t.s.chars().enumerate() {
        let along = 8 * s * k as i64 - offset;
        for (row, bits) in glyph(ch).into_iter().enumerate() {
            for col in (0..8).filter(|col| bits & (1 << col) != 0) {
                let (u, v) = (along + col * s, row as i64 * s - 4 * s);
                let (px, py) = if t.vertical {
                    (x + v, y - u - s + 1)
                } else {
                    (x + u, y + v)
                };
                brush_block(img, px, py, s, t.color);
            }
        }
    }
}

/// An `s` x `s` block with its top-left corner at `(x, y)`.
fn brush_block(img: &mut RgbImage, x: i64, y: i64, s: i64, c: Color) {
    for dy in 0..s {
        for dx in 0..s {
            put(img, x + dx, y + dy, c);
        }
    }
}

impl Scene {
    /// The scene drawn onto a white image.
    fn rasterize(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel(self.width, self.height, Rgb([255, 255, 255]));
        for shape in &self.shapes {
            match shape {
                Shape::Line { a, b, width, color } => draw_line(&mut img, *a, *b, *width, *color),
                Shape::Circle { c, r, color } => fill_circle(&mut img, *c, *r, *color),
                Shape::Text(t) => draw_text(&mut img, t),
            }
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(label: &str, group: &str, x: f64, y: f64) -> Point {
        Point {
            label: label.into(),
            group: group.into(),
            x,
            y,
        }
    }

    fn scatter(points: Vec<Point>, log_x: bool) -> Panel {
        Panel {
            title: "top-1 vs images/s".into(),
            x_label: "images/s".into(),
            y_label: "top-1 (%)".into(),
            log_x,
            kind: PanelKind::Scatter(points),
        }
    }

    fn lines(series: Vec<Series>) -> Panel {
        Panel {
            title: "training".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            log_x: false,
            kind: PanelKind::Lines(series),
        }
    }

    fn figure(panels: Vec<Panel>) -> Figure {
        Figure {
            title: "Figure <1> & co".into(),
            panels,
        }
    }

    fn sample() -> Figure {
        let pts = vec![
            point("poolformer_s12", "PoolFormer", 1450.0, 77.2),
            point("caformer_s18", "CAFormer", 610.0, 83.6),
            point("convformer_s18", "ConvFormer", 720.0, 83.0),
            point("a<b&c", "Misc \"q\"", 95.0, 70.1),
        ];
        let loss = Series {
            name: "train loss".into(),
            points: (0..20)
                .map(|e| (e as f64, 3.0 / (1.0 + e as f64)))
                .collect(),
        };
        let acc = Series {
            name: "val acc".into(),
            points: (0..20).map(|e| (e as f64, 0.1 + 0.04 * e as f64)).collect(),
        };
        figure(vec![scatter(pts, true), lines(vec![loss, acc])])
    }

    fn circles(fig: &Figure) -> Vec<(f64, f64)> {
        let shapes = fig.scene().shapes;
        shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Circle { c, r, .. } if *r > 4.0 => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Data points drawn (scatter dots have r 4.5, legend dots r 4).
    fn inside_plot(c: (f64, f64), panel: usize, top: f64) -> bool {
        let ox = panel as f64 * PANEL_W;
        let (l, r) = (ox + MARGIN_L, ox + PANEL_W - MARGIN_R);
        let (t, b) = (top + MARGIN_T, top + PANEL_H - MARGIN_B);
        (l..=r).contains(&c.0) && (t..=b).contains(&c.1)
    }

    fn assert_well_formed(svg: &str) {
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.find("<svg").unwrap() < svg.find("</svg>").unwrap());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for (i, _) in svg.match_indices('<') {
            let next = svg[i + 1..].chars().next().unwrap();
            assert!(
                next.is_ascii_alphabetic() || next == '/' || next == '?',
                "raw < at {i}"
            );
        }
        for (i, _) in svg.match_indices('&') {
            let rest = &svg[i..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| rest.starts_with(e));
            assert!(ok, "raw & at {i}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn svg_has_every_label_and_is_well_formed() {
        let svg = sample().to_svg();
        assert_well_formed(&svg);
        for label in [
            "poolformer_s12",
            "caformer_s18",
            "convformer_s18",
            "a&lt;b&amp;c",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        for text in [
            "PoolFormer",
            "CAFormer",
            "Misc &quot;q&quot;",
            "train loss",
            "val acc",
        ] {
            assert!(svg.contains(text), "missing legend {text}");
        }
        for text in [
            "Figure &lt;1&gt; &amp; co",
            "images/s",
            "top-1 (%)",
            "epoch",
            "training",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert!(!svg.contains("a<b"));
    }

    #[test]
    fn png_decodes_with_points_drawn() {
        let fig = sample();
        let bytes = fig.to_png().unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(
            img.dimensions(),
            (2 * PANEL_W as u32, (PANEL_H + TITLE_H) as u32)
        );
        let pts = circles(&fig);
        assert_eq!(pts.len(), 4);
        for (x, y) in pts {
            assert_ne!(img.get_pixel(x as u32, y as u32).0, [255, 255, 255]);
        }
        assert_eq!(img.get_pixel(2, img.height() - 2).0, [255, 255, 255]);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5), 2.0);
        assert_eq!(nice_step(1.0, 10), 0.1);
        assert_eq!(nice_step(700.0, 6), 100.0);
        assert_eq!(nice_step(0.03, 6), 0.005);
        let (step, ticks) = nice_ticks(0.0, 1.0, 5);
        assert_eq!(step, 0.2);
        assert_eq!(ticks.len(), 6);
        assert!((ticks[5] - 1.0).abs() < 1e-12);
        for (lo, hi) in [(-3.7, 12.9), (0.001, 0.0123), (1e5, 3.3e6), (77.0, 84.0)] {
            let (step, ticks) = nice_ticks(lo, hi, 6);
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|n| (m - n).abs() < 1e-9),
                "{step}"
            );
            assert!((3..=15).contains(&ticks.len()), "{ticks:?}");
            assert!(ticks.iter().all(|t| (lo..=hi).contains(t)));
        }
        let axis = Axis::new(&[0.25, 0.75], false);
        assert_eq!(axis.label(0.5), "0.5");
    }

    #[test]
    fn log_ticks_at_decades_and_2_5() {
        let ticks = log_ticks(0.0, 3.0);
        let want = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        assert_eq!(ticks.len(), want.len());
        for (t, w) in ticks.iter().zip(want) {
            assert!((t - w).abs() < 1e-9 * w);
        }
        assert!(log_ticks(-2.0, 9.0).len() >= 3);
        let narrow = log_ticks(300f64.log10(), 900f64.log10());
        assert!(narrow.len() >= 3, "{narrow:?}");
        assert_eq!(fmt_general(2e-5), "2e-5");
        assert_eq!(fmt_general(500.0), "500");
    }

    #[test]
    fn save_picks_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let fig = sample();
        let err = fig.save(&dir.path().join("plot.jpg")).unwrap_err();
        assert!(err.to_string().contains(".jpg"), "{err}");
        assert!(fig.save(&dir.path().join("plot")).is_err());
        fig.save(&dir.path().join("plot.SVG")).unwrap();
        fig.save(&dir.path().join("plot.Png")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("plot.SVG")).unwrap();
        assert!(svg.starts_with("<?xml"));
        let png = std::fs::read(dir.path().join("plot.Png")).unwrap();
        assert!(image::load_from_memory(&png).is_ok());
    }

    #[test]
    fn nan_inf_and_nonpositive_log_x_are_skipped() {
        let pts = vec![
            point("ok", "g", 10.0, 1.0),
            point("nan", "g", f64::NAN, 1.0),
            point("inf", "g", 5.0, f64::INFINITY),
            point("zero", "g", 0.0, 2.0),
            point("neg", "g", -3.0, 2.0),
            point("ok2", "h", 100.0, 3.0),
        ];
        let fig = figure(vec![scatter(pts, true)]);
        let drawn = circles(&fig);
        assert_eq!(drawn.len(), 2);
        assert!(drawn.iter().all(|&c| inside_plot(c, 0, TITLE_H)));
        let series = Series {
            name: "s".into(),
            points: vec![
                (0.0, 1.0),
                (1.0, f64::NAN),
                (2.0, 3.0),
                (f64::NEG_INFINITY, 0.0),
            ],
        };
        let fig = figure(vec![lines(vec![series])]);
        let n_lines = fig
            .scene()
            .shapes
            .iter()
            .filter(|s| matches!(s, Shape::Line { width, .. } if *width == 2.0))
            .count();
        assert_eq!(
            n_lines, 1,
            "only the legend swatch: the NaN breaks the line"
        );
        let fig = figure(vec![scatter(
            vec![point("nan", "g", f64::NAN, f64::NAN)],
            false,
        )]);
        assert_well_formed(&fig.to_svg());
        fig.to_png().unwrap();
    }

    #[test]
    fn empty_and_degenerate_figures_do_not_panic() {
        let empty = Figure {
            title: String::new(),
            panels: Vec::new(),
        };
        assert_well_formed(&empty.to_svg());
        let img = image::load_from_memory(&empty.to_png().unwrap()).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (PANEL_W as u32, PANEL_H as u32)
        );
        let panels = vec![
            scatter(Vec::new(), true),
            lines(Vec::new()),
            lines(vec![Series {
                name: String::new(),
                points: Vec::new(),
            }]),
            scatter(vec![point("one", "g", 3.0, 5.0)], true),
            scatter(
                vec![point("a", "g", 2.0, 0.0), point("b", "g", 2.0, 0.0)],
                false,
            ),
            scatter(
                vec![
                    point("big", "g", 1e300, -1e300),
                    point("small", "g", -1e300, 1e300),
                ],
                false,
            ),
            scatter(
                vec![
                    point("max", "g", f64::MAX, 1.0),
                    point("min", "g", f64::MIN, 2.0),
                ],
                false,
            ),
        ];
        let fig = figure(panels);
        assert_well_formed(&fig.to_svg());
        fig.to_png().unwrap();
        let drawn = circles(&fig);
        assert!(inside_plot(drawn[0], 3, TITLE_H), "single point");
        assert!(inside_plot(drawn[1], 4, TITLE_H) && inside_plot(drawn[2], 4, TITLE_H));
        assert!(drawn.iter().all(|c| c.0.is_finite()), "{drawn:?}");
    }

    #[test]
    fn many_groups_and_long_names() {
        let pts = (0..40)
            .map(|i| {
                point(
                    &format!("m{i}"),
                    &format!("a rather long family {i}"),
                    i as f64,
                    i as f64,
                )
            })
            .collect();
        let fig = figure(vec![scatter(pts, false)]);
        let svg = fig.to_svg();
        assert_well_formed(&svg);
        assert!(svg.contains("+17 more"));
        assert!(svg.contains(">a rather long f..<"));
        fig.to_png().unwrap();
    }
}
