//! PNG figures for docs/performance.md: horizontal bars, one per measured case, with the case's
//! target (if it has one) marked across its bar.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

/// The font every figure's text is drawn with (Debian's fonts-dejavu-core, installed by
/// `cargo xtask deps`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: its label, its value, and the target the value should not pass (drawn as a mark).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub target: Option<f64>,
}

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (run `cargo xtask deps`)"))?;
    // The registry keeps fonts for the process's life.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"))
}

/// Draws `bars` into the PNG `path`, titled `title`, values along an axis named `unit`.
pub fn bars(path: &Path, title: &str, unit: &str, bars: &[Bar]) -> anyhow::Result<()> {
    register_font()?;
    let height = 90 + 34 * bars.len() as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    let draw = |e| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let widest = bars.iter().flat_map(|b| [b.value, b.target.unwrap_or(0.0)]).fold(0.0, f64::max);
    let rows = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .build_cartesian_2d(0.0..widest * 1.45, 0.0..rows)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(unit)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(draw)?;
    for (i, bar) in bars.iter().enumerate() {
        // Top to bottom in the given order.
        let row = rows - 1.0 - i as f64;
        let missed = bar.target.is_some_and(|t| bar.value > t);
        let color = if missed { RGBColor(214, 96, 77) } else { RGBColor(67, 147, 195) };
        chart
            .draw_series([Rectangle::new([(0.0, row + 0.2), (bar.value, row + 0.8)], color.filled())])
            .map_err(draw)?;
        if let Some(target) = bar.target {
            chart
                .draw_series(LineSeries::new([(target, row + 0.05), (target, row + 0.95)], BLACK.stroke_width(3)))
                .map_err(draw)?;
        }
        let text = match bar.target {
            Some(t) => {
                format!("{}  {:.2} (target {t}: {})", bar.label, bar.value, if missed { "MISSED" } else { "met" })
            }
            None => format!("{}  {:.2}", bar.label, bar.value),
        };
        chart
            .draw_series([Text::new(
                text,
                (bar.value.max(bar.target.unwrap_or(0.0)) + widest * 0.02, row + 0.65),
                ("sans-serif", 13),
            )])
            .map_err(draw)?;
    }
    root.present().map_err(draw)?;
    Ok(())
}
