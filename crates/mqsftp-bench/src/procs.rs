//! Child processes of the benchmark: the release `mqsftp` gateway and device CLI, OpenSSH `sftp`, and peak-RSS
//! sampling from `/proc/PID/status`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How often a process's memory is read.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Samples a process's peak resident set size (`VmHWM`, which the kernel keeps as the high-water mark of `VmRSS`)
/// on a thread until stopped or until the process is gone.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                match peak_rss(pid) {
                    Some(kib) => peak = peak.max(kib),
                    None => break,
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            peak
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling; returns the highest peak seen, in bytes.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0) * 1024
    }
}

/// `max(VmHWM, VmRSS)` of `pid` in KiB, or `None` once the process is gone (or a zombie, which has no memory lines).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    match (field("VmHWM:"), field("VmRSS:")) {
        (Some(a), Some(b)) => Some(u64::max(a, b)),
        (a, b) => a.or(b),
    }
}

/// A gateway process (`mqsftp gateway --config …`), killed and reaped when dropped.
pub struct GatewayProc {
    child: Child,
    rss: Option<RssSampler>,
    log: PathBuf,
}

impl GatewayProc {
    /// Starts the gateway and waits (at most 30 s) until it logs that it is connected to the broker and the store.
    /// `wrap`: a command (and arguments) to run the gateway under, e.g. `valgrind --tool=callgrind`.
    pub fn start(mqsftp: &Path, config: &Path, log: PathBuf, wrap: &[String]) -> anyhow::Result<GatewayProc> {
        let err = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = wrapped(wrap, mqsftp);
        let child = cmd
            .args(["gateway", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {} gateway", mqsftp.display()))?;
        let rss = Some(RssSampler::start(child.id()));
        let mut gw = GatewayProc { child, rss, log };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&gw.log).unwrap_or_default();
            if text.contains("gateway connected") {
                return Ok(gw);
            }
            if let Some(status) = gw.child.try_wait()? {
                bail!("the gateway exited ({status}) before connecting; its log {}:\n{text}", gw.log.display());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the gateway did not connect within 120 s; its log {}:\n{text}", gw.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the gateway (SIGTERM by its PID, as a service manager would, so that a profiler wrapping it writes its
    /// output; SIGKILL after 60 s) and returns its peak RSS in bytes.
    pub fn stop(mut self) -> u64 {
        let peak = self.rss.take().map(RssSampler::finish).unwrap_or(0);
        // A wrapper (`--wrap-gateway`) may not pass the signal on: its children get it too.
        let below = descendants(self.child.id());
        let term = signal("-TERM", self.child.id(), &below);
        if term {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    if below.iter().all(|p| read_stat(*p).is_none()) {
                        return peak;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill_all();
        peak
    }

    /// SIGKILL to the gateway and whatever it (or its wrapper) started, then reaps it.
    fn kill_all(&mut self) {
        let below = descendants(self.child.id());
        signal("-KILL", self.child.id(), &below);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails if the gateway has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!("the gateway died ({status}); end of {}:\n{}", self.log.display(), tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Sends `sig` (`-TERM`, `-KILL`) to `pid` and `others` with kill(1); true when it reached `pid`.
fn signal(sig: &str, pid: u32, others: &[u32]) -> bool {
    // Any of them may have exited meanwhile (the gateway after a SIGTERM, before its final SIGKILL): nothing to say
    // about those.
    let kill = |p: u32| Command::new("kill").args([sig, &p.to_string()]).stderr(Stdio::null()).status();
    let first = kill(pid).is_ok_and(|s| s.success());
    for p in others {
        let _ = kill(*p);
    }
    first
}

/// The processes descended from `pid` (its children, theirs, …), from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let procs = all_procs();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in &procs {
            if p.ppid == parent && !out.contains(&p.pid) {
                out.push(p.pid);
                frontier.push(p.pid);
            }
        }
    }
    out
}

/// Every process `/proc` lists now.
fn all_procs() -> Vec<ProcCpu> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// `program`, or `wrap[0] wrap[1..] program` when a wrapper is given.
pub fn wrapped(wrap: &[String], program: &Path) -> Command {
    match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// What one timed child process did.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// Its peak RSS in bytes.
    pub peak_rss: u64,
    /// CPU seconds it (`client`) and the long-running children (gateway, Mosquitto, sshd) used meanwhile.
    pub cpu: Vec<(String, f64)>,
    /// Their minor page faults meanwhile, by the same names.
    pub faults: Vec<(String, f64)>,
}

/// Runs `cmd` to completion, timing it and sampling its peak RSS; fails with its output when it exits non-zero or
/// takes longer than `limit` (then it is killed).
pub fn run_timed(mut cmd: Command, what: &str, limit: Duration) -> anyhow::Result<Timed> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (cpu_before, faults_before) = (cpu_snapshot(), fault_snapshot());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("start {what}"))?;
    let rss = RssSampler::start(child.id());
    // Drain the pipes on threads, so a chatty child never blocks on a full pipe.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} took longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    let cpu = delta(&cpu_before, &cpu_snapshot());
    let faults = delta(&faults_before, &fault_snapshot());
    let peak_rss = rss.finish();
    let collect = |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (out, err) = (collect(out), collect(err));
    if !status.success() {
        bail!("{what} failed ({status}):\n{out}{err}");
    }
    Ok(Timed { elapsed, peak_rss, cpu, faults })
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The soft limit on open files of this process (children inherit it: Mosquitto and the gateway).
pub fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no open files limit listed")?;
    let soft = line.split_whitespace().nth(3).context("unreadable open files limit")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse().context("unreadable open files limit")? })
}

/// CPU seconds used so far by this process's children, by the name of each direct child (`mosquitto`, `sshd`,
/// `mqsftp` for the gateway), each including its own descendants, plus `"client"`: the children already reaped
/// (the device CLI and `sftp` runs). Differences of two snapshots say who worked how much during a transfer.
pub fn cpu_snapshot() -> Vec<(String, f64)> {
    let tick = clock_ticks_per_second();
    snapshot(|p| (p.own / tick, p.children / tick))
}

/// Minor page faults so far, by the same names as [`cpu_snapshot`]: each one a page the kernel had to map (and
/// zero) when the process first touched it.
pub fn fault_snapshot() -> Vec<(String, f64)> {
    snapshot(|p| (p.faults, p.children_faults))
}

/// `of(process)` = (its own, its reaped children's), summed by the direct child of ours each process descends from.
fn snapshot(of: impl Fn(&ProcCpu) -> (f64, f64)) -> Vec<(String, f64)> {
    let me = std::process::id();
    let procs = all_procs();
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut add = |name: &str, v: f64| match out.iter_mut().find(|(n, _)| n == name) {
        Some((_, sum)) => *sum += v,
        None => out.push((name.to_string(), v)),
    };
    if let Some(me) = read_stat(me) {
        add("client", of(&me).1);
    }
    for p in &procs {
        // The direct child of ours that `p` descends from (or is).
        let mut cur = p;
        let mut top = None;
        for _ in 0..64 {
            if cur.ppid == me {
                top = Some(cur);
                break;
            }
            match procs.iter().find(|q| q.pid == cur.ppid) {
                Some(parent) => cur = parent,
                None => break,
            }
        }
        if let Some(top) = top {
            let (own, children) = of(p);
            add(&top.comm, own + children);
        }
    }
    out
}

struct ProcCpu {
    pid: u32,
    ppid: u32,
    comm: String,
    /// utime + stime, in clock ticks.
    own: f64,
    /// cutime + cstime (reaped children), in clock ticks.
    children: f64,
    /// minflt: minor page faults.
    faults: f64,
    /// cminflt: minor page faults of reaped children.
    children_faults: f64,
}

fn read_stat(pid: u32) -> Option<ProcCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): minflt is field 10, cminflt 11, utime 14, stime 15, cutime 16, cstime 17.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    Some(ProcCpu {
        pid,
        ppid: field(4)? as u32,
        comm,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
        faults: field(10)?,
        children_faults: field(11)?,
    })
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) this process has used so far, its reaped children not included: what the
/// in-process rumqttc publisher and subscriber of the broker run cost.
pub fn own_cpu() -> f64 {
    read_stat(std::process::id()).map_or(0.0, |me| me.own / clock_ticks_per_second())
}

