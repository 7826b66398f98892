//! The binary's figures: scatter and line panels side by side, drawn with `plotters` as SVG or
//! as PNG.
//!
//! A [`Figure`] is plain data (panels of labelled points or named lines); [`Figure::save`]
//! renders it by the file extension. PNG text is drawn with the DejaVu Sans file bundled in
//! `assets/fonts/` (registered through plotters' `ab_glyph` support, so no system font or
//! fontconfig is needed); SVG text stays text, for the viewer's sans-serif font. Values that
//! cannot be drawn (NaN, infinities, non-positive x on a log axis) are skipped, and a NaN
//! breaks a line.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use image::{ImageFormat, RgbImage};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

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

/// Width of one panel in pixels.
const PANEL_W: u32 = 900;
/// Height of one panel in pixels.
const PANEL_H: u32 = 560;
/// Height of the figure title band.
const TITLE_H: u32 = 44;
/// Width of the legend column right of each plot.
const LEGEND_W: u32 = 230;
/// Vertical distance between legend entries.
const LEGEND_STEP: i32 = 18;
/// Series with more points than this are drawn without markers.
const MAX_MARKERS: usize = 60;

/// The font family every text uses; the bundled font is registered under this name.
const FAMILY: &str = "sans-serif";
/// DejaVu Sans (Bitstream Vera license, `assets/fonts/LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

const DARK: RGBColor = RGBColor(64, 64, 64);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Tableau 10, then five darker hues, so the zoo's families (up to 15) get distinct colours.
const PALETTE: [RGBColor; 15] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
    RGBColor(0x1f, 0x3a, 0x6e),
    RGBColor(0x8c, 0x2d, 0x04),
    RGBColor(0x2c, 0x6e, 0x2c),
    RGBColor(0x6a, 0x3d, 0x9a),
    RGBColor(0x33, 0x33, 0x33),
];

/// The `i`-th palette colour, cycling.
fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Registers the bundled font with plotters (once per process).
fn register_bundled_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(ok, "the bundled plot font is not a valid font file");
    Ok(())
}

/// Text of `size` pixels in `color`, anchored at `(h, v)`.
fn font(size: u32, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&color).pos(Pos::new(h, v))
}

impl Figure {
    /// Renders the figure as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        register_bundled_font()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present().context("finishing the SVG plot")?;
        }
        Ok(svg)
    }

    /// Renders the figure to an image and returns the encoded PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        register_bundled_font()?;
        let (w, h) = self.size();
        let mut pixels = vec![255u8; 3 * w as usize * h as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present().context("finishing the PNG plot")?;
        }
        let img = RgbImage::from_raw(w, h, pixels).context("plot buffer size")?;
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, ImageFormat::Png)
            .context("encoding the plot as PNG")?;
        Ok(bytes.into_inner())
    }

    /// Writes SVG or PNG by the file extension (.svg / .png, case-insensitive); any other extension is a clear error naming it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let bytes = match ext.as_deref() {
            Some("svg") => self.to_svg()?.into_bytes(),
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

    /// Width and height in pixels: one panel column each, plus the title band.
    fn size(&self) -> (u32, u32) {
        let columns = self.panels.len().max(1) as u32;
        let top = if self.title.is_empty() { 0 } else { TITLE_H };
        (PANEL_W * columns, PANEL_H + top)
    }

    /// Draws the title and the panels onto `root`.
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let mut body = root.clone();
        if !self.title.is_empty() {
            let (band, rest) = root.split_vertically(TITLE_H);
            let (w, h) = band.dim_in_pixel();
            let style = font(22, BLACK, HPos::Center, VPos::Center);
            band.draw_text(&self.title, &style, (w as i32 / 2, h as i32 / 2))?;
            body = rest;
        }
        if self.panels.is_empty() {
            return Ok(());
        }
        let areas = body.split_evenly((1, self.panels.len()));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw(area)?;
        }
        Ok(())
    }
}

/// Whether a data point can be drawn.
fn drawable(x: f64, y: f64, log_x: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log_x || x > 0.0)
}

