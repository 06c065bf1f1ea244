//! The report: a table on the terminal, CSV and JSON files, SVG plots, and
//! the machine it was measured on.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::workloads::Measurement;

/// Where and when the run happened.
#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub filesystem: String,
    pub device: String,
    pub date_utc: String,
    pub command: String,
    /// The memory limit of this process's cgroup, where one is set (what
    /// `scripts/in-memory-limit.sh` sets: the kernel's page cache counts).
    pub memory_limit: Option<u64>,
}

impl Machine {
    pub fn probe(dir: &Path) -> Machine {
        let (device, filesystem) = mount_of(dir);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            filesystem,
            device,
            date_utc: date_utc(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            memory_limit: memory_limit(),
        }
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), or `None` when unlimited or unknown.
fn memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let limit = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = match controllers {
            "" => format!("/sys/fs/cgroup{path}/memory.max"),
            c if c.split(',').any(|c| c == "memory") => format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
            _ => return None,
        };
        std::fs::read_to_string(file).ok()?.trim().parse::<u64>().ok()
    })?;
    // v1 says "unlimited" with a page-rounded i64::MAX.
    (limit < 1 << 60).then_some(limit)
}

/// The device and file system type of the mount holding `dir`.
fn mount_of(dir: &Path) -> (String, String) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best = (0, String::new(), String::new());
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 3 && dir.starts_with(fields[1]) && fields[1].len() >= best.0 {
            best = (fields[1].len(), fields[0].to_owned(), fields[2].to_owned());
        }
    }
    (best.1, best.2)
}

fn date_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// One row as written to CSV and JSON.
#[derive(Serialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub threads: usize,
    pub ops_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub syncs_per_second: Option<f64>,
    pub batch_avg: Option<f64>,
    pub megabytes_per_second: Option<f64>,
    pub seconds: f64,
    /// ops/s divided by the group-commit loop's in the same workload and thread count.
    pub vs_loop: Option<f64>,
    /// ops/s divided by the inline baseline's in the same workload and thread count.
    pub vs_inline: Option<f64>,
    /// ops/s divided by ringkv-syscall's in the same workload and thread count.
    pub vs_ringkv_syscall: Option<f64>,
}

pub fn rows(measurements: &[Measurement]) -> Vec<Row> {
    let ops = |system: &str, m: &Measurement| {
        measurements
            .iter()
            .find(|o| o.system == system && o.workload == m.workload && o.threads == m.threads)
            .map(|o| m.ops_per_second / o.ops_per_second)
    };
    measurements
        .iter()
        .map(|m| Row {
            workload: m.workload.to_owned(),
            system: m.system.clone(),
            threads: m.threads,
            ops_per_second: m.ops_per_second,
            p50_us: m.latency_us.value_at_quantile(0.50),
            p99_us: m.latency_us.value_at_quantile(0.99),
            p999_us: m.latency_us.value_at_quantile(0.999),
            max_us: m.latency_us.max(),
            syncs_per_second: m.syncs_per_second,
            batch_avg: m.batch_avg,
            megabytes_per_second: m.megabytes_per_second,
            seconds: m.seconds,
            vs_loop: ops("group-loop", m),
            vs_inline: ops("inline", m),
            vs_ringkv_syscall: ops("ringkv-syscall", m),
        })
        .collect()
}

/// Columns: CSV name, table heading, table width (negative: left-aligned).
const COLUMNS: [(&str, &str, i32); 15] = [
    ("workload", "workload", -8),
    ("system", "system", -22),
    ("threads", "thr", 3),
    ("ops_per_second", "ops/s", 11),
    ("p50_us", "p50_us", 8),
    ("p99_us", "p99_us", 8),
    ("p999_us", "p99.9_us", 9),
    ("max_us", "max_us", 8),
    ("syncs_per_second", "syncs/s", 9),
    ("batch_avg", "batch", 6),
    ("megabytes_per_second", "MB/s", 7),
    ("seconds", "secs", 5),
    ("vs_loop", "x_loop", 7),
    ("vs_inline", "x_inl", 7),
    ("vs_ringkv_syscall", "x_sysc", 7),
];

/// A row's values as text in column order: rounded for the table, precise
/// for CSV; a missing value is `missing`.
fn cells(r: &Row, precise: bool, missing: &str) -> [String; 15] {
    let num = |v: f64, table_digits: usize| {
        let digits = if precise { 3 } else { table_digits };
        format!("{v:.digits$}")
    };
    let opt = |v: Option<f64>, table_digits: usize| v.map_or_else(|| missing.to_owned(), |v| num(v, table_digits));
    [
        r.workload.clone(),
        r.system.clone(),
        r.threads.to_string(),
        num(r.ops_per_second, 0),
        r.p50_us.to_string(),
        r.p99_us.to_string(),
        r.p999_us.to_string(),
        r.max_us.to_string(),
        opt(r.syncs_per_second, 0),
        opt(r.batch_avg, 1),
        opt(r.megabytes_per_second, 1),
        num(r.seconds, 1),
        opt(r.vs_loop, 2),
        opt(r.vs_inline, 2),
        opt(r.vs_ringkv_syscall, 2),
    ]
}

