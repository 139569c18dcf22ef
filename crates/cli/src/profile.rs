//! The CLI's profile file: where the cluster is, so that `--bootstrap` need not be typed
//! each time (like `rpk profile` or the `nats` CLI's contexts).
//!
//! `$FLOTILLA_CLI_CONFIG`, else `$XDG_CONFIG_HOME/flotilla/cli.toml`, else
//! `~/.config/flotilla/cli.toml`:
//!
//! ```toml
//! bootstrap = "10.0.0.1:7070,10.0.0.2:7070"   # used when no profile is named
//! profile = "staging"                          # or name the default profile
//!
//! [profiles.staging]
//! bootstrap = "staging-1:7070"
//! user = "alice"                               # credentials (docs/security.md)
//! password-file = "/home/alice/.flotilla-password"
//! tls-ca = "/etc/flotilla/ca.pem"              # and client TLS
//! ```
//!
//! Precedence: `--bootstrap`, then `FLOTILLA_BOOTSTRAP`, then the profile named by
//! `--profile` (or `FLOTILLA_PROFILE`, or the file's `profile`), then the file's own
//! `bootstrap`, then the three nodes of `flotilla dev`. The other keys (`user`,
//! `password` or `password-file`, `tls-ca`, `tls-client-cert`, `tls-client-key`) come
//! from the same place, each unless its flag or environment variable is given.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::DEFAULT_BOOTSTRAP;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProfileFile {
    bootstrap: Option<String>,
    profile: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// One profile: where the cluster is, and how to connect to it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub bootstrap: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
}

impl ProfileFile {
    /// The file's own keys, as a profile.
    fn top(&self) -> Profile {
        Profile {
            bootstrap: self.bootstrap.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_client_cert: self.tls_client_cert.clone(),
            tls_client_key: self.tls_client_key.clone(),
        }
    }
}

impl Profile {
    /// The password, from `password` or the first line of `password-file`.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(f)) => read_password(f).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// A password file's first line.
pub fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Where the profile file is looked for.
fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_CLI_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("flotilla").join("cli.toml"))
}

fn load() -> anyhow::Result<(Option<PathBuf>, ProfileFile)> {
    let Some(path) = path() else { return Ok((None, ProfileFile::default())) };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file = toml::from_str(&text).with_context(|| format!("parsing the profile file {}", path.display()))?;
            Ok((Some(path), file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Some(path), ProfileFile::default())),
        Err(e) => Err(e).with_context(|| format!("reading the profile file {}", path.display())),
    }
}

/// The profile to use, its bootstrap set (see the module's precedence): `flag` is
/// `--bootstrap` or `FLOTILLA_BOOTSTRAP`.
pub fn selected(profile: Option<&str>, flag: Option<String>) -> anyhow::Result<Profile> {
    let (path, file) = load()?;
    let mut p = resolve(&file, profile, path.as_ref(), flag.is_some())?;
    if let Some(b) = flag {
        p.bootstrap = Some(b);
    }
    Ok(p)
}

/// The named profile, or the file's own keys; with `bootstrap_given`, a profile without
/// a bootstrap is not an error.
fn resolve(
    file: &ProfileFile,
    profile: Option<&str>,
    path: Option<&PathBuf>,
    bootstrap_given: bool,
) -> anyhow::Result<Profile> {
    let where_ = || path.map(|p| p.display().to_string()).unwrap_or_else(|| "(no profile file)".into());
    match profile.or(file.profile.as_deref()) {
        Some(name) => match file.profiles.get(name) {
            Some(p) if p.bootstrap.is_some() || bootstrap_given => Ok(p.clone()),
            Some(_) => bail!("profile '{name}' in {} has no bootstrap", where_()),
            None => bail!("no profile '{name}' in {}", where_()),
        },
        None => {
            let mut top = file.top();
            top.bootstrap.get_or_insert_with(|| DEFAULT_BOOTSTRAP.to_string());
            Ok(top)
        }
    }
}

/// `flotilla profile`: the file, its profiles, and what a command would use now.
pub fn show(profile: Option<&str>, flag: Option<&str>) -> anyhow::Result<()> {
    let (path, file) = load()?;
    match &path {
        Some(p) if p.exists() => println!("profile file: {}", p.display()),
        Some(p) => println!("profile file: {} (none yet)", p.display()),
        None => println!("profile file: none (no HOME)"),
    }
    for (name, p) in &file.profiles {
        println!("  profile {name}: bootstrap {}", p.bootstrap.as_deref().unwrap_or("-"));
    }
    let used = match flag {
        Some(b) => format!("{b} (from --bootstrap or FLOTILLA_BOOTSTRAP)"),
        None => resolve(&file, profile, path.as_ref(), false)?.bootstrap.unwrap_or_default(),
    };
    println!("bootstrap in use: {used}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_resolve_in_order() {
        let file: ProfileFile = toml::from_str(
            r#"
bootstrap = "a:1"
[profiles.staging]
bootstrap = "s:1,s:2"
[profiles.empty]
"#,
        )
        .unwrap();
        let bootstrap = |file: &ProfileFile, name| resolve(file, name, None, false).map(|p| p.bootstrap.unwrap());
        assert_eq!(bootstrap(&file, None).unwrap(), "a:1");
        assert_eq!(bootstrap(&file, Some("staging")).unwrap(), "s:1,s:2");
        assert!(bootstrap(&file, Some("prod")).unwrap_err().to_string().contains("no profile 'prod'"));
        assert!(bootstrap(&file, Some("empty")).unwrap_err().to_string().contains("has no bootstrap"));
        assert!(resolve(&file, Some("empty"), None, true).is_ok(), "unless --bootstrap gives one");
        let chosen = ProfileFile { profile: Some("staging".into()), ..file };
        assert_eq!(bootstrap(&chosen, None).unwrap(), "s:1,s:2");
        assert_eq!(bootstrap(&ProfileFile::default(), None).unwrap(), DEFAULT_BOOTSTRAP);
        assert!(toml::from_str::<ProfileFile>("bootstrp = \"x\"").is_err(), "a misspelt key is an error");
    }

    #[test]
    fn credentials_and_tls_come_from_the_profile() {
        let dir = std::env::temp_dir().join(format!("flotilla-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("pw");
        std::fs::write(&secret, "s3cret\nignored\n").unwrap();
        let file: ProfileFile = toml::from_str(&format!(
            r#"
user = "top"
password = "top-pw"
[profiles.prod]
bootstrap = "p:1"
user = "alice"
password-file = "{}"
tls-ca = "/etc/flotilla/ca.pem"
"#,
            secret.display()
        ))
        .unwrap();
        let prod = resolve(&file, Some("prod"), None, false).unwrap();
        assert_eq!(prod.user.as_deref(), Some("alice"));
        assert_eq!(prod.password().unwrap().as_deref(), Some("s3cret"));
        assert_eq!(prod.tls_ca, Some(PathBuf::from("/etc/flotilla/ca.pem")));
        let top = resolve(&file, None, None, false).unwrap();
        assert_eq!((top.user.as_deref(), top.password().unwrap().as_deref()), (Some("top"), Some("top-pw")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