/// `after - before`, by name.
pub fn delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(0.0, |(_, v)| *v);
            (n.clone(), a - b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let me = read_stat(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.ppid > 0);
        assert!(!me.comm.is_empty());
        assert!(peak_rss(std::process::id()).unwrap() > 0);
        assert!(read_stat(u32::MAX).is_none());
        assert!(open_files_limit().unwrap() > 0);
        assert!(me.faults > 0.0, "this process has touched memory");
    }

    #[test]
    fn a_reaped_child_s_page_faults_count_for_the_client() {
        let client = |s: &[(String, f64)]| s.iter().find(|(n, _)| n == "client").map_or(0.0, |(_, v)| *v);
        let before = fault_snapshot();
        // dd touches its 16 MiB buffer: 4,096 pages of 4 KiB (fewer only if huge pages back it, but never fewer
        // than the ~70 that starting any program costs).
        let status = Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"]).output().unwrap();
        assert!(status.status.success());
        let faults = client(&delta(&before, &fault_snapshot()));
        assert!(faults >= 50.0, "{faults} page faults counted for dd");
    }

    #[test]
    fn descendants_are_found_through_a_wrapper() {
        // sh (the "wrapper") starts sleep (the "gateway"): both are found below this process.
        let mut child = Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let started = Instant::now();
        let below = loop {
            let below = descendants(child.id());
            if !below.is_empty() || started.elapsed() > Duration::from_secs(5) {
                break below;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(below.len(), 1, "the sleep under the shell: {below:?}");
        assert!(descendants(std::process::id()).contains(&child.id()));
        assert!(descendants(below[0]).is_empty());
        signal("-KILL", child.id(), &below);
        child.wait().unwrap();
        let gone = Instant::now();
        while read_stat(below[0]).is_some_and(|s| s.ppid != 1) && gone.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(descendants(child.id()).is_empty());
    }

    #[test]
    fn a_childs_cpu_and_memory_are_measured() {
        // A child that burns some CPU: it shows up under "client" once the child is reaped.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]);
        let t = run_timed(cmd, "sh", Duration::from_secs(60)).unwrap();
        let client = t.cpu.iter().find(|(n, _)| n == "client").map(|(_, v)| *v).unwrap();
        assert!(client > 0.05, "{:?}", t.cpu);
        assert!(t.elapsed > Duration::ZERO);
        assert!(t.peak_rss > 0);
    }

    #[test]
    fn a_failing_child_is_an_error_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo nope >&2; exit 3"]);
        let e = run_timed(cmd, "sh", Duration::from_secs(10)).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("sh failed"), "{e}");
    }
}
