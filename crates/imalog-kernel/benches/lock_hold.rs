//! How long `A`, `D` and `N` hold the list mutex, next to two designs that
//! were not merged, and what that does to measurements running at the same
//! time.
//!
//! Usage: `cargo bench -p imalog-kernel --bench lock_hold -- [SIZES...]`
//! (default sizes 10000 100000 1000000 10000000).
//!
//! For each list size the bench builds a kernel on a software TPM with
//! sha1 and sha256 banks and fills it with that many buffer measurements,
//! then times, in this order:
//!
//! - `N` of half the list, walking with the mutex held (the trimming
//!   proposals), then refills the list;
//! - `N` of half the list, staging, walking and splicing back with the
//!   mutex held (the March 2026 v3 series), then refills;
//! - `N` of half the list as merged (walk without the mutex, O(1) cut),
//!   then refills;
//! - `A`, then `D` of the whole staged list, with resident memory read
//!   before and after `D`.
//!
//! A second thread measures a new buffer every 50 µs (20,000 per second)
//! while each operation runs. The bench reports the p99, p99.9 and maximum
//! latency of the measurements that started while the operation ran (walks
//! and frees outside the mutex included), next to a baseline of the 30 ms
//! before it. An operation that ends before the next measurement starts has
//! no samples.
//!
//! Resident memory is read on a quiet kernel: the list is refilled to its
//! size, staged, and deleted with `D`, with no load running; then again
//! after `Ima::release_free_memory`, which calls glibc's `malloc_trim`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use imalog_core::Bank;
use imalog_kernel::{Ima, KernelConfig};
use imalog_tpm::SoftTpm;

/// Time between two measurements of the load thread.
const LOAD_INTERVAL: Duration = Duration::from_micros(50);

fn kernel() -> Ima {
    let mut tpm = SoftTpm::new(&[Bank::SHA1, Bank::SHA256]).expect("banks are supported");
    tpm.simulate_boot(b"bench");
    let config = KernelConfig { measure_critical_data: false, ..KernelConfig::default() };
    Ima::cold_boot(config, Some(Box::new(tpm))).expect("kernel boots")
}

/// Appends `count` distinct buffer measurements.
fn fill(ima: &Ima, count: u64, tag: &str) {
    for i in 0..count {
        let name = format!("bench-{tag}-{i}");
        ima.measure_buffer(name.as_bytes(), &i.to_le_bytes(), None).expect("measurement appended");
    }
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A thread that measures unique buffers until stopped, recording when each
/// measurement started and how long it took.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(ima: &Arc<Ima>, tag: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let (ima, stop_flag, sink) = (Arc::clone(ima), Arc::clone(&stop), Arc::clone(&samples));
        let handle = thread::spawn(move || {
            let mut local = Vec::with_capacity(1 << 20);
            let mut i = 0u64;
            let mut next = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                // Spin to the next slot: sleeping is too coarse for 50 µs.
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
                next += LOAD_INTERVAL;
                let name = format!("load-{tag}-{i}");
                let started = Instant::now();
                let _ = ima.measure_buffer(name.as_bytes(), &i.to_le_bytes(), None);
                local.push((started, started.elapsed()));
                i += 1;
            }
            if let Ok(mut samples) = sink.lock() {
                samples.extend(local);
            }
        });
        Load { stop, samples, handle: Some(handle) }
    }

    fn finish(mut self) -> Vec<(Instant, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        std::mem::take(&mut *self.samples.lock().expect("sample lock"))
    }
}

fn percentile(latencies: &mut [Duration], fraction: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let index = ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[index]
}

