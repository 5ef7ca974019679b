//! SVG charts (plotters; SVG text needs no font files).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

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
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
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
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = labels.len();
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(err)?;
    let labels_owned = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels_owned.len() {
                labels_owned[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
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
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = xs.len();
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), 0f64..ymax)
        .map_err(err)?;
    let xs_owned = xs.to_vec();
    chart
        .configure_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < xs_owned.len() {
                xs_owned[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
