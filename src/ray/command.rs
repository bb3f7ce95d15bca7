//! The `ray start` command: from KubeRay's string or from argv, made ready to
//! run under rayhead.

use crate::config::{Env, RayMode};

/// A `ray start --head` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCommand {
    /// The argv to run. Secrets may be in it: log it through `redact`.
    pub argv: Vec<String>,
    /// The GCS port: `--port`, else the configured default.
    pub gcs_port: u16,
    /// `--system-config`'s JSON, as given: Ray's `_system_config`, which
    /// beats the `RAY_*` env for the GCS (its storage backend, for one).
    pub system_config: Option<String>,
}

/// Whether an argv is a `ray start` invocation (`ray start ...`, or a path to
/// `ray`), which rayhead supervises as a Ray head rather than as a plain
/// command.
pub fn is_ray_start(argv: &[String]) -> bool {
    argv.len() >= 2
        && std::path::Path::new(&argv[0])
            .file_name()
            .is_some_and(|n| n == "ray")
        && argv[1] == "start"
}

/// Reads KubeRay's `ray start ...` string as bash would (see
/// [`super::shell`]), expanding `$VAR` and `${VAR}` from `env`. Returns the
/// argv and the unset variables it named (they expand to nothing, as in
/// bash), for a warning.
pub fn from_text(text: &str, env: &dyn Env) -> Result<(Vec<String>, Vec<String>), String> {
    let words = super::shell::words(text, env).map_err(|e| format!("ray.start-command: {e}"))?;
    if let Some(first) = words.argv.first() {
        let name = first.split_once('=').map(|(n, _)| n);
        if name.is_some_and(|n| {
            n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            return Err("ray.start-command: starts with a variable assignment (NAME=value), which rayhead does not run; set the variable in the container's env".into());
        }
    }
    Ok((words.argv, words.unset))
}

/// Makes the argv fit the mode: `direct` drops `--block` (rayhead takes over
/// its watching), `block` keeps it and adds it when missing. Checks `--head`
/// and finds the GCS port.
pub fn prepare(
    mut argv: Vec<String>,
    mode: RayMode,
    default_port: u16,
) -> Result<StartCommand, String> {
    if !is_ray_start(&argv) {
        return Err(format!(
            "ray.start-command: expected `ray start --head ...`, got {:?}",
            crate::redact::command_line(&argv[..argv.len().min(3)])
        ));
    }
    if !argv.iter().any(|a| a == "--head") {
        // `--head\r` from a file saved with CRLF: bash keeps the `\r` in
        // the word as well, but nobody sees it.
        let hint = if argv.iter().any(|a| a.trim() == "--head") {
            " (a word `--head` carries an invisible character, such as a carriage return from CRLF line ends)"
        } else {
            ""
        };
        return Err(format!(
            "ray.start-command: rayhead supervises a Ray head, but the command has no --head{hint}"
        ));
    }
    argv.retain(|a| a != "--block");
    if mode == RayMode::Block {
        argv.push("--block".into());
    }
    let gcs_port = match flag_value(&argv, "--port") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("ray.start-command: --port {v:?} is not a port number"))?,
        None => default_port,
    };
    let system_config = flag_value(&argv, "--system-config").map(str::to_string);
    Ok(StartCommand {
        argv,
        gcs_port,
        system_config,
    })
}

/// The value of `--name=value` or `--name value`; the last one wins, as
/// `ray start`'s parser (click) has it.
fn flag_value<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, a) in argv.iter().enumerate() {
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v);
        } else if a == name {
            if let Some(v) = argv.get(i + 1) {
                found = Some(v.as_str());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBERAY: &str = "ray start --head --block --dashboard-agent-listen-port=52365 --num-cpus=0 --redis-password=$REDIS_PASSWORD --redis-username=$REDIS_USERNAME";

    #[test]
    fn kuberay_string_is_expanded_per_word() {
        let env = [("REDIS_PASSWORD", "p w$x")];
        let (argv, unset) = from_text(KUBERAY, &env).unwrap();
        assert!(
            argv.contains(&"--redis-password=p w$x".to_string()),
            "{argv:?}"
        );
        assert!(argv.contains(&"--redis-username=".to_string()));
        assert_eq!(unset, vec!["REDIS_USERNAME"]);
        let (argv, _) = from_text("ray start --x=${A}b $ c", &[("A", "a")]).unwrap();
        assert_eq!(argv, vec!["ray", "start", "--x=ab", "$", "c"]);
        assert!(from_text("ray start ${A", &[("A", "a")]).is_err());
    }

    /// What KubeRay generates, quoted resources and all; and what bash
    /// leaves literal stays literal.
    #[test]
    fn kuberay_forms_read_as_bash_reads_them() {
        let env = [("REDIS_PASSWORD", "p w*"), ("REDIS_USERNAME", "u")];
        let text = "ray start --head --block --redis-password=$REDIS_PASSWORD --redis-username=${REDIS_USERNAME} --dashboard-host=0.0.0.0 --metrics-export-port=8080 --resources='{\"GPU\": 1}' --x='$HOME' --y=\\$HOME";
        let (argv, unset) = from_text(text, &env).unwrap();
        assert!(unset.is_empty());
        for want in [
            "--redis-password=p w*",
            "--redis-username=u",
            "--resources={\"GPU\": 1}",
            "--x=$HOME",
            "--y=$HOME",
        ] {
            assert!(argv.contains(&want.to_string()), "{want}: {argv:?}");
        }
        let e = from_text("A=1 ray start --head", &env).unwrap_err();
        assert!(e.contains("assignment"), "{e}");
        let e = from_text("ray start --head --redis-password=hunter2 $(id)", &env).unwrap_err();
        assert!(
            e.starts_with("ray.start-command: ") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn modes_and_port() {
        let env = [("REDIS_PASSWORD", "pw")];
        let (argv, _) = from_text(KUBERAY, &env).unwrap();
        let direct = prepare(argv.clone(), RayMode::Direct, 6379).unwrap();
        assert!(!direct.argv.contains(&"--block".to_string()));
        assert_eq!(direct.gcs_port, 6379);
        let block = prepare(argv, RayMode::Block, 6379).unwrap();
        assert_eq!(block.argv.iter().filter(|a| *a == "--block").count(), 1);
        let argv: Vec<String> = ["/venv/bin/ray", "start", "--head", "--port", "7000"]
            .map(String::from)
            .to_vec();
        assert_eq!(prepare(argv, RayMode::Direct, 6379).unwrap().gcs_port, 7000);
    }

    #[test]
    fn refuses_what_is_not_a_head() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(prepare(v("ray start --address=x:1"), RayMode::Direct, 1)
            .unwrap_err()
            .contains("--head"));
        assert!(prepare(v("python x.py"), RayMode::Direct, 1).is_err());
        assert!(prepare(v("ray start --head --port=abc"), RayMode::Direct, 1).is_err());
        assert!(prepare(v("ray start --head\r"), RayMode::Direct, 1)
            .unwrap_err()
            .contains("carriage return"));
        assert!(is_ray_start(&v("/a/b/ray start")));
        assert!(!is_ray_start(&v("ray stop")));
    }
}
