// On-CPU workload: main -> hot_rust::worker::rust_hot_spin (the hot leaf).
// Usage: hot_rust [seconds]  (no argument: run forever). Prints "ready" once started.
use std::io::Write;
use std::time::{Duration, Instant};

mod worker {
    use std::hint::black_box;

    #[inline(never)]
    pub fn rust_hot_spin(seed: u64) -> u64 {
        let mut x = seed;
        for _ in 0..1_000_000 {
            // black_box is an optimisation barrier (no call): the loop cannot be folded.
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        }
        x
    }
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").unwrap();
    stdout.flush().unwrap();
    let mut state = 1u64;
    while seconds <= 0.0 || Instant::now() < deadline {
        state = worker::rust_hot_spin(state);
    }
    std::hint::black_box(state);
}