/// Smallest and largest value (`(inf, -inf)` when empty).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// The data range widened by 10% of its half-span each side; a degenerate range is padded, an
/// empty one is `[0, 1]`. The result spans at most `f64::MAX` so its width stays finite.
fn padded_range(lo: f64, hi: f64) -> Range<f64> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return 0.0..1.0;
    }
    let limit = f64::MAX / 2.0;
    let (lo, hi) = (lo.clamp(-limit, limit), hi.clamp(-limit, limit));
    let half = hi * 0.5 - lo * 0.5;
    let pad = if half <= 5e-13 * lo.abs().max(hi.abs()).max(1e-300) {
        match lo {
            0.0 => 1.0,
            _ => 0.1 * lo.abs(),
        }
    } else {
        0.1 * half
    };
    (lo - pad).max(-limit)..(hi + pad).min(limit)
}

/// The x range of drawable values, in data units; padded in log space when `log`.
fn x_range(values: &[f64], log: bool) -> Range<f64> {
    if !log {
        let (lo, hi) = min_max(values.iter().copied());
        return padded_range(lo, hi);
    }
    let (lo, hi) = min_max(values.iter().map(|v| v.log10()));
    let logs = if lo.is_finite() {
        padded_range(lo, hi)
    } else {
        0.0..1.0
    };
    10f64.powf(logs.start)..10f64.powf(logs.end)
}

/// Ticks for a log axis spanning `[lo, hi]` in log10 units: decades (and their 2x and 5x when
/// there are at most four decades), or 1-2-5 steps when that gives fewer than three.
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
    linear_ticks(10f64.powf(lo), 10f64.powf(hi), 5)
}

/// Multiples of a 1, 2 or 5 x 10^k step inside `[lo, hi]`, about `target` intervals apart.
fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = mag
        * match raw / mag {
            n if n < 1.5 => 1.0,
            n if n < 3.5 => 2.0,
            n if n < 7.5 => 5.0,
            _ => 10.0,
        };
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last.min(first + 1000))
        .map(|k| k as f64 * step)
        .collect()
}

/// Compact tick label: plain decimals, or exponent form when very large or small.
fn tick_label(v: f64) -> String {
    let trim = |s: &str| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim(mantissa));
    }
    trim(&format!("{v:.4}"))
}

/// `s`, or its longest head that fits in `width` pixels with ".." marking the cut.
fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    style: &TextStyle,
    width: u32,
) -> Result<String>
where
    DB::ErrorType: 'static,
{
    let fits = |t: &str| Ok::<_, anyhow::Error>(area.estimate_text_size(t, style)?.0 <= width);
    if fits(s)? {
        return Ok(s.to_string());
    }
    let mut chars: Vec<char> = s.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut = format!("{}..", chars.iter().collect::<String>());
        if fits(&cut)? {
            return Ok(cut);
        }
    }
    Ok(String::new())
}

/// Groups in order of first appearance, each with its colour.
fn group_colors(points: &[Point]) -> Vec<(String, RGBColor)> {
    let mut groups: Vec<(String, RGBColor)> = Vec::new();
    for p in points {
        if !groups.iter().any(|(g, _)| *g == p.group) {
            groups.push((p.group.clone(), palette(groups.len())));
        }
    }
    groups
}

