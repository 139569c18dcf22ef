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
//! ```
//!
//! Precedence: `--bootstrap`, then `FLOTILLA_BOOTSTRAP`, then the profile named by
//! `--profile` (or `FLOTILLA_PROFILE`, or the file's `profile`), then the file's own
//! `bootstrap`, then the three nodes of `flotilla dev`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::DEFAULT_BOOTSTRAP;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    bootstrap: Option<String>,
    profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Profile {
    bootstrap: Option<String>,
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

/// The bootstrap addresses to use (see the module's precedence).
pub fn bootstrap(profile: Option<&str>, flag: Option<String>) -> anyhow::Result<String> {
    if let Some(b) = flag {
        return Ok(b);
    }
    let (path, file) = load()?;
    resolve(&file, profile, path.as_ref())
}

fn resolve(file: &ProfileFile, profile: Option<&str>, path: Option<&PathBuf>) -> anyhow::Result<String> {
    let where_ = || path.map(|p| p.display().to_string()).unwrap_or_else(|| "(no profile file)".into());
    match profile.or(file.profile.as_deref()) {
        Some(name) => match file.profiles.get(name) {
            Some(Profile { bootstrap: Some(b) }) => Ok(b.clone()),
            Some(Profile { bootstrap: None }) => bail!("profile '{name}' in {} has no bootstrap", where_()),
            None => bail!("no profile '{name}' in {}", where_()),
        },
        None => Ok(file.bootstrap.clone().unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_string())),
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
        None => resolve(&file, profile, path.as_ref())?,
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
        assert_eq!(resolve(&file, None, None).unwrap(), "a:1");
        assert_eq!(resolve(&file, Some("staging"), None).unwrap(), "s:1,s:2");
        assert!(resolve(&file, Some("prod"), None).unwrap_err().to_string().contains("no profile 'prod'"));
        assert!(resolve(&file, Some("empty"), None).unwrap_err().to_string().contains("has no bootstrap"));
        let chosen = ProfileFile { profile: Some("staging".into()), ..file };
        assert_eq!(resolve(&chosen, None, None).unwrap(), "s:1,s:2");
        assert_eq!(resolve(&ProfileFile::default(), None, None).unwrap(), DEFAULT_BOOTSTRAP);
        assert!(toml::from_str::<ProfileFile>("bootstrp = \"x\"").is_err(), "a misspelt key is an error");
    }
}
