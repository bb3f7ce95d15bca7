//! Property tests: every parser of outside input gets arbitrary input and
//! never panics, and a secret never survives redaction. Outside input is
//! config (file, env, `--set`), KubeRay's start command and its
//! `--system-config`, Redis addresses and INFO answers, `/proc` and cgroup
//! files, child output, and HTTP answers and request lines.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use crate::config::keys::KEYS;
use crate::config::{Config, FlagValue, Inputs};
use crate::state::{Snapshot, State};

/// Text a user might type, and text no one would.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[0-9a-z:./@ -]{0,30}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| format!("{n}s")),
        Just("584542046090years".to_string()),
        Just(String::new()),
    ]
}

/// A word of anything but whitespace: arbitrary Unicode, with the
/// characters the redactor looks at made common.
fn word() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{0,12}", "[-'\"=:@/,{}a-z]{0,12}",]
        .prop_map(|w| w.chars().filter(|c| !c.is_whitespace()).collect())
}

/// One or more whitespace characters of any kind, as a line may hold them.
fn separator() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            ' ', '\t', '\r', '\n', '\u{a0}', '\u{2028}', '\u{85}', '\u{3000}', '\u{b}',
        ]),
        1..3,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// A secret that cannot appear in text by chance.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{12,24}".prop_map(|s| format!("Zq{s}"))
}

