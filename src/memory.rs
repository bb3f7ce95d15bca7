//! What the head's memory looks like from inside its container: the
//! container's usage and limit from its cgroup (v2 or v1), and one process's
//! resident set.
//!
//! Why rayhead reads this at all: on Kubernetes with cgroup v2 every process
//! of a container is in one OOM group, so when the GCS grows the container
//! over its limit the kernel kills the whole head. rayhead can restart the
//! GCS in place before that; these readings are what it decides on, and what
//! `/status` and `/metrics` show. Every reading is a few small files: cheap
//! enough for every health interval.

use std::path::{Path, PathBuf};

/// Which cgroup interface the container's memory controller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// The container's memory cgroup, found once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub version: CgroupVersion,
    /// The cgroup's directory.
    pub dir: PathBuf,
    /// The mount's root: v2 limits are looked for up to here.
    root: PathBuf,
}

/// One reading of the container's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerMemory {
    pub version: CgroupVersion,
    /// Bytes charged to the cgroup (v2 `memory.current`, v1
    /// `memory.usage_in_bytes`): what the OOM killer compares to the limit.
    pub usage: u64,
    /// The effective limit, the smallest on the way up; `None`: no limit.
    pub limit: Option<u64>,
    /// OOM kills in the cgroup so far, where the kernel counts them.
    pub oom_kills: Option<u64>,
}

/// A high-water mark for a process's memory: a size, or a share of the
/// container's limit (so one setting fits every head size), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Off,
    Bytes(u64),
    /// Whole percents of a total (the container's memory limit, a volume's
    /// size), 1 to 100.
    PercentOfLimit(u8),
}

impl Mark {
    /// `off`, `N%` of the limit, or a size: whole bytes, or with `KiB`,
    /// `MiB`, `GiB`, `TiB` (or `K`, `M`, `G`, `T`, and Kubernetes' `Ki`,
    /// `Mi`, `Gi`, `Ti`: the same binary units).
    pub fn parse(text: &str) -> Result<Mark, String> {
        let t = text.trim();
        let bad = |why: &str| {
            format!(
                "{:?}: {why}; expected \"off\", a percentage (of the container's memory limit, or of the volume) such as \"50%\", or a size such as \"512MiB\" or \"2GiB\"",
                crate::redact::line(text)
            )
        };
        if t.eq_ignore_ascii_case("off") {
            return Ok(Mark::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(n @ 1..=100) => Ok(Mark::PercentOfLimit(n)),
                _ => Err(bad("a percentage is a whole number from 1 to 100")),
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| bad("not a whole number of bytes"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "Ki" | "KiB" => 10,
            "M" | "Mi" | "MiB" => 20,
            "G" | "Gi" | "GiB" => 30,
            "T" | "Ti" | "TiB" => 40,
            _ => return Err(bad("unknown unit")),
        };
        match n.checked_mul(1 << shift) {
            Some(0) => Err(bad("0 is not a mark; \"off\" turns it off")),
            Some(b) => Ok(Mark::Bytes(b)),
            None => Err(bad("too large")),
        }
    }

    /// The mark in bytes against a container limit; `None`: no mark (off,
    /// or a share of a limit that does not exist).
    pub fn bytes(self, limit: Option<u64>) -> Option<u64> {
        match self {
            Mark::Off => None,
            Mark::Bytes(b) => Some(b),
            // In u128: exact, and no overflow for any limit.
            Mark::PercentOfLimit(p) => limit.map(|l| (u128::from(l) * u128::from(p) / 100) as u64),
        }
    }

    /// The text form `parse` reads back.
    pub fn render(self) -> String {
        match self {
            Mark::Off => "off".into(),
            Mark::PercentOfLimit(p) => format!("{p}%"),
            Mark::Bytes(b) => {
                for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
                    if b % (1 << shift) == 0 {
                        return format!("{}{unit}", b >> shift);
                    }
                }
                b.to_string()
            }
        }
    }
}

/// v1 writes "no limit" as the largest page-aligned i64.
const V1_UNLIMITED: u64 = 1 << 62;

impl Cgroup {
    /// The memory cgroup of this process, from `/proc/self/cgroup` and the
    /// usual mount points; `None` where there is no memory controller.
    pub fn discover() -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::find(&own, Path::new("/sys/fs/cgroup"))
    }

