//! SVG charts (plotters; SVG text needs no font files).

use std::ops::Range;
use std::path::Path;

use anyhow::anyhow;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Every chart here: f64 on both axes, drawn as SVG.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("chart: {e}")
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Latency histogram of one phase (sorted latencies in µs), with p50/p99 markers, like the
/// original analysis's figures. The x axis stops at p99.9 (max is given in the caption).
pub fn latency_histogram(path: &Path, title: &str, lat_us: &[u64]) -> anyhow::Result<()> {
    if lat_us.is_empty() {
        return Ok(());
    }
    let ms = |i: usize| lat_us[i.min(lat_us.len() - 1)] as f64 / 1000.0;
    let pct = |p: f64| ms(((p / 100.0) * lat_us.len() as f64).ceil().max(1.0) as usize - 1);
    let (p50, p99, max) = (pct(50.0), pct(99.0), ms(lat_us.len() - 1));
    let xmax = (pct(99.9) * 1.05).max(0.1);
    let nbins = 60usize;
    let width = xmax / nbins as f64;
    let mut bins = vec![0u64; nbins];
    for &v in lat_us {
        let b = ((v as f64 / 1000.0) / width) as usize;
        if b < nbins {
            bins[b] += 1;
        }
    }
    let ymax = (*bins.iter().max().unwrap_or(&1) as f64 * 1.1).max(1.0);
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{title}: {} requests, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
                lat_us.len()
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("requests")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bins.iter().enumerate().map(|(i, &c)| {
            let x0 = i as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width, c as f64)],
                PALETTE[0].mix(0.8).filled(),
            )
        }))
        .map_err(err)?;
    for (label, x, color) in [("p50", p50, PALETTE[2]), ("p99", p99, PALETTE[3])] {
        if x <= xmax {
            chart
                .draw_series(LineSeries::new(
                    vec![(x, 0.0), (x, ymax)],
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{label} {x:.2} ms"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    // plotters' default place for the legend.
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Grouped bars: one group per label, one bar per series.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    if labels.is_empty() || series.is_empty() {
        return Ok(());
    }
    let ymax = y_top(series);
    let n = labels.len();
    let root = canvas(path)?;
    let mut chart = category_chart(
        &root,
        title,
        -0.5f64..(n as f64 - 0.5),
        ymax,
        labels,
        None,
        y_desc,
    )?;
    let k = series.len() as f64;
    let group = 0.8;
    let bar = group / k;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 - group / 2.0 + si as f64 * bar;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.95, v)], color.filled())
            }))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 - group / 2.0 + si as f64 * bar;
                Text::new(format!("{v:.0}"), (x0, v + ymax * 0.01), ("sans-serif", 12))
            }))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Lines over categorical x positions (e.g. 1, 5, 20, 50, 100 clients).
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xs: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    if xs.is_empty() || series.is_empty() {
        return Ok(());
    }
    let ymax = y_top(series);
    let n = xs.len();
    let root = canvas(path)?;
    let mut chart = category_chart(
        &root,
        title,
        -0.3f64..(n as f64 - 0.7),
        ymax,
        xs,
        Some(x_desc),
        y_desc,
    )?;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let pts: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64, v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|&(x, y)| {
                Text::new(
                    format!("{y:.0}"),
                    (x + 0.03, y + ymax * 0.01),
                    ("sans-serif", 12),
                )
            }))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Lines over a numeric x axis (seconds), one per series; NaN values are gaps.
pub fn time_series(
    path: &Path,
    title: &str,
    y_desc: &str,
    xs: &[f64],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    if xs.is_empty() || series.is_empty() {
        return Ok(());
    }
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1e-9f64, f64::max)
        * 1.1;
    let xmax = xs.iter().copied().fold(1.0f64, f64::max);
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let style = if si == 0 {
            BLACK.stroke_width(3)
        } else {
            color.stroke_width(1)
        };
        // Split at gaps (a process that was not running).
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (&x, &y) in xs.iter().zip(values) {
            if y.is_finite() {
                runs.last_mut().expect("one run").push((x, y));
            } else if !runs.last().expect("one run").is_empty() {
                runs.push(Vec::new());
            }
        }
        for (i, run) in runs.into_iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(run, style))
                .map_err(err)?;
            if i == 0 {
                drawn
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A 900 x 500 SVG canvas with a white background.
fn canvas(path: &Path) -> anyhow::Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

/// The top of the y axis: the largest value, with room for the value labels above it.
fn y_top(series: &[(String, Vec<f64>)]) -> f64 {
    series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15
}

/// A chart whose categories sit at x = 0, 1, ... and are labelled by `labels`; with an x
/// description it is a line chart with a vertical grid, without one a bar chart's groups.
fn category_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x_range: Range<f64>,
    ymax: f64,
    labels: &[String],
    x_desc: Option<&str>,
    y_desc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, 0f64..ymax)
        .map_err(err)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&label)
        .y_desc(y_desc);
    match x_desc {
        Some(d) => mesh.x_desc(d),
        None => mesh.disable_x_mesh(),
    };
    mesh.draw().map_err(err)?;
    Ok(chart)
}

/// The legend box of the labelled series.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
