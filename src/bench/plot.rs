//! Charts of benchmark runs, drawn as SVG text with `plotters` (no fonts or system libraries: the
//! SVG names a generic `sans-serif` font and the viewer draws the text).
//!
//! Three pictures:
//!
//! - [`run_chart`]: one run of `mini-etcd bench`: latency percentiles (p50, p99, p99.9) over the run,
//!   in time buckets, above the run's latency distribution.
//! - [`distribution_chart`]: the latency distributions of several runs on one set of axes (for
//!   example etcd and mini-etcd loaded the same way), as the share of requests per latency bucket.
//! - [`ratio_chart`]: throughput ratios B/A per workload, in groups (for example one member and
//!   three members), with marks at 1x and 2x.
//!
//! Latency buckets are logarithmic (ten per decade) because request latencies span decades; a
//! bucket's share is drawn at its geometric middle. Percentiles use the nearest-rank rule, like the
//! summary the run prints. Nothing here reads the clock or the network: the functions take numbers
//! and return the SVG document, so they are tested on fixed inputs.

use plotters::prelude::*;

/// One measured request: when it finished (nanoseconds since the run began) and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Completion time, nanoseconds after the measured phase began.
    pub at_ns: u64,
    /// Latency in nanoseconds.
    pub latency_ns: u64,
}

/// A plotting failure (plotters reports drawing errors through its backend's error type).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

fn err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError(format!("{e:?}"))
}

/// Palette: distinguishable in print and for the common colour-vision deficiencies (Okabe-Ito).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// Buckets per decade of the latency distribution.
const PER_DECADE: f64 = 10.0;

/// Nearest-rank percentile of sorted `v` (`p` in 0..=1); `None` if `v` is empty.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

/// Share of samples per logarithmic latency bucket: `(bucket middle in ms, share)`, in order.
pub fn distribution(latencies_ns: &[u64]) -> Vec<(f64, f64)> {
    if latencies_ns.is_empty() {
        return Vec::new();
    }
    // Bucket i covers [10^(i/10), 10^((i+1)/10)) microseconds; below 1 µs counts as bucket 0.
    let bucket = |ns: u64| -> i64 {
        let us = (ns as f64 / 1e3).max(1.0);
        (us.log10() * PER_DECADE).floor() as i64
    };
    let mut counts = std::collections::BTreeMap::<i64, u64>::new();
    for &ns in latencies_ns {
        *counts.entry(bucket(ns)).or_insert(0) += 1;
    }
    let total = latencies_ns.len() as f64;
    let (Some(&lo), Some(&hi)) = (counts.keys().next(), counts.keys().next_back()) else {
        return Vec::new();
    };
    // Empty buckets inside the range are drawn as zero, so the line falls to the axis between modes.
    (lo..=hi)
        .map(|i| {
            let mid_us = 10f64.powf((i as f64 + 0.5) / PER_DECADE);
            let share = counts.get(&i).copied().unwrap_or(0) as f64 / total;
            (mid_us / 1e3, share)
        })
        .collect()
}

/// One time window of a run: its end in seconds, then p50, p99 and p99.9 in ms.
pub type Window = (f64, f64, f64, f64);

/// Percentiles per time window, `windows` windows of equal length (empty ones left out).
pub fn percentiles_over_time(samples: &[Sample], windows: usize) -> Vec<Window> {
    let Some(end) = samples.iter().map(|s| s.at_ns).max() else {
        return Vec::new();
    };
    let windows = windows.max(1) as u64;
    // `end / width < windows`, so the last sample falls in the last window.
    let width = end / windows + 1;
    let mut per: Vec<Vec<u64>> = vec![Vec::new(); windows as usize];
    for s in samples {
        per[(s.at_ns / width).min(windows - 1) as usize].push(s.latency_ns);
    }
    per.into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .filter_map(|(i, mut v)| {
            v.sort_unstable();
            let ms = |p| percentile(&v, p).map(|ns| ns as f64 / 1e6);
            Some((
                ((i as u64 + 1) * width) as f64 / 1e9,
                ms(0.50)?,
                ms(0.99)?,
                ms(0.999)?,
            ))
        })
        .collect()
}