fn table_cells<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let padded: Vec<String> = values
        .zip(COLUMNS)
        .map(|(v, (_, _, width))| {
            let w = width.unsigned_abs() as usize;
            if width < 0 {
                format!("{v:<w$}")
            } else {
                format!("{v:>w$}")
            }
        })
        .collect();
    padded.join(" ")
}

pub fn table_header() -> String {
    table_cells(COLUMNS.iter().map(|(_, heading, _)| *heading))
}

pub fn table_line(r: &Row) -> String {
    let cells = cells(r, false, "-");
    table_cells(cells.iter().map(String::as_str))
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = COLUMNS.iter().map(|(name, _, _)| *name).collect::<Vec<_>>().join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&cells(r, true, "").join(","));
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct Json<'a> {
    machine: &'a Machine,
    setup: Vec<(&'static str, &'static str)>,
    rows: &'a [Row],
}

pub fn json(machine: &Machine, rows: &[Row]) -> String {
    serde_json::to_string_pretty(&Json { machine, setup: crate::systems::setup_notes(), rows }).expect("serialisable")
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(systems: &[&str], system: &str) -> RGBColor {
    COLORS[systems.iter().position(|s| *s == system).unwrap_or(0) % COLORS.len()]
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Commits/s against writer threads, one line per system.
pub fn plot_throughput(path: &Path, measurements: &[Measurement], systems: &[&str]) -> PlotResult {
    let commit: Vec<&Measurement> = measurements.iter().filter(|m| m.workload == "commit").collect();
    let max_ops = commit.iter().map(|m| m.ops_per_second).fold(1.0, f64::max);
    let max_threads = commit.iter().map(|m| m.threads).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("durable commits/s vs writer threads (16 B keys, 100 B values)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max_threads * 1.2).log_scale(), 0f64..max_ops * 1.1)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("writer threads")
        .y_desc("commits/s")
        .draw()?;
    for system in systems {
        let points: Vec<(f64, f64)> =
            commit.iter().filter(|m| m.system == *system).map(|m| (m.threads as f64, m.ops_per_second)).collect();
        if points.is_empty() {
            continue;
        }
        let c = color(systems, system);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(*system)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Latency CDF (log-scale latency) of the commit workload at `threads`.
pub fn plot_cdf(path: &Path, measurements: &[Measurement], systems: &[&str], threads: usize) -> PlotResult {
    let runs: Vec<&Measurement> =
        measurements.iter().filter(|m| m.workload == "commit" && m.threads == threads).collect();
    let max_us = runs.iter().map(|m| m.latency_us.value_at_quantile(0.9999)).max().unwrap_or(10).max(10) as f64;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("commit latency CDF, {threads} writer(s)"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..max_us * 1.5).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of commits")
        .draw()?;
    for m in runs {
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|i| {
                let q = f64::from(i) / 400.0 * 0.9999;
                (m.latency_us.value_at_quantile(q).max(1) as f64, q)
            })
            .collect();
        let c = color(systems, &m.system);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(m.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes CSV, JSON and plots into `out`; returns the files written.
pub fn write_all(
    out: &Path,
    machine: &Machine,
    measurements: &[Measurement],
    rows: &[Row],
    systems: &[&str],
) -> Vec<PathBuf> {
    std::fs::create_dir_all(out).expect("report dir");
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        files.push(path);
    };
    write("results.csv", csv(rows));
    write("results.json", json(machine, rows));
    let plots: Vec<(String, PlotResult)> = {
        let mut plots = Vec::new();
        let path = out.join("commit_throughput.svg");
        plots.push((path.display().to_string(), plot_throughput(&path, measurements, systems)));
        let threads: Vec<usize> = measurements.iter().filter(|m| m.workload == "commit").map(|m| m.threads).collect();
        let (lo, hi) = (threads.iter().copied().min(), threads.iter().copied().max());
        for t in [lo, hi].into_iter().flatten().collect::<std::collections::BTreeSet<_>>() {
            let path = out.join(format!("commit_latency_cdf_{t}.svg"));
            plots.push((path.display().to_string(), plot_cdf(&path, measurements, systems, t)));
        }
        plots
    };
    for (path, result) in plots {
        match result {
            Ok(()) => files.push(PathBuf::from(path)),
            Err(e) => eprintln!("plot {path}: {e}"),
        }
    }
    files
}
