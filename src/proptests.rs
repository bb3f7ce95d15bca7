//! Property tests: every parser of outside input gets arbitrary input and
//! never panics, and a secret never survives redaction. Outside input is
//! config (file, env, `--set`), KubeRay's start command, Redis addresses,
//! child output, and HTTP request lines.

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
    fn the_start_command_splitter_never_panics(t in "\\PC{0,80}", v in text()) {
        let env = [("REDIS_PASSWORD", v.as_str())];
        let _ = crate::ray::command::from_text(&t, &env);
        let _ = crate::config::value::split_command(&t);
    }

    #[test]
    fn redis_addresses_never_panic_nor_show_their_password(t in "\\PC{0,60}", host in "[a-z]{1,10}", port in any::<u16>(), pw in secret()) {
        let _ = crate::redis::address::parse(&t);
        for form in [format!("redis://u:{pw}@{host}:{port}"), format!("rediss://{pw}@{host}:{port}/0"), format!("redis://:{pw}@[::1]:{port},b:1")] {
            if let Ok(a) = crate::redis::address::parse(&form) {
                prop_assert!(!a.to_string().contains(&pw), "{a}");
            }
        }
    }

    #[test]
    fn no_secret_survives_redaction(words in prop::collection::vec("[a-z=/:-]{0,12}", 0..6), pw in secret(), opt in "(redis[-_]password|passwd|token|secret|x-credential)", form in 0..7u8, quote in "['\"]?") {
        let mut argv: Vec<String> = words.clone();
        match form {
            0 => argv.push(format!("{quote}--{opt}={pw}{quote}")),
            1 => { argv.push(format!("{quote}--{opt}{quote}")); argv.push(format!("{quote}{pw}{quote}")); }
            2 => argv.push(format!("{quote}redis://user:{pw}@h:1/0{quote}")),
            3 => argv.push(format!("rediss://{pw}@h:6379")),
            4 => argv.push(format!("{quote}{}={pw}{quote}", opt.to_uppercase().replace('-', "_"))),
            5 => argv.push(format!("--worker_command=python w.py --{opt}={pw} -Dray.{opt}={pw} x")),
            _ => argv.push(format!("-{opt}={pw}")),
        }
        let line = argv.join(" ");
        prop_assert!(!crate::redact::command_line(&argv).contains(&pw));
        prop_assert!(!crate::redact::line(&line).contains(&pw), "{}", crate::redact::line(&line));
        let quoted = format!("'{}'", line);
        prop_assert!(!crate::redact::line(&quoted).contains(&pw));
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
}
