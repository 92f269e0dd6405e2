//! The load loop: closed (N workers back to back) or open (a fixed rate; a request the
//! loop fell behind on counts from when it was due, so a stall is not hidden: no
//! coordinated omission), with its progress.

use csai_sidecar::progress::{Progress, Unit};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much load, and how.
#[derive(Clone, Debug)]
pub struct Plan {
    pub concurrency: usize,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many requests, whichever comes first.
    pub requests: Option<u64>,
    /// Requests per second for the open loop; None for the closed loop.
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Latency of every successful request, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Samples {
    /// Adds another run's samples (of the same load) to these.
    pub fn absorb(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.elapsed += other.elapsed;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Completed requests per second.
    pub fn throughput(&self) -> f64 {
        (self.latencies_us.len() as u64 + self.error_count()) as f64
            / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize).max(1);
        self.latencies_us[rank.min(self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

/// Runs `op(i)` for i = 0, 1, 2, ... under `plan`; `label` names the progress line.
pub async fn run<F, Fut>(label: &str, plan: &Plan, op: F) -> Samples
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let limit = plan.requests.unwrap_or(u64::MAX);
    let progress = tokio::spawn(report_progress(
        label.to_string(),
        done.clone(),
        plan.requests,
    ));
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (op, next, done, rate) = (op.clone(), next.clone(), done.clone(), plan.rate);
            tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit {
                        break;
                    }
                    let scheduled = match rate {
                        Some(rate) => started + Duration::from_secs_f64(i as f64 / rate),
                        None => Instant::now(),
                    };
                    if scheduled >= deadline {
                        break;
                    }
                    // A request the loop is behind on counts from when it was due (a stall
                    // delays every later request); one it waited for counts from when it
                    // was sent, so the timer's millisecond granularity adds nothing.
                    let from = if scheduled > Instant::now() {
                        tokio::time::sleep_until(scheduled.into()).await;
                        Instant::now()
                    } else {
                        scheduled
                    };
                    let result = op(i).await;
                    let latency = from.elapsed();
                    match result {
                        Ok(()) => samples.latencies_us.push(latency.as_micros() as u64),
                        Err(kind) => *samples.errors.entry(kind).or_default() += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for worker in workers {
        let samples = worker.await.expect("a bench worker panicked");
        all.latencies_us.extend(samples.latencies_us);
        for (kind, count) in samples.errors {
            *all.errors.entry(kind).or_default() += count;
        }
    }
    all.elapsed = started.elapsed();
    progress.abort();
    let _ = progress.await;
    all.latencies_us.sort_unstable();
    all
}

/// Follows `done` on a bar or in progress lines (src/progress.rs) until aborted, when the
/// bar is cleared.
async fn report_progress(label: String, done: Arc<AtomicU64>, total: Option<u64>) {
    struct FinishOnDrop(Option<Progress>);
    impl Drop for FinishOnDrop {
        fn drop(&mut self) {
            if let Some(progress) = self.0.take() {
                progress.finish();
            }
        }
    }
    let mut progress = FinishOnDrop(Some(Progress::start(label, Unit::Requests, total)));
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        if let Some(progress) = &mut progress.0 {
            progress.set_position(done.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let samples = Samples {
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
            ..Default::default()
        };
        assert_eq!(samples.quantile_ms(0.5), 50.0);
        assert_eq!(samples.quantile_ms(0.99), 99.0);
        assert_eq!(samples.quantile_ms(0.999), 100.0);
        assert_eq!(samples.quantile_ms(0.0), 1.0);
    }

    #[tokio::test]
    async fn the_open_loop_keeps_its_rate_and_counts_errors() {
        let plan = Plan {
            concurrency: 4,
            duration: Duration::from_secs(10),
            requests: Some(50),
            rate: Some(500.0),
        };
        let samples = run("test", &plan, |i| async move {
            if i % 10 == 0 {
                Err("even tens".to_string())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(samples.latencies_us.len(), 45);
        assert_eq!(samples.errors["even tens"], 5);
        // 50 requests at 500/s are scheduled over 98 ms.
        assert!(
            samples.elapsed >= Duration::from_millis(98),
            "{:?}",
            samples.elapsed
        );
    }
}
