//! PNG line and bar charts for benchmark results, drawn with plotters' pure-Rust bitmap backend.
//!
//! Text needs a TrueType font, loaded at run time rather than compiled in (plotters' `ttf`
//! feature would need fontconfig and other system libraries at build time). The first chart
//! looks for one in `LOCKSTEP_CHART_FONT` and then in the usual system places; on Debian or
//! Ubuntu `apt-get install -y fonts-dejavu-core` provides one.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use plotters::coord::ranged1d::{AsRangedCoord, SegmentValue, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of a chart: its legend label and its points `(x, y)`, drawn in the given order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Environment variable naming a TTF file to use instead of the system ones.
pub const FONT_ENV: &str = "LOCKSTEP_CHART_FONT";

/// Where common distributions keep a plain sans-serif TTF, most likely first.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// The family name the loaded font is registered under with plotters.
const FONT_FAMILY: &str = "sans-serif";

const CHART_WIDTH_PX: u32 = 1200;
const CHART_HEIGHT_PX: u32 = 750;
/// How much taller than the data the y axis is, so the legend (upper left) sits above the lines.
const LEGEND_HEADROOM: f64 = 1.25;
/// Labelled ticks per axis, at most.
const TICKS_MAX: usize = 12;

/// Distinct colors, in the order series are given (then repeated).
const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `series` as lines with a marker on every point, with a legend, into a PNG at `path`.
///
/// `log_x` / `log_y` use a logarithmic axis; every value on a logarithmic axis must then be
/// positive. A linear axis starts at zero when all its values are non-negative, so that ratios
/// can be read off the chart. Fails if no series has a point, if a value is not finite, or if
/// no font can be found (see the module documentation).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    log_y: bool,
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    if points().next().is_none() {
        bail!("chart {title:?}: no points to draw");
    }
    if let Some((x, y)) = points().find(|(x, y)| !x.is_finite() || !y.is_finite()) {
        bail!("chart {title:?}: point ({x}, {y}) is not finite");
    }
    let x_range = axis_range(points().map(|(x, _)| x), log_x, 1.0)
        .with_context(|| format!("chart {title:?}: x axis"))?;
    let y_range = axis_range(points().map(|(_, y)| y), log_y, LEGEND_HEADROOM)
        .with_context(|| format!("chart {title:?}: y axis"))?;
    register_font()?;

    let labels = Labels {
        title,
        x_label,
        y_label,
    };
    // Each axis kind is its own coordinate type in plotters, hence one call per combination.
    match (log_x, log_y) {
        (false, false) => draw(path, &labels, series, x_range, y_range),
        (true, false) => draw(path, &labels, series, x_range.log_scale(), y_range),
        (false, true) => draw(path, &labels, series, x_range, y_range.log_scale()),
        (true, true) => draw(
            path,
            &labels,
            series,
            x_range.log_scale(),
            y_range.log_scale(),
        ),
    }
    .with_context(|| format!("drawing chart {title:?} to {}", path.display()))
}

/// One bar of a bar chart: its category and its height.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
}

/// Draws one bar per category, in the given order, its value written above it, into a PNG at
/// `path`. `log_y` uses a logarithmic value axis (every value must then be positive), for
/// values orders of magnitude apart. Fails as [`line_chart`] does.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[Bar],
    log_y: bool,
) -> anyhow::Result<()> {
    if bars.is_empty() {
        bail!("chart {title:?}: no bars to draw");
    }
    if let Some(bar) = bars.iter().find(|b| !b.value.is_finite()) {
        bail!("chart {title:?}: bar {:?} is not finite", bar.label);
    }
    let y_range = axis_range(bars.iter().map(|b| b.value), log_y, 1.0)
        .with_context(|| format!("chart {title:?}: value axis"))?;
    register_font()?;
    if log_y {
        draw_bars(path, title, y_label, bars, y_range.log_scale())
    } else {
        draw_bars(path, title, y_label, bars, y_range)
    }
    .with_context(|| format!("drawing chart {title:?} to {}", path.display()))
}

