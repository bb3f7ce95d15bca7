//! The static binaries of `make dist` (musl, x86_64 and arm64): read from
//! their ELF headers, they name no interpreter and no shared library, for the
//! right machine. (That the x86_64 one runs where it is meant to, in a
//! `FROM scratch` carrier and as PID 1 of a container, is tests/container.rs.)
//! And the plain release build's glibc floor, against today's Ray images
//! (Ubuntu 22.04, glibc 2.35).

use std::path::Path;
use std::process::Command;

use crate::util::{dist_bin, free_port, make_var, root};

/// What the kernel and a loader read of an ELF file.
#[derive(Debug, PartialEq)]
struct Elf {
    machine: u16,
    /// PT_INTERP: the loader the kernel would start first.
    interpreter: bool,
    /// DT_NEEDED entries: shared libraries the loader would map.
    needed: usize,
}

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// Parses a 64-bit little-endian ELF file's program headers and dynamic
/// section; anything else is an error that says what it found.
fn read_elf(bytes: &[u8]) -> Result<Elf, String> {
    let u16_at = |o: usize| -> Result<u16, String> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at {o}"))
    };
    let u32_at = |o: usize| -> Result<u32, String> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| format!("truncated at {o}"))
    };
    let u64_at = |o: usize| -> Result<usize, String> {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
            .ok_or_else(|| format!("truncated at {o}"))
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.len() < 64 {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(format!(
            "not 64-bit little-endian (class {}, data {})",
            bytes[4], bytes[5]
        ));
    }
    let machine = u16_at(18)?;
    let (phoff, phentsize, phnum) = (u64_at(32)?, u16_at(54)? as usize, u16_at(56)? as usize);
    let mut elf = Elf {
        machine,
        interpreter: false,
        needed: 0,
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph)? {
            3 => elf.interpreter = true,
            2 => {
                let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
                for e in (off..off + size).step_by(16) {
                    match u64_at(e)? {
                        0 => break,
                        1 => elf.needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(elf)
}

fn assert_static(var: &str, machine: u16) {
    let bin = dist_bin(var);
    let elf = read_elf(&std::fs::read(&bin).unwrap()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        elf,
        Elf {
            machine,
            interpreter: false,
            needed: 0
        },
        "{} is not a static binary for machine {machine}",
        bin.display()
    );
}

#[test]
fn the_dist_binaries_are_static_for_x86_64_and_arm64() {
    assert_eq!(
        make_var("DIST_TARGETS"),
        "x86_64-unknown-linux-musl aarch64-unknown-linux-musl"
    );
    assert_static("DIST_BIN", EM_X86_64);
    assert_static("DIST_BIN_ARM64", EM_AARCH64);
}

#[test]
fn the_elf_reader_sees_a_dynamic_binary() {
    // The test's own binary is dynamically linked by the host's toolchain: the
    // reader must see its loader and libraries, or the check above is hollow.
    let elf = read_elf(&std::fs::read(crate::util::rayhead_bin()).unwrap()).unwrap();
    assert_eq!(elf.machine, EM_X86_64);
    assert!(elf.interpreter, "{elf:?}");
    assert!(elf.needed > 0, "{elf:?}");
    assert!(read_elf(b"#!/bin/sh\n").is_err());
    assert!(read_elf(b"\x7fELF").is_err());
}

#[test]
fn the_static_binary_runs_here() {
    let out = Command::new(dist_bin("DIST_BIN"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rayhead {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The highest `GLIBC_x.y` version among the binary's dynamic symbols.
fn max_glibc(bin: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(bin)
        .output()
        .expect("objdump (binutils)");
    assert!(out.status.success(), "objdump -T {}", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let versions: Vec<(u32, u32)> = text
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .collect();
    assert!(
        !versions.is_empty(),
        "no GLIBC_ symbol versions in {}: is it dynamically linked?",
        bin.display()
    );
    versions.into_iter().max().unwrap()
}

#[test]
fn the_release_binary_needs_glibc_2_35_at_most() {
    // The binary under test is built like the release one, with this
    // machine's glibc; setup.sh builds target/release/rayhead.
    for bin in [
        crate::util::rayhead_bin(),
        root().join("target/release/rayhead"),
    ] {
        assert!(
            bin.exists(),
            "{} is missing: run `make setup` (make test does)",
            bin.display()
        );
        let v = max_glibc(&bin);
        assert!(
            v <= (2, 35),
            "{} needs GLIBC_{}.{}",
            bin.display(),
            v.0,
            v.1
        );
    }
}

/// musl's resolver (the static binary's) and glibc's, against a Kubernetes
/// pod's `resolv.conf`: a search list and `ndots:5`, so that `redis:PORT`
/// and `redis.ns:PORT` (fewer dots than 5: the search list first) are found
/// as `redis.ns.svc.cluster.local`, as are that name and its rooted form. In a network and mount
/// namespace of the test's own: a DNS responder on 127.0.0.1:53 there, a
/// Redis beside it, and that `resolv.conf` bound over `/etc/resolv.conf`.
#[test]
fn both_builds_resolve_a_service_name_through_the_search_list() {
    let dir = crate::util::Dir::new("dist-dns");
    let port = free_port();
    dir.write(
        "resolv.conf",
        "search ns.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 127.0.0.1\noptions ndots:5\n",
    );
    let responder = root().join("tests/data/dns/responder.py");
    let script = format!(
        r#"set -e
ip link set lo up
mount --bind "$D/resolv.conf" /etc/resolv.conf
/usr/bin/python3 {responder} 127.0.0.1 "$D/dns-ready" "$D/dns.log" \
    redis.ns.svc.cluster.local=127.0.0.1 &
redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly yes --dir "$D" \
    --requirepass dns-test-pw >"$D/redis.log" 2>&1 &
until [ -e "$D/dns-ready" ] && redis-cli -p {port} -a dns-test-pw --no-auth-warning ping 2>/dev/null | grep -q PONG; do
  sleep 0.05
done
for bin in "$@"; do
  for name in redis redis.ns redis.ns.svc.cluster.local redis.ns.svc.cluster.local.; do
    echo "== $bin $name"
    RAY_REDIS_ADDRESS=$name:{port} REDIS_PASSWORD=dns-test-pw "$bin" redis-check || echo "exit $?"
  done
done
"#,
        responder = responder.display()
    );
    let script = dir.write("resolve.sh", &script);
    // PID 1 of its own namespace: the responder and Redis die with it.
    let out = dir
        .command("unshare")
        .args([
            "--net",
            "--mount",
            "--pid",
            "--kill-child",
            "--mount-proc",
            "--",
        ])
        .arg_path(Path::new("/bin/sh"))
        .arg_path(&script)
        .arg_path(&dist_bin("DIST_BIN"))
        .arg_path(&crate::util::rayhead_bin())
        .run(std::time::Duration::from_secs(60));
    out.assert_code(0);
    assert!(!out.stdout.contains("exit "), "{}", out.dump());
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.split_whitespace().eq(["verdict", "healthy"]))
            .count(),
        8,
        "{}",
        out.dump()
    );
    let asked = dir.read("dns.log");
    assert!(
        asked.contains("redis.ns.svc.cluster.local 1"),
        "the search list was not used: {asked}"
    );
    // `redis.ns` went through the search list: its first candidate is
    // redis.ns.ns.svc.cluster.local, which NXDOMAIN answers.
    assert!(
        asked.contains("redis.ns.ns.svc.cluster.local 1"),
        "ndots:5 was not applied to redis.ns: {asked}"
    );
}