    /// [`Cgroup::discover`] over a `/proc/<pid>/cgroup` text and a cgroup
    /// file system root (a fake tree in tests). A cgroup namespace shows the
    /// container's own cgroup as `/`; without one, the path is the host's,
    /// and the container sees its cgroup mounted at the root: either way the
    /// first of the two that exists is it.
    pub fn find(proc_cgroup: &str, fs: &Path) -> Option<Cgroup> {
        let mut v1 = None;
        let mut v2 = None;
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2 = Some(path);
            } else if controllers.split(',').any(|c| c == "memory") {
                v1 = Some(path);
            }
        }
        let under = |root: &Path, path: &str| {
            let joined = root.join(path.trim_start_matches('/'));
            if joined.is_dir() {
                joined
            } else {
                root.to_path_buf()
            }
        };
        let v2_controllers = std::fs::read_to_string(fs.join("cgroup.controllers")).ok();
        if let (Some(path), Some(c)) = (v2, &v2_controllers) {
            if c.split_whitespace().any(|w| w == "memory") {
                return Some(Cgroup {
                    version: CgroupVersion::V2,
                    dir: under(fs, path),
                    root: fs.to_path_buf(),
                });
            }
        }
        let root = fs.join("memory");
        let path = v1?;
        root.join("memory.usage_in_bytes").exists().then(|| Cgroup {
            version: CgroupVersion::V1,
            dir: under(&root, path),
            root: root.clone(),
        })
    }

    /// Reads the cgroup now; `Err` names the file that could not be read.
    pub fn read(&self) -> Result<ContainerMemory, String> {
        match self.version {
            CgroupVersion::V2 => self.read_v2(),
            CgroupVersion::V1 => self.read_v1(),
        }
    }

    fn read_v2(&self) -> Result<ContainerMemory, String> {
        let usage = read_u64(&self.dir.join("memory.current"))?;
        // The effective limit is the smallest `memory.max` up to the root.
        let mut limit: Option<u64> = None;
        let mut dir = self.dir.as_path();
        loop {
            let f = dir.join("memory.max");
            if f.exists() {
                let text = read(&f)?;
                let text = text.trim();
                if text != "max" {
                    let v = parse_u64(&f, text)?;
                    limit = Some(limit.map_or(v, |l| l.min(v)));
                }
            }
            if dir == self.root {
                break;
            }
            match dir.parent() {
                Some(p) if p.starts_with(&self.root) => dir = p,
                _ => break,
            }
        }
        let oom_kills = std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| field(&t, "oom_kill"));
        Ok(ContainerMemory {
            version: CgroupVersion::V2,
            usage,
            limit,
            oom_kills,
        })
    }

    fn read_v1(&self) -> Result<ContainerMemory, String> {
        let usage = read_u64(&self.dir.join("memory.usage_in_bytes"))?;
        // memory.stat's hierarchical limit takes the ancestors' into account.
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let raw = match field(&stat, "hierarchical_memory_limit") {
            Some(v) => v,
            None => read_u64(&self.dir.join("memory.limit_in_bytes"))?,
        };
        let oom_kills = std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| field(&t, "oom_kill"));
        Ok(ContainerMemory {
            version: CgroupVersion::V1,
            usage,
            limit: (raw < V1_UNLIMITED).then_some(raw),
            oom_kills,
        })
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "{}: not a number: {:?}",
            path.display(),
            crate::redact::line(text)
        )
    })
}

fn read_u64(path: &Path) -> Result<u64, String> {
    parse_u64(path, &read(path)?)
}

/// The value of `name` in a `key value` per line file.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
    })
}

/// A process's resident set in bytes, from `/proc/<pid>/statm`; `None` once
/// it is gone.
pub fn rss(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    rss_from_statm(&text, page_size())
}

