//! Prints the delays each jitter strategy gives for the same exponential curve.
//!
//! ```sh
//! cargo run --example backoff
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use palisade::core::backoff::{Backoff, BackoffError, Jitter};

fn main() -> Result<(), BackoffError> {
    let curve = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))?
        .with_max_attempts(NonZeroU32::new(9).expect("nonzero"))
        .with_seed(42);

    println!("exponential from 100 ms, factor 2, cap 5 s, 9 attempts (8 retries):");
    for (name, jitter) in [
        ("none", Jitter::None),
        ("full", Jitter::Full),
        ("equal", Jitter::Equal),
        ("decorrelated", Jitter::Decorrelated),
    ] {
        let delays: Vec<String> = curve
            .with_jitter(jitter)
            .delays()
            .map(|d| format!("{:>5}", d.as_millis()))
            .collect();
        println!("{name:>13} ms: {}", delays.join(" "));
    }
    Ok(())
}