/// The series' names in a box at the upper right, as every chart here shows them.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<(), PlotError>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// A positive log-axis range that holds every value of `values`, with some room.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.01..1.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// One run: percentiles over time above the latency distribution. `title` names the run.
pub fn run_chart(title: &str, samples: &[Sample]) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let (upper, lower) = root.split_vertically(340);

        let series = percentiles_over_time(samples, 60);
        let t_end = series.last().map_or(1.0, |s| s.0).max(1e-3);
        let y_top = series.iter().map(|s| s.3).fold(0.0f64, f64::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(&upper)
            .caption("latency over the run", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..t_end, 0f64..y_top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("latency (ms)")
            .draw()
            .map_err(err)?;
        for (i, name) in ["p50", "p99", "p99.9"].into_iter().enumerate() {
            let color = COLORS[i];
            let pick = |w: &Window| [w.1, w.2, w.3][i];
            chart
                .draw_series(LineSeries::new(
                    series.iter().map(|s| (s.0, pick(s))),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)?;

        let latencies: Vec<u64> = samples.iter().map(|s| s.latency_ns).collect();
        draw_distribution(&lower, "latency distribution", &[("requests", &latencies)])?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Several runs' latency distributions on one set of axes.
pub fn distribution_chart(title: &str, runs: &[(&str, &[u64])]) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_distribution(&root, title, runs)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_distribution<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    runs: &[(&str, &[u64])],
) -> Result<(), PlotError> {
    let dists: Vec<Vec<(f64, f64)>> = runs.iter().map(|(_, l)| distribution(l)).collect();
    let x = log_range(dists.iter().flatten().map(|p| p.0));
    let top = dists
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x.log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("share of requests")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(err)?;
    for (i, ((name, lat), dist)) in runs.iter().zip(&dists).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = lat.to_vec();
        sorted.sort_unstable();
        let p99 = percentile(&sorted, 0.99).map_or(0.0, |ns| ns as f64 / 1e6);
        chart
            .draw_series(LineSeries::new(dist.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name} (p99 {p99:.2} ms)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart)?;
    Ok(())
}

/// Throughput ratios B/A: one bar per workload, in labelled groups (for example "1 member",
/// "3 members"), with lines at 1x (as fast as A) and 2x.
pub fn ratio_chart(
    title: &str,
    groups: &[(&str, Vec<(String, f64)>)],
) -> Result<String, PlotError> {
    let workloads: Vec<String> = {
        let mut w: Vec<String> = Vec::new();
        for (_, rows) in groups {
            for (name, _) in rows {
                if !w.contains(name) {
                    w.push(name.clone());
                }
            }
        }
        w
    };
    let top = groups
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| x.1))
        .fold(2.0f64, f64::max)
        * 1.15;
    let slots = workloads.len().max(1) as f64;
    let ng = groups.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..slots, 0f64..top)
            .map_err(err)?;
        let names = workloads.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(workloads.len() * 2 + 1)
            .x_label_formatter(&move |v| {
                let i = v.floor() as usize;
                if (v - v.floor() - 0.5).abs() < 1e-6 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("throughput B/A")
            .y_label_formatter(&|v| format!("{v:.1}x"))
            .draw()
            .map_err(err)?;
        let bar = 0.8 / ng;
        for (g, (label, rows)) in groups.iter().enumerate() {
            let color = COLORS[g % COLORS.len()];
            chart
                .draw_series(rows.iter().filter_map(|(name, r)| {
                    let i = workloads.iter().position(|w| w == name)? as f64;
                    let x0 = i + 0.1 + g as f64 * bar;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + bar * 0.9, *r)],
                        color.filled(),
                    ))
                }))
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart
                .draw_series(rows.iter().filter_map(|(name, r)| {
                    let i = workloads.iter().position(|w| w == name)? as f64;
                    let x = i + 0.1 + (g as f64 + 0.45) * bar;
                    Some(Text::new(
                        format!("{r:.2}"),
                        (x - 0.04, *r + top * 0.035),
                        ("sans-serif", 12).into_font(),
                    ))
                }))
                .map_err(err)?;
        }
        for (level, style) in [(1.0, BLACK.stroke_width(1)), (2.0, RED.stroke_width(1))] {
            chart
                .draw_series(LineSeries::new([(0.0, level), (slots, level)], style))
                .map_err(err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// What `mini-etcd bench --samples` writes and `mini-etcd plot latency` reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleFile {
    /// The run's name.
    pub label: String,
    /// Completion times, nanoseconds after the measured phase began.
    pub at_ns: Vec<u64>,
    /// Latencies in nanoseconds, in the order of `at_ns`.
    pub latency_ns: Vec<u64>,
}

impl SampleFile {
    /// The file for `samples`, named `label`.
    pub fn new(label: String, samples: &[Sample]) -> SampleFile {
        SampleFile {
            label,
            at_ns: samples.iter().map(|s| s.at_ns).collect(),
            latency_ns: samples.iter().map(|s| s.latency_ns).collect(),
        }
    }
}

/// `mini-etcd plot`: charts from saved runs.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// What to draw.
    #[command(subcommand)]
    pub chart: PlotChart,
}