fn rss_from_statm(text: &str, page: u64) -> Option<u64> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; a failure returns -1.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const V2_SELF: &str = "0::/kubepods/pod1/ctr\n";

    #[test]
    fn v2_with_a_limit_and_oom_kills() {
        let t = tree(&[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("kubepods/pod1/ctr/memory.current", "104857600\n"),
            ("kubepods/pod1/ctr/memory.max", "536870912\n"),
            (
                "kubepods/pod1/ctr/memory.events",
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            ),
        ]);
        let cg = Cgroup::find(V2_SELF, t.path()).unwrap();
        assert_eq!(cg.version, CgroupVersion::V2);
        let m = cg.read().unwrap();
        assert_eq!(m.usage, 100 << 20);
        assert_eq!(m.limit, Some(512 << 20));
        assert_eq!(m.oom_kills, Some(1));
    }

    #[test]
    fn v2_max_is_no_limit_and_a_parents_limit_counts() {
        let t = tree(&[
            ("cgroup.controllers", "memory\n"),
            ("kubepods/pod1/ctr/memory.current", "1000\n"),
            ("kubepods/pod1/ctr/memory.max", "max\n"),
        ]);
        let m = Cgroup::find(V2_SELF, t.path()).unwrap().read().unwrap();
        assert_eq!(m.limit, None);
        assert_eq!(m.oom_kills, None);
        std::fs::write(t.path().join("kubepods/pod1/memory.max"), "4096\n").unwrap();
        let m = Cgroup::find(V2_SELF, t.path()).unwrap().read().unwrap();
        assert_eq!(m.limit, Some(4096));
    }

    #[test]
    fn v2_in_a_cgroup_namespace_reads_the_root() {
        let t = tree(&[
            ("cgroup.controllers", "memory\n"),
            ("memory.current", "2048\n"),
            ("memory.max", "8192\n"),
        ]);
        // Without a namespace the host's path is shown, and is not mounted.
        for own in ["0::/\n", V2_SELF] {
            let m = Cgroup::find(own, t.path()).unwrap().read().unwrap();
            assert_eq!((m.usage, m.limit), (2048, Some(8192)), "{own}");
        }
    }

    #[test]
    fn v1_with_and_without_a_limit() {
        let own = "12:pids:/x\n4:memory:/kubepods/pod1/ctr\n0::/\n";
        let t = tree(&[
            ("unified/cgroup.procs", ""),
            ("memory/memory.usage_in_bytes", "1\n"),
            ("memory/kubepods/pod1/ctr/memory.usage_in_bytes", "3000\n"),
            (
                "memory/kubepods/pod1/ctr/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "memory/kubepods/pod1/ctr/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
        ]);
        let cg = Cgroup::find(own, t.path()).unwrap();
        assert_eq!(cg.version, CgroupVersion::V1);
        let m = cg.read().unwrap();
        assert_eq!((m.usage, m.limit, m.oom_kills), (3000, None, Some(2)));
        std::fs::write(
            t.path().join("memory/kubepods/pod1/ctr/memory.stat"),
            "cache 0\nhierarchical_memory_limit 1048576\n",
        )
        .unwrap();
        assert_eq!(cg.read().unwrap().limit, Some(1 << 20));
    }

    #[test]
    fn no_memory_controller_is_none_and_garbage_is_an_error() {
        let t = tree(&[("cgroup.controllers", "cpu io\n")]);
        assert_eq!(Cgroup::find("0::/\n", t.path()), None);
        assert_eq!(Cgroup::find("", t.path()), None);
        assert_eq!(Cgroup::find("garbage\n:::\n", t.path()), None);
        let t = tree(&[
            ("cgroup.controllers", "memory\n"),
            ("memory.current", "lots\n"),
        ]);
        let e = Cgroup::find("0::/\n", t.path())
            .unwrap()
            .read()
            .unwrap_err();
        assert!(
            e.contains("memory.current") && e.contains("not a number"),
            "{e}"
        );
    }

    #[test]
    fn marks_parse_and_render() {
        for (text, mark) in [
            ("off", Mark::Off),
            ("OFF", Mark::Off),
            ("50%", Mark::PercentOfLimit(50)),
            (" 100% ", Mark::PercentOfLimit(100)),
            ("512MiB", Mark::Bytes(512 << 20)),
            ("2G", Mark::Bytes(2 << 30)),
            ("4096", Mark::Bytes(4096)),
            ("3KiB", Mark::Bytes(3 << 10)),
            ("512Mi", Mark::Bytes(512 << 20)),
            ("1TiB", Mark::Bytes(1 << 40)),
        ] {
            assert_eq!(Mark::parse(text), Ok(mark), "{text}");
            assert_eq!(Mark::parse(&mark.render()), Ok(mark), "{text}");
        }
        for bad in [
            "",
            "0",
            "0MiB",
            "0%",
            "101%",
            "-5%",
            "1.5GiB",
            "5PiB",
            "x",
            "%",
            "MiB",
            "99999999999999999999",
            "18446744073709551615GiB",
            "5 0MiB",
            "\r",
            "50%%",
        ] {
            let e = Mark::parse(bad).unwrap_err();
            assert!(e.contains("expected \"off\""), "{bad:?}: {e}");
        }
        assert_eq!(Mark::PercentOfLimit(50).bytes(Some(1000)), Some(500));
        assert_eq!(Mark::PercentOfLimit(50).bytes(None), None);
        assert_eq!(Mark::Bytes(7).bytes(None), Some(7));
        assert_eq!(Mark::Off.bytes(Some(7)), None);
        assert_eq!(
            Mark::PercentOfLimit(100).bytes(Some(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(Mark::PercentOfLimit(50).bytes(Some(1 << 30)), Some(1 << 29));
    }

    #[test]
    fn statm_gives_resident_bytes() {
        assert_eq!(
            rss_from_statm("1000 250 10 1 0 100 0\n", 4096),
            Some(250 * 4096)
        );
        assert_eq!(rss_from_statm("", 4096), None);
        assert_eq!(rss_from_statm("1 x", 4096), None);
        assert_eq!(rss_from_statm("1 18446744073709551615", 4096), None);
        assert!(rss(std::process::id() as i32).is_some_and(|b| b > 0));
        assert_eq!(rss(-1), None);
    }
}