fn draw_bars<Y>(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[Bar],
    y_axis: Y,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = BitMapBackend::new(path, (CHART_WIDTH_PX, CHART_HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let count = i32::try_from(bars.len()).context("too many bars")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 30))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(100)
        // A segmented range has a segment for each end: `0..count - 1` is `count` segments.
        .build_cartesian_2d((0..count - 1).into_segmented(), y_axis)
        .map_err(plot_error)?;
    let category = |value: &SegmentValue<i32>| match value {
        SegmentValue::CenterOf(index) => usize::try_from(*index)
            .ok()
            .and_then(|i| bars.get(i))
            .map_or_else(String::new, |bar| bar.label.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .y_labels(TICKS_MAX)
        .x_label_formatter(&category)
        .y_label_formatter(&|v| tick_label(*v))
        .y_desc(y_label)
        .label_style((FONT_FAMILY, 18))
        .axis_desc_style((FONT_FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    let floor = chart.y_range().start;
    for (index, bar) in (0..count).zip(bars) {
        let color = COLORS[index as usize % COLORS.len()];
        let mut rectangle = Rectangle::new(
            [
                (SegmentValue::Exact(index), floor),
                (SegmentValue::Exact(index + 1), bar.value),
            ],
            color.filled(),
        );
        rectangle.set_margin(0, 0, 12, 12);
        chart.draw_series([rectangle]).map_err(plot_error)?;
        chart
            .draw_series([Text::new(
                tick_label(bar.value),
                (SegmentValue::CenterOf(index), bar.value),
                (FONT_FAMILY, 18)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )])
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

struct Labels<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

fn draw<X, Y>(
    path: &Path,
    labels: &Labels<'_>,
    series: &[Series],
    x_axis: X,
    y_axis: Y,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = BitMapBackend::new(path, (CHART_WIDTH_PX, CHART_HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(labels.title, (FONT_FAMILY, 30))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(100)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(TICKS_MAX)
        .y_labels(TICKS_MAX)
        .x_desc(labels.x_label)
        .y_desc(labels.y_label)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT_FAMILY, 18))
        .axis_desc_style((FONT_FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    for (index, one) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                one.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(one.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                one.points
                    .iter()
                    .map(|&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// plotters' errors borrow nothing but are not all `Send + Sync`; keep their message.
fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{error}")
}

/// The drawn range of an axis: from zero (or the smallest value, if negative) with a margin
/// above on a linear axis; a margin of a factor each side on a logarithmic one.
///
/// `headroom` (1 or more) stretches the top further, to keep the legend off the lines.
fn axis_range(
    values: impl Iterator<Item = f64>,
    log: bool,
    headroom: f64,
) -> anyhow::Result<Range<f64>> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
        (low.min(v), high.max(v))
    });
    if log {
        if low <= 0.0 {
            bail!("a logarithmic axis needs positive values, got {low}");
        }
        return Ok(low / 1.5..high * 1.5 * headroom.powi(2));
    }
    let low = low.min(0.0);
    let high = high.max(0.0);
    let span = if high > low { high - low } else { 1.0 };
    Ok(low..high + span * (0.08 + headroom - 1.0))
}

/// A short tick label: `2.5k`, `10M`, `0.25`.
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled == 0.0 {
        "0".to_string()
    } else if scaled.abs() >= 100.0 || scaled.fract() == 0.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        // Two significant digits below 1, so that close small ticks stay apart.
        let decimals = (2 - scaled.abs().log10().floor() as i32).clamp(2, 8) as usize;
        format!("{scaled:.decimals$}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// Loads and registers the font once per process; later calls return the first outcome.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = find_font()?;
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("reading font {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process and wants `'static` bytes;
            // this runs once, so the leak is one font file.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))?;
            Ok(path)
        })
        .as_ref()
        .map(|_| ())
        .map_err(|message| anyhow!("{message}"))
}

fn find_font() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(FONT_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{FONT_ENV}={} is not a file", path.display()))
        };
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "no TrueType font found for chart text (looked in {}); install one \
                 (`apt-get install -y fonts-dejavu-core`) or set {FONT_ENV} to a .ttf file",
                FONT_CANDIDATES.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [
            0.0, 0.005, 0.0125, 0.25, 1.0, 12.5, 2500.0, 10_000.0, 1e6, 1.5e7,
        ]
        .into_iter()
        .map(tick_label)
        .collect();
        assert_eq!(
            labels,
            ["0", "0.005", "0.0125", "0.25", "1", "12.5", "2.5k", "10k", "1M", "15M"]
        );
    }

    #[test]
    fn log_axis_refuses_zero() {
        assert!(axis_range([0.0, 10.0].into_iter(), true, 1.0).is_err());
        let linear = axis_range([5.0, 10.0].into_iter(), false, 1.0).expect("linear range");
        assert_eq!(linear.start, 0.0);
        assert!(linear.end > 10.0);
    }
}
