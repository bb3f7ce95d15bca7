//! The `ray start` command: from KubeRay's string or from argv, made ready to
//! run under rayhead.

use crate::config::{value::split_command, Env, RayMode};

/// A `ray start --head` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCommand {
    /// The argv to run. Secrets may be in it: log it through `redact`.
    pub argv: Vec<String>,
    /// The GCS port: `--port`, else the configured default.
    pub gcs_port: u16,
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

/// Splits KubeRay's `ray start ...` string like bash would (quotes,
/// backslashes), then expands `$VAR` and `${VAR}` in each word from `env`.
/// KubeRay's string holds the literal `--redis-password=$REDIS_PASSWORD`:
/// expanding per word keeps a password with spaces in one argument. An unset
/// variable expands to nothing, as in bash; its name is returned for a
/// warning.
pub fn from_text(text: &str, env: &dyn Env) -> Result<(Vec<String>, Vec<String>), String> {
    let words = split_command(text).map_err(|e| format!("ray.start-command: {e}"))?;
    let mut unset = Vec::new();
    let mut argv = Vec::with_capacity(words.len());
    for w in words {
        argv.push(expand(&w, env, &mut unset)?);
    }
    Ok((argv, unset))
}

fn expand(word: &str, env: &dyn Env, unset: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let name: String = match chars.peek() {
            Some((_, '{')) => {
                chars.next();
                let mut n = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) => break,
                        Some((_, c)) => n.push(c),
                        None => {
                            return Err(format!(
                                "ray.start-command: unclosed ${{ in {:?}",
                                crate::redact::argv(&[word])[0]
                            ))
                        }
                    }
                }
                n
            }
            _ => {
                let mut n = String::new();
                while let Some((_, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || *c == '_' {
                        n.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                n
            }
        };
        if name.is_empty() {
            out.push('$');
            continue;
        }
        match env.var(&name) {
            Ok(Some(v)) => out.push_str(&v),
            Ok(None) => {
                if !unset.contains(&name) {
                    unset.push(name);
                }
            }
            Err(e) => return Err(format!("ray.start-command: {e}")),
        }
    }
    Ok(out)
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
        return Err(
            "ray.start-command: rayhead supervises a Ray head, but the command has no --head"
                .into(),
        );
    }
    argv.retain(|a| a != "--block");
    if mode == RayMode::Block {
        argv.push("--block".into());
    }
    let mut gcs_port = default_port;
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        let value = if let Some(v) = a.strip_prefix("--port=") {
            Some(v.to_string())
        } else if a == "--port" {
            argv.get(i + 1).cloned()
        } else {
            None
        };
        if let Some(v) = value {
            gcs_port =
                v.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("ray.start-command: --port {v:?} is not a port number")
                })?;
        }
        i += 1;
    }
    Ok(StartCommand { argv, gcs_port })
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
        assert!(is_ray_start(&v("/a/b/ray start")));
        assert!(!is_ray_start(&v("ray stop")));
    }
}
