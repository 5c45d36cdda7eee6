//! How busy the machine's CPUs were while one side of `bench build` ran, from the kernel's
//! counters in `/proc/stat`: a side that keeps every core busy is bound by the CPU, and no
//! scheduling of its builds can make it faster on that machine. Runs no process.

/// The kernel's CPU time counters summed over all CPUs, in clock ticks: busy and idle.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
}

impl CpuTimes {
    /// The counters now; zero where `/proc/stat` cannot be read (not Linux), which
    /// [`busy_share`] reports as unknown.
    pub fn now() -> CpuTimes {
        std::fs::read_to_string("/proc/stat").ok().and_then(|stat| parse(&stat)).unwrap_or_default()
    }

    /// The share of the CPU time since `earlier` that was not idle, or `None` when nothing
    /// was counted.
    pub fn busy_share(self, earlier: CpuTimes) -> Option<f64> {
        let busy = self.busy.checked_sub(earlier.busy)?;
        let total = busy + self.idle.checked_sub(earlier.idle)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// The first line of `/proc/stat`, `cpu  user nice system idle iowait irq softirq steal ...`
/// (proc(5)): idle is idle and iowait; busy is the rest up to steal, which counts as busy
/// because it is time this machine wanted a CPU and another guest of the host got it. The
/// guest columns after steal are already inside user and nice.
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let &[user, nice, system, idle, iowait, irq, softirq, steal] = fields.as_slice() else { return None };
    Some(CpuTimes { busy: user + nice + system + irq + softirq + steal, idle: idle + iowait })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_everything_but_idle_and_iowait_steal_included() {
        let before = parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let after = parse("cpu  250 10 90 850 50 5 5 40 7 0\n").unwrap();
        // busy: 150 + 10 + 40 + 5 + 5 + 40 = 250 ticks; idle: 50 + 0 = 50 ticks.
        assert_eq!(after.busy_share(before), Some(250.0 / 300.0));
        assert_eq!(before.busy_share(before), None, "nothing counted");
        assert_eq!(before.busy_share(after), None, "counters that went back are no answer");
        assert_eq!(CpuTimes::default().busy_share(CpuTimes::default()), None);
        assert_eq!(parse("intr 1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 3\n"), None, "fewer columns than proc(5) has had since Linux 2.6.11");
    }
}
