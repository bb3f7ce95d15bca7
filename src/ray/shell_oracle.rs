//! bash is the oracle for [`super::shell`]: generated command strings, made
//! of quotes, escapes, `$VAR`, `${VAR}`, blanks and arbitrary Unicode, go
//! through `bash -c` (a tiny `printf '%s\0'` program, a fixed environment)
//! and through rayhead, and the argvs must be equal. Many commands share
//! one bash run, to keep the test quick.
//!
//! The one deliberate difference, field splitting and globbing of an
//! unquoted expansion, is left out by construction: the variables used
//! unquoted (`U*`) hold no blank, glob character or backslash; those that
//! hold anything (`Q*`) are used only inside double quotes.

use std::collections::HashMap;
use std::process::Command;

use proptest::prelude::*;

/// Variables that may be used unquoted, one that may not, and one unset.
const UNQUOTED: &[&str] = &["U1", "U_2", "REDIS_PASSWORD"];
const QUOTED: &[&str] = &["Q1", "Q_2"];
const UNSET: &str = "NOT_SET_9";

/// Text with none of bash's special characters, from all of Unicode (and
/// the carriage return and no-break space that once crashed rayhead).
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,6}",
        "[\\r\\u{a0}\\u{2028}=:,./@%+^!}\\]-]{1,3}",
        "[a-zA-Z0-9_]{1,4}",
    ]
    .prop_map(|s| {
        s.chars()
            .filter(|c| !" \t\n'\"\\$`;|&<>()*?[{~#".contains(*c))
            .collect::<String>()
    })
    .prop_filter("empty", |s| !s.is_empty())
}

fn var(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(names), any::<bool>()).prop_map(|(n, braced)| {
        if braced {
            format!("${{{n}}}")
        } else {
            format!("${n}")
        }
    })
}

/// A `$` that bash leaves as it is.
fn lone_dollar() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "$/", "$=", "$,", "$.", "$:", "$%", "$+", "$^", "$]", "$}",
    ])
    .prop_map(String::from)
}

/// One piece inside double quotes.
fn dq_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,6}".prop_map(|s| s
            .chars()
            .filter(|c| !"\"\\$`".contains(*c))
            .collect::<String>()),
        prop::sample::select(vec![
            "\\$", "\\\"", "\\\\", "\\`", "\\x", "\\'", "\\\n", "\\ ", "'"
        ])
        .prop_map(String::from),
        var(UNQUOTED),
        var(QUOTED),
        var(&[UNSET]),
        lone_dollar(),
        Just("$ ".to_string()),
    ]
}

/// One piece of a word.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => literal(),
        2 => "[^'\\x00]{0,6}".prop_map(|s| format!("'{s}'")),
        2 => prop::collection::vec(dq_piece(), 0..4).prop_map(|v| format!("\"{}\"", v.concat())),
        1 => "[^\\x00]".prop_map(|c| format!("\\{c}")),
        2 => var(UNQUOTED),
        1 => var(&[UNSET]),
        1 => lone_dollar(),
        // A line continuation inside a word, even inside a name.
        1 => Just("\\\n".to_string()),
    ]
}

/// A command: words of pieces, between blanks and line continuations.
fn command() -> impl Strategy<Value = String> {
    let word = prop::collection::vec(piece(), 1..4).prop_map(|v| v.concat());
    let sep = prop::sample::select(vec![" ", "  ", "\t", " \\\n "]);
    (prop::collection::vec((word, sep), 1..6), any::<bool>()).prop_map(|(words, dollar)| {
        let mut s: String = words
            .into_iter()
            .map(|(w, sep)| format!("{w}{sep}"))
            .collect();
        if dollar {
            // A `$` at the very end.
            s.push('$');
        }
        s
    })
}

/// Values: anything inside double quotes; no blank, glob character or
/// backslash when used unquoted.
fn env() -> impl Strategy<Value = HashMap<String, String>> {
    let unquoted = "(\\PC|[\\r\\u{a0}'\"$`]){0,8}".prop_map(|s| {
        s.chars()
            .filter(|c| !" \t\n*?[\\".contains(*c))
            .collect::<String>()
    });
    let quoted = "(\\PC|[\\r\\n\\t\\u{a0}]){0,8}";
    (
        prop::collection::vec(unquoted, UNQUOTED.len()),
        prop::collection::vec(quoted, QUOTED.len()),
    )
        .prop_map(|(u, q)| {
            let mut env = HashMap::new();
            for (n, v) in UNQUOTED.iter().zip(u).chain(QUOTED.iter().zip(q)) {
                env.insert(n.to_string(), v);
            }
            env
        })
}

/// Every command's argv as bash sees it, from one bash run.
fn bash(commands: &[String], env: &HashMap<String, String>) -> Vec<Vec<String>> {
    let mut script = String::from("f() { printf '%s\\0' \"$#\" \"$@\"; }\n");
    for c in commands {
        script.push_str("f ");
        script.push_str(c);
        script.push('\n');
    }
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .env_clear()
        .envs(env)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = out.stdout.split(|b| *b == 0);
    let mut argvs = Vec::new();
    for _ in commands {
        let n: usize = std::str::from_utf8(fields.next().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let argv = (0..n)
            .map(|_| String::from_utf8(fields.next().unwrap().to_vec()).unwrap())
            .collect();
        argvs.push(argv);
    }
    argvs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn rayhead_reads_a_command_as_bash_does(
        commands in prop::collection::vec(command(), 100),
        env in env(),
    ) {
        let want = bash(&commands, &env);
        for (c, want) in commands.iter().zip(want) {
            let got = super::shell::words(c, &env);
            prop_assert_eq!(got.map(|w| w.argv), Ok(want), "command {:?}", c);
        }
    }

    #[test]
    fn what_bash_would_do_and_rayhead_does_not_is_an_error(
        before in command(),
        after in command(),
        construct in prop::sample::select(vec![
            "$(id)", "`id`", "\"`id`\"", ";", "|", "&", "<f", ">f", "*", "a?", "[ab]", "{a,b}",
            "~", "#c", "${U1:-x}", "${#U1}", "\"${U1/a/b}\"", "$1", "\"$@\"", "$$", "$'x'",
            "$\"x\"", "$((1))", "$[1]", "${U1", "'x", "\"x", "\nb",
        ]),
        env in env(),
    ) {
        // `before` may end in a `$`, which would take the construct in.
        // An unterminated construct goes last: a quote or brace in
        // `after` would close it (`'x '\'` is bash's "x '").
        let unterminated = matches!(construct, "'x" | "\"x" | "${U1");
        let text = if unterminated {
            format!("{before} {after} {construct}")
        } else {
            format!("{before} {construct} {after}")
        };
        let got = super::shell::words(&text, &env);
        prop_assert!(got.is_err(), "{text:?} -> {got:?}");
        let e = got.unwrap_err();
        prop_assert!(e.contains("not supported") || e.contains("unterminated") || e.contains("newline"), "{e}");
        for v in env.values().filter(|v| v.len() > 3) {
            prop_assert!(!e.contains(v.as_str()), "{e}");
        }
    }
}