/// Whether a config error names `key` (or the file, for file syntax).
fn names(err: &crate::config::ConfigError, key: &str, file: &str) -> bool {
    err.0.iter().all(|p| !p.message.is_empty())
        && err.0.iter().any(|p| p.key == key || p.key.contains(file))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_value_of_any_key_loads_or_names_the_key(k in 0..KEYS.len(), v in text(), via in 0..3u8) {
        let key = KEYS[k];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let mut env: HashMap<String, String> = HashMap::new();
        let mut flags = Vec::new();
        let mut path = None;
        match via {
            0 => { env.insert(key.env_name(), v.clone()); }
            1 => flags.push(FlagValue { key: key.name.into(), value: v.clone(), flag: "--set".into() }),
            _ => {
                let quoted = toml::Value::String(v.clone()).to_string();
                std::fs::write(&file, format!("[{}]\n{} = {quoted}\n", key.section(), key.leaf())).unwrap();
                path = Some(file.clone());
            }
        }
        match Config::load(&Inputs { file: path, flags }, &env) {
            Ok(cfg) => { let _ = cfg.render(); }
            Err(e) => prop_assert!(names(&e, key.name, "c.toml"), "{e}"),
        }
    }

    #[test]
    fn any_toml_value_of_any_key_loads_or_names_the_key(k in 0..KEYS.len(), n in any::<i64>(), b in any::<bool>()) {
        let key = KEYS[k];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let value = if b { n.to_string() } else { format!("[{n}, \"x\"]") };
        std::fs::write(&file, format!("[{}]\n{} = {value}\n", key.section(), key.leaf())).unwrap();
        let env: HashMap<String, String> = HashMap::new();
        if let Err(e) = Config::load(&Inputs { file: Some(file), flags: vec![] }, &env) {
            prop_assert!(names(&e, key.name, "c.toml"), "{e}");
        }
    }

    #[test]
    fn the_start_command_splitter_never_panics(t in prop_oneof![any::<String>(), "\\PC{0,80}", "[$'\"\\\\{}() a-z\\n]{0,40}"], v in text()) {
        let env = [("REDIS_PASSWORD", v.as_str())];
        let _ = crate::ray::command::from_text(&t, &env);
        let _ = crate::config::value::split_command(&t);
    }

    #[test]
    fn config_values_parse_or_say_why(t in prop_oneof![any::<String>(), text()], k in 0..KEYS.len()) {
        use crate::config::keys::EnvUnit;
        use crate::config::value::parse_text;
        let kind = KEYS[k].kind;
        for unit in [EnvUnit::Plain, EnvUnit::Seconds, EnvUnit::Milliseconds] {
            if let Err(e) = parse_text(kind, unit, &t) {
                prop_assert!(!e.is_empty());
            }
        }
    }

    #[test]
    fn addresses_with_any_password_never_show_it(
        host in "[a-z]{1,10}",
        port in any::<u16>(),
        pw in (secret(), "[/?#@:,=%]{0,3}", secret()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        form in 0..9u8,
        junk in "\\PC{0,8}",
    ) {
        let text = match form {
            0 => format!("redis://u:{pw}@{host}:{port}"),
            1 => format!("rediss://{pw}@{host}{junk}"),
            2 => format!("redis://:{pw}@[::1]:{port},b:1"),
            3 => format!("a:1,redis://:{pw}@{host}:{port}"),
            4 => format!("redis://:{pw}@{junk}"),
            // The `@` forgotten: the password where the host or port goes.
            5 => format!("redis://:{pw}"),
            6 => format!("redis://u:{pw}"),
            7 => format!("{host}:{pw}"),
            _ => format!("{junk}://:{pw}@{host}:{port}"),
        };
        // Cut at the comma Ray cuts a list at, each part is a secret: none
        // of the halves may show.
        let parts: Vec<&str> = pw.split(',').filter(|p| p.len() >= 4).collect();
        let shown = match crate::redis::address::parse(&text) {
            Ok(a) => format!("{a} {a:?}"),
            Err(e) => e,
        };
        for p in parts {
            prop_assert!(!shown.contains(p), "{text:?} -> {shown}");
        }
        // Free text needs a scheme and an `@` to tell a password.
        if text.contains("://") && text.contains('@') {
            prop_assert!(!crate::redact::line(&text).contains(&pw));
        }
    }

    #[test]
    fn any_http_answer_is_read_without_a_panic(raw in prop::collection::vec(any::<u8>(), 0..300), length in any::<u64>()) {
        let _ = crate::http_client::parse_answer(&raw);
        let mut with_length = format!("HTTP/1.0 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
        with_length.extend_from_slice(&raw);
        for bytes in [&raw, &with_length] {
            let read = crate::http_client::read_answer(&mut std::io::Cursor::new(bytes)).unwrap();
            prop_assert!(read.len() <= bytes.len());
            let _ = crate::http_client::parse_answer(&read);
        }
    }

    #[test]
    fn any_proc_stat_is_read_without_a_panic(raw in prop::collection::vec(any::<u8>(), 0..100), comm in prop::collection::vec(any::<u8>(), 0..20), pid in 1..i32::MAX) {
        let _ = crate::sys::proctree::parse_stat(&raw);
        let _ = crate::sys::proctree::split_nul(&raw);
        // Whatever a process calls itself, it is seen.
        let mut stat = format!("{pid} (").into_bytes();
        stat.extend_from_slice(&comm);
        stat.extend_from_slice(b") S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42");
        let p = crate::sys::proctree::parse_stat(&stat);
        prop_assert_eq!(p.map(|p| (p.pid.as_raw(), p.start)), Some((pid, 42)));
    }

    #[test]
    fn redis_addresses_never_panic_nor_show_their_password(t in prop_oneof![any::<String>(), "\\PC{0,60}"], host in "[a-z]{1,10}", port in any::<u16>(), pw in secret()) {
        let _ = crate::redis::address::parse(&t);
        for form in [format!("redis://u:{pw}@{host}:{port}"), format!("rediss://{pw}@{host}:{port}/0"), format!("redis://:{pw}@[::1]:{port},b:1")] {
            if let Ok(a) = crate::redis::address::parse(&form) {
                prop_assert!(!a.to_string().contains(&pw), "{a}");
            }
        }
    }

    #[test]
    fn no_secret_survives_redaction(
        words in prop::collection::vec(word(), 0..6),
        seps in prop::collection::vec(separator(), 8),
        pw in secret(),
        opt in "(redis[-_]password|passwd|token|secret|x-credential|REDIS_PASSWORD)",
        form in 0..14u8,
        quote in "['\"]?",
    ) {
        let s = |i: usize| seps[i % seps.len()].as_str();
        let q = quote.as_str();
        let placed = match form {
            0 => format!("{q}--{opt}={pw}{q}"),
            1 => format!("{q}--{opt}{q}{}{q}{pw}{q}", s(0)),
            2 => format!("{q}redis://user:{pw}@h:1/0{q}"),
            3 => format!("rediss://{pw}@h:6379"),
            4 => format!("{q}{}={pw}{q}", opt.to_uppercase().replace('-', "_")),
            5 => format!("--worker_command=python w.py --{opt}={pw} -Dray.{opt}={pw} x"),
            6 => format!("-{opt}={pw}"),
            // The tail of a quoted value.
            7 => format!("--{opt}='{pw}{}{pw}'{}x", s(1), s(2)),
            8 => format!("{{\"{opt}\":{}\"{pw}{}{pw}\", \"port\": 1}}", s(3), s(4)),
            9 => format!("redis-server{}--port 1 --requirepass{}{pw}{}--masterauth {pw}", s(5), s(6), s(7)),
            10 => format!("/usr/bin/redis-cli -h h{}-a{}{pw} ping", s(0), s(1)),
            11 => format!("redis://:{pw}@a:1,rediss://u:{pw}@b:2"),
            12 => format!("redis://:{pw}/{pw}==@127.0.0.1"),
            _ => format!("{{'{opt}': '{pw}'}}"),
        };
        let mut line = String::new();
        for (i, w) in words.iter().enumerate() {
            line.push_str(w);
            line.push_str(s(i));
        }
        line.push_str(&placed);
        line.push_str(s(7));
        line.push_str("tail");
        let got = crate::redact::line(&line);
        prop_assert!(!got.contains(&pw), "{line:?} -> {got:?}");
        let quoted = format!("'{line}'");
        prop_assert!(!crate::redact::line(&quoted).contains(&pw));
        // As an argv: cut at whitespace as a shell would, and whole.
        let argv: Vec<&str> = line.split(char::is_whitespace).filter(|w| !w.is_empty()).collect();
        let got = crate::redact::command_line(&argv);
        prop_assert!(!got.contains(&pw), "{argv:?} -> {got:?}");
        let got = crate::redact::command_line(&["sh", "-c", &line]);
        prop_assert!(!got.contains(&pw), "{line:?} -> {got:?}");
    }

    #[test]
    fn the_redactor_takes_any_text(t in any::<String>(), u in "(\\PC|[\r\n\t\u{a0}\u{2028}'\"=:@/, -]){0,200}") {
        for t in [&t, &u] {
            let _ = crate::redact::line(t);
            let _ = crate::redact::url(t);
            let words: Vec<&str> = t.split(' ').collect();
            prop_assert_eq!(crate::redact::argv(&words).len(), words.len());
        }
    }

    #[test]
    fn any_request_line_is_answered_without_a_panic(method in "[A-Z]{0,8}", target in "\\PC{0,60}") {
        let snaps = [
            Snapshot::command(),
            Snapshot::ray_head("127.0.0.1:1".into(), Some("redis://h:1".into())),
        ];
        for snap in &snaps {
            let state = State::new(snap.clone());
            let reply = crate::probe::routes::route(&method, &target, &state.get(), Instant::now(), Duration::from_secs(30));
            prop_assert!([200, 404, 405, 503].contains(&reply.status), "{}", reply.status);
        }
    }

    #[test]
    fn any_system_config_resolves_or_names_it(t in prop_oneof![any::<String>(), "\\{\"gcs_storage(_path)?\": ?\\PC{0,20}\\}"], rocksdb in any::<bool>()) {
        let env: HashMap<String, String> = match rocksdb {
            true => [("RAY_gcs_storage".to_string(), "rocksdb".to_string())].into(),
            false => HashMap::new(),
        };
        let cfg = Config::load(&Inputs::default(), &HashMap::<String, String>::new()).unwrap();
        if let Err(e) = crate::storage::resolve(&cfg, Some(&t), &env) {
            prop_assert!(e.contains("system-config") || e.contains("gcs_storage"), "{e}");
        }
    }

    #[test]
    fn any_redis_info_is_read_without_a_panic(t in prop_oneof![any::<String>(), "([a-z_]{1,12}:\\PC{0,12}\n){0,8}"]) {
        let _ = crate::redis::findings::parse_info(&t);
    }

    #[test]
    fn any_proc_cgroup_and_cgroup_files_are_read_without_a_panic(
        own in prop_oneof![any::<String>(), "(0::/\\PC{0,10}\n|[0-9]:memory:/[a-z]{0,5}\n){0,3}"],
        max in prop_oneof![any::<String>(), "(max|[0-9]{1,25})\n?"],
        events in "\\PC{0,40}",
    ) {
        let fs = tempfile::tempdir().unwrap();
        std::fs::write(fs.path().join("memory.max"), &max).unwrap();
        std::fs::write(fs.path().join("memory.current"), &max).unwrap();
        std::fs::write(fs.path().join("memory.events"), &events).unwrap();
        if let Some(c) = crate::memory::Cgroup::find(&own, fs.path()) {
            let _ = c.read();
        }
    }
}
