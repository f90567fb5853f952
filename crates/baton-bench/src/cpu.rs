//! CPU time, read from `/proc`: how much the members of a cluster used and
//! how busy the whole machine was while a workload ran. On a small machine
//! both systems' throughput at many clients is bounded by CPU, so the CPU a
//! cycle costs, measured for both in the same minutes, says which system
//! does more with the same machine.

use std::time::Duration;

/// CPU time (user + system) process `pid` has used so far; `None` if it is
/// gone or `/proc` is unreadable.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = process_ticks(&stat)?;
    Some(ticks_to_duration(ticks))
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
fn process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses itself; the fields after its last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The whole machine's CPU time so far, over all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Ticks not idle and not waiting for I/O (time the hypervisor stole
    /// counts as busy: it was not there to use).
    busy: u64,
    /// All ticks.
    total: u64,
}

impl MachineCpu {
    /// Reads `/proc/stat`; `None` if it is unreadable.
    pub fn now() -> Option<MachineCpu> {
        parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of the machine's CPU time that was busy between `earlier`
    /// and `self` (0.0 to 1.0); `None` if no time passed.
    pub fn busy_since(&self, earlier: &MachineCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq
/// softirq steal …` (guest time is already inside user time).
fn parse_machine(stat: &str) -> Option<MachineCpu> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(MachineCpu {
        busy: total - idle,
        total,
    })
}

/// A cluster's CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    /// CPU time its members have used so far.
    pub members: Duration,
    /// The whole machine's CPU time so far.
    pub machine: MachineCpu,
}

impl CpuReading {
    /// What was used between `earlier` and `self`; `None` if no time
    /// passed.
    pub fn since(&self, earlier: &CpuReading) -> Option<CpuUse> {
        Some(CpuUse {
            members: self.members.saturating_sub(earlier.members),
            machine_busy: self.machine.busy_since(&earlier.machine)?,
        })
    }
}

/// What a cluster used while a workload ran.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// CPU time of all its members together.
    pub members: Duration,
    /// The share of the whole machine that was busy (all processes,
    /// including the benchmark's own clients).
    pub machine_busy: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_line_is_read_past_its_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 2000000 3000 18446744073709551615";
        assert_eq!(process_ticks(stat), Some(1234 + 567));
        assert_eq!(process_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn the_machine_line_counts_idle_and_iowait_as_not_busy() {
        let stat = "cpu  100 5 20 800 50 0 10 15 7 0\ncpu0 50 2 10 400 25 0 5 7 3 0\n";
        let cpu = parse_machine(stat).expect("parsed");
        assert_eq!(cpu.total, 100 + 5 + 20 + 800 + 50 + 10 + 15);
        assert_eq!(cpu.busy, 100 + 5 + 20 + 10 + 15);
        let later = MachineCpu {
            busy: cpu.busy + 30,
            total: cpu.total + 40,
        };
        assert_eq!(later.busy_since(&cpu), Some(0.75));
        assert_eq!(cpu.busy_since(&later), None);
        assert_eq!(cpu.busy_since(&cpu), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let before = process_cpu(std::process::id()).expect("readable");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spins until a clock tick lands on it (however busy the machine).
        while process_cpu(std::process::id()).expect("readable") == before {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no CPU time counted"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }
}
