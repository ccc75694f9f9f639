//! Charts of expert load, written as PNG and SVG (plotters): per-layer load heatmaps, MaxVio
//! curves, window-variance curves with the phase switch, predicted vs actual load.
//!
//! Text needs a TrueType font: the first of `BURN_MOE_FONT` and the usual system locations
//! (DejaVu Sans, Liberation Sans, Arial) that exists is used; without one the charts are drawn
//! without text and a warning says so. Files are written to a temporary name and renamed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{MoeError, Result};
use crate::telemetry::loads::LayerLoads;

const SIZE: (u32, u32) = (1000, 560);
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once; false when none was found (charts then carry no text).
fn text_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let candidates = std::env::var("BURN_MOE_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        log::warn!("no TrueType font found (set BURN_MOE_FONT): charts are drawn without text");
        false
    })
}

/// One line of a line chart.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points; a non-finite point starts a new piece of line.
    pub points: Vec<(f64, f64)>,
}

/// Mean of the trailing `window` values at each point (fewer at the start): readable curves
/// from noisy steps. `x` is kept.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// A line chart: title, axis names, lines, optional vertical marker, log-scale y.
pub struct LineChart {
    /// Title.
    pub title: String,
    /// X axis name.
    pub x_label: String,
    /// Y axis name.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
    /// A vertical line `(x, label)`, e.g. the phase switch.
    pub marker: Option<(f64, String)>,
    /// Logarithmic y axis (values <= 0 are dropped).
    pub log_y: bool,
}

fn err(path: &Path, e: impl std::fmt::Display) -> MoeError {
    MoeError::Io(format!("drawing {}: {e}", path.display()))
}

/// Writes `stem.png` and `stem.svg`; returns their paths.
fn write_both(
    stem: &Path,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> std::result::Result<(), String>,
    draw_svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> std::result::Result<(), String>,
) -> Result<Vec<PathBuf>> {
    let name = stem
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| MoeError::Io(format!("bad chart path {}", stem.display())))?;
    let png = stem.with_file_name(format!("{name}.png"));
    let svg = stem.with_file_name(format!("{name}.svg"));
    let tmp_png = stem.with_file_name(format!(".{name}.tmp.png"));
    let tmp_svg = stem.with_file_name(format!(".{name}.tmp.svg"));
    draw_png(BitMapBackend::new(&tmp_png, SIZE).into_drawing_area()).map_err(|e| err(&png, e))?;
    draw_svg(SVGBackend::new(&tmp_svg, SIZE).into_drawing_area()).map_err(|e| err(&svg, e))?;
    for (tmp, out) in [(&tmp_png, &png), (&tmp_svg, &svg)] {
        std::fs::rename(tmp, out).map_err(|e| err(out, e))?;
    }
    Ok(vec![png, svg])
}

/// Draws `chart` to `stem.png` and `stem.svg`.
pub fn line_chart(stem: &Path, chart: &LineChart) -> Result<Vec<PathBuf>> {
    write_both(stem, |a| draw_lines(a, chart), |a| draw_lines(a, chart))
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &LineChart,
) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Debug| format!("{x:?}");
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let keep = |y: f64| y.is_finite() && (!chart.log_y || y > 0.0);
    let points = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| keep(p.1));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return root.present().map_err(|x| e(&x));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let text = text_enabled();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(&chart.title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let colors = |i: usize| Palette99::pick(i).to_rgba();
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            let mut mesh = ctx.configure_mesh();
            if text {
                mesh.x_desc(chart.x_label.as_str())
                    .y_desc(chart.y_label.as_str())
                    .x_label_formatter(&|x| tick_label(*x))
                    .y_label_formatter(&|y| tick_label(*y));
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(|x| e(&x))?;
            for (i, s) in chart.series.iter().enumerate() {
                // A non-finite point breaks the line into separate pieces.
                let pieces: Vec<Vec<(f64, f64)>> = s
                    .points
                    .split(|p| !keep(p.1) || !p.0.is_finite())
                    .filter(|piece| !piece.is_empty())
                    .map(<[(f64, f64)]>::to_vec)
                    .collect();
                let color = colors(i);
                for (n, piece) in pieces.into_iter().enumerate() {
                    let drawn = ctx
                        .draw_series(LineSeries::new(piece, color.stroke_width(2)))
                        .map_err(|x| e(&x))?;
                    if text && n == 0 {
                        drawn.label(s.label.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    }
                }
            }
            if let Some((x, label)) = &chart.marker {
                let line = vec![(*x, y0), (*x, y1)];
                let drawn = ctx
                    .draw_series(LineSeries::new(line, BLACK.stroke_width(2)))
                    .map_err(|x| e(&x))?;
                if text {
                    drawn.label(label.as_str()).legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2))
                    });
                }
            }
            if text {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|x| e(&x))?;
            }
        }};
    }
    if chart.log_y {
        body!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|x| e(&x))?
        );
    } else {
        body!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|x| e(&x))?
        );
    }
    root.present().map_err(|x| e(&x))
}