/// Latencies of the measurements that started in `[from, to]`.
#[derive(Clone, Copy)]
struct Window {
    count: usize,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn window(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Window {
    let mut latencies: Vec<Duration> =
        samples.iter().filter(|(started, _)| *started >= from && *started <= to).map(|(_, l)| *l).collect();
    let max = latencies.iter().copied().max().unwrap_or_default();
    Window {
        count: latencies.len(),
        p99: percentile(&mut latencies, 0.99),
        p999: percentile(&mut latencies, 0.999),
        max,
    }
}

impl Window {
    fn render(&self) -> String {
        if self.count == 0 {
            return "none started".into();
        }
        format!("{} / {} / {}", micros(self.p99), micros(self.p999), micros(self.max))
    }
}

struct OpResult {
    name: &'static str,
    held: Duration,
    elapsed: Duration,
    during: Window,
    baseline: Window,
}

/// Runs `op` while the load thread measures; returns the mutex hold time
/// `op` reports and the latency windows.
fn timed(ima: &Arc<Ima>, name: &'static str, op: impl FnOnce(&Ima) -> Duration) -> OpResult {
    let load = Load::start(ima, name);
    thread::sleep(Duration::from_millis(40));
    let op_start = Instant::now();
    let held = op(ima);
    let op_end = Instant::now();
    thread::sleep(Duration::from_millis(5));
    let samples = load.finish();
    let baseline_start = op_start.checked_sub(Duration::from_millis(30)).unwrap_or(op_start);
    OpResult {
        name,
        held,
        elapsed: op_end - op_start,
        during: window(&samples, op_start, op_end),
        baseline: window(&samples, baseline_start, op_start),
    }
}

fn micros(duration: Duration) -> String {
    let us = duration.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2}")
    } else {
        format!("{us:.0}")
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000, 10_000_000] } else { sizes };

    println!(
        "| records | operation | mutex held (µs) | operation took (µs) | measurements during | \
         latency during: p99 / p99.9 / max (µs) | before: p99 / p99.9 / max (µs) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut memory = Vec::new();
    for size in sizes {
        let ima = Arc::new(kernel());
        fill(&ima, size, "initial");
        let half = size / 2;
        let mut results = Vec::new();

        results.push(timed(&ima, "N, walk under the mutex", |ima| {
            ima.delete_first_locked_walk_variant(half).expect("enough records")
        }));
        fill(&ima, half, "refill-1");
        results.push(timed(&ima, "N, v3 stage and splice", |ima| {
            ima.delete_first_v3_variant(half).expect("enough records")
        }));
        fill(&ima, half, "refill-2");
        results.push(timed(&ima, "N, merged", |ima| {
            ima.delete_first(half).expect("enough records");
            ima.last_command_lock_hold()
        }));
        fill(&ima, half, "refill-3");
        results.push(timed(&ima, "A", |ima| {
            ima.stage().expect("current list not empty");
            ima.last_command_lock_hold()
        }));
        results.push(timed(&ima, "D", |ima| {
            ima.delete_staged().expect("staged list not empty");
            ima.last_command_lock_hold()
        }));
        for result in results {
            println!(
                "| {size} | {} | {} | {} | {} | {} | {} |",
                result.name,
                micros(result.held),
                micros(result.elapsed),
                result.during.count,
                result.during.render(),
                result.baseline.render(),
            );
        }

        // Memory, with no load: refill to `size`, stage and delete.
        let current = ima.counters().current;
        fill(&ima, size.saturating_sub(current), "memory");
        ima.stage().expect("current list not empty");
        let staged = ima.counters().staged;
        let before = resident_kib();
        ima.delete_staged().expect("staged list not empty");
        let after = resident_kib();
        ima.release_free_memory();
        let released = resident_kib();
        memory.push((size, staged, before, after, released, ima.htable_len()));
    }
    println!();
    println!(
        "| records | deleted by D | RSS before D (MiB) | after D (MiB) | after release_free_memory (MiB) | \
         hash table keys kept |"
    );
    println!("|---|---|---|---|---|---|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (size, staged, before, after, released, keys) in memory {
        println!("| {size} | {staged} | {:.1} | {:.1} | {:.1} | {keys} |", mib(before), mib(after), mib(released));
    }
}