/// The charts `mini-etcd plot` draws.
#[derive(Debug, clap::Subcommand)]
pub enum PlotChart {
    /// Latency distributions of runs saved with `mini-etcd bench --samples`, on one set of axes.
    Latency {
        /// The sample files, one per run.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The SVG file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "latency distribution")]
        title: String,
    },
    /// Throughput B/A per workload from `bench-vs-etcd` results (`results.jsonl`), medians over the
    /// repetitions; one group of bars per `LABEL=FILE`.
    Ratios {
        /// `LABEL=results.jsonl`, for example `"3 members=results/…/results.jsonl"`.
        #[arg(long = "group", required = true, value_name = "LABEL=FILE")]
        groups: Vec<String>,
        /// Only rows of this storage (`tmpfs`, `disk`).
        #[arg(long)]
        storage: Option<String>,
        /// The SVG file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "throughput, B/A")]
        title: String,
    },
}

/// Median B/A requests per second per workload, in the order workloads first appear in `jsonl`
/// (`bench-vs-etcd`'s records: `role` A or B, `workload`, `storage`, `ok`, `rps`).
pub fn ratios_from_results(
    jsonl: &str,
    storage: Option<&str>,
) -> Result<Vec<(String, f64)>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut rps: std::collections::HashMap<(String, String), Vec<f64>> = Default::default();
    for (n, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if storage.is_some_and(|s| v["storage"].as_str() != Some(s)) || v["ok"] != true {
            continue;
        }
        let (Some(role), Some(workload), Some(r)) = (
            v["role"].as_str(),
            v["workload"].as_str(),
            v["rps"].as_f64(),
        ) else {
            continue;
        };
        if !order.iter().any(|w| w == workload) {
            order.push(workload.to_string());
        }
        rps.entry((workload.to_string(), role.to_string()))
            .or_default()
            .push(r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut out = Vec::new();
    for w in order {
        let a = rps.get_mut(&(w.clone(), "A".into())).map(&median);
        let b = rps.get_mut(&(w.clone(), "B".into())).map(&median);
        if let (Some(a), Some(b)) = (a, b) {
            if a > 0.0 {
                out.push((w, b / a));
            }
        }
    }
    Ok(out)
}

/// Entry point of `mini-etcd plot`.
pub fn main(args: &PlotArgs) -> std::process::ExitCode {
    match draw(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mini-etcd plot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn draw(args: &PlotArgs) -> Result<(), String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let (svg, out) = match &args.chart {
        PlotChart::Latency { files, out, title } => {
            let mut runs = Vec::new();
            for f in files {
                let file: SampleFile = serde_json::from_str(&read(f)?)
                    .map_err(|e| format!("{}: not a --samples file: {e}", f.display()))?;
                runs.push(file);
            }
            let refs: Vec<(&str, &[u64])> = runs
                .iter()
                .map(|r| (r.label.as_str(), r.latency_ns.as_slice()))
                .collect();
            (distribution_chart(title, &refs), out)
        }
        PlotChart::Ratios {
            groups,
            storage,
            out,
            title,
        } => {
            let mut bars = Vec::new();
            for g in groups {
                let (label, file) = g
                    .split_once('=')
                    .ok_or_else(|| format!("--group {g:?}: expected LABEL=FILE"))?;
                let ratios =
                    ratios_from_results(&read(std::path::Path::new(file))?, storage.as_deref())
                        .map_err(|e| format!("{file}: {e}"))?;
                if ratios.is_empty() {
                    return Err(format!("{file}: no workload with results for both A and B"));
                }
                bars.push((label, ratios));
            }
            (ratio_chart(title, &bars), out)
        }
    };
    let svg = svg.map_err(|e| e.to_string())?;
    std::fs::write(out, svg).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: u64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                at_ns: i * 1_000_000,
                latency_ns: 1_000_000 + (i % 10) * 100_000,
            })
            .collect()
    }

    #[test]
    fn distribution_shares_sum_to_one_and_buckets_are_ordered() {
        let lat: Vec<u64> = samples(1000).iter().map(|s| s.latency_ns).collect();
        let d = distribution(&lat);
        let sum: f64 = d.iter().map(|p| p.1).sum();
        assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
        // 1.0 ms to 1.9 ms lies in the buckets around 1 ms to 2 ms.
        assert!(d.first().is_some_and(|p| p.0 > 0.9 && p.0 < 1.2), "{d:?}");
        assert!(d.last().is_some_and(|p| p.0 > 1.7 && p.0 < 2.1), "{d:?}");
        assert!(distribution(&[]).is_empty());
    }

    #[test]
    fn percentiles_over_time_follow_a_slow_phase() {
        // The second half of the run is ten times slower.
        let mut s = samples(1000);
        for x in &mut s[500..] {
            x.latency_ns *= 10;
        }
        let p = percentiles_over_time(&s, 10);
        assert_eq!(p.len(), 10);
        assert!(p[0].1 < 2.0 && p[9].1 > 10.0, "{p:?}");
        assert!(p.iter().all(|w| w.1 <= w.2 && w.2 <= w.3));
        assert!(percentiles_over_time(&[], 10).is_empty());
    }

    #[test]
    fn charts_are_svg_documents_naming_their_series() {
        let s = samples(200);
        let svg = run_chart("put on test", &s).expect("run chart");
        assert!(svg.starts_with("<svg") && svg.contains("p99.9") && svg.contains("put on test"));
        let lat: Vec<u64> = s.iter().map(|x| x.latency_ns).collect();
        let svg = distribution_chart("d", &[("etcd", &lat), ("mini-etcd", &lat)]).expect("dist");
        assert!(svg.contains("etcd (p99") && svg.contains("mini-etcd (p99"));
        let svg = ratio_chart("r", &[("3 members", vec![("put-64c".into(), 2.5)])]).expect("ratio");
        assert!(svg.contains("3 members") && svg.contains("2.50") && svg.contains("put-64c"));
        // Empty input still draws (empty axes), never panics.
        run_chart("empty", &[]).expect("empty run chart");
    }

    #[test]
    fn ratios_are_medians_of_b_over_medians_of_a() {
        let rows = [
            r#"{"role":"A","workload":"put-64c","storage":"tmpfs","ok":true,"rps":100.0}"#,
            r#"{"role":"A","workload":"put-64c","storage":"tmpfs","ok":true,"rps":300.0}"#,
            r#"{"role":"A","workload":"put-64c","storage":"tmpfs","ok":true,"rps":200.0}"#,
            r#"{"role":"B","workload":"put-64c","storage":"tmpfs","ok":true,"rps":500.0}"#,
            r#"{"role":"B","workload":"put-64c","storage":"tmpfs","ok":false,"rps":1.0}"#,
            r#"{"role":"B","workload":"put-64c","storage":"disk","ok":true,"rps":9.0}"#,
            r#"{"role":"A","workload":"put-64c","storage":"disk","ok":true,"rps":3.0}"#,
            r#"{"role":"A","workload":"range-1c","storage":"tmpfs","ok":true,"rps":3.0}"#,
        ]
        .join("\n");
        let r = ratios_from_results(&rows, Some("tmpfs")).expect("parse");
        assert_eq!(r, vec![("put-64c".to_string(), 2.5)]);
        let r = ratios_from_results(&rows, Some("disk")).expect("parse");
        assert_eq!(r, vec![("put-64c".to_string(), 3.0)]);
        assert!(ratios_from_results("{not json", None).is_err());
    }

    #[test]
    fn sample_files_round_trip() {
        let f = SampleFile::new("x".into(), &samples(3));
        let back: SampleFile =
            serde_json::from_str(&serde_json::to_string(&f).expect("encode")).expect("decode");
        assert_eq!(back, f);
    }
}
