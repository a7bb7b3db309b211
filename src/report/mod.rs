//! Reports: PNG line charts of per-round metrics (the self-evolution report's plot).
//!
//! Drawn with plotters' bitmap backend; text goes through ab_glyph with a font compiled into the
//! binary (Ubuntu Light, from `epaint_default_fonts`), so a chart renders the same on a bare
//! machine with no font packages.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: cannot draw the chart: {msg}")]
    Draw { path: String, msg: String },
    #[error("the chart has no data: {0}")]
    Empty(String),
}

/// One line of a chart: a name and `(x, y)` points (`y` as a fraction in [0, 1]; non-finite
/// points are skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid TrueType; an error here would only drop text from the chart.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Draws `series` as a line chart with points, x = round, y in percent (0–100), into a
/// `width × height` PNG at `path`.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    (width, height): (u32, u32),
) -> Result<(), ReportError> {
    register_font();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(ReportError::Empty(title.to_string()));
    }
    let x_min = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_max > x_min {
        (x_min - 0.25, x_max + 0.25)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    let err = |e: &dyn std::fmt::Display| ReportError::Draw {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x_min..x_max, 0f64..100f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("%")
        .x_labels(((x_max - x_min).round() as usize + 1).clamp(2, 12))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| err(&e))?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for (i, s) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (x, 100.0 * y))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_text() {
        let dir = std::env::temp_dir().join(format!("rstar-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        let series = vec![
            Series {
                name: "greedy".into(),
                points: vec![(0.0, 0.1), (1.0, 0.2), (2.0, 0.25)],
            },
            Series {
                name: "mcts".into(),
                points: vec![(0.0, 0.2), (1.0, f64::NAN), (2.0, 0.4)],
            },
        ];
        line_chart_png(&path, "Accuracy per round", "round", &series, (640, 400)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // An empty chart is an error, not a blank image.
        let empty = [Series {
            name: "x".into(),
            points: vec![(0.0, f64::NAN)],
        }];
        assert!(line_chart_png(&dir.join("e.png"), "t", "round", &empty, (100, 100)).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
