//! `RAY_REDIS_ADDRESS`, in every form Ray accepts.

use std::fmt;

use crate::config::Secret;

/// Where Redis is, and the credentials the address itself carries.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl fmt::Debug for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `redis://host:port` or `rediss://host:port`, never with the password.
impl fmt::Display for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = match &self.username {
            Some(u) => format!("{u}@"),
            None => String::new(),
        };
        write!(f, "{scheme}://{user}{}", host_port(&self.host, self.port))
    }
}

/// `host:port`, or `[v6]:port`: the one place an address's host and port
/// are put together.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An address cut into its parts, before the parts are checked: errors
/// show it from these, with the userinfo masked, and never the raw text.
struct Parts<'a> {
    tls: bool,
    /// The scheme was written out (`redis://`), not implied.
    scheme: bool,
    userinfo: Option<&'a str>,
    hostport: &'a str,
    /// An `@` beyond the first entry of a comma list: its text may be the
    /// rest of a password cut at a comma, so none of it is shown.
    hidden: bool,
}

impl Parts<'_> {
    /// The address as an error may show it: the password masked.
    fn masked(&self) -> String {
        let scheme = match (self.scheme, self.tls) {
            (false, _) => "",
            (true, false) => "redis://",
            (true, true) => "rediss://",
        };
        let user = match self.userinfo.map(|u| u.split_once(':')) {
            None => String::new(),
            Some(Some((user, _))) => format!("{user}:<redacted>@"),
            Some(None) => "<redacted>@".to_string(),
        };
        format!("{:?}", format!("{scheme}{user}{}", self.host_port()))
    }

    /// The host and port as an error may show them: only a host name
    /// before a port number. A user who forgot the `@` wrote the password
    /// where the host or port goes (`redis://pw`, `redis://:pw`,
    /// `redis://u:pw`).
    fn host_port(&self) -> String {
        let port_like =
            |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        let host_like = |h: &str| {
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
                || (h.contains(':')
                    && h.chars()
                        .all(|c| c.is_ascii_hexdigit() || ":.%".contains(c)))
        };
        match self.hostport.rsplit_once(':') {
            _ if self.hidden => "...".into(),
            Some((h, p)) if port_like(p) && host_like(h) => format!("{h}:{p}"),
            Some((_, p)) if port_like(p) => format!("...:{p}"),
            _ => "...".into(),
        }
    }
}

/// Parses `host:port`, `[v6]:port`, `redis://[user[:pass]@]host:port`,
/// `rediss://...`; of a comma list the first entry is used, as Ray does.
/// The userinfo runs to the last `@`, so a password may hold `/`, `?` or
/// `#`. Errors show the address from its parts, the password masked: never
/// the text as given.
pub fn parse(text: &str) -> Result<RedisAddress, String> {
    let (first, others) = text.split_once(',').unwrap_or((text, ""));
    let first = first.trim();
    if first.is_empty() {
        return Err("empty address; expected host:port or redis://host:port".into());
    }
    let (tls, scheme, rest) = split_scheme(first)?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let parts = Parts {
        tls,
        scheme,
        userinfo,
        hostport,
        hidden: others.contains('@'),
    };
    let shown = parts.masked();
    let (username, password) = credentials(userinfo);
    let (host, port) = split_host_port(hostport, &shown)?;
    Ok(RedisAddress {
        tls,
        host,
        port,
        username,
        password,
    })
}

/// Whether the address asks for TLS and wrote its scheme out, and the rest.
/// An unknown scheme is named only when it cannot be a password's text.
fn split_scheme(first: &str) -> Result<(bool, bool, &str), String> {
    if let Some(r) = first.strip_prefix("rediss://") {
        Ok((true, true, r))
    } else if let Some(r) = first.strip_prefix("redis://") {
        Ok((false, true, r))
    } else if let Some((scheme, _)) = first.split_once("://") {
        let shown = if !first.contains('@')
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            format!(" {scheme:?}")
        } else {
            String::new()
        };
        Err(format!(
            "unknown scheme{shown}; expected redis:// or rediss://"
        ))
    } else {
        Ok((false, false, first))
    }
}

/// The userinfo's user and password; Ray and redis-py read a lone userinfo
/// as the password, so rayhead does too.
fn credentials(userinfo: Option<&str>) -> (Option<String>, Option<Secret>) {
    match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                (!user.is_empty()).then(|| user.to_string()),
                (!pass.is_empty()).then(|| Secret::new(pass)),
            ),
            None => (None, (!u.is_empty()).then(|| Secret::new(u))),
        },
    }
}

/// The host and port, checked; errors show the address as `shown` (its
/// password masked), never the text as given.
fn split_host_port(hostport: &str, shown: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| format!("{shown}: unclosed '[' in an IPv6 address"))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| format!("{shown}: expected [v6-address]:port"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{shown}: no port; expected host:port"))?;
        if h.contains(':') {
            return Err(format!(
                "{shown}: an IPv6 address needs brackets, as [::1]:6379"
            ));
        }
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err(format!("{shown}: no host; expected host:port"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_:%".contains(c))
    {
        return Err(format!(
            "{shown}: the host is not a host name or an IP address"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{shown}: the port is not a number from 1 to 65535"))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_ray_accepts() {
        let a = parse("redis-svc:6379").unwrap();
        assert_eq!((a.tls, a.host.as_str(), a.port), (false, "redis-svc", 6379));
        let a = parse("redis://h:1").unwrap();
        assert_eq!((a.tls, a.port), (false, 1));
        let a = parse("rediss://u:p@h:2/").unwrap();
        assert!(a.tls);
        assert_eq!(a.username.as_deref(), Some("u"));
        assert_eq!(a.password.unwrap().expose(), "p");
        let a = parse("redis://:p@h:2").unwrap();
        assert_eq!(a.username, None);
        assert_eq!(a.password.unwrap().expose(), "p");
        let a = parse("redis://p@h:2").unwrap();
        assert_eq!(a.password.unwrap().expose(), "p");
        let a = parse("[::1]:6380").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 6380));
        assert_eq!(a.to_string(), "redis://[::1]:6380");
        let a = parse("a:1,b:2").unwrap();
        assert_eq!(a.host, "a");
    }

    #[test]
    fn bad_forms_say_why_without_the_password() {
        for (text, why) in [
            ("", "empty"),
            ("host", "no port"),
            ("host:x", "not a number"),
            ("host:0", "not a number"),
            (":6379", "no host"),
            ("::1:6379", "brackets"),
            ("[::1", "unclosed"),
            ("http://h:1", "unknown scheme"),
            ("redis://u:hunter2@h", "no port"),
            // The review's case: the password holds a `/`.
            ("redis://:Ab/hunter2==@127.0.0.1", "no port"),
            ("rediss://hunter2?x#y@h:0", "not a number"),
            ("redis://:hun,ter2@h:1", "no host"),
            ("hunter2://u:p@h:1", "unknown scheme"),
            ("redis://:hunter2@[::1", "unclosed"),
            // No `@`: the password sits where the host or port goes.
            ("redis://:hunter2", "no host"),
            ("redis://u:hunter2", "not a number"),
            ("redis://hunter2 x:1", "not a host name"),
            ("redis://é:1", "not a host name"),
            ("h:hunter2", "not a number"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "{e}");
        }
    }
}