/// An axis label with three significant digits and no trailing zeros (`0.7`, not
/// `0.7000000000000001`; `100`, not `100.0`).
fn tick_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// Heatmap of a layer's relative expert load (`proportion * experts`, 1 = balanced) over steps,
/// averaged into at most 500 step bins.
pub fn load_heatmap(stem: &Path, layer: &LayerLoads, title: &str) -> Result<Vec<PathBuf>> {
    write_both(
        stem,
        |a| draw_heatmap(a, layer, title),
        |a| draw_heatmap(a, layer, title),
    )
}

fn heat_color(relative: f64) -> RGBColor {
    // 0 (idle) dark blue -> 1 (balanced) white -> 3+ (hot) dark red.
    let lerp = |a: f64, b: f64, t: f64| (a + (b - a) * t.clamp(0.0, 1.0)) as u8;
    if relative <= 1.0 {
        RGBColor(
            lerp(20.0, 255.0, relative),
            lerp(40.0, 255.0, relative),
            lerp(140.0, 255.0, relative),
        )
    } else {
        let t = (relative - 1.0) / 2.0;
        RGBColor(
            lerp(255.0, 150.0, t),
            lerp(255.0, 10.0, t),
            lerp(255.0, 20.0, t),
        )
    }
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    layer: &LayerLoads,
    title: &str,
) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Debug| format!("{x:?}");
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (n, m) = (layer.len(), layer.experts);
    if n == 0 {
        return root.present().map_err(|x| e(&x));
    }
    let bins = n.min(500);
    let text = text_enabled();
    let (first, last) = (layer.steps[0] as f64, layer.steps[n - 1] as f64 + 1.0);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut ctx = builder
        .build_cartesian_2d(first..last, 0.0..m as f64)
        .map_err(|x| e(&x))?;
    let mut mesh = ctx.configure_mesh();
    mesh.disable_mesh();
    if text {
        mesh.x_desc("step").y_desc("expert");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;
    let mut cells = Vec::with_capacity(bins * m);
    for b in 0..bins {
        let (lo, hi) = (b * n / bins, ((b + 1) * n / bins).max(b * n / bins + 1));
        let x0 = layer.steps[lo] as f64;
        let x1 = if hi < n { layer.steps[hi] as f64 } else { last };
        for j in 0..m {
            let mean = (lo..hi).map(|t| layer.row(t)[j] as f64).sum::<f64>() / (hi - lo) as f64;
            let color = heat_color(mean * m as f64);
            cells.push(Rectangle::new(
                [(x0, j as f64), (x1, j as f64 + 1.0)],
                color.filled(),
            ));
        }
    }
    ctx.draw_series(cells).map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        for (v, want) in [
            (0.7000000000000001, "0.7"),
            (0.09, "0.09"),
            (0.123456, "0.123"),
            (7.0, "7"),
            (2.5, "2.5"),
            (100.0, "100"),
            (1234.6, "1235"),
            (-0.25, "-0.25"),
            (0.0, "0"),
        ] {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }

    #[test]
    fn moving_average_matches_a_plain_loop() {
        let pts: Vec<(f64, f64)> = (1..=20).map(|s| (s as f64, ((s * 7) % 5) as f64)).collect();
        for w in [0, 1, 3, 8, 50] {
            let got = moving_average(&pts, w);
            assert_eq!(got.len(), pts.len());
            for (i, &(x, y)) in got.iter().enumerate() {
                let lo = (i + 1).saturating_sub(w.max(1));
                let want = pts[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - lo) as f64;
                assert_eq!(x, pts[i].0);
                assert!((y - want).abs() < 1e-12, "w {w} i {i}: {y} vs {want}");
            }
        }
    }
}
