//! Rate caps (`--max-upload`, `--max-download`): a token bucket shared by
//! every session of one direction, and the parser for `20M`-style rates.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Parses a rate in bytes per second: a number with an optional K, M or G
/// suffix (powers of 1024), an optional `B`, `/s` or `iB` after it.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .trim_end_matches("/s")
        .trim_end_matches('b')
        .trim_end_matches('i');
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("'{s}' is not a rate: use bytes per second such as 500K, 20M or 1G")
    })?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("'{s}' is not a rate above zero"));
    }
    let bytes = v * mult as f64;
    if bytes > 1e15 {
        return Err(format!("'{s}' is too large a rate"));
    }
    Ok((bytes as u64).max(1))
}

/// A token bucket in bytes; `None` rate means unlimited.
#[derive(Debug)]
pub struct RateLimit {
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> Self {
        // Burst of a quarter second (at least one block) keeps the cap smooth.
        let burst = rate
            .map(|r| (r as f64 / 4.0).max(1_048_576.0))
            .unwrap_or(0.0);
        Self {
            rate,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(None)
    }

    fn burst(&self, rate: u64) -> f64 {
        (rate as f64 / 4.0).max(1_048_576.0)
    }

    /// Takes `bytes` from the bucket, sleeping until they are available.
    pub async fn acquire(&self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
            st.0 = (st.0 + elapsed * rate as f64).min(self.burst(rate));
            st.1 = now;
            st.0 -= bytes as f64;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / rate as f64)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert_eq!(parse_rate("1.5MiB/s"), Ok(3 << 19));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5M").is_err());
        assert!(parse_rate("").is_err());
    }

    /// Paused time: the clock moves only by the sleeps, so the figure is
    /// exact and the test takes no time.
    #[tokio::test(start_paused = true)]
    async fn cap_slows_transfers() {
        let limit = RateLimit::new(Some(4 << 20));
        let start = Instant::now();
        // 1 MiB burst free, then 3 MiB at 4 MiB/s: 0.75 s.
        for _ in 0..16 {
            limit.acquire(256 << 10).await;
        }
        let t = start.elapsed();
        assert!(
            t >= Duration::from_millis(740) && t <= Duration::from_millis(760),
            "{t:?}"
        );
        let free = RateLimit::unlimited();
        free.acquire(usize::MAX).await;
    }
}