/// Runs of consecutive drawable points: the pieces of a line broken at undrawable points.
fn runs(points: &[(f64, f64)], log_x: bool) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|&(x, y)| !drawable(x, y, log_x))
        .filter(|run| !run.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

/// Where a point label goes: the first of above / below on the preferred side (left of the point
/// when `left`, else right), then the same on the other side, whose box overlaps nothing in
/// `taken`; the first one when all do. Returns (left side, vertical offset, pixel box).
fn place_label(
    (x, y): (i32, i32),
    (w, h): (u32, u32),
    left: bool,
    taken: &[[i32; 4]],
) -> (bool, i32, [i32; 4]) {
    let (w, h) = (w as i32, h as i32);
    let rect = |left: bool, dy: i32| {
        let x0 = if left { x - 7 - w } else { x + 7 };
        [x0, y + dy - h / 2, x0 + w, y + dy + h / 2]
    };
    let overlaps =
        |a: &[i32; 4], b: &[i32; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    let candidates = [(left, -8), (left, 9), (!left, -8), (!left, 9)];
    let free = candidates
        .iter()
        .find(|&&(l, dy)| !taken.iter().any(|t| overlaps(&rect(l, dy), t)));
    let &(l, dy) = free.unwrap_or(&candidates[0]);
    (l, dy, rect(l, dy))
}

/// The coordinate chart a panel draws into.
type Chart<'a, DB, X> = ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>;

impl Panel {
    /// Drawable `(x, y)` pairs of the panel's data.
    fn values(&self) -> Vec<(f64, f64)> {
        let pairs: Vec<(f64, f64)> = match &self.kind {
            PanelKind::Scatter(points) => points.iter().map(|p| (p.x, p.y)).collect(),
            PanelKind::Lines(series) => series.iter().flat_map(|s| s.points.clone()).collect(),
        };
        pairs
            .into_iter()
            .filter(|&(x, y)| drawable(x, y, self.log_x))
            .collect()
    }

    /// Draws the panel into `area`: the chart on the left, the legend column on the right.
    fn draw<DB>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let (plot_area, legend_area) = area.split_horizontally(PANEL_W - LEGEND_W);
        let values = self.values();
        let xs: Vec<f64> = values.iter().map(|v| v.0).collect();
        let x = x_range(&xs, self.log_x);
        let (lo, hi) = min_max(values.iter().map(|v| v.1));
        let y = padded_range(lo, hi);
        if self.log_x {
            let ticks = log_ticks(x.start.log10(), x.end.log10());
            self.draw_chart(&plot_area, x.log_scale().with_key_points(ticks), y)?;
        } else {
            self.draw_chart(&plot_area, x, y)?;
        }
        self.draw_legend(&legend_area)
    }

    /// Axes, grid, titles and data on a chart with x coordinates `x`.
    fn draw_chart<DB, X>(&self, area: &DrawingArea<DB, Shift>, x: X, y: Range<f64>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(18, BLACK, HPos::Center, VPos::Top))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .label_style(font(12, BLACK, HPos::Center, VPos::Center))
            .axis_desc_style(font(14, BLACK, HPos::Center, VPos::Center))
            .draw()?;
        match &self.kind {
            PanelKind::Scatter(points) => self.draw_points(&mut chart, points)?,
            PanelKind::Lines(series) => self.draw_lines(&mut chart, series)?,
        }
        self.draw_frame_and_note(&chart)
    }

    /// The box around the plot area, and "no data" in its middle when nothing was drawable.
    fn draw_frame_and_note<DB, XC>(&self, chart: &Chart<'_, DB, XC>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        XC: Ranged<ValueType = f64>,
    {
        let plot = chart.plotting_area().strip_coord_spec();
        let (w, h) = plot.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        plot.draw(&Rectangle::new([(0, 0), (w - 1, h - 1)], BLACK))?;
        if self.values().is_empty() {
            let style = font(14, BLACK, HPos::Center, VPos::Center);
            plot.draw_text("no data", &style, (w / 2, h / 2))?;
        }
        Ok(())
    }

    /// Points coloured by group, each with its label placed where it overlaps no other label
    /// or point when it can.
    fn draw_points<DB, XC>(&self, chart: &mut Chart<'_, DB, XC>, points: &[Point]) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        XC: Ranged<ValueType = f64>,
    {
        let groups = group_colors(points);
        let points: Vec<&Point> = points
            .iter()
            .filter(|p| drawable(p.x, p.y, self.log_x))
            .collect();
        let mut taken = Vec::new();
        for p in &points {
            let color = groups
                .iter()
                .find(|(g, _)| *g == p.group)
                .map_or(BLACK, |g| g.1);
            let dot = Circle::new((p.x, p.y), 5, color.filled());
            chart.plotting_area().draw(&dot)?;
            let (x, y) = chart.backend_coord(&(p.x, p.y));
            taken.push([x - 5, y - 5, x + 5, y + 5]);
        }
        let (columns, _) = chart.plotting_area().get_pixel_range();
        let right_quarter = columns.start + 3 * (columns.end - columns.start) / 4;
        for p in points.iter().filter(|p| !p.label.is_empty()) {
            let at = chart.backend_coord(&(p.x, p.y));
            let style = font(12, DARK, HPos::Left, VPos::Center);
            let size = chart.plotting_area().estimate_text_size(&p.label, &style)?;
            let (left, dy, rect) = place_label(at, size, at.0 > right_quarter, &taken);
            taken.push(rect);
            let h = if left { HPos::Right } else { HPos::Left };
            let dx = if left { -7 } else { 7 };
            let text = Text::new(p.label.clone(), (dx, dy), font(12, DARK, h, VPos::Center));
            chart
                .plotting_area()
                .draw(&(EmptyElement::at((p.x, p.y)) + text))?;
        }
        Ok(())
    }

    /// Series as coloured lines (broken at undrawable points), with small markers unless long.
    fn draw_lines<DB, XC>(&self, chart: &mut Chart<'_, DB, XC>, series: &[Series]) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        XC: Ranged<ValueType = f64>,
    {
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            let markers = s.points.len() <= MAX_MARKERS;
            for run in runs(&s.points, self.log_x) {
                if markers {
                    let dots = run.iter().map(|&c| Circle::new(c, 3, color.filled()));
                    chart.draw_series(dots)?;
                }
                chart.draw_series(LineSeries::new(run, color.stroke_width(2)))?;
            }
        }
        Ok(())
    }

    /// Legend entries: one per group (scatter) or per series (lines), with their colours.
    fn legend(&self) -> (Vec<(String, RGBColor)>, bool) {
        match &self.kind {
            PanelKind::Scatter(points) => (group_colors(points), false),
            PanelKind::Lines(series) => {
                let entries = series.iter().enumerate();
                (
                    entries.map(|(i, s)| (s.name.clone(), palette(i))).collect(),
                    true,
                )
            }
        }
    }

    /// The legend column: a dot or line swatch and the name for each entry, and "+N more" when
    /// they do not all fit.
    fn draw_legend<DB>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let (entries, lines) = self.legend();
        let (top, bottom) = (48, area.dim_in_pixel().1 as i32 - 48);
        let room = ((bottom - top) / LEGEND_STEP).max(1) as usize;
        let shown = match entries.len() > room {
            true => room - 1,
            false => entries.len(),
        };
        let style = font(12, BLACK, HPos::Left, VPos::Center);
        for (i, (name, color)) in entries.iter().take(shown).enumerate() {
            let y = top + i as i32 * LEGEND_STEP;
            if lines {
                area.draw(&PathElement::new([(4, y), (22, y)], color.stroke_width(2)))?;
            } else {
                area.draw(&Circle::new((13, y), 5, color.filled()))?;
            }
            let name = fit_text(area, name, &style, LEGEND_W - 34)?;
            area.draw_text(&name, &style, (30, y))?;
        }
        if shown < entries.len() {
            let more = format!("+{} more", entries.len() - shown);
            let y = top + shown as i32 * LEGEND_STEP;
            area.draw_text(&more, &style, (30, y))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{EpochStats, EvalStats};
    use crate::BenchResult;

    /// A benchmark row as `tokenmix bench` records it.
    fn bench(name: &str, family: &str, top1: Option<f64>, gmacs: f64, ips: f64) -> BenchResult {
        BenchResult {
            name: name.into(),
            family: family.into(),
            params: 12_000_000,
            gmacs,
            top1,
            image_size: 224,
            batch: 8,
            latency_ms: 20.0,
            images_per_s: ips,
            threads: 2,
            dtype: "f32".into(),
            peak_rss_mb: None,
        }
    }

    /// The bench figure for four models of three families (one without a paper top-1).
    fn bench_figure() -> Figure {
        let results = [
            bench("poolformer_s12", "poolformer", Some(77.2), 1.8, 95.0),
            bench("caformer_s18", "caformer", Some(83.6), 4.1, 31.0),
            bench("convformer_s18", "convformer", Some(83.0), 3.9, 36.0),
            bench("caformer_s36", "caformer", Some(84.5), 8.0, 16.0),
            bench("untrained_x", "convformer", None, 1.0, 200.0),
        ];
        crate::bench_figure(&results, 2)
    }

    /// The train figure after four epochs, the first without validation.
    fn train_figure() -> Figure {
        let epoch = |epoch: usize, loss: f64, val: Option<(f64, f64)>| EpochStats {
            epoch,
            train_loss: loss,
            val: val.map(|(top1, top5)| EvalStats {
                loss: loss * 0.9,
                top1,
                top5,
            }),
            images_per_sec: 100.0,
            lr: 1e-3,
        };
        crate::train_figure(&[
            epoch(1, 2.3, None),
            epoch(2, 1.7, Some((41.0, 80.0))),
            epoch(3, 1.2, Some((63.0, 92.0))),
            epoch(4, 0.9, Some((71.5, 96.0))),
        ])
    }

    fn assert_svg(svg: &str, texts: &[&str]) {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite coordinates"
        );
        for text in texts {
            assert!(svg.contains(text), "missing {text}");
        }
    }

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    /// Pixels in the rectangle `[x0, x1) x [y0, y1)` darker than mid grey (text, axes).
    fn dark_pixels(img: &RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
        let dark = |x, y| img.get_pixel(x, y).0.iter().all(|&c| c < 110);
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| dark(x, y))
            .count()
    }

    fn has_colour(img: &RgbImage, c: RGBColor) -> bool {
        img.pixels().any(|p| p.0 == [c.0, c.1, c.2])
    }

    #[test]
    fn bench_svg_has_titles_axes_legend_and_every_model() {
        let svg = bench_figure().to_svg().unwrap();
        assert_svg(
            &svg,
            &[
                "ImageNet-1k top-1 (paper)",
                "random weights",
                "2 threads, 224x224",
                "throughput at batch 8",
                "compute",
                "images/s (measured, log scale)",
                "GMACs per image (log scale)",
                "top-1 % (paper)",
                "poolformer_s12",
                "caformer_s18",
                "convformer_s18",
                "caformer_s36",
                "poolformer",
                "caformer",
                "convformer",
            ],
        );
        assert!(
            !svg.contains("untrained_x"),
            "a model without top-1 has no point"
        );
        assert_eq!(
            svg.matches(">\ncaformer_s36\n<").count(),
            2,
            "one label per panel"
        );
    }

    #[test]
    fn bench_png_decodes_at_its_size_with_text_and_family_colours() {
        let img = decode(&bench_figure().to_png().unwrap());
        assert_eq!(img.dimensions(), (2 * PANEL_W, PANEL_H + TITLE_H));
        for i in 0..3 {
            assert!(has_colour(&img, palette(i)), "family {i} not drawn");
        }
        assert!(!has_colour(&img, palette(3)), "three families only");
        let title = dark_pixels(&img, (0, 2 * PANEL_W), (0, TITLE_H));
        assert!(title > 500, "title text: {title} dark pixels");
        let legend = (PANEL_W - LEGEND_W + 28, PANEL_W);
        let legend_text = dark_pixels(&img, legend, (TITLE_H, PANEL_H + TITLE_H));
        assert!(legend_text > 200, "legend text: {legend_text} dark pixels");
        let plots = ((0, 2 * PANEL_W), (TITLE_H, PANEL_H + TITLE_H));
        let mut unlabelled = bench_figure();
        for panel in &mut unlabelled.panels {
            if let PanelKind::Scatter(points) = &mut panel.kind {
                points.iter_mut().for_each(|p| p.label.clear());
            }
        }
        let bare = decode(&unlabelled.to_png().unwrap());
        let labels = dark_pixels(&img, plots.0, plots.1) - dark_pixels(&bare, plots.0, plots.1);
        assert!(labels > 300, "point labels: {labels} dark pixels");
        assert_eq!(img.get_pixel(2, img.height() - 2).0, [255, 255, 255]);
    }

    #[test]
    fn train_svg_and_png_show_both_panels_and_all_curves() {
        let fig = train_figure();
        assert_svg(
            &fig.to_svg().unwrap(),
            &[
                "training",
                "loss",
                "cross-entropy",
                "validation accuracy",
                "accuracy %",
                "epoch",
                "train (mixed, smoothed targets)",
                "validation",
                "top-1",
                "top-5",
            ],
        );
        let img = decode(&fig.to_png().unwrap());
        assert_eq!(img.dimensions(), (2 * PANEL_W, PANEL_H + TITLE_H));
        assert!(has_colour(&img, palette(0)) && has_colour(&img, palette(1)));
        let legend = (PANEL_W - LEGEND_W + 28, PANEL_W);
        assert!(dark_pixels(&img, legend, (TITLE_H, PANEL_H)) > 200);
    }

    #[test]
    fn save_picks_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let fig = train_figure();
        let err = fig.save(&dir.path().join("plot.jpg")).unwrap_err();
        assert!(err.to_string().contains("`.jpg`"), "{err}");
        assert!(fig.save(&dir.path().join("plot")).is_err());
        fig.save(&dir.path().join("plot.SVG")).unwrap();
        fig.save(&dir.path().join("plot.Png")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("plot.SVG")).unwrap();
        assert!(svg.starts_with("<svg"));
        let png = std::fs::read(dir.path().join("plot.Png")).unwrap();
        assert_eq!(decode(&png).dimensions(), fig.size());
    }

    fn point(label: &str, group: &str, x: f64, y: f64) -> Point {
        let (label, group) = (label.into(), group.into());
        Point { label, group, x, y }
    }

    fn scatter(points: Vec<Point>, log_x: bool) -> Panel {
        Panel {
            title: "scatter".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x,
            kind: PanelKind::Scatter(points),
        }
    }

    fn lines(series: Vec<Series>) -> Panel {
        Panel {
            kind: PanelKind::Lines(series),
            ..scatter(Vec::new(), false)
        }
    }

    #[test]
    fn undrawable_values_and_degenerate_panels_render() {
        let skipped = vec![
            point("ok", "g", 10.0, 1.0),
            point("nan", "g", f64::NAN, 1.0),
            point("inf", "g", 5.0, f64::INFINITY),
            point("zero", "g", 0.0, 2.0),
            point("ok2", "h", 100.0, 3.0),
        ];
        let broken = Series {
            name: "s".into(),
            points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 2.0)],
        };
        let panels = vec![
            scatter(skipped, true),
            scatter(Vec::new(), true),
            lines(vec![broken]),
            lines(Vec::new()),
            scatter(vec![point("one", "g", 3.0, 5.0)], true),
            scatter(
                vec![point("a", "g", 0.0, 0.0), point("b", "g", 0.0, 0.0)],
                false,
            ),
            scatter(vec![point("max", "g", f64::MAX, f64::MIN)], false),
            scatter(vec![point("a<b&c", "g", -1e300, 1e300)], false),
        ];
        let fig = Figure {
            title: "Figure <1> & co".into(),
            panels,
        };
        let svg = fig.to_svg().unwrap();
        assert_svg(
            &svg,
            &[
                "ok2",
                "a&lt;b&amp;c",
                "Figure &lt;1&gt; &amp; co",
                "no data",
            ],
        );
        for gone in ["nan", "inf", "zero"] {
            assert!(!svg.contains(&format!(">\n{gone}\n<")), "{gone} drawn");
        }
        assert_eq!(svg.matches(">\nno data\n<").count(), 2);
        assert_eq!(decode(&fig.to_png().unwrap()).dimensions(), fig.size());
        let empty = Figure {
            title: String::new(),
            panels: Vec::new(),
        };
        assert_eq!(
            decode(&empty.to_png().unwrap()).dimensions(),
            (PANEL_W, PANEL_H)
        );
    }

    #[test]
    fn many_groups_and_long_names_fit_the_legend() {
        let family = |i| format!("a family name far too long for the legend {i}");
        let pts = (0..40)
            .map(|i| point(&format!("m{i}"), &family(i), i as f64, 1.0))
            .collect();
        let svg = Figure {
            title: String::new(),
            panels: vec![scatter(pts, false)],
        }
        .to_svg()
        .unwrap();
        assert!(svg.contains("+16 more"), "legend overflow");
        assert!(svg.contains("\na family name far"), "name drawn");
        assert!(
            !svg.contains(&family(0)),
            "name not cut to the legend's width"
        );
        assert_eq!(svg.matches("..\n</text>").count(), 24);
    }

    #[test]
    fn labels_move_off_taken_places() {
        let size = (40, 10);
        let (left, dy, first) = place_label((100, 100), size, false, &[]);
        assert_eq!((left, dy), (false, -8));
        let (left, dy, second) = place_label((100, 100), size, false, &[first]);
        assert_eq!((left, dy), (false, 9));
        let (left, _, _) = place_label((100, 100), size, false, &[first, second]);
        assert!(left);
        let taken = [[0, 0, 1000, 1000]];
        assert_eq!(place_label((100, 100), size, false, &taken).2, first);
    }

    #[test]
    fn log_ticks_at_decades_and_2_5() {
        let ticks = log_ticks(0.0, 3.0);
        let want = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        assert_eq!(ticks.len(), want.len());
        for (t, w) in ticks.iter().zip(want) {
            assert!((t - w).abs() < 1e-9 * w);
        }
        assert_eq!(log_ticks(-2.0, 9.0).len(), 6, "every other decade");
        let narrow = log_ticks(300f64.log10(), 900f64.log10());
        assert!(narrow.len() >= 3, "{narrow:?}");
        assert_eq!(tick_label(2e-5), "2e-5");
        assert_eq!(tick_label(500.0), "500");
        assert_eq!(tick_label(0.25), "0.25");
    }
}
